"""Sequential certification of a grid of radii from one stream: a table's row of an example (certified at
r_1 < ... < r_m?) decided with one anytime-valid statement for every radius at once, stopping as soon as every
radius is decided.

A certified-accuracy table (Cohen et al. 2019, Tables 2 and 3) asks, per example, at which radii of a grid CERTIFY
certifies. rsbook.sequential answers one radius with a sequential test of H0: p_A <= p0 = Phi(r / sigma); testing
the m radii separately spends m streams of samples. Here one stream serves them all:

- every radius gets the test of rsbook.sequential.plan (same method, schedule and options, so the same looks
  t_1 < ... < t_J), with boundaries certify_at_i[j] (certify r_i at look j iff the hits so far are >= it);
- the boundaries are nested by a running maximum over the radii in increasing order,
      c_i[j] = max_{l <= i} certify_at_l[j],
  which only raises a test's boundary (each stays valid on its own) and makes certification monotone: hits
  >= c_i[j] implies hits >= c_l[j] for every l <= i, so the certified radii of an example are always the
  smallest ones of the grid, up to the largest certified;
- futility and curtailment are those of rsbook.sequential computed on the nested boundaries; a radius stopped
  for futility stops every larger radius too (stopping only ever removes certificates);
- the stream stops when every radius is certified or stopped, or at n_max.

Guarantee (simultaneous over the grid): if P(f(x + eps) = c_A) = p, then with probability at least 1 - alpha no
radius r_i with p < Phi(r_i / sigma) is certified -- for all radii at once, at whatever look the example stops.
Proof: let i0 be the smallest index with p < p0_{i0}. A false certificate is a certificate of some r_i,
i >= i0, at some look j, so hits_j >= c_i[j] >= certify_at_{i0}[j]: the test of r_{i0} alone, without futility
or n_max, would certify at look j. For "betting" that is the event that the mixture wealth of H0: p <= p0_{i0}
(a nonnegative supermartingale under every p <= p0_{i0}, increasing in the hits) reaches 1/alpha at some
time, of probability <= alpha by Ville's inequality; for "union" it is a Clopper-Pearson bound at level alpha_j
exceeding p0_{i0} >= p at some look, of probability <= sum_j alpha_j = alpha; for "fixed", the single look.
So each example's table row keeps CERTIFY's per-example guarantee (Cohen et al. 2019, Sec. 3.2.2 and Thm. 1:
with probability >= 1 - alpha, g(x + delta) = c_A for every ||delta||_2 < r_i at every certified r_i), with one
stream instead of m.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from rsbook._checks import check_positive_int, check_sigma
from rsbook._checks import check_radii as checked_radii
from rsbook.sequential import DEFAULT_FUTILITY, DEFAULT_PRIOR, _check_hits, _futility, certify_threshold
from rsbook.sequential import plan as radius_plan

__all__ = ["GridPlan", "GridResult", "check_radii", "grid_plan", "certify_grid", "simulate_grid"]


def check_radii(radii) -> tuple[float, ...]:
    """The radii as a sorted tuple of distinct finite floats >= 0 (rsbook._checks.check_radii; ValueError naming
    `radii` otherwise)."""
    return tuple(sorted(set(checked_radii(radii))))


@dataclass(frozen=True)
class GridPlan:
    """The nested boundaries of the grid test, fixed before any data (see the module docstring).

    radii: (m,) ascending; p0: (m,) their thresholds Phi(r / sigma) (0.5 at r = 0); looks: (J,) shared look
    times; certify_at: (m, J) nested boundaries c_i[j] (looks[j] + 1: impossible); futile_at: (m, J): radius i
    stops at look j iff hits <= futile_at[i, j] (-1: never); sigma, alpha, n_max, method, futility, prior:
    how it was made."""

    radii: np.ndarray
    p0: np.ndarray
    looks: np.ndarray
    certify_at: np.ndarray
    futile_at: np.ndarray
    sigma: float
    alpha: float
    n_max: int
    method: str
    futility: float | None
    prior: tuple

    def step(self, j: int, hits, certified, stopped):
        """The state after look j with `hits` hits (arrays broadcast): (certified, stopped), where the
        radii with index < certified are certified and those with index >= stopped are decided not
        certified (by futility or curtailment); every radius is decided when certified >= stopped. After
        the last look the radii still open are not certified (n_max reached): the caller closes them."""
        hits = np.asarray(hits)[..., None]
        certified = np.maximum(certified, (hits >= self.certify_at[:, j]).sum(-1))
        futile = hits <= self.futile_at[:, j]
        first_futile = np.where(futile.any(-1), futile.argmax(-1), len(self.radii))
        return certified, np.maximum(np.minimum(stopped, first_futile), certified)

    @property
    def possible(self) -> bool:
        """False when no radius can be certified even if every draw hits."""
        return bool(np.any(self.certify_at <= self.looks))


def grid_plan(radii, sigma, alpha, n_max, method: str = "betting", batch_size: int = 1000, *,
              futility=DEFAULT_FUTILITY, prior=DEFAULT_PRIOR, first: int | None = None,
              growth: float | None = None) -> GridPlan:
    """The grid test of `radii` at noise `sigma` and level alpha with at most n_max draws: each radius's
    rsbook.sequential.plan (method, batch_size, futility, prior, first, growth as there), boundaries nested by a
    running maximum, futility recomputed on them. A radius whose threshold rounds to 1 can never be certified.
    Plans are cached per distinct arguments; their arrays are read-only."""
    radii = check_radii(radii)
    sigma = check_sigma(sigma)
    shared = radius_plan(0.5, alpha, n_max, method, batch_size, futility=futility, prior=prior, first=first,
                         growth=growth)  # checks every other argument; its looks are every radius's
    return _grid_plan(radii, sigma, shared.alpha, shared.n_max, shared.method, int(batch_size), shared.futility,
                      shared.prior, first, growth)


@lru_cache(maxsize=64)
def _grid_plan(radii, sigma, alpha, n_max, method, batch_size, futility, prior, first, growth) -> GridPlan:
    p0 = np.array([max(certify_threshold(r, sigma), 0.5) for r in radii])
    options = dict(futility=futility, prior=prior, first=first, growth=growth)
    looks, rows = None, []
    for threshold in p0:
        if threshold >= 1.0:
            rows.append(None)
            continue
        test = radius_plan(float(threshold), alpha, n_max, method, batch_size, **options)
        looks = test.looks if looks is None else looks
        rows.append(test.certify_at)
    if looks is None:  # every threshold rounds to 1: nothing can be certified
        looks = radius_plan(0.5, alpha, n_max, method, batch_size, **options).looks
    certify_at = np.stack([looks + 1 if row is None else row for row in rows])
    certify_at = np.maximum.accumulate(certify_at, axis=0)
    futile_at = np.stack([_futility(looks, row, futility) for row in certify_at])
    arrays = [np.asarray(a) for a in (np.asarray(radii, dtype=float), p0, looks, certify_at, futile_at)]
    for array in arrays:
        array.setflags(write=False)
    return GridPlan(*arrays, sigma=sigma, alpha=alpha, n_max=n_max, method=method, futility=futility, prior=prior)


@dataclass(frozen=True)
class GridResult:
    """certified: (m,) bools, True for the radii certified (always the smallest ones of the grid); radius: the
    largest certified radius (0.0 when none); samples: draws this call made (no n0 selection); hits: top-class
    hits among them; looks: looks made; decision: 'decided' (every radius decided before n_max) or 'n_max'."""

    certified: tuple
    radius: float
    samples: int
    hits: int
    looks: int
    decision: str

    @property
    def any(self) -> bool:
        """Whether the smallest radius (hence at least one) is certified."""
        return bool(self.certified and self.certified[0])


def certify_grid(draw, radii, sigma, alpha, n_max, batch_size: int = 1000, method: str = "betting", *,
                 futility=DEFAULT_FUTILITY, prior=DEFAULT_PRIOR, first: int | None = None,
                 growth: float | None = None) -> GridResult:
    """Which radii of the grid is the smoothed classifier robust at? One stream of draws, looked at on the
    schedule of rsbook.sequential.plan, until every radius is certified or stopped (module docstring).

    draw(k) returns the top-class hits among k fresh noisy samples (independent of the draws that chose c_A).
    Guarantee: with probability >= 1 - alpha, simultaneously for every radius r of the grid that is certified,
    P(f(x + eps) = c_A) >= Phi(r / sigma), so g(x + delta) = c_A for every ||delta||_2 < r (Cohen et al. 2019,
    Thm. 1 with p_B = 1 - p_A; r = 0: c_A is g(x))."""
    test = grid_plan(radii, sigma, alpha, n_max, method, batch_size, futility=futility, prior=prior, first=first,
                     growth=growth)
    m = len(test.radii)
    certified, stopped = 0, m if test.possible else 0
    hits = drawn = looks = 0
    for j, look in enumerate(test.looks):
        if certified >= stopped:
            break
        step = int(look) - drawn
        hits += _check_hits(draw(step), step)
        drawn, looks = int(look), j + 1
        certified, stopped = (int(v) for v in test.step(j, hits, certified, stopped))
    decision = "decided" if certified >= stopped else "n_max"
    return GridResult(certified=tuple(i < certified for i in range(m)),
                      radius=float(test.radii[certified - 1]) if certified else 0.0, samples=drawn, hits=hits,
                      looks=looks, decision=decision)


def simulate_grid(test: GridPlan, p, rng: np.random.Generator, reps: int = 1):
    """The grid test on Bernoulli(p) draws, batched as its looks, vectorised over rows and repetitions.
    p: (rows,) probabilities. Returns (certified, samples), each (reps, rows): how many radii (the smallest
    ones) each run certified, and how many draws it made."""
    reps = check_positive_int(reps, "reps")
    p = np.broadcast_to(np.asarray(p, dtype=float), (reps, np.size(p))).copy()
    m = len(test.radii)
    certified = np.zeros(p.shape, dtype=np.int64)
    stopped = np.full(p.shape, m if test.possible else 0, dtype=np.int64)
    samples = np.zeros(p.shape, dtype=np.int64)
    hits = np.zeros(p.shape, dtype=np.int64)
    drawn = 0
    for j, look in enumerate(test.looks):
        active = certified < stopped
        if not active.any():
            break
        where = np.nonzero(active)
        hits[where] += rng.binomial(int(look) - drawn, p[where])
        drawn = int(look)
        samples[where] = drawn
        certified[where], stopped[where] = test.step(j, hits[where], certified[where], stopped[where])
    return certified, samples
