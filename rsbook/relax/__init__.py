"""Certificates by convex relaxation (LP slides, document 003; Wong & Kolter 2018).

Modules:
  network    a torch.nn.Sequential of Linear / ReLU / Flatten / Conv2d as an affine–ReLU chain
  interval   interval bound propagation (IBP)
  dual       Wong & Kolter's closed-form dual bound, the backward pass every linear bound shares;
             layer-wise intermediate bounds
  crown      CROWN (adaptive lower slopes) and α-CROWN (slopes optimised by projected gradient), their
             intermediate bounds (the LP's and the MILP's by default)
  lp         the "Overall LP" (triangle relaxation) and the exact MILP as parametrized cvxpy problems
  bab        branch and bound on ReLU splits with α,β-CROWN bounds: a complete verifier
  certify    margin lower bounds and YES / MAYBE / NO answers (Certifier; cached per network)
  rounding   how far the network as run in its dtype can be from its exact version over a ball (YES thresholds)
  training   the chapter's networks; normal, noise and robust training (dual bound, IBP, CROWN-IBP) with an ε ramp
  evaluate   answers over a test subsample (resumable), summaries, timings, randomized smoothing
  geometry   the 2-D pictures: the ball's image under a network and its relaxations
  toy        seeded two-moons data
  plots      the chapter's figures
  steps      the chapter's heavy steps, described once (rsbook.book.steps): training runs as in-process calls,
             certificates and CERTIFY found by their run folders, for the chapter and `make plan`

The public entry points are re-exported here: margin_lower_bounds (METHODS: ibp, dual, crown,
alpha-crown, lp, milp), certify (DECISIONS: those and bab), Certifier, SolverError.
"""

from rsbook.relax.certify import (
    ANSWERS,
    DECISIONS,
    METHODS,
    Certifier,
    certifier,
    certify,
    margin_lower_bounds,
)
from rsbook.relax.lp import SolverError

__all__ = ["margin_lower_bounds", "certify", "Certifier", "certifier", "SolverError", "METHODS", "DECISIONS",
           "ANSWERS"]
