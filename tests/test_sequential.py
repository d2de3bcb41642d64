"""Sequential certification (rsbook.sequential): the false-certification rate stays below alpha whatever the
data-dependent stopping time (statistically, over thousands of runs, and exactly, by recursion over the looks
with scipy.stats.binom), clear cases stop early, and the confidence bounds cover.

Guarantees protected: Ville's inequality for the Beta-mixture test supermartingale (Waudby-Smith & Ramdas
2023, Sec. 3), the union bound over a fixed look schedule (Horvath et al. 2022), Clopper-Pearson (Cohen et al.
2019, Sec. 3.2.2), the exact level of the randomized Clopper-Pearson bound (Voracek 2024), and Theorem 1 of
Cohen et al. (certified at r iff p_A >= Phi(r / sigma)).
"""

import math

import numpy as np
import pytest
import torch
from conftest import Constant, Linear2
from scipy.stats import binom, norm

from rsbook import replay, sequential, streams
from rsbook.sequential import Plan, certify_radius, operating_characteristic, plan
from rsbook.smooth import ABSTAIN, Smooth
from rsbook.stats import clopper_pearson_lower

ALPHA = 0.05
RUNS = 3000


def _bound(rate_alpha, runs):
    """alpha + 3 binomial standard errors: the acceptance line of a coverage check."""
    return rate_alpha + 3 * math.sqrt(rate_alpha * (1 - rate_alpha) / runs)


def _bernoulli_draw(rng, p):
    return lambda k: int(rng.binomial(k, p))


@pytest.mark.parametrize("method", sequential.METHODS)
@pytest.mark.parametrize("futility", [None, sequential.DEFAULT_FUTILITY, 0.3])
def test_false_certification_rate_just_below_the_threshold(method, futility):
    """p_A just below Phi(r / sigma): certify_radius itself, 3,000 runs per method, stopping at data-dependent
    looks; the rate of (false) certificates is at most alpha + 3 standard errors."""
    sigma, radius = 0.5, 0.25
    p0 = norm.cdf(radius / sigma)
    p = p0 - 0.002
    rng = streams.numpy_generator(0, "simulate", "coverage", method, str(futility))
    draw = _bernoulli_draw(rng, p)
    results = [certify_radius(draw, radius, sigma, ALPHA, 2000, batch_size=200, method=method, futility=futility)
               for _ in range(RUNS)]
    rate = np.mean([r.certified for r in results])
    assert rate <= _bound(ALPHA, RUNS), (method, futility, rate)
    stops = {r.samples for r in results}
    if method != "fixed":
        assert len(stops) > 3  # the stopping time really depends on the data
    missed = np.mean([r.p_lower > p for r in results])  # the reported bound covers at the stopping time
    assert missed <= _bound(ALPHA, RUNS)


def test_looking_after_every_single_draw_keeps_the_betting_test_valid():
    """The most data-dependent stopping possible: a look after every draw (any stopping rule on the draws is a
    stopping time of this filtration, so Ville's inequality must cover it). 4,000 runs at p = p0."""
    p0, n_max, runs = 0.7, 1500, 4000
    test = plan(p0, ALPHA, n_max, "betting", 1, first=1, growth=1.000001, futility=None)
    assert np.array_equal(test.looks, np.arange(1, n_max + 1))
    certified, _ = replay.simulate(test, [p0], streams.numpy_generator(1, "simulate", "every-draw"), runs)
    assert certified.mean() <= _bound(ALPHA, runs)
    assert operating_characteristic(test, p0)[0] <= ALPHA


def test_the_coverage_check_catches_an_invalid_test():
    """Clopper-Pearson at the full alpha at every look of a doubling schedule (no union bound) is not valid:
    the same check rejects it, both exactly and over 3,000 simulated runs."""
    p0, n_max = 0.7, 4000
    looks = np.array([50, 100, 200, 400, 800, 1600, 3200, 4000])
    certify_at = np.array([min(k for k in range(t + 1) if clopper_pearson_lower(k, t, ALPHA) >= p0) for t in looks])
    naive = Plan(looks=looks, certify_at=certify_at, futile_at=np.full(len(looks), -1), level=np.full(len(looks), ALPHA),
                 p0=p0, alpha=ALPHA, n_max=n_max, method="union", prior=(1.0, 1.0), futility=None)
    assert operating_characteristic(naive, p0)[0] > _bound(ALPHA, RUNS)
    certified, _ = replay.simulate(naive, [p0 - 0.002], streams.numpy_generator(2, "simulate", "naive"), RUNS)
    assert certified.mean() > _bound(ALPHA, RUNS)


@pytest.mark.parametrize("method", sequential.METHODS)
@pytest.mark.parametrize("p0, alpha, n_max", [(0.6, 0.05, 3000), (0.9, 0.01, 5000), (0.97725, 0.001, 20000)])
def test_exact_false_certification_probability_is_at_most_alpha(method, p0, alpha, n_max):
    """The exact probability of certifying at p = p0 (the worst case of H0: p <= p0), from the distribution of the
    hit count over the looks (scipy.stats.binom), is at most alpha, with futility on and off."""
    for futility in (None, 0.001, 0.3):
        test = plan(p0, alpha, n_max, method, 500, futility=futility)
        assert operating_characteristic(test, p0)[0] <= alpha


def test_exact_operating_characteristic_agrees_with_simulation():
    test = plan(0.8, 0.01, 5000, "betting", 250)
    runs = 20000
    for p in (0.78, 0.82, 0.9):
        exact_certified, exact_samples = operating_characteristic(test, p)
        certified, samples = replay.simulate(test, [p], streams.numpy_generator(3, "simulate", "oc", str(p)), runs)
        assert abs(certified.mean() - exact_certified) <= 4 * math.sqrt(exact_certified * (1 - exact_certified)
                                                                        / runs) + 1e-9
        assert abs(samples.mean() - exact_samples) <= 4 * samples.std() / math.sqrt(runs)


def test_power_of_fixed_n_is_the_binomial_tail():
    """CERTIFY's power at a true p (Cohen et al. 2019, Sec. 3.2.2): it certifies iff CP(k, n, alpha) >= p0, i.e. iff
    P_p0(X >= k) <= alpha (the test Clopper-Pearson inverts), so its power is P_p(X >= k*) with k* the smallest such
    k, both from scipy.stats.binom; operating_characteristic's recursion must give the same."""
    p0, alpha, n = 0.9, 0.01, 2000
    k = np.arange(n + 1)
    k_star = int(k[binom.sf(k - 1, n, p0) <= alpha][0])
    test = plan(p0, alpha, n, "fixed")
    for p in (p0, 0.905, 0.91, 0.92, 0.95):
        certified, samples = operating_characteristic(test, p)
        assert certified == pytest.approx(binom.sf(k_star - 1, n, p), abs=1e-12)
        assert samples == pytest.approx(n)
    assert operating_characteristic(test, p0)[0] <= alpha


@pytest.mark.parametrize("method, futility", [("betting", None), ("union", sequential.DEFAULT_FUTILITY),
                                              ("union", None)])
def test_power_near_the_threshold_agrees_with_simulation(method, futility):
    """Just above p0, where the tests disagree most, the exact probability of certifying (recursion over the looks)
    matches 20,000 simulated runs within 4 standard errors, for the variants the chapter's power table adds."""
    p0, runs = 0.9, 20000
    test = plan(p0, 0.01, 5000, method, 250, futility=futility)
    for p in (0.905, 0.915):
        exact, _ = operating_characteristic(test, p)
        certified, _ = replay.simulate(test, [p], streams.numpy_generator(7, "simulate", "power", method,
                                                                         str(futility), str(p)), runs)
        assert abs(certified.mean() - exact) <= 4 * math.sqrt(exact * (1 - exact) / runs) + 1e-9


def test_sequential_tests_certify_less_often_than_fixed_n_just_above_the_threshold():
    """The price of stopping early (issue 20): at r / sigma = 2 and p_A just above p0 = Phi(2), both sequential tests
    certify less often than fixed n with the same n_max, and far above p0 all certify almost surely."""
    p0 = norm.cdf(2.0)
    power = {m: operating_characteristic(plan(p0, 0.001, 20_000, m, 1000), p0 + 0.006)[0] for m in sequential.METHODS}
    assert power["betting"] < power["fixed"] and power["union"] < power["fixed"]
    assert min(operating_characteristic(plan(p0, 0.001, 20_000, m, 1000), 0.995)[0]
               for m in sequential.METHODS) > 0.99


def test_first_certifiable_look():
    """Certification happens at looks only: with every draw a hit, the betting test certifies exactly at
    first_certifiable_look, the first look whose all-hits wealth reaches 1/alpha (mixture_log_wealth), and at no
    earlier look does all-hits reach it."""
    p0, alpha = norm.cdf(2.0), 0.001
    test = plan(p0, alpha, 100_000, "betting", 1000)
    first = test.first_certifiable_look
    result = certify_radius(lambda k: k, 0.5, 0.25, alpha, 100_000, batch_size=1000)
    assert result.certified and result.samples == first
    target = math.log(1 / alpha)
    earlier = test.looks[test.looks < first]
    assert len(earlier) > 0 and (sequential.mixture_log_wealth(earlier, earlier, p0) < target).all()
    draws = np.arange(1, first + 1)
    crossing = int(draws[sequential.mixture_log_wealth(draws, draws, p0) >= target][0])
    assert crossing < first  # all-hits wealth crosses 1/alpha between two looks; the test certifies at the next
    assert plan(0.9999, 0.001, 100, "betting").first_certifiable_look is None


def test_expected_samples_peak_is_the_maximum_of_the_exact_curve():
    """The bounded search finds the largest expected sample count: at least every value of a dense grid over the
    same interval (each exact, operating_characteristic), at a p within one grid step of the grid's best."""
    p0 = 0.9
    test = plan(p0, 0.01, 3000, "betting", 250)
    low, high = p0 - 0.03, p0 + 0.03
    p_peak, peak = sequential.expected_samples_peak(test, low, high)
    dense = np.linspace(low, high, 241)
    values = np.array([operating_characteristic(test, float(p))[1] for p in dense])
    assert peak >= values.max() - 1e-9 and low <= p_peak <= high
    assert abs(p_peak - dense[values.argmax()]) <= dense[1] - dense[0]
    assert peak == pytest.approx(operating_characteristic(test, p_peak)[1])
    with pytest.raises(ValueError, match="low < high"):
        sequential.expected_samples_peak(test, 0.95, 0.9)


@pytest.mark.parametrize("method", ["betting", "union"])
def test_clear_cases_are_decided_fast(method):
    """p_A = 0.99 at r / sigma = 1 (p0 = 0.841) is certified with at most 1,000 samples on average, at the paper's
    alpha = 0.001 and n_max = 100,000; exactly, and over simulated runs of certify_radius."""
    test = plan(norm.cdf(1.0), 0.001, 100_000, method, 1000)
    certified, samples = operating_characteristic(test, 0.99)
    assert certified > 0.999 and samples <= 1000
    rng = streams.numpy_generator(4, "simulate", "clear", method)
    results = [certify_radius(_bernoulli_draw(rng, 0.99), 1.0, 1.0, 0.001, 100_000, method=method) for _ in range(500)]
    assert all(r.certified for r in results) and np.mean([r.samples for r in results]) <= 1000
    # a p_A far below the threshold is given up early as well
    assert operating_characteristic(test, 0.6)[1] <= 1000


def test_fixed_method_is_certify():
    """method="fixed" is CERTIFY's decision: one look at n_max, certified iff the Clopper-Pearson bound reaches p0."""
    sigma, radius, n, alpha = 0.25, 0.3, 1000, 0.01
    for hits in (900, 950, 990):
        result = certify_radius(lambda k: hits, radius, sigma, alpha, n, method="fixed")
        p_lower = clopper_pearson_lower(hits, n, alpha)
        assert result.samples == n and result.p_lower == pytest.approx(p_lower)
        assert result.certified == (sigma * norm.ppf(p_lower) >= radius)


def test_curtailment_stops_when_the_budget_cannot_reach_the_boundary():
    test = plan(0.9, 0.001, 1000, "betting", 100, futility=None)
    # at every look, the futile counts are exactly those from which all-hits to the end cannot certify
    stops = 0
    for j in range(len(test.looks) - 1):
        k = int(test.futile_at[j])

        def reachable(hits):
            return any(hits + (t - test.looks[j]) >= c for t, c in zip(test.looks[j + 1:], test.certify_at[j + 1:]))

        if k >= 0:
            stops += 1
            assert not reachable(k)
        assert reachable(k + 1) or k + 1 >= test.certify_at[j]
    assert stops > 0
    # a radius no n_max can certify draws nothing
    nothing = certify_radius(lambda k: pytest.fail("must not draw"), 1.0, 0.25, 0.001, 1000)
    assert not nothing.certified and nothing.samples == 0


def test_schedule_and_boundaries():
    test = plan(0.9, 0.01, 10_000, "betting", 500)
    steps = np.diff(test.looks)
    assert test.looks[0] == 32 and test.looks[-1] == 10_000 and steps.max() <= 500 and (steps > 0).all()
    assert not test.looks.flags.writeable
    union = plan(0.9, 0.01, 10_000, "union")
    assert union.looks.tolist() == [128, 256, 512, 1024, 2048, 4096, 8192, 10_000]
    assert union.level.sum() == pytest.approx(0.01)
    # certify_at is the smallest count whose mixture wealth reaches 1/alpha
    k = test.certify_at[5]
    t = test.looks[5]
    assert sequential.mixture_log_wealth(k, t, 0.9) >= math.log(100) > sequential.mixture_log_wealth(k - 1, t, 0.9)


def test_mixture_wealth_matches_numerical_integration():
    """log M_t equals log of the integral of the likelihood ratio against the truncated Beta prior."""
    from scipy import integrate
    from scipy.stats import beta

    p0, k, t, prior = 0.8, 45, 50, (2.0, 1.5)
    ratio = lambda p: (p / p0) ** k * ((1 - p) / (1 - p0)) ** (t - k) * beta.pdf(p, *prior)
    integral = integrate.quad(ratio, p0, 1, epsabs=0, epsrel=1e-10)[0] / beta.sf(p0, *prior)
    assert sequential.mixture_log_wealth(k, t, p0, prior) == pytest.approx(math.log(integral), rel=1e-8)


def test_mixture_lower_is_the_edge_of_the_rejection_set():
    """q -> M_t(q) decreases on [0, k/t] (so bisection finds the infimum of the confidence set) over a grid of t
    up to 100,000, and the bound sits on the edge."""
    for t in (20, 300, 5000, 100_000):
        for frac in (0.3, 0.7, 0.95, 1.0):
            k = round(frac * t)
            q = np.linspace(1e-4, min(k / t, 1 - 1e-9), 400)
            values = sequential.mixture_log_wealth(k, t, q)
            values = values[np.isfinite(values)]
            assert (np.diff(values) <= 1e-9).all()
    low = sequential.mixture_lower(950, 1000, 0.001)
    assert sequential.mixture_log_wealth(950, 1000, low - 1e-6) >= math.log(1000)
    assert sequential.mixture_log_wealth(950, 1000, low + 1e-6) < math.log(1000)


def test_beta_binomial_sequence_covers_at_every_time():
    """The two-sided confidence sequence contains p at all 400 times of a path, in at least 1 - alpha of 3,000
    paths (anytime coverage, not just at a fixed n)."""
    rng = streams.numpy_generator(5, "simulate", "cs")
    p, horizon = 0.83, 400
    hits = np.cumsum(rng.random((RUNS, horizon)) < p, axis=1)
    times = np.broadcast_to(np.arange(1, horizon + 1), hits.shape)
    lower, upper = sequential.beta_binomial_interval(hits, times, ALPHA)
    ever_missed = ((lower > p) | (upper < p)).any(axis=1).mean()
    assert ever_missed <= _bound(ALPHA, RUNS)
    assert (lower <= hits / times).all() and (upper >= hits / times).all()


def test_certify_sequential_stops_at_tolerance_and_covers():
    sigma, p, runs, alpha = 0.5, 0.9, 400, 0.1
    rng = streams.numpy_generator(6, "simulate", "radius")
    results = [sequential.certify_sequential(_bernoulli_draw(rng, p), sigma, alpha, 50_000, 0.1, batch_size=2000)
               for _ in range(runs)]
    assert all(r.decision == "tolerance" and r.radius_upper - r.radius <= 0.1 for r in results)
    missed = np.mean([not (r.p_lower <= p <= r.p_upper) for r in results])
    assert missed <= _bound(alpha, runs)
    limit = sigma * norm.ppf(p)
    assert np.mean([abs(r.radius - limit) <= 0.1 for r in results]) >= 1 - _bound(alpha, runs)
    assert max(r.samples for r in results) < 50_000
    sure = sequential.certify_sequential(lambda k: k, sigma, alpha, 3000, 0.1)
    assert sure.decision == "n_max" and sure.samples == 3000 and sure.radius_upper == math.inf


def test_randomized_clopper_pearson_has_exact_level_and_dominates():
    """P(L > p) = alpha exactly (Voracek 2024), by enumeration over k with scipy.stats.binom and over U on a
    midpoint grid (L is monotone in U, so the grid error is at most 1/m); ordinary Clopper-Pearson is
    conservative at the same n; and L >= Clopper-Pearson for every k and U."""
    n, alpha, m = 30, 0.05, 2000
    u = (np.arange(m) + 0.5) / m
    k = np.arange(n + 1)
    bound = sequential.randomized_clopper_pearson_lower(k[:, None], n, alpha, u[None, :])
    cp = clopper_pearson_lower(k, n, alpha)
    assert (bound >= cp[:, None] - 1e-12).all()
    for p in (0.3, 0.61, 0.9):
        pmf = binom.pmf(k, n, p)
        level = float(pmf @ (bound > p).mean(axis=1))
        assert abs(level - alpha) <= 1.0 / m + 1e-9
        assert float(pmf @ (cp > p)) < alpha - 0.005
    assert sequential.randomized_clopper_pearson_lower(12, n, alpha, 1.0) == pytest.approx(cp[12], abs=1e-9)
    assert sequential.randomized_clopper_pearson_lower(12, n, alpha, 0.0) == pytest.approx(cp[13], abs=1e-9)
    assert sequential.randomized_clopper_pearson_lower(0, n, alpha, 0.5) == 0.0
    assert sequential.randomized_clopper_pearson_lower(n, n, alpha, alpha / 2) == 1.0


def test_smooth_certify_radius_on_a_linear_classifier():
    """Smooth.certify_radius on f(x) = 1[w.x + b > 0], whose p_A = Phi(|w.x + b| / (sigma ||w||)) is known
    (Cohen et al. App. B): clear inputs are certified in few samples, hopeless ones given up early."""
    model = Linear2([1.0, 0.0], 0.0).eval()
    smooth = Smooth(model, 2, 0.5)
    far = torch.tensor([1.5, 0.0])  # p_A = Phi(3) = 0.99865; Cohen's radius 1.5
    selection, estimation = streams.certify_generators(0, 7)
    prediction, certified, samples = smooth.certify_radius(far, 0.5, 100, 100_000, 0.001, 500, generator=selection,
                                                           estimate_generator=estimation)
    assert (prediction, certified) == (1, True) and samples <= 100 + 500
    near = torch.tensor([0.05, 0.0])  # p_A = Phi(0.1) = 0.54: nowhere near radius 0.5
    prediction, certified, samples = smooth.certify_radius(near, 0.5, 100, 100_000, 0.001, 500,
                                                           generator=torch.Generator().manual_seed(1))
    assert (prediction, certified) == (ABSTAIN, False) and samples <= 100 + 500
    selection, estimation = streams.certify_generators(0, 7)
    again = smooth.certify_radius(far, 0.5, 100, 100_000, 0.001, 500, generator=selection,
                                  estimate_generator=estimation)
    selection, estimation = streams.certify_generators(0, 7)
    assert smooth.certify_radius(far, 0.5, 100, 100_000, 0.001, 500, generator=selection,
                                 estimate_generator=estimation) == again  # same streams, same decision
    for method in sequential.METHODS:
        assert smooth.certify_radius(far, 0.5, 50, 20_000, 0.001, 1000, torch.Generator().manual_seed(2),
                                     method=method)[:2] == (1, True)


def test_smooth_certify_radius_counts_every_draw():
    calls = []

    class Counting(Constant):
        def forward(self, batch):
            calls.append(batch.shape[0])
            return super().forward(batch)

    smooth = Smooth(Counting(label=2, classes=4).eval(), 4, 1.0)
    prediction, certified, samples = smooth.certify_radius(torch.zeros(3), 1.0, 64, 10_000, 0.001, 128)
    assert (prediction, certified) == (2, True)
    assert samples == sum(calls) and max(calls) <= 128


@pytest.mark.parametrize("kwargs, name", [
    ({"alpha": 0.0}, "alpha"), ({"n_max": 0}, "n_max"), ({"batch_size": 0}, "batch_size"),
    ({"method": "bayes"}, "method"), ({"futility": 1.5}, "futility"), ({"radius": -1.0}, "radius"),
    ({"sigma": 0.0}, "sigma"), ({"prior": (0.0, 1.0)}, "prior"), ({"growth": 1.0}, "growth"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    arguments = dict(draw=lambda k: k, radius=0.5, sigma=0.5, alpha=0.01, n_max=1000, batch_size=100)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=name):
        certify_radius(**arguments)


def test_a_draw_that_lies_is_refused():
    with pytest.raises(ValueError, match="draw"):
        certify_radius(lambda k: k + 1, 0.5, 0.5, 0.01, 1000)
    with pytest.raises(ValueError, match="u must"):
        sequential.randomized_clopper_pearson_lower(3, 10, 0.05, 1.5)
    with pytest.raises(ValueError, match="tolerance"):
        sequential.certify_sequential(lambda k: k, 0.5, 0.01, 100, 0.0)
    with pytest.raises(ValueError, match="p must"):
        operating_characteristic(plan(0.7, 0.05, 100), 1.5)
