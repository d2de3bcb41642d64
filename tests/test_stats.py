"""Clopper-Pearson, the PREDICT binomial test, and the Appendix D high-probability bound."""

import numpy as np
import pytest
from scipy.stats import binomtest

from rsbook.stats import binomial_pvalue, clopper_pearson_lower, high_probability_accuracy


@pytest.mark.parametrize("k, n, alpha", [(990, 1000, 0.001), (50, 100, 0.05), (1, 7, 0.1), (100000, 100000, 0.001),
                                         (3, 10, 0.25)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n, alpha):
    # one-sided (1 - alpha) lower bound == lower end of the two-sided (1 - 2 alpha) exact interval
    expected = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_clopper_pearson_all_successes_closed_form():
    # k = n: the lower bound solves p^n = alpha (the cap behind Cohen et al. Fig. 5 right).
    assert clopper_pearson_lower(100000, 100000, 0.001) == pytest.approx(0.001 ** (1 / 100000), rel=1e-12)
    assert clopper_pearson_lower(0, 10, 0.01) == 0.0


def test_clopper_pearson_vectorized():
    out = clopper_pearson_lower(np.array([0, 5, 10]), 10, 0.05)
    assert out.shape == (3,) and out[0] == 0.0 and np.all(np.diff(out) > 0)


def test_clopper_pearson_coverage():
    # Statistical: the bound exceeds the true p in at most alpha of the trials (plus 3-sigma slack).
    rng = np.random.default_rng(0)
    p, n, alpha, trials = 0.83, 200, 0.05, 20000
    k = rng.binomial(n, p, size=trials)
    misses = np.mean(clopper_pearson_lower(k, n, alpha) > p)
    assert misses <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan")])
def test_clopper_pearson_bad_alpha(bad):
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_lower(5, 10, bad)


def test_clopper_pearson_bad_counts():
    with pytest.raises(ValueError, match="k must"):
        clopper_pearson_lower(11, 10, 0.1)
    with pytest.raises(ValueError, match="n must"):
        clopper_pearson_lower(0, 0, 0.1)
    with pytest.raises(ValueError, match="k must"):
        clopper_pearson_lower(2.5, 10, 0.1)


def test_binomial_pvalue_matches_scipy():
    assert binomial_pvalue(60, 40) == pytest.approx(binomtest(60, 100, 0.5).pvalue)
    assert binomial_pvalue(10, 0) == pytest.approx(2 * 0.5**10)
    assert binomial_pvalue(0, 0) == 1.0
    assert binomial_pvalue(50, 50) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_b"):
        binomial_pvalue(3, -1)


def test_high_probability_accuracy_closed_form():
    # App. D, Theorem 6 with n = 500, alpha = rho = 0.001.
    a, n, alpha, rho = 0.6, 500, 0.001, 0.001
    expected = a - alpha - np.sqrt(alpha * (1 - alpha) * np.log(1 / rho) / n) - np.log(1 / rho) / (3 * n)
    assert high_probability_accuracy(a, n, alpha, rho) == pytest.approx(expected)
    assert high_probability_accuracy(0.0, n, alpha, rho) == 0.0
    out = high_probability_accuracy(np.array([0.2, 0.9]), 10000, 0.001, 0.01)
    assert out.shape == (2,) and np.all(out < [0.2, 0.9])
    with pytest.raises(ValueError, match="rho"):
        high_probability_accuracy(0.5, 100, 0.001, 1.0)
    with pytest.raises(ValueError, match="n_examples"):
        high_probability_accuracy(0.5, 0, 0.001, 0.01)
    with pytest.raises(ValueError, match="approx_acc"):
        high_probability_accuracy(1.5, 10, 0.001, 0.01)
