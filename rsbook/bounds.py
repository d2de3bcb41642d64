"""Certified l2 radii of a Gaussian-smoothed classifier: Cohen et al.'s tight bound and the earlier,
looser bounds of Lecuyer et al. (2019) and Li et al. (2018), as derived in Cohen et al. 2019, App. I.

All functions take p_a (a lower bound on the top-class probability), p_b (an upper bound on the
runner-up probability) and sigma (the noise standard deviation, in input units), broadcast them
with numpy rules, and return radii in input units: a float for scalar input, else an ndarray.
Where p_a <= p_b nothing is certifiable and the radius is 0. No torch here.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm

from rsbook._checks import check_probability

__all__ = ["certified_gap", "cohen_radius", "lecuyer_radius", "li_radius"]

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def _prepare(p_a, p_b, sigma):
    pa = check_probability(p_a, "p_a")
    pb = check_probability(p_b, "p_b")
    s = np.asarray(sigma, dtype=float)
    if s.dtype == bool or np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if np.any(pa + pb > 1 + 1e-12):
        raise ValueError(f"p_a + p_b must be <= 1 (they bound two disjoint classes), got p_a={p_a!r}, p_b={p_b!r}")
    pa, pb, s = np.broadcast_arrays(pa, pb, s)
    return pa.astype(float), pb.astype(float), s.astype(float)


def _finish(radius):
    return float(radius) if radius.ndim == 0 else radius


def certified_gap(p_a_lower) -> float | None:
    """Phi^-1(p_A) when it is positive, else None: the library's one abstention rule.

    With p_B = 1 - p_A, Theorem 1 of Cohen et al. 2019 certifies the radius sigma * Phi^-1(p_A)
    (a ball) or the gap Phi^-1(p_A) in sigma's units (an ellipsoid, Rumezhak 2022, Thm. 3.3.2). A
    radius of 0 certifies nothing, so every CERTIFY of the library (Smooth, anisotropic, FaRS)
    abstains unless p_A > 1/2. The authors' code abstains only when p_A < 1/2 and returns radius 0
    at p_A = 1/2 exactly; certified accuracy at r = 0 (rsbook.analysis) counts only certificates
    with a positive radius, so the two agree on every released log.

    p_a_lower: a lower confidence bound on the top-class probability, in [0, 1].
    """
    p = float(check_probability(p_a_lower, "p_a_lower"))
    return float(norm.ppf(p)) if p > 0.5 else None


def cohen_radius(p_a, p_b, sigma):
    """R = sigma/2 * (Phi^-1(p_a) - Phi^-1(p_b))  (Cohen et al. 2019, Theorem 1, eq. 3).

    g(x + delta) = c_A for every ||delta||_2 < R whenever P(f(x+eps) = c_A) >= p_a >= p_b >=
    max_{c != c_A} P(f(x+eps) = c), eps ~ N(0, sigma^2 I). The bound is tight (Theorem 2).
    With p_b = 1 - p_a this is sigma * Phi^-1(p_a), the radius CERTIFY reports. Infinite for
    p_a = 1 and p_b = 0.
    """
    pa, pb, s = _prepare(p_a, p_b, sigma)
    with np.errstate(invalid="ignore"):
        radius = 0.5 * s * (norm.ppf(pa) - norm.ppf(pb))
    radius = np.where(pa > pb, radius, 0.0)
    return _finish(radius)


def _maximize(objective, lo, hi, grid: int = 65, iterations: int = 64):
    """Maximize objective(t) on [lo, hi] elementwise: bracket the best point of a grid, then
    golden-section search inside the bracket. The bracket shrinks by 0.618 per iteration, so after
    64 iterations it is ~1e-13 of the grid step wide; near a smooth maximum the value error is the
    square of that, far below the 1e-6 relative accuracy the bounds promise.

    objective maps an array t of shape (m, k) to values of shape (m, k), row i for element i.
    Returns the maximum value per element, shape (m,).
    """
    frac = np.linspace(0.0, 1.0, grid)
    t = lo[:, None] + (hi - lo)[:, None] * frac[None, :]
    values = _no_nan(objective(t))
    best = np.argmax(values, axis=1)
    rows = np.arange(len(lo))
    best_value = values[rows, best]
    a = t[rows, np.maximum(best - 1, 0)]
    b = t[rows, np.minimum(best + 1, grid - 1)]
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)
    fc = _evaluate(objective, c)
    fd = _evaluate(objective, d)
    for _ in range(iterations):
        left = fc >= fd  # the maximum lies in [a, d]; otherwise in [c, b]
        a, b = np.where(left, a, c), np.where(left, d, b)
        c, d = (
            np.where(left, b - _GOLDEN * (b - a), d),
            np.where(left, c, a + _GOLDEN * (b - a)),
        )
        probe = _evaluate(objective, np.where(left, c, d))
        fc, fd = np.where(left, probe, fd), np.where(left, fc, probe)
    return np.maximum(best_value, np.maximum(fc, fd))


def _evaluate(objective, t):
    return _no_nan(objective(t[:, None])[:, 0])


def _no_nan(values):
    return np.where(np.isnan(values), -np.inf, values)


def lecuyer_radius(p_a, p_b, sigma):
    """Lecuyer et al. (2019) PixelDP bound, in Cohen et al. 2019's notation (App. I.1):

        R = sup_{0 < eps < min(1, log(p_a/p_b)/2)}  sigma * eps / sqrt(2 log(1.25 (1 + e^eps) / (p_a - e^{2 eps} p_b)))

    The supremum is computed by bounded 1-D optimization (grid bracket + golden section) to better
    than 1e-6 relative accuracy. Never larger than cohen_radius (Figure 5 left); at sigma = 1,
    p_a = 0.99, p_b = 0.01 it is 0.555.
    """
    pa, pb, s = _prepare(p_a, p_b, sigma)
    radius = np.zeros(pa.shape)
    ok = pa > pb
    if np.any(ok):
        a, b = pa[ok][:, None], pb[ok][:, None]
        with np.errstate(divide="ignore"):
            eps_max = np.minimum(1.0, 0.5 * (np.log(a[:, 0]) - np.log(b[:, 0])))

        def objective(eps):
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                gap = a - np.exp(2 * eps) * b
                value = eps / np.sqrt(2 * np.log(1.25 * (1 + np.exp(eps)) / gap))
            return np.where(gap > 0, value, 0.0)

        radius[ok] = s[ok] * _maximize(objective, np.zeros_like(eps_max), eps_max)
    return _finish(radius)


_LOG_ALPHA_RANGE = (-14.0, 10.0)


def li_radius(p_a, p_b, sigma):
    """Li et al. (2018) Renyi-divergence bound, in Cohen et al. 2019's notation (App. I.2):

        R = sup_{alpha > 0, alpha != 1}  sigma * sqrt(-(2/alpha) log(1 - p_a - p_b + 2 M_{1-alpha}))

    where M_s = ((p_a^s + p_b^s)/2)^(1/s) is the power mean (the geometric mean at alpha = 1, the
    continuous extension). The supremum over log(alpha) in [-14, 10] (outside it the objective is
    flat or decays to 0) is computed by bounded 1-D optimization to better than 1e-6 relative
    accuracy. Between lecuyer_radius and cohen_radius; at sigma = 1, p_a = 0.99, p_b = 0.01 it is 1.908.
    """
    pa, pb, s = _prepare(p_a, p_b, sigma)
    radius = np.zeros(pa.shape)
    ok = pa > pb
    if np.any(ok):
        with np.errstate(divide="ignore"):
            log_a, log_b = np.log(pa[ok])[:, None], np.log(pb[ok])[:, None]
        total = (pa[ok] + pb[ok])[:, None]

        def objective(log_alpha):
            alpha = np.exp(log_alpha)
            power = 1.0 - alpha
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                terms = np.stack(np.broadcast_arrays(power * log_a, power * log_b))
                log_mean = (logsumexp(terms, axis=0) - np.log(2.0)) / power
                log_mean = np.where(np.abs(power) < 1e-9, 0.5 * (log_a + log_b), log_mean)
                inner = np.log1p(2.0 * np.exp(log_mean) - total)
                value = np.sqrt(np.maximum(-(2.0 / alpha) * inner, 0.0))
            return value

        lo = np.full(int(ok.sum()), _LOG_ALPHA_RANGE[0])
        hi = np.full(int(ok.sum()), _LOG_ALPHA_RANGE[1])
        radius[ok] = s[ok] * _maximize(objective, lo, hi, grid=97)
    return _finish(radius)
