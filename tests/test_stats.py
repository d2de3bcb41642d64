"""Clopper-Pearson, the PREDICT binomial test, and the Appendix D high-probability bound."""

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from rsbook.stats import (
    binomial_pvalue,
    clopper_pearson_lower,
    false_certification_quantile,
    high_probability_accuracy,
)


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


# Cohen et al. 2019, App. D, Thm. 6: the high-probability bound must hold with probability >= 1 - rho.
# The worst case is computed exactly from the binomial distribution, never by retyping the formula:
# of n examples a fraction a is truly certified (and observed so: the largest approximate accuracy),
# each of the other n - m is falsely certified independently with probability alpha, so the observed
# approximate accuracy is (m + X) / n with X ~ Bin(n - m, alpha). A violation is bound > a.
HP_GRID = [(n, alpha, rho) for n in (100, 500, 10_000, 100_000) for alpha in (0.001, 0.01, 0.1)
           for rho in (0.001, 0.01, 0.05)]
HP_METHODS = ("bernstein", "exact")


def violation_probability(n, alpha, rho, method, true_acc=0.0):
    """Exact P(bound > true accuracy) in the worst case above (sum of binomial pmfs)."""
    m = round(true_acc * n)
    x = np.arange(n - m + 1)
    bound = high_probability_accuracy((m + x) / n, n, alpha, rho, method=method)
    return float(binom.pmf(x, n - m, alpha)[bound > m / n + 1e-12].sum())


@pytest.mark.parametrize("method", HP_METHODS)
@pytest.mark.parametrize("n, alpha, rho", HP_GRID)
def test_high_probability_accuracy_holds_with_probability_one_minus_rho(n, alpha, rho, method):
    # App. D, Thm. 6, worst case (nothing truly certified): the bound exceeds 0 with probability <= rho.
    # (The bound without the factor 2 of Bernstein's inequality fails this, e.g. 4.0e-3 at
    # n = 100,000, alpha = 0.01, rho = 0.001 and 3.6e-3 at n = 10,000, alpha = 0.1, rho = 0.001.)
    assert violation_probability(n, alpha, rho, method) <= rho


@pytest.mark.parametrize("method", HP_METHODS)
@pytest.mark.parametrize("n, alpha, rho", [(100_000, 0.01, 0.001), (10_000, 0.1, 0.001), (500, 0.1, 0.05),
                                           (10_000, 0.01, 0.01)])
@pytest.mark.parametrize("true_acc", [0.3, 0.7, 0.95])
def test_high_probability_accuracy_holds_at_any_true_accuracy(n, alpha, rho, method, true_acc):
    # App. D, Thm. 6 with a fraction true_acc truly certified: false certifications among the others.
    assert violation_probability(n, alpha, rho, method, true_acc) <= rho


@pytest.mark.parametrize("n, alpha, rho", HP_GRID)
def test_exact_high_probability_accuracy_is_tighter(n, alpha, rho):
    # The exact binomial quantile never exceeds the Bernstein deviation (App. D, Thm. 6), so the
    # exact form is >= the Bernstein form everywhere, and > at some accuracy for large n.
    acc = np.linspace(0, 1, 201)
    exact = high_probability_accuracy(acc, n, alpha, rho, method="exact")
    bernstein = high_probability_accuracy(acc, n, alpha, rho, method="bernstein")
    assert np.all(exact >= bernstein) and np.all(exact <= acc)
    if n >= 10_000:
        assert np.any(exact > bernstein)


@pytest.mark.parametrize("n, alpha, rho", [(100_000, 0.01, 0.001), (10_000, 0.1, 0.001), (100, 0.001, 0.05),
                                           (7, 0.3, 0.2)])
def test_false_certification_quantile_is_the_smallest_valid_one(n, alpha, rho):
    # P(Bin(n, alpha) > q) <= rho, and q - 1 would not do (the quantile behind the exact form).
    q = false_certification_quantile(n, alpha, rho)
    assert binom.sf(q, n, alpha) <= rho
    assert q == 0 or binom.sf(q - 1, n, alpha) > rho


def test_high_probability_accuracy_shapes_and_arguments():
    assert high_probability_accuracy(0.0, 500, 0.001, 0.001) == 0.0
    assert high_probability_accuracy(0.0, 500, 0.001, 0.001, method="exact") == 0.0
    for method in HP_METHODS:
        out = high_probability_accuracy(np.array([0.2, 0.9]), 10000, 0.001, 0.01, method=method)
        assert out.shape == (2,) and np.all(out < [0.2, 0.9])
    with pytest.raises(ValueError, match="rho"):
        high_probability_accuracy(0.5, 100, 0.001, 1.0)
    with pytest.raises(ValueError, match="n_examples"):
        high_probability_accuracy(0.5, 0, 0.001, 0.01)
    with pytest.raises(ValueError, match="approx_acc"):
        high_probability_accuracy(1.5, 10, 0.001, 0.01)
    with pytest.raises(ValueError, match="method"):
        high_probability_accuracy(0.5, 10, 0.001, 0.01, method="hoeffding")
    with pytest.raises(ValueError, match="alpha"):
        false_certification_quantile(10, 0.0, 0.01)


def test_clopper_pearson_interval_covers_at_its_level_exactly():
    """Two-sided Clopper-Pearson (issue 18, the paper-sample profile's tolerance): for every p on a grid the
    exact probability (scipy.stats.binom) that the interval misses p is at most alpha."""
    from scipy.stats import binom

    from rsbook.stats import clopper_pearson_interval

    n, alpha = 60, 0.05
    k = np.arange(n + 1)
    lower, upper = clopper_pearson_interval(k, n, alpha)
    assert lower[0] == 0.0 and upper[-1] == 1.0 and np.all(lower <= k / n) and np.all(k / n <= upper)
    for p in np.linspace(0.001, 0.999, 199):
        miss = binom.pmf(k, n, p)[(lower > p) | (upper < p)].sum()
        assert miss <= alpha + 1e-12
