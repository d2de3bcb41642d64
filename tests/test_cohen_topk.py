"""Top-k certification of Jia, Cao, Wang & Gong 2020: Theorem 1 (eq. 3), its tightness (Theorem 2),
SimuEM bounds (Sec. 3.2) and CERTIFY's guarantee (Proposition 2), analytically and statistically."""

import numpy as np
import pytest
import torch
from conftest import Constant  # noqa: E402  (shared base classifiers)
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from rsbook.bounds import cohen_radius
from rsbook.cohen.topk import (
    certified_topk_accuracy,
    certify_topk,
    simultaneous_bounds,
    topk_radius,
)
from rsbook.smooth import Smooth
from rsbook.stats import clopper_pearson_lower


def _gap(p_l, p_others, k, sigma, radius):
    """LHS minus RHS of Theorem 1 at `radius`, with p_{S_t} = min(sum, 1 - p_l) as in Sec. 3.2."""
    top = np.sort(np.asarray(p_others, dtype=float))[::-1][:k]
    rhs = min(
        norm.cdf(norm.ppf(min(top[k - t:].sum(), 1 - p_l)) + radius / sigma) / t for t in range(1, k + 1)
    )
    return norm.cdf(norm.ppf(p_l) - radius / sigma) - rhs


def test_k1_reduces_to_cohen():
    # Jia et al. Thm. 1 with k = 1 is Cohen et al. eq. 3; with pbar_{b_1} = 1 - p_l it is sigma Phi^-1(p_l).
    p = np.array([0.55, 0.7, 0.9, 0.99, 0.999])
    for sigma in (0.25, 1.0):
        np.testing.assert_allclose(topk_radius(p, (1 - p)[:, None], 1, sigma), sigma * norm.ppf(p), rtol=1e-12)
    assert topk_radius(0.99, [0.01], 1, 1.0) == pytest.approx(2.326, abs=5e-4)  # DESIGN.md sanity value
    # with several other labels, k = 1 uses only the largest upper bound
    assert topk_radius(0.7, [0.05, 0.1, 0.02], 1, 0.5) == pytest.approx(cohen_radius(0.7, 0.1, 0.5), rel=1e-12)


def test_hand_checked_multiclass_cases():
    # If the k upper bounds sum to 1 - p_l, the t = k equation is Phi(a - r) = (1 - Phi(a - r)) / k, so
    # r = Phi^-1(p_l) - Phi^-1(1/(k+1)); t = 1 is Cohen's radius against the smallest of the k.
    # p_l = 0.5, pbar = (0.3, 0.2), k = 2: t = 1 gives 0.4208, t = 2 gives Phi^-1(2/3) = 0.4307.
    assert topk_radius(0.5, [0.3, 0.2], 2, 1.0) == pytest.approx(norm.ppf(2 / 3), rel=1e-9)
    assert topk_radius(0.5, [0.3, 0.2], 2, 2.0) == pytest.approx(2 * 0.4307273, rel=1e-6)
    # p_l = 0.6, pbar = (0.35, 0.05), k = 2: t = 1 wins, sigma/2 (Phi^-1(0.6) - Phi^-1(0.05)) = 0.9491.
    assert topk_radius(0.6, [0.35, 0.05], 2, 1.0) == pytest.approx(0.5 * (norm.ppf(0.6) - norm.ppf(0.05)), rel=1e-12)
    assert topk_radius(0.6, [0.35, 0.05], 2, 1.0) == pytest.approx(0.9491004, rel=1e-6)
    # k = 3, four labels, p = (0.4 | 0.3, 0.2, 0.1): t = 3 gives Phi^-1(0.4) - Phi^-1(1/4) = 0.4211, but
    # t = 1 (l against the 0.1 label alone) gives more: (Phi^-1(0.4) - Phi^-1(0.1)) / 2 = 0.5141.
    assert topk_radius(0.4, [0.2, 0.1, 0.3], 3, 1.0) == pytest.approx(0.5 * (norm.ppf(0.4) - norm.ppf(0.1)), rel=1e-12)
    assert _gap(0.4, [0.3, 0.2, 0.1], 3, 1.0, norm.ppf(0.4) - norm.ppf(0.25)) > 0
    # p = (0.5 | 0.25, 0.25), k = 2: t = 2 gives Phi^-1(2/3) = 0.4307, clearly above t = 1's 0.3372.
    assert topk_radius(0.5, [0.25, 0.25], 2, 1.0) == pytest.approx(norm.ppf(2 / 3), rel=1e-9)
    assert topk_radius(0.5, [0.25, 0.25], 1, 1.0) == pytest.approx(0.5 * norm.ppf(0.75), rel=1e-12)
    # not certifiable: l is not in the top-2 of (0.2 | 0.4, 0.3, 0.1)
    assert topk_radius(0.2, [0.4, 0.3, 0.1], 2, 1.0) == 0.0
    # the label may trail the others and still be certified in the top-3
    assert topk_radius(0.2, [0.4, 0.3, 0.1], 3, 1.0) > 0.0


@pytest.mark.parametrize("p_l, p_others, k, sigma", [
    (0.5, [0.3, 0.2], 2, 1.0),
    (0.3, [0.25, 0.2, 0.15, 0.1], 3, 0.5),
    (0.35, [0.2, 0.2, 0.1, 0.05, 0.05, 0.05], 5, 0.25),
    (0.9, [0.03, 0.03, 0.02, 0.01, 0.01], 4, 1.0),
    (0.05, [0.3, 0.2, 0.02, 0.01, 0.001], 3, 1.0),
])
def test_radius_is_the_root_of_theorem_1(p_l, p_others, k, sigma):
    # eq. 3 holds strictly below the computed R and fails just above it: R is the exact root.
    radius = topk_radius(p_l, p_others, k, sigma)
    assert radius > 0
    assert _gap(p_l, p_others, k, sigma, radius * (1 - 1e-8)) > 0
    assert _gap(p_l, p_others, k, sigma, radius) >= -1e-15
    assert _gap(p_l, p_others, k, sigma, radius * (1 + 1e-8)) < 0


def test_monotone_in_k_and_in_the_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.dirichlet(np.full(7, 0.6))
        p_l, others = p[0], p[1:]
        radii = [topk_radius(p_l, others, k, 0.5) for k in range(1, 7)]
        assert np.all(np.diff(radii) >= -1e-12)  # a larger k never shrinks the radius
        assert topk_radius(min(p_l + 0.05, 1.0), others, 3, 0.5) >= radii[2]  # a larger p_l grows it
        assert topk_radius(p_l, 0.9 * others, 3, 0.5) >= radii[2]  # smaller upper bounds grow it
    grid = np.linspace(0.2, 0.95, 40)
    assert np.all(np.diff(topk_radius(grid, [0.3, 0.2, 0.1, 0.05], 2, 1.0)) > 0)


def test_vectorised_matches_scalar_and_edge_values():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=50)
    batch = topk_radius(p[:, 0], p[:, 1:], 2, 0.25)
    assert batch.shape == (50,)
    np.testing.assert_array_equal(batch, [topk_radius(q[0], q[1:], 2, 0.25) for q in p])
    sigmas = np.linspace(0.1, 1.0, 50)
    np.testing.assert_allclose(topk_radius(p[:, 0], p[:, 1:], 2, sigmas), batch / 0.25 * sigmas, rtol=1e-12)
    assert topk_radius(1.0, [0.0, 0.0], 1, 1.0) == np.inf
    assert topk_radius(0.3, [0.0, 0.0, 0.7], 2, 1.0) == np.inf  # the runner-up aside, nothing can outgrow l
    assert topk_radius(0.0, [0.5, 0.5], 1, 1.0) == 0.0


def _interval_classifier(thresholds):
    """f(z) = the index of the interval of z[0] among the sorted thresholds (len + 1 classes), so that
    P(f(x + eps) = c) = Phi((tau_{c+1} - x)/sigma) - Phi((tau_c - x)/sigma) in closed form."""
    tau = torch.as_tensor(thresholds, dtype=torch.float64)
    classes = torch.arange(len(tau) + 1)

    def f(batch):
        labels = (batch[:, :1].to(torch.float64) >= tau).sum(dim=1, keepdim=True)
        return (labels == classes).to(torch.float32)  # one-hot logits

    return f


def _interval_probs(x, thresholds, sigma):
    cdf = norm.cdf((np.asarray(thresholds)[None, :] - np.asarray(x, dtype=float)[:, None]) / sigma)
    return np.diff(np.hstack([np.zeros((len(cdf), 1)), cdf, np.ones((len(cdf), 1))]), axis=1)


def _true_topk_radius(x, thresholds, label, k, sigma, reach=5.0):
    """The exact l2 radius within which `label` stays in the top-k of the smoothed 1-D classifier:
    scan x + delta for delta in [-reach, reach] on a fine grid, then bisect on each side."""

    def out(shift):
        p = _interval_probs(x + shift, thresholds, sigma)
        return (np.delete(p, label, axis=1) >= p[:, [label]]).sum(axis=1) >= k

    radius = np.inf
    grid = np.linspace(0.0, reach, 50001)
    for sign in (1.0, -1.0):
        bad = np.flatnonzero(out(sign * grid))
        if bad.size:
            lo, hi = grid[bad[0] - 1], grid[bad[0]]
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if out(np.array([sign * mid]))[0] else (mid, hi)
            radius = min(radius, hi)
    return radius


# Label 0 left of tau_1, label 1 in [tau_1, tau_2), label 2 right of tau_2, with x = 0. Shifting x right,
# p_0 falls to 1/3 exactly when p_1 = p_2 = 1/3 (tau_2 - tau_1 = 2 sigma Phi^-1(2/3)): there label 0
# leaves the top-2, at the radius eq. 3 gives with the exact probabilities (Thm. 2's worst case).
SIGMA, MARGIN = 0.5, 1.0
TAU = [SIGMA * MARGIN, SIGMA * MARGIN + 2 * SIGMA * norm.ppf(2 / 3)]
TRUE_TOP2 = SIGMA * (MARGIN - norm.ppf(1 / 3))


def test_theorem_is_tight_for_the_interval_classifier():
    p = _interval_probs([0.0], TAU, SIGMA)[0]
    assert _true_topk_radius(0.0, TAU, 0, 2, SIGMA) == pytest.approx(TRUE_TOP2, abs=1e-9)
    assert topk_radius(p[0], p[1:], 2, SIGMA) == pytest.approx(TRUE_TOP2, rel=1e-9)
    # and it is a valid, here also exact, bound for k = 1 (label 2 is a half-space: Cohen's tight case)
    assert topk_radius(p[0], p[1:], 1, SIGMA) <= _true_topk_radius(0.0, TAU, 0, 1, SIGMA) + 1e-9


def test_certify_topk_is_sound_and_not_trivial():
    # Proposition 2: the certified radius exceeds the true top-2 radius with probability <= alpha.
    # Checked over 1,500 independent CERTIFY calls on the tight instance above.
    alpha, trials, n = 0.05, 1500, 1000
    smooth = Smooth(_interval_classifier(TAU), num_classes=3, sigma=SIGMA)
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(1)
    radii = np.array([certify_topk(smooth, x, 0, 2, n, alpha, n, generator=gen) for _ in range(trials)])
    too_large = np.mean(radii > TRUE_TOP2)
    assert too_large <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)
    # informative: every call certifies, and on average within ~15% of the true radius at n = 1000
    assert np.all(radii > 0)
    assert 0.85 * TRUE_TOP2 < radii.mean() < TRUE_TOP2


def test_certify_topk_constant_classifier_closed_form():
    # All n samples hit label 2 of 4: SimuEM gives lower = (alpha/4)^(1/n) and upper = 1 - lower for the
    # others. k = 1: sigma Phi^-1(lower) (Cohen's CERTIFY at alpha/4); k = 2: sigma (Phi^-1(lower) - Phi^-1(1/3)).
    smooth = Smooth(Constant().eval(), num_classes=4, sigma=0.25)
    lower = (0.001 / 4) ** (1 / 10000)
    r1 = certify_topk(smooth, torch.zeros(3, 5, 5), 2, 1, 10000, 0.001, 4096)
    r2 = certify_topk(smooth, torch.zeros(3, 5, 5), 2, 2, 10000, 0.001, 4096)
    assert r1 == pytest.approx(0.25 * norm.ppf(lower), rel=1e-9)
    assert r2 == pytest.approx(0.25 * (norm.ppf(lower) - norm.ppf(1 / 3)), rel=1e-9)
    assert certify_topk(smooth, torch.zeros(3, 5, 5), 0, 3, 10000, 0.001, 4096) == 0.0  # label never seen
    # several k from one set of samples: each k's radius is the one its own call gives on the same draws
    assert certify_topk(smooth, torch.zeros(3, 5, 5), 2, [1, 2], 10000, 0.001, 4096) == [r1, r2]



def test_simultaneous_bounds_match_authors_and_cover():
    counts = np.array([6200, 2500, 900, 300, 100, 0])
    lower, upper = simultaneous_bounds(counts, 0.001)
    # one-sided (1 - alpha/c) Clopper-Pearson, i.e. the two-sided 1 - 2 alpha/c "beta" interval
    ref_lo, ref_hi = proportion_confint(counts, counts.sum(), alpha=2 * 0.001 / 6, method="beta")
    np.testing.assert_allclose(lower, np.nan_to_num(ref_lo), rtol=1e-12, atol=0)
    np.testing.assert_allclose(upper, ref_hi, rtol=1e-12)
    assert lower[0] == pytest.approx(clopper_pearson_lower(6200, 10000, 0.001 / 6), rel=1e-12)
    assert lower[-1] == 0.0 and upper[-1] == pytest.approx(1 - (0.001 / 6) ** (1 / 10000), rel=1e-9)
    # coverage: for a fixed l, lower[l] <= p_l and upper[i] >= p_i for all i != l fail together <= alpha
    rng = np.random.default_rng(3)
    p, alpha, trials = np.array([0.5, 0.3, 0.15, 0.05]), 0.2, 2000
    fails = 0
    for draw in rng.multinomial(200, p, size=trials):
        lo, hi = simultaneous_bounds(draw, alpha)
        fails += lo[0] > p[0] or np.any(hi[1:] < p[1:])
    assert fails / trials <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


def test_certified_topk_accuracy():
    radii = np.array([0.0, 0.1, 0.5, 0.5, 1.2])
    assert certified_topk_accuracy(radii, 0.0) == pytest.approx(0.8)  # radius 0 is "not certified"
    np.testing.assert_allclose(certified_topk_accuracy(radii, [0.0, 0.5, 1.0, 2.0]), [0.8, 0.6, 0.2, 0.0])


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="p_label_lower"):
        topk_radius(1.2, [0.1], 1, 1.0)
    with pytest.raises(ValueError, match="p_others_upper"):
        topk_radius(0.6, [-0.1, 0.2], 1, 1.0)
    with pytest.raises(ValueError, match="p_others_upper"):
        topk_radius(0.6, 0.2, 1, 1.0)
    with pytest.raises(ValueError, match="k must"):
        topk_radius(0.6, [0.2, 0.1], 3, 1.0)
    with pytest.raises(ValueError, match="k must"):
        topk_radius(0.6, [0.2, 0.1], 0, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        topk_radius(0.6, [0.2, 0.1], 1, 0.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        topk_radius([0.6, 0.5, 0.4], [[0.2, 0.1], [0.3, 0.1]], 1, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        simultaneous_bounds([5, 5], 1.5)
    with pytest.raises(ValueError, match="counts"):
        simultaneous_bounds([5, -1], 0.01)
    with pytest.raises(ValueError, match="counts"):
        simultaneous_bounds([0, 0], 0.01)
    with pytest.raises(ValueError, match="counts"):
        simultaneous_bounds([10], 0.01)
    smooth = Smooth(_interval_classifier(TAU), num_classes=3, sigma=SIGMA)
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="smooth"):
        certify_topk(object(), x, 0, 1, 100, 0.01, 10)
    for label in (3, -1, 1.0, True):
        with pytest.raises(ValueError, match="label"):
            certify_topk(smooth, x, label, 1, 100, 0.01, 10)
    for k in (0, 3, 1.5):
        with pytest.raises(ValueError, match="k must"):
            certify_topk(smooth, x, 0, k, 100, 0.01, 10)
    with pytest.raises(ValueError, match="n must"):
        certify_topk(smooth, x, 0, 1, 0, 0.01, 10)
    with pytest.raises(ValueError, match="alpha"):
        certify_topk(smooth, x, 0, 1, 100, 0.0, 10)
    with pytest.raises(ValueError, match="batch_size"):
        certify_topk(smooth, x, 0, 1, 100, 0.01, 0)
    with pytest.raises(ValueError, match="x must be finite"):
        certify_topk(smooth, torch.tensor([float("nan")]), 0, 1, 100, 0.01, 10)
    with pytest.raises(ValueError, match="radii"):
        certified_topk_accuracy([0.5, -1.0], 0.1)
