"""Certified-radius formulas: Cohen et al. 2019 Theorem 1 (eq. 3), App. B, App. I.1 and I.2."""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.stats import norm

from rsbook.bounds import cohen_radius, lecuyer_radius, li_radius


def test_design_sanity_values():
    # DESIGN.md: sigma = 1, p_B = 1 - p_A, p_A = 0.99 -> Cohen 2.326, Lecuyer 0.555, Li 1.908.
    assert cohen_radius(0.99, 0.01, 1.0) == pytest.approx(2.326, abs=5e-4)
    assert lecuyer_radius(0.99, 0.01, 1.0) == pytest.approx(0.555, abs=5e-4)
    assert li_radius(0.99, 0.01, 1.0) == pytest.approx(1.908, abs=5e-4)


def test_cohen_closed_form_and_scaling():
    # eq. 3 with p_B = 1 - p_A reduces to sigma * Phi^-1(p_A); Phi^-1(0.975) = 1.959964.
    assert cohen_radius(0.975, 0.025, 0.5) == pytest.approx(0.5 * 1.959963985, rel=1e-9)
    p = np.array([0.6, 0.8, 0.95])
    np.testing.assert_allclose(cohen_radius(p, 1 - p, 2.0), 2.0 * norm.ppf(p), rtol=1e-12)
    assert cohen_radius(0.7, 0.1, 1.0) == pytest.approx(0.5 * (norm.ppf(0.7) - norm.ppf(0.1)))


@pytest.mark.parametrize("w, b, x, sigma", [
    (np.array([1.0, -2.0]), 0.3, np.array([0.4, -0.2]), 0.25),
    (np.array([3.0, 0.5, -1.0]), -1.0, np.array([1.0, 0.0, 0.2]), 1.0),
    (np.array([-0.2]), 0.05, np.array([-0.7]), 0.5),
])
def test_linear_classifier_is_certified_exactly(w, b, x, sigma):
    # App. B: for f(x) = sign(w.x + b), P(f(x + eps) = sign(w.x + b)) = Phi(|w.x + b| / (sigma ||w||)),
    # and Theorem 1 with exact probabilities certifies exactly the distance to the boundary.
    margin = abs(w @ x + b) / np.linalg.norm(w)
    p_a = norm.cdf(margin / sigma)
    assert cohen_radius(p_a, 1 - p_a, sigma) == pytest.approx(margin, rel=1e-9)


def test_no_radius_where_top_class_not_ahead():
    assert cohen_radius(0.4, 0.4, 1.0) == 0.0
    assert lecuyer_radius(0.3, 0.5, 1.0) == 0.0
    assert li_radius(0.5, 0.5, 1.0) == 0.0
    np.testing.assert_array_equal(cohen_radius([0.2, 0.5], [0.7, 0.5], 1.0), [0.0, 0.0])


def _lecuyer_reference(pa, pb, sigma):
    emax = min(1.0, 0.5 * np.log(pa / pb))

    def f(e):
        gap = pa - np.exp(2 * e) * pb
        return -(e / np.sqrt(2 * np.log(1.25 * (1 + np.exp(e)) / gap))) if gap > 0 else 0.0

    grid = np.linspace(1e-9, emax * (1 - 1e-12), 20001)
    i = int(np.argmin([f(e) for e in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-14})
    return sigma * max(-res.fun, -f(grid[i]))


def _li_reference(pa, pb, sigma):
    def f(log_alpha):
        a = np.exp(log_alpha)
        s = 1 - a
        # power mean through a shifted log-sum-exp so that large alpha does not overflow
        u, v = s * np.log(pa), s * np.log(pb)
        top = max(u, v)
        m = np.exp((top + np.log((np.exp(u - top) + np.exp(v - top)) / 2)) / s)
        inner = 1 - pa - pb + 2 * m
        return -np.sqrt(max(-(2 / a) * np.log(inner), 0.0))

    grid = np.linspace(-14, 10, 24001)
    grid = grid[np.abs(np.exp(grid) - 1) > 1e-6]
    vals = np.array([f(t) for t in grid])
    i = int(np.nanargmin(vals))
    res = minimize_scalar(f, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]),
                          method="bounded", options={"xatol": 1e-12})
    return sigma * max(-res.fun, -vals[i])


@pytest.mark.parametrize("pa, pb", [(0.99, 0.01), (0.6, 0.4), (0.8, 0.1), (0.9, 1e-4), (0.999, 0.001),
                                    (0.55, 0.2), (0.7, 0.3)])
def test_suprema_match_independent_optimizer(pa, pb):
    # The sup over epsilon (App. I.1) and over alpha (App. I.2) to 1e-6 relative accuracy, checked
    # against a dense grid refined by scipy's bounded Brent search.
    assert lecuyer_radius(pa, pb, 0.7) == pytest.approx(_lecuyer_reference(pa, pb, 0.7), rel=1e-6)
    assert li_radius(pa, pb, 0.7) == pytest.approx(_li_reference(pa, pb, 0.7), rel=1e-6)


def test_ordering_of_bounds_figure5_left():
    # Figure 5 (left): Lecuyer <= Li <= Cohen for every p_A, p_B = 1 - p_A.
    p = np.linspace(0.501, 0.99999, 400)
    c, li, le = cohen_radius(p, 1 - p, 1.0), li_radius(p, 1 - p, 1.0), lecuyer_radius(p, 1 - p, 1.0)
    assert np.all(le > 0) and np.all(le < li) and np.all(li < c)
    assert np.all(np.diff(li) > 0) and np.all(np.diff(le) >= 0)


def test_vectorized_equals_scalar_and_broadcasts():
    pa = np.array([[0.7], [0.95]])
    sig = np.array([0.25, 0.5, 1.0])
    out = li_radius(pa, 1 - pa, sig)
    assert out.shape == (2, 3)
    assert out[1, 2] == pytest.approx(li_radius(0.95, 0.05, 1.0), rel=1e-12)
    out = lecuyer_radius(pa, 1 - pa, sig)
    assert out[0, 1] == pytest.approx(lecuyer_radius(0.7, 0.3, 0.5), rel=1e-12)


@pytest.mark.parametrize("fn", [cohen_radius, lecuyer_radius, li_radius])
def test_bad_input_names_the_argument(fn):
    with pytest.raises(ValueError, match="sigma"):
        fn(0.9, 0.1, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        fn(0.9, 0.1, 0.0)
    with pytest.raises(ValueError, match="p_a"):
        fn(1.2, 0.1, 1.0)
    with pytest.raises(ValueError, match="p_b"):
        fn(0.9, float("nan"), 1.0)
    with pytest.raises(ValueError, match="p_a \\+ p_b"):
        fn(0.8, 0.3, 1.0)
