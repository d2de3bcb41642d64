"""Confidence bounds and tests behind CERTIFY and PREDICT (Cohen, Rosenfeld & Kolter 2019).

numpy/scipy/statsmodels only; no torch. Every function validates its arguments and raises
`ValueError` naming the argument that is wrong.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom, binomtest
from statsmodels.stats.proportion import proportion_confint

from rsbook._checks import check_alpha, check_counts, check_positive_int

__all__ = [
    "clopper_pearson_lower",
    "clopper_pearson_interval",
    "binomial_pvalue",
    "high_probability_accuracy",
    "false_certification_quantile",
    "HIGH_PROBABILITY_METHODS",
]


def clopper_pearson_lower(k, n, alpha):
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    With probability at least 1 - alpha over k ~ Bin(n, p), the returned value is <= p
    (Clopper & Pearson 1934; the LowerConfBound of Cohen et al. 2019, Sec. 3.2.2 and App. C).
    It is the lower end of the two-sided (1 - 2 alpha) "beta" interval, as in the authors' code.

    k, n: counts (scalars or broadcastable integer arrays), 0 <= k <= n, n >= 1.
    alpha: failure probability in (0, 1).
    Returns a float (scalar input) or an ndarray of floats in [0, 1]; 0 where k = 0.
    """
    check_alpha(alpha)
    k_arr, n_arr = check_counts(k, n)
    lower, _ = proportion_confint(k_arr, n_arr, alpha=2 * alpha, method="beta")
    lower = np.where(k_arr == 0, 0.0, np.nan_to_num(np.asarray(lower, dtype=float), nan=0.0))
    return float(lower) if np.ndim(lower) == 0 else lower


def clopper_pearson_interval(k, n, alpha):
    """Two-sided (1 - alpha) Clopper-Pearson interval (lower, upper) on a binomial proportion: with probability at
    least 1 - alpha over k ~ Bin(n, p) it contains p (Clopper & Pearson 1934; statsmodels' "beta" method).
    Each end is the one-sided bound at alpha / 2; lower = 0 at k = 0 and upper = 1 at k = n. k, n broadcast."""
    check_alpha(alpha)
    k_arr, n_arr = check_counts(k, n)
    lower, upper = proportion_confint(k_arr, n_arr, alpha=alpha, method="beta")
    lower = np.where(k_arr == 0, 0.0, np.nan_to_num(np.asarray(lower, dtype=float), nan=0.0))
    upper = np.where(k_arr == n_arr, 1.0, np.nan_to_num(np.asarray(upper, dtype=float), nan=1.0))
    return (float(lower), float(upper)) if np.ndim(lower) == 0 else (lower, upper)


def binomial_pvalue(n_a, n_b):
    """Two-sided p-value of n_a ~ Bin(n_a + n_b, 1/2) (the BinomPValue of PREDICT, Cohen et al. Sec. 3.2.1).

    PREDICT returns the top class only when this p-value is <= alpha (Hung & Fithian 2019), so it
    returns a class other than g(x) with probability at most alpha (Cohen et al., Proposition 1).
    n_a, n_b: non-negative integer counts of the top two classes. Returns a float in [0, 1];
    1.0 when n_a + n_b = 0 (nothing observed, nothing can be rejected).
    """
    for name, value in (("n_a", n_a), ("n_b", n_b)):
        if isinstance(value, bool) or not float(value).is_integer() or value < 0:
            raise ValueError(f"{name} must be a non-negative integer count, got {value!r}")
    n_a, n_b = int(n_a), int(n_b)
    if n_a + n_b == 0:
        return 1.0
    return float(binomtest(n_a, n_a + n_b, p=0.5, alternative="two-sided").pvalue)


HIGH_PROBABILITY_METHODS = ("bernstein", "exact")


def false_certification_quantile(n_examples, alpha, rho) -> int:
    """The smallest integer q with P(X > q) <= rho for X ~ Bin(n_examples, alpha).

    X dominates the number of false certifications among n_examples CERTIFY runs with failure
    rate alpha (Cohen et al. 2019, App. D: each wrong answer happens independently with probability
    at most alpha), so at most q of them are false with probability at least 1 - rho.
    `scipy.stats.binom.ppf(1 - rho)` is the smallest q with CDF(q) >= 1 - rho, i.e. with
    P(X > q) = 1 - CDF(q) <= rho; q is raised by one where the computed survival function still
    exceeds rho (floating-point rounding near the boundary), so the guarantee holds as computed.
    """
    alpha = check_alpha(alpha)
    rho = check_alpha(rho, name="rho")
    n_examples = check_positive_int(n_examples, "n_examples")
    q = int(binom.ppf(1.0 - rho, n_examples, alpha))
    while q < n_examples and binom.sf(q, n_examples, alpha) > rho:
        q += 1
    return q


def high_probability_accuracy(approx_acc, n_examples, alpha, rho, method: str = "bernstein"):
    """Lower bound on the true certified accuracy that holds with probability >= 1 - rho.

    Cohen et al. 2019, Appendix D, Theorem 6: CERTIFY ran with failure rate alpha on each of
    n_examples test points and certified a fraction approx_acc of them correctly at radius r. Each
    of the examples that are not truly certified is falsely certified independently with
    probability at most alpha, so the number of false certifications F is stochastically dominated
    by Binomial(n_examples, alpha) and approx_acc <= true accuracy + F / n_examples. Then with
    probability at least 1 - rho over the randomness in CERTIFY the certified accuracy at r is at least

    - method="bernstein" (Theorem 6, from Bernstein's inequality, Blanchard 2007):
      approx_acc - alpha - sqrt(2 alpha (1 - alpha) log(1/rho) / n) - log(1/rho) / (3 n);
    - method="exact" (no inequality): approx_acc - q / n with q = false_certification_quantile,
      the smallest q with P(Bin(n, alpha) > q) <= rho. Never below the Bernstein form.

    An earlier version of this function dropped the factor 2 under the square root. That is not
    Bernstein's inequality and the bound then failed more often than rho: with no example truly
    certified, the chance it exceeded 0 was 4.0e-3 at n = 100,000, alpha = 0.01, rho = 0.001.

    approx_acc: scalar or array in [0, 1]. n_examples: int >= 1. alpha, rho: in (0, 1).
    method: "bernstein" or "exact". Returns the same shape as approx_acc, clipped below at 0 (a
    negative lower bound on an accuracy says nothing more than 0 does).
    """
    check_alpha(alpha)
    check_alpha(rho, name="rho")
    check_positive_int(n_examples, "n_examples")
    if method not in HIGH_PROBABILITY_METHODS:
        raise ValueError(f"method must be one of {HIGH_PROBABILITY_METHODS}, got {method!r}")
    acc = np.asarray(approx_acc, dtype=float)
    if np.any(~np.isfinite(acc)) or np.any((acc < 0) | (acc > 1)):
        raise ValueError(f"approx_acc must lie in [0, 1], got {approx_acc!r}")
    if method == "exact":
        bound = acc - false_certification_quantile(n_examples, alpha, rho) / n_examples
    else:
        log_term = np.log(1.0 / rho)
        bound = (
            acc
            - alpha
            - np.sqrt(2 * alpha * (1 - alpha) * log_term / n_examples)
            - log_term / (3 * n_examples)
        )
    bound = np.maximum(bound, 0.0)
    return float(bound) if bound.ndim == 0 else bound
