"""Sequential certification: "is this input robust at radius r?" decided with as few noisy samples as the
data allow, at the same failure probability alpha as CERTIFY.

CERTIFY (Cohen et al. 2019, Sec. 3.2.2) draws a fixed n and certifies radius r iff the one-sided
Clopper-Pearson bound p_A satisfies sigma * Phi^-1(p_A) >= r, i.e. p_A >= p0 = Phi(r / sigma) (Theorem 1 with
p_B = 1 - p_A). Here the same question is a sequential test of H0: p <= p0 against p > p0 on the top-class
indicator X_i = 1[f(x + eps_i) = c_A], looked at on a growing schedule and stopped as soon as it is decided:

- "certified": the test rejects H0. With probability at least 1 - alpha this never happens when p < p0,
  whatever the data-dependent time it stops at (every method below is valid at stopping times);
- "not certified": a futility rule or curtailment fired (when even all hits in the samples left up to
  n_max could not reach the certification boundary). Stopping for futility only ever removes
  certificates, so its level costs power, never validity;
- or n_max is reached without a decision ("not certified").

Methods (`METHODS`):

- "betting": a test supermartingale. For every p1 > p0 the likelihood ratio
  prod (p1/p0)^X ((1-p1)/(1-p0))^(1-X) has expectation <= 1 under any p <= p0, so its mixture over a prior on
  [p0, 1] (a Beta(a, b) truncated to [p0, 1], closed form through betaln/betaincc) is a nonnegative
  supermartingale, and by Ville's inequality it exceeds 1/alpha at any time with probability <= alpha
  (Robbins 1970's mixture; Waudby-Smith & Ramdas 2023, "Estimating means of bounded random variables by
  betting", Sec. 3; Voracek 2024, "Treatment of statistical estimation problems in randomized smoothing").
  The mixture is the wealth of a bettor who bets on every sample, so batching the draws and looking
  only at the ends of batches is a subsequence of a valid process: looks are free.
- "union": at look j the one-sided Clopper-Pearson bound at level alpha_j, with sum_j alpha_j = alpha
  (Bonferroni over a doubling schedule fixed in advance), the baseline of Horvath et al. 2022.
- "fixed": CERTIFY's single look at n_max with the Clopper-Pearson bound at alpha.

The boundaries depend only on (p0, alpha, n_max, method, schedule), never on data, and are computed once
(`plan`): a `Plan` certifies at look j iff the hits so far are >= certify_at[j] and stops for futility
iff they are <= futile_at[j]. Every method decides only at its looks: the betting test certifies at the
first *look* at which M_t >= 1/alpha (`Plan.first_certifiable_look` is the earliest one that can), not at
the first draw. The same plan drives `certify_radius` (a real `draw`) and `rsbook.replay` (Binomial
draws, vectorised), so the simulated and the real test are the same code.

What a test costs and what it gives, exactly (no simulation): `operating_characteristic` (the probability
of certifying, i.e. the power when p > p0 and the false-certification rate when p <= p0, and the expected
number of draws, for a true p) and `expected_samples_peak` (the p at which the expected draws peak).

Also: `certify_sequential` (radius estimation to a tolerance, on the two-sided Beta-binomial confidence
sequence) and `randomized_clopper_pearson_lower` (Voracek 2024's randomized, exact-level bound).

Why not `confseq`: it is a compiled package not among the project's pinned dependencies, and its
binomial tools are other constructions than the two used here: its betting confidence sequences bet
predictable plug-in amounts (Waudby-Smith & Ramdas 2023) instead of mixing likelihood ratios
over a prior, and its Bernoulli confidence interval mixes over a Beta prior tuned to an intrinsic time
(Howard et al. 2021), not truncated to [p0, 1]. The truncated mixture of `mixture_log_wealth` has no
counterpart there; here both sequences are closed forms of scipy.special, precomputed once per plan and
vectorised over the replay's thousands of rows.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal, special
from scipy.optimize import minimize_scalar
from scipy.stats import beta as beta_dist
from scipy.stats import binom, norm

from rsbook._checks import (
    check_alpha,
    check_counts,
    check_positive_int,
    check_seed,
    check_sigma,
)
from rsbook.stats import clopper_pearson_lower

__all__ = [
    "METHODS",
    "Plan",
    "RadiusEstimate",
    "SequentialResult",
    "beta_binomial_interval",
    "certify_radii",
    "certify_radius",
    "certify_sequential",
    "certify_threshold",
    "expected_samples_peak",
    "mixture_log_wealth",
    "mixture_lower",
    "operating_characteristic",
    "plan",
    "randomized_clopper_pearson_lower",
]

METHODS = ("betting", "union", "fixed")

DEFAULT_PRIOR = (1.0, 1.0)
"""Beta(a, b) prior of the betting mixture, truncated to [p0, 1]: uniform on the alternatives."""

DEFAULT_FUTILITY = 0.001
"""Default futility level beta (see `plan`); None turns futility off (curtailment stays)."""


def certify_threshold(radius, sigma) -> float:
    """p0 = Phi(radius / sigma): certified at `radius` iff p_A >= p0 (Cohen et al. 2019, Theorem 1 with
    p_B = 1 - p_A: R = sigma Phi^-1(p_A)). At radius 0 it is 1/2: a certificate needs p_A > 1/2
    (rsbook.bounds.certified_gap)."""
    sigma = check_sigma(sigma)
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    return float(norm.cdf(radius / sigma))


def _check_p0(p0) -> float:
    if isinstance(p0, bool) or not isinstance(p0, numbers.Real) or not 0.5 <= p0 < 1:
        raise ValueError(f"p0 must lie in [0.5, 1), got {p0!r}")
    return float(p0)


def _check_prior(prior) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in prior)
    except (TypeError, ValueError):
        raise ValueError(f"prior must be a pair (a, b) of numbers > 0, got {prior!r}") from None
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"prior must be a pair (a, b) of numbers > 0, got {prior!r}")
    return a, b


def mixture_log_wealth(k, t, p0, prior=DEFAULT_PRIOR):
    """log M_t: the Beta(a, b)-mixture likelihood ratio of H1: p in (p0, 1] against H0: p = p0 after k hits
    in t draws, the prior truncated to [p0, 1]:

        M_t = [B(k+a, t-k+b) Q(k+a, t-k+b; p0) / (B(a, b) Q(a, b; p0))] / (p0^k (1-p0)^(t-k)),

    Q(.,.; p0) the upper regularized incomplete beta (scipy.special.betaincc). Under every p <= p0, M_t is
    a nonnegative supermartingale with M_0 = 1, so P(sup_t M_t >= 1/alpha) <= alpha (Ville's inequality;
    Robbins 1970; Waudby-Smith & Ramdas 2023, Sec. 3). It increases with k.

    k, t: hit and draw counts (broadcast); p0 in (0, 1). Returns floats (-inf where M_t underflows).
    """
    a, b = _check_prior(prior)
    k = np.asarray(k, dtype=float)
    t = np.asarray(t, dtype=float)
    p0 = np.asarray(p0, dtype=float)
    with np.errstate(divide="ignore"):
        value = (special.betaln(k + a, t - k + b) + np.log(special.betaincc(k + a, t - k + b, p0))
                 - special.betaln(a, b) - np.log(special.betaincc(a, b, p0))
                 - special.xlogy(k, p0) - special.xlog1py(t - k, -p0))
    return value


def _bisect_int(predicate, low, high):
    """Smallest integer m in [low, high] with predicate(m) True (elementwise; predicate monotone: False
    then True); high + 1 where it is False everywhere."""
    low = np.asarray(low, dtype=np.int64).copy()
    high = np.asarray(high, dtype=np.int64) + 1
    while np.any(low < high):
        mid = (low + high) // 2
        ok = predicate(np.minimum(mid, high - 1)) & (mid < high)
        high = np.where((low < high) & ok, mid, high)
        low = np.where((low < high) & ~ok, mid + 1, low)
    return low


def mixture_lower(k, t, alpha, prior=DEFAULT_PRIOR, tol: float = 1e-10) -> float:
    """Lower end of the anytime-valid (1 - alpha) confidence sequence of the truncated mixture test:
    inf {q : M_t(q) < 1/alpha}, M_t(q) = mixture_log_wealth(k, t, q). With probability >= 1 - alpha it is <= p
    at every t simultaneously, hence at any stopping time (Ville's inequality). q -> M_t(q) decreases on
    [0, k/t] (checked numerically over t <= 100,000 in the tests) and M_t(q) < 1 for q >= k/t, so the
    infimum is found by bisection. Returns 0 when no q in (0, 1) is rejected."""
    alpha = check_alpha(alpha)
    k_arr, t_arr = check_counts(k, t)
    k, t = int(k_arr), int(t_arr)
    if k == 0:
        return 0.0
    target = math.log(1.0 / alpha)
    low, high = 0.0, k / t
    if high >= 1.0:
        high = 1.0 - 1e-15
    if not mixture_log_wealth(k, t, max(low, 1e-300), prior) >= target:
        return 0.0
    while high - low > tol:
        mid = 0.5 * (low + high)
        if mixture_log_wealth(k, t, mid, prior) >= target:
            low = mid
        else:
            high = mid
    return low


def beta_binomial_interval(k, t, alpha, prior=DEFAULT_PRIOR, iterations: int = 45):
    """The two-sided Beta-binomial mixture confidence sequence {q : M_t(q) < 1/alpha} with
    M_t(q) = B(k+a, t-k+b) / (B(a, b) q^k (1-q)^(t-k)) (the conjugate mixture of likelihood ratios over
    p1 ~ Beta(a, b) on [0, 1]; Robbins 1970, Waudby-Smith & Ramdas 2023 Sec. 3). With probability >= 1 - alpha
    it contains p at every t simultaneously (Ville). log M_t(q) is convex in q and least at k/t, so the set
    is an interval; its ends are found by bisection (to 2^-iterations). k, t broadcast. Returns (lower, upper), floats for scalar
    input, else arrays."""
    alpha = check_alpha(alpha)
    a, b = _check_prior(prior)
    k_arr, t_arr = check_counts(k, t)
    k_arr, t_arr = np.broadcast_arrays(k_arr.astype(float), t_arr.astype(float))
    target = math.log(1.0 / alpha)
    log_marginal = special.betaln(k_arr + a, t_arr - k_arr + b) - special.betaln(a, b)

    def inside(q):
        return log_marginal - special.xlogy(k_arr, q) - special.xlog1py(t_arr - k_arr, -q) < target

    def end(edge):
        centre = k_arr / t_arr
        edge = np.full(k_arr.shape, edge)
        done = inside(edge)
        lo, hi = centre.copy(), edge.copy()  # lo inside, hi outside
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            ok = inside(mid)
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
        return np.where(done, edge, lo)

    lower, upper = end(0.0), end(1.0)
    if lower.ndim == 0:
        return float(lower), float(upper)
    return lower, upper


@dataclass(frozen=True)
class Plan:
    """The boundaries of a sequential test, fixed before any data.

    looks: (J,) increasing sample counts at which the hits are checked, the last one <= n_max;
    certify_at: (J,) the test certifies at look j iff hits >= certify_at[j] (looks[j] + 1: impossible);
    futile_at: (J,) it stops "not certified" at look j iff hits <= futile_at[j] (-1: never), futility and
        curtailment together; at the last look everything not certified stops;
    level: (J,) the failure probability spent at each look ("union": alpha_j; others: nan);
    p0, alpha, n_max, method, prior, futility: how it was made (see `plan`).
    """

    looks: np.ndarray
    certify_at: np.ndarray
    futile_at: np.ndarray
    level: np.ndarray
    p0: float
    alpha: float
    n_max: int
    method: str
    prior: tuple
    futility: float | None

    @property
    def possible(self) -> bool:
        """False when no look can certify even if every draw hits (curtailment before the first draw)."""
        return bool(np.any(self.certify_at <= self.looks))

    @property
    def first_certifiable_look(self) -> int | None:
        """The fewest draws after which the test can certify at all: the first look t with certify_at <= t (every
        draw a hit), None when no look can. Certification happens only at looks, so a test whose boundary is
        crossed between two looks certifies at the next one."""
        can = np.nonzero(self.certify_at <= self.looks)[0]
        return int(self.looks[can[0]]) if len(can) else None

    def decide(self, j: int, hits):
        """+1 (certified), -1 (stop, not certified) or 0 (go on) at look j with `hits` hits (array-friendly)."""
        hits = np.asarray(hits)
        last = j == len(self.looks) - 1
        return np.where(hits >= self.certify_at[j], 1, np.where(last | (hits <= self.futile_at[j]), -1, 0))

    def p_lower(self, j: int, hits: int) -> float:
        """A (1 - alpha) lower confidence bound on p at look j with `hits` hits, valid at the data-dependent
        stopping look: the mixture confidence sequence ("betting", `mixture_lower`), the Clopper-Pearson
        bound at the look's share alpha_j ("union": valid for every look at once by the union bound), or
        Clopper-Pearson at alpha ("fixed")."""
        t = int(self.looks[j])
        if self.method == "betting":
            return mixture_lower(int(hits), t, self.alpha, self.prior)
        return float(clopper_pearson_lower(int(hits), t, float(self.level[j])))


def _schedule(first: int, growth: float, max_increment: int, n_max: int) -> np.ndarray:
    looks, t = [], first
    while t < n_max:
        looks.append(t)
        t = t + max(1, min(max_increment, math.ceil((growth - 1.0) * t)))
    looks.append(n_max)
    return np.asarray(looks, dtype=np.int64)


def plan(p0, alpha, n_max, method: str = "betting", batch_size: int = 1000, *, futility=DEFAULT_FUTILITY,
         prior=DEFAULT_PRIOR, first: int | None = None, growth: float | None = None) -> Plan:
    """The look schedule and boundaries of a sequential test of H0: p <= p0 at level alpha with at most n_max
    draws (see the module docstring for the methods and their guarantees).

    Schedule: "betting" looks first at `first` draws (default 32), then grows by the factor `growth`
    (default 1.25) with increments capped at batch_size (its looks are free: the mixture is valid at every
    draw); "union" doubles from `first` (default 128) up to n_max, and spends alpha_j = alpha / J at each of
    its J looks (Bonferroni, Horvath et al. 2022); "fixed" looks once, at n_max, with alpha.

    futility: None (no futility rule) or a level beta in (0, 1): stop "not certified" at look j when the
    one-sided (1 - beta) Clopper-Pearson upper bound on p falls below the hit rate the remaining draws would
    need to reach the certification boundary at some later look. Curtailment always applies: stop when no
    later look is reachable even if every remaining draw hits. Neither can create a certificate, so beta
    trades samples against power only; validity does not depend on it.

    Plans are cached (one per distinct set of arguments): certifying many inputs at one radius computes
    the boundaries once. Their arrays are read-only.
    """
    p0 = _check_p0(p0)
    alpha = check_alpha(alpha)
    n_max = check_positive_int(n_max, "n_max")
    batch_size = check_positive_int(batch_size, "batch_size")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if futility is not None:
        futility = check_alpha(futility, name="futility")
    prior = _check_prior(prior)
    if first is not None:
        first = check_positive_int(first, "first")
    if growth is not None and (isinstance(growth, bool) or not isinstance(growth, numbers.Real) or not growth > 1):
        raise ValueError(f"growth must be a number > 1, got {growth!r}")
    return _plan(p0, alpha, n_max, method, batch_size, futility, prior, first,
                 None if growth is None else float(growth))


@lru_cache(maxsize=256)
def _plan(p0, alpha, n_max, method, batch_size, futility, prior, first, growth) -> Plan:
    if method == "fixed":
        looks = np.asarray([n_max], dtype=np.int64)
    elif method == "betting":
        looks = _schedule(min(first or 32, n_max), growth or 1.25, batch_size, n_max)
    else:
        looks = _schedule(min(first or 128, n_max), growth or 2.0, n_max, n_max)
    if method == "betting":
        target = math.log(1.0 / alpha)
        level = np.full(len(looks), np.nan)
        certify_at = _bisect_int(lambda k: mixture_log_wealth(k, looks, p0, prior) >= target,
                                 np.zeros(len(looks)), looks)
    else:
        level = np.full(len(looks), alpha / len(looks))
        certify_at = _bisect_int(lambda k: clopper_pearson_lower(k, looks, float(level[0])) >= p0,
                                 np.zeros(len(looks)), looks)
    futile_at = _futility(looks, certify_at, futility)
    for array in (looks, certify_at, futile_at, level):
        array.setflags(write=False)
    return Plan(looks=looks, certify_at=certify_at, futile_at=futile_at, level=level, p0=p0, alpha=alpha,
                n_max=n_max, method=method, prior=prior, futility=futility)


def _futility(looks: np.ndarray, certify_at: np.ndarray, futility) -> np.ndarray:
    """futile_at[j]: the largest hit count at look j that cannot or should not go on (see `plan`), for all
    looks at once: at look j with k hits, the remaining draws need the hit rate
    min_{j' > j} (certify_at[j'] - k) / (looks[j'] - looks[j]); the run stops when that rate exceeds 1
    (curtailment) or the (1 - futility) upper Clopper-Pearson bound on p (futility). Both conditions
    shrink as k grows, so the stopping set at each look is {k <= futile_at[j]}."""
    count = len(looks)
    ahead = (looks[None, :] - looks[:, None]).astype(float)
    later = ahead > 0

    def go_on(k):
        with np.errstate(divide="ignore", invalid="ignore"):
            rates = np.where(later, (certify_at[None, :] - k[:, None]) / np.where(later, ahead, 1.0), np.inf)
        rate = rates.min(axis=1)
        keep = rate <= 1.0
        if futility is not None:
            upper = np.where(k >= looks, 1.0, beta_dist.ppf(1.0 - futility, k + 1, np.maximum(looks - k, 1)))
            keep &= upper >= rate
        return keep

    first_go = _bisect_int(go_on, np.zeros(count), looks)
    futile = np.minimum(first_go - 1, certify_at - 1)
    futile[-1] = certify_at[-1] - 1
    return futile.astype(np.int64)


def operating_characteristic(test: Plan, p) -> tuple[float, float]:
    """Exactly, for draws that are Bernoulli(p): the probability that `test` certifies and its expected number of
    draws, by forward recursion over its looks on the distribution of the hit count of the runs still going
    (binomial increments, scipy.stats.binom; no simulation). Under p > p0 the first is the test's power (for
    method "fixed", CERTIFY's: P(Bin(n_max, p) >= certify_at)); under p <= p0 it is the false-certification rate,
    which the test's guarantee bounds by alpha. The draws do not include any n0 selection."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a number in [0, 1], got {p!r}")
    p = float(p)
    if not test.possible:
        return 0.0, 0.0
    low, mass = 0, np.ones(1)  # mass[i] = P(still going, hits = low + i)
    drawn, certified, expected = 0, 0.0, 0.0
    for j, look in enumerate(test.looks):
        step = int(look) - drawn
        mass = signal.convolve(mass, binom.pmf(np.arange(step + 1), step, p))
        mass = np.clip(mass, 0.0, None)
        drawn = int(look)
        hits = low + np.arange(len(mass))
        decision = test.decide(j, hits)
        certified += float(mass[decision == 1].sum())
        expected += drawn * float(mass[decision != 0].sum())
        go = np.nonzero(decision == 0)[0]
        if len(go) == 0:
            break
        low, mass = low + int(go[0]), mass[go[0]:go[-1] + 1]
    return certified, expected


def expected_samples_peak(test: Plan, low: float, high: float, *, grid: int = 21,
                          xatol: float = 1e-7) -> tuple[float, float]:
    """The true p in [low, high] at which `test` needs the most draws in expectation, and that expectation
    (operating_characteristic's exact value; n0 not included).

    The expected draws are a smooth function of p (a finite sum of binomial probabilities). `grid` equally spaced
    points bracket the largest value, and a bounded Brent search (scipy.optimize.minimize_scalar) refines the
    maximum inside the bracket to `xatol` in p. The result is the global maximum on [low, high] when the curve
    has a single peak wider than the grid step (near p0 it does: checked against dense grids in the tests).
    Returns (p_peak, expected_draws)."""
    if not (isinstance(low, numbers.Real) and isinstance(high, numbers.Real) and 0.0 <= low < high <= 1.0):
        raise ValueError(f"need 0 <= low < high <= 1, got low={low!r}, high={high!r}")
    grid = check_positive_int(grid, "grid")
    if grid < 3:
        raise ValueError(f"grid must be at least 3, got {grid}")
    points = np.linspace(float(low), float(high), grid)
    values = np.array([operating_characteristic(test, float(p))[1] for p in points])
    best = int(np.argmax(values))
    bracket = (float(points[max(best - 1, 0)]), float(points[min(best + 1, grid - 1)]))
    found = minimize_scalar(lambda p: -operating_characteristic(test, float(p))[1], bounds=bracket,
                            method="bounded", options={"xatol": xatol})
    if -found.fun >= values[best]:
        return float(found.x), float(-found.fun)
    return float(points[best]), float(values[best])


def _check_hits(hits, k: int) -> int:
    if isinstance(hits, bool) or not isinstance(hits, numbers.Integral) and not (
            isinstance(hits, float) and hits.is_integer()) or not 0 <= hits <= k:
        raise ValueError(f"draw({k}) must return an integer count of hits in [0, {k}], got {hits!r}")
    return int(hits)


@dataclass(frozen=True)
class SequentialResult:
    """certified: the test certified the radius; samples: draws this call made (without any n0 selection);
    p_lower: a (1 - alpha) lower confidence bound on p at the stopping time (see Plan.p_lower); hits: top-class
    hits among them; looks: how many times the test looked; decision: 'certified', 'futile' or 'n_max'."""

    certified: bool
    samples: int
    p_lower: float
    hits: int
    looks: int
    decision: str


def certify_radius(draw, radius, sigma, alpha, n_max, batch_size: int = 1000, method: str = "betting", *,
                   futility=DEFAULT_FUTILITY, prior=DEFAULT_PRIOR, first: int | None = None,
                   growth: float | None = None) -> SequentialResult:
    """Is the smoothed classifier robust at `radius`? A sequential test of p_A >= p0 = Phi(radius / sigma)
    (Cohen et al. 2019, Theorem 1 with p_B = 1 - p_A) that stops as soon as it is decided.

    draw(k) must return the number of top-class hits among k fresh noisy samples (independent of everything
    before, in particular of the selection draws that chose c_A). The method chooses its look times
    (`plan`: small first looks, then growing; batch_size caps the betting method's steps) and never draws more
    than n_max in all.

    Guarantee: if P(f(x + eps) = c_A) < p0, the result is certified with probability at most alpha, for every
    method and whatever the futility level (Ville's inequality for "betting", the union bound over the
    looks for "union", Clopper-Pearson for "fixed"). A certified result means g(x + delta) = c_A for every
    ||delta||_2 < radius with that probability (radius 0: c_A is g(x)).
    """
    p0 = max(certify_threshold(radius, sigma), 0.5)
    if p0 >= 1.0:  # Phi(radius / sigma) rounds to 1: no p_A < 1 certifies this radius
        check_alpha(alpha)
        check_positive_int(n_max, "n_max")
        return SequentialResult(certified=False, samples=0, p_lower=0.0, hits=0, looks=0, decision="futile")
    test = plan(p0, alpha, n_max, method, batch_size, futility=futility, prior=prior, first=first, growth=growth)
    if not test.possible:
        return SequentialResult(certified=False, samples=0, p_lower=0.0, hits=0, looks=0, decision="futile")
    hits = drawn = 0
    for j, look in enumerate(test.looks):
        step = int(look) - drawn
        hits += _check_hits(draw(step), step)
        drawn = int(look)
        decision = int(test.decide(j, hits))
        if decision != 0:
            break
    certified = decision == 1
    name = "certified" if certified else ("n_max" if j == len(test.looks) - 1 else "futile")
    return SequentialResult(certified=certified, samples=drawn, p_lower=test.p_lower(j, hits), hits=hits,
                            looks=j + 1, decision=name)


@dataclass(frozen=True)
class RadiusEstimate:
    """radius: sigma Phi^-1(p_lower) when p_lower > 1/2, else 0 (abstain); p_lower, p_upper: the confidence
    sequence at the stop; radius_upper: sigma Phi^-1(p_upper) (inf at p_upper = 1); samples, hits: draws
    made and hits among them; decision: 'tolerance' or 'n_max'."""

    radius: float
    p_lower: float
    p_upper: float
    radius_upper: float
    samples: int
    hits: int
    decision: str


def certify_sequential(draw, sigma, alpha, n_max, tolerance, batch_size: int = 1000, *, prior=DEFAULT_PRIOR,
                       first: int = 32, growth: float = 1.25) -> RadiusEstimate:
    """Radius estimation to a tolerance: draw on a growing schedule (as `plan`'s betting method) and stop when
    the lower confidence bound on the radius is within `tolerance` of its limit sigma Phi^-1(p_A), i.e. when the
    radius interval of the two-sided Beta-binomial confidence sequence (`beta_binomial_interval`) is at most
    `tolerance` wide, or at n_max.

    Guarantee: with probability >= 1 - alpha, at the (data-dependent) stop p_lower <= p_A <= p_upper, so that
    g(x + delta) = c_A for every ||delta||_2 < radius (Cohen et al. 2019, Theorem 1 with p_B = 1 - p_A) and the
    radius is within `tolerance` of sigma Phi^-1(p_A) when decision == 'tolerance' (Ville's inequality: the
    sequence covers at every time simultaneously). An abstention (radius 0) certifies nothing.
    """
    sigma = check_sigma(sigma)
    alpha = check_alpha(alpha)
    n_max = check_positive_int(n_max, "n_max")
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance > 0:
        raise ValueError(f"tolerance must be a number > 0, got {tolerance!r}")
    looks = _schedule(min(check_positive_int(first, "first"), n_max), growth, check_positive_int(batch_size,
                                                                                                   "batch_size"), n_max)
    hits = drawn = 0
    for look in looks:
        step = int(look) - drawn
        hits += _check_hits(draw(step), step)
        drawn = int(look)
        low, high = beta_binomial_interval(hits, drawn, alpha, prior)
        radius = float(sigma * norm.ppf(low)) if low > 0.5 else 0.0
        radius_upper = float(sigma * norm.ppf(high)) if high > 0.5 else 0.0
        if radius_upper - radius <= tolerance:
            return RadiusEstimate(radius, low, high, radius_upper, drawn, hits, "tolerance")
    return RadiusEstimate(radius, low, high, radius_upper, drawn, hits, "n_max")


def randomized_clopper_pearson_lower(k, n, alpha, u):
    """Randomized one-sided (1 - alpha) Clopper-Pearson lower bound (Voracek 2024, "Treatment of statistical
    estimation problems in randomized smoothing"; the inverted UMP randomized binomial test, Lehmann & Romano
    Sec. 3.4): with U ~ Uniform(0, 1) independent of k ~ Bin(n, p), the bound L solves

        P_L(X > k) + U P_L(X = k) = alpha,

    so P(L > p) = alpha exactly for every p in (0, 1), and L >= clopper_pearson_lower(k, n, alpha) (equal at
    U = 1; the ordinary bound at k + 1 at U = 0). L = 0 when k = 0 and U > alpha, and L = 1 when U P_1(X = n) <= alpha (k = n and U <= alpha: an event of probability <= alpha).

    k, n: counts (broadcast), 0 <= k <= n; alpha in (0, 1); u: uniforms in [0, 1] (broadcast).
    Returns a float for scalar input, else an ndarray.
    """
    alpha = check_alpha(alpha)
    k_arr, n_arr = check_counts(k, n)
    u_arr = np.asarray(u, dtype=float)
    if np.any(~np.isfinite(u_arr)) or np.any((u_arr < 0) | (u_arr > 1)):
        raise ValueError(f"u must lie in [0, 1], got {u!r}")
    k_arr, n_arr, u_arr = np.broadcast_arrays(k_arr, n_arr, u_arr)

    def pvalue(q):
        return binom.sf(k_arr, n_arr, q) + u_arr * binom.pmf(k_arr, n_arr, q)

    low = clopper_pearson_lower(np.maximum(k_arr, 0), n_arr, alpha) * np.ones(k_arr.shape)
    high = np.where(k_arr < n_arr, clopper_pearson_lower(np.minimum(k_arr + 1, n_arr), n_arr, alpha), 1.0)
    high = np.maximum(high, low)
    top = pvalue(np.ones(k_arr.shape)) <= alpha  # the whole interval up to 1 is rejected
    for _ in range(60):  # the p-value increases in q: bisection on [CP(k), CP(k + 1)]
        mid = 0.5 * (low + high)
        if np.all((mid <= low) | (mid >= high)):  # every interval is down to adjacent floats
            break
        reject = pvalue(mid) <= alpha
        low = np.where(reject, mid, low)
        high = np.where(reject, high, mid)
    bound = np.where(top, 1.0, low)
    return float(bound) if bound.ndim == 0 else bound


def certify_radii(smooth, dataset, out, *, radii, n0: int, n_max: int, alpha: float, batch_size: int, seed: int = 0,
                  indices=None, method: str = "betting", clock=None, **options):
    """Smooth.certify_radius on examples of `dataset` (a sequence of (x, label)) at each radius in `radii`: one
    sequential decision per (example, radius), resumable, appended to the TSV `out` (rsbook.logs.ResultsTable,
    key 'key' = 'idx:radius'). Each example's selection stream is CERTIFY's (rsbook.streams 'select', idx: the same
    c_A as rsbook.dataset_runs.certify_dataset), and each decision estimates from its own stream ('estimate',
    idx, radius). indices: the examples (default all). Returns the table: idx, label, radius, predict (c_A or
    ABSTAIN), certified, correct (certified and predict == label), samples (n0 included) and seconds."""
    import time

    from rsbook import streams
    from rsbook.logs import ResultsTable

    clock = clock or time.perf_counter
    seed_ = check_seed(seed)
    columns = ("key", "idx", "label", "radius", "predict", "certified", "correct", "samples", "seconds")
    table = ResultsTable(out, columns, key="key")
    chosen = range(len(dataset)) if indices is None else indices
    for idx in chosen:
        todo = [float(r) for r in radii if f"{int(idx)}:{float(r)!r}" not in table.done]
        if not todo:
            continue
        x, label = dataset[idx]
        rows = []
        for radius in todo:
            selection = streams.generator(seed_, "select", int(idx), device=smooth.device)
            estimation = streams.generator(seed_, "estimate", int(idx), f"radius={radius!r}", device=smooth.device)
            start = clock()
            prediction, certified, samples = smooth.certify_radius(x, radius, n0, n_max, alpha, batch_size, selection,
                                                                   method=method, estimate_generator=estimation,
                                                                   **options)
            rows.append({"key": f"{int(idx)}:{radius!r}", "idx": int(idx), "label": int(label), "radius": radius,
                         "predict": int(prediction), "certified": int(certified),
                         "correct": int(certified and prediction == int(label)), "samples": int(samples),
                         "seconds": float(clock() - start)})
        table.append(rows)
    frame = table.read()
    wanted = {f"{int(i)}:{float(r)!r}" for i in chosen for r in radii}
    return frame[frame["key"].isin(wanted)].drop(columns="key").reset_index(drop=True)
