"""Certified robustness of top-k predictions under Gaussian smoothing (Jia, Cao, Wang & Gong,
ICLR 2020, "Certified Robustness for Top-k Predictions against Adversarial Perturbations via
Randomized Smoothing"; code: github.com/jjy1994/Certify_Topk).

The smoothed top-k classifier g_k(x) returns the k labels with the largest p_i = P(f(x + eps) = i),
eps ~ N(0, sigma^2 I). For a label l fixed in advance (in the paper's experiments: the true label),
`certify_topk` returns a radius R such that, with probability >= 1 - alpha over the noise it draws,
l is in g_k(x + delta) for every ||delta||_2 < R. Radii are in input units; 0.0 means not certified.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.special import log_ndtr, ndtri

from rsbook._checks import (
    check_alpha,
    check_counts,
    check_positive_int,
    check_probability,
)
from rsbook.analysis import certified_hits
from rsbook.smooth import Smooth
from rsbook.stats import clopper_pearson_lower

__all__ = ["topk_radius", "simultaneous_bounds", "certify_topk", "certified_topk_accuracy"]

_MAX_BISECTIONS = 400  # the bracket halves each time: ~1e-120 of its width, i.e. to float resolution
_REL_TOL = 1e-13


def topk_radius(p_label_lower, p_others_upper, k, sigma):
    """Certified l2 radius of label l for the top-k smoothed classifier (Jia et al. 2020, Thm. 1, eq. 3).

    Hypotheses: P(f(x+eps) = l) >= p_l (= p_label_lower) and P(f(x+eps) = i) <= pbar_i for every
    other label i (p_others_upper), eps ~ N(0, sigma^2 I). Sort the other labels so that
    pbar_{b_1} >= pbar_{b_2} >= ...; for t = 1..k let S_t = {b_k, b_{k-1}, ..., b_{k-t+1}} be the t
    smallest of the k largest upper bounds, and p_{S_t} = min(sum_{j in S_t} pbar_j, 1 - p_l) (the
    minimum is the paper's Sec. 3.2 refinement, valid because the S_t labels share at most 1 - p_l).
    Then l is in g_k(x + delta) for every ||delta||_2 < R, where R is the solution of

        Phi(Phi^-1(p_l) - R/sigma) = min_{t=1..k} Phi(Phi^-1(p_{S_t}) + R/sigma) / t,

    i.e. R = max_t R_t with R_t the root for one t. Why: at x + delta the labels of S_t together have
    probability at most Phi(Phi^-1(p_{S_t}) + ||delta||/sigma) (Neyman-Pearson, as in Cohen et al.
    2019), so one of them has at most 1/t of it, while l keeps at least Phi(Phi^-1(p_l) - ||delta||/sigma).
    The radius is tight (Thm. 2): if p_l + sum_{j<=k} pbar_{b_j} <= 1 and p_l + sum_{i!=l} pbar_i >= 1,
    for every ||delta|| > R some base classifier meeting the hypotheses drops l from g_k(x + delta).
    With k = 1 it is Cohen et al.'s sigma/2 (Phi^-1(p_l) - Phi^-1(pbar_{b_1})), sigma Phi^-1(p_l) when
    pbar_{b_1} = 1 - p_l. For t = 1 the root is in closed form; for t > 1 it is found by bisection to
    float resolution (relative error < 1e-12) and the lower end of the bracket is returned, so the
    inequality holds strictly at the returned R (the paper's conservative binary search, Sec. 3.2).

    p_label_lower: shape (...) in [0, 1]. p_others_upper: shape (..., c - 1), the upper bounds of the
    c - 1 other labels, in [0, 1]. k: integer, 1 <= k <= c - 1. sigma: > 0, broadcast with (...).
    Returns R in the units of sigma: a float for a scalar p_label_lower and 1-D p_others_upper, else an
    ndarray of shape (...). R = 0 where nothing is certifiable (p_l <= p_{S_t}/t for every t, i.e.
    l may already be outside g_k(x)); R = inf where the k largest upper bounds are 0 or p_l = 1.
    """
    pl = check_probability(p_label_lower, "p_label_lower")
    po = check_probability(p_others_upper, "p_others_upper")
    if po.ndim == 0 or po.shape[-1] == 0:
        raise ValueError(
            f"p_others_upper must have a last axis over the other labels (at least one), got shape {po.shape}"
        )
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= po.shape[-1]:
        raise ValueError(f"k must be an integer in [1, {po.shape[-1]}] (the number of other labels), got {k!r}")
    k = int(k)
    try:
        s = np.asarray(sigma, dtype=float)
    except (TypeError, ValueError):
        s = np.asarray(np.nan)
    if isinstance(sigma, bool) or np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    try:
        shape = np.broadcast_shapes(pl.shape, po.shape[:-1], s.shape)
    except ValueError:
        raise ValueError(
            f"p_label_lower {pl.shape}, p_others_upper {po.shape} (last axis: other labels) and sigma "
            f"{s.shape} do not broadcast"
        ) from None
    pl = np.broadcast_to(pl, shape)
    po = np.broadcast_to(po, shape + po.shape[-1:])
    s = np.broadcast_to(s, shape)

    top = -np.sort(-po, axis=-1)[..., :k]  # pbar_{b_1} >= ... >= pbar_{b_k}
    p_s = np.cumsum(top[..., ::-1], axis=-1)  # [..., t - 1]: sum over S_t = {b_k, ..., b_{k-t+1}}
    p_s = np.minimum(p_s, 1.0 - pl[..., None])
    t = np.arange(1, k + 1, dtype=float)
    r = _radius_over_sigma(pl[..., None], p_s, t)  # shape (..., k)
    radius = s * r.max(axis=-1)
    return float(radius) if radius.ndim == 0 else radius


def _radius_over_sigma(pl, p_s, t):
    """Root r >= 0 of h(r) = log Phi(a - r) - log Phi(b + r) + log t, a = Phi^-1(pl), b = Phi^-1(p_s),
    elementwise (h is strictly decreasing); 0 where h(0) <= 0, i.e. pl <= p_s / t."""
    pl, p_s, t = np.broadcast_arrays(pl, p_s, t)
    r = np.zeros(pl.shape)
    certifiable = pl * t > p_s
    unbounded = certifiable & (p_s == 0)  # nothing can outgrow l: Phi(-inf + r) = 0
    r[unbounded] = np.inf
    with np.errstate(divide="ignore"):
        a, b = ndtri(pl), ndtri(p_s)
    closed = certifiable & ~unbounded & (t == 1)
    r[closed] = 0.5 * (a[closed] - b[closed])  # Cohen et al. 2019, eq. 3
    search = certifiable & ~unbounded & (t > 1)
    if np.any(search):
        a, b, t = a[search], b[search], t[search]
        log_t = np.log(t)

        def h(x):
            return log_ndtr(a - x) - log_ndtr(b + x) + log_t

        # h(hi) < 0: with b + hi >= 1 the right side is >= 1/(2t), and a - hi < Phi^-1(1/(2t)).
        lo = np.zeros_like(a)
        hi = np.maximum(-b, a - ndtri(0.5 / t)) + 1.0
        for _ in range(_MAX_BISECTIONS):
            active = hi - lo > _REL_TOL * hi  # converged elements stay put: batching changes nothing
            if not np.any(active):
                break
            mid = 0.5 * (lo + hi)
            above = h(mid) > 0
            lo = np.where(active & above, mid, lo)
            hi = np.where(active & ~above, mid, hi)
        r[search] = lo
    return r


def simultaneous_bounds(counts, alpha):
    """SimuEM (Jia et al. 2020, Sec. 3.2): Clopper-Pearson bounds on all c label probabilities from one
    vector of counts n_i = #{j : f(x + eps_j) = i}, n = sum_i n_i, combined by Bonferroni.

    lower[i] = B(alpha/c; n_i, n - n_i + 1) and upper[i] = B(1 - alpha/c; n_i + 1, n - n_i) are the
    one-sided (1 - alpha/c) Clopper-Pearson bounds (the 1 - 2 alpha/c two-sided "beta" interval of the
    authors' code). Guarantee: for any label l chosen before the counts are drawn, with probability at
    least 1 - alpha, lower[l] <= p_l and upper[i] >= p_i for every i != l, simultaneously (c one-sided
    bounds, each failing with probability <= alpha/c). This is what CERTIFY needs; it does not make all
    2c bounds hold together at 1 - alpha (that would take alpha/(2c) each).

    counts: 1-D integer array of length c >= 2 with a positive sum. alpha: in (0, 1).
    Returns (lower, upper): two float ndarrays of shape (c,) in [0, 1]; lower = 0 where n_i = 0 and
    upper = 1 where n_i = n.
    """
    check_alpha(alpha)
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"counts must be a 1-D array over c >= 2 labels, got shape {arr.shape}")
    if arr.dtype == bool or not np.all(np.isfinite(arr)) or np.any(np.mod(arr, 1) != 0) or np.any(arr < 0):
        raise ValueError(f"counts must hold non-negative integer counts, got {counts!r}")
    if arr.sum() < 1:
        raise ValueError("counts must have a positive sum (n >= 1 samples)")
    k, n = check_counts(arr, arr.sum())
    level = alpha / k.shape[0]
    lower = np.asarray(clopper_pearson_lower(k, n, level), dtype=float)
    upper = 1.0 - np.asarray(clopper_pearson_lower(n - k, n, level), dtype=float)  # CP is symmetric
    return lower, upper


def certify_topk(smooth, x, label, k, n, alpha, batch_size, generator=None):
    """CERTIFY for top-k (Jia et al. 2020, Alg. 2 with SimuEM): the radius within which `label` stays in
    the top-k of the smoothed classifier, or 0.0 (not certified; the paper's ABSTAIN).

    Draws n noisy copies of x with `smooth.sample_counts` (one host transfer), bounds every label
    probability with `simultaneous_bounds(counts, alpha)` and returns
    `topk_radius(lower[label], upper[others], k, smooth.sigma)` (which caps each p_{S_t} by
    1 - lower[label], as the authors do).
    Guarantee (Prop. 2): with probability at least 1 - alpha over the sampling, label is in
    g_k(x + delta) for every ||delta||_2 < the returned radius. `label` must not be chosen from
    these samples (use the true label, or a guess from separate samples).

    smooth: a `rsbook.smooth.Smooth`. x: one example of any shape. label: integer in [0, num_classes).
    k: integer in [1, num_classes), or a sequence of them: then one set of n samples serves every k and a
    list of radii comes back, each with the guarantee above for its k (the bounds are the same event for
    every k, so each k's certificate holds with probability >= 1 - alpha; a table of certified top-k accuracy
    per k needs no more, at 1/len(k) of the samples). n, batch_size: integers >= 1. alpha: in (0, 1).
    generator: optional torch.Generator on the sampling device. Returns a float (or list of floats) in input
    units.
    """
    if not isinstance(smooth, Smooth):
        raise ValueError(f"smooth must be an rsbook.smooth.Smooth, got {type(smooth).__name__}")
    c = smooth.num_classes
    if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < c:
        raise ValueError(f"label must be an integer in [0, {c}), got {label!r}")
    ks = list(k) if isinstance(k, (list, tuple)) else [k]
    for value in ks:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value < c:
            raise ValueError(f"k must be an integer in [1, {c}) (num_classes = {c}), got {value!r}")
    check_positive_int(n, "n")
    check_alpha(alpha)
    check_positive_int(batch_size, "batch_size")
    counts = smooth.sample_counts(x, n, batch_size, generator=generator).cpu().numpy()
    lower, upper = simultaneous_bounds(counts, alpha)
    others = np.delete(upper, int(label))
    radii = [float(topk_radius(lower[int(label)], others, int(value), smooth.sigma)) for value in ks]
    return radii if isinstance(k, (list, tuple)) else radii[0]


def certified_topk_accuracy(radii, radius):
    """Approximate certified top-k accuracy (Jia et al. 2020, Sec. 4): the fraction of test examples
    whose certified radius (from `certify_topk` with the true label) is positive and at least r (the
    library's one rule, rsbook.analysis.certified_hits).

    radii: 1-D array of per-example radii (0 = not certified). radius: a scalar r >= 0 or an array.
    Returns a float for scalar radius, else an ndarray of the shape of radius.
    """
    arr = np.asarray(radii, dtype=float)
    if arr.ndim != 1 or arr.size == 0 or np.any(np.isnan(arr)) or np.any(arr < 0):
        raise ValueError(f"radii must be a non-empty 1-D array of radii >= 0, got {radii!r}")
    r = np.asarray(radius, dtype=float)
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"radius must be finite and >= 0, got {radius!r}")
    out = certified_hits(np.ones(arr.shape, dtype=bool), arr, r.ravel()).mean(axis=1).reshape(r.shape)
    return float(out) if out.ndim == 0 else out
