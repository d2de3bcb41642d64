"""Cohen, Rosenfeld & Kolter (2019), *Certified Adversarial Robustness via Randomized Smoothing*: the re-run.

The method itself — PREDICT and CERTIFY (`rsbook.smooth`), Clopper–Pearson and the binomial test
(`rsbook.stats`), the radius bounds of Cohen, Lecuyer and Li (`rsbook.bounds`), certified accuracy
and the authors' logs (`rsbook.analysis`, `rsbook.logs`) — is the library's core, since every other
document builds on it. This package holds what re-running the paper adds (book chapter "Cohen et al.
(2019), re-run"):

    pipeline  resumable steps of the re-run: certify / predict grids over noise levels, top-k radii,
              attacks on certified examples, the train x certify noise matrix
    topk      top-k certificates (Jia et al. 2020, Thm. 1, with SimuEM bounds; lecture notes, top-k)
    attacks   smoothed l2 PGD against a certified radius (Sec. 4, "Empirical tightness", App. J.3)
    steps     the chapter's heavy steps, described once (rsbook.book.steps): `rsbook train` / `certify` /
              `predict` commands the chapter runs (through torchrun at profile full) and `make plan` estimates

Noise training (`rsbook.train`), datasets and architectures (`rsbook.data`, `rsbook.models`) and
resumable, torchrun-sharded dataset certification (`rsbook.dataset_runs`) are core too: the command
line and the other documents use them.
"""

from rsbook.cohen.attacks import (
           ATTACK_COLUMNS,
           attack_certified,
           attack_certify_log,
           smoothed_pgd,
)
from rsbook.cohen.pipeline import (
           attack_runs,
           certify_grid,
           cross_noise_matrix,
           predict_runs,
           topk_radii,
)
from rsbook.cohen.topk import (
           certified_topk_accuracy,
           certify_topk,
           simultaneous_bounds,
           topk_radius,
)

__all__ = ["certify_grid", "predict_runs", "topk_radii", "attack_runs", "cross_noise_matrix", "certify_topk",
           "topk_radius", "simultaneous_bounds", "certified_topk_accuracy", "smoothed_pgd", "attack_certified",
           "attack_certify_log", "ATTACK_COLUMNS"]
