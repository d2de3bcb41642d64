"""Confidence bounds and tests behind CERTIFY and PREDICT (Cohen, Rosenfeld & Kolter 2019).

numpy/scipy/statsmodels only; no torch. Every function validates its arguments and raises
`ValueError` naming the argument that is wrong.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from statsmodels.stats.proportion import proportion_confint

from rsbook._checks import check_alpha, check_counts, check_positive_int

__all__ = ["clopper_pearson_lower", "binomial_pvalue", "high_probability_accuracy"]


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


def high_probability_accuracy(approx_acc, n_examples, alpha, rho):
    """Lower bound on the true certified accuracy that holds with probability >= 1 - rho.

    Cohen et al. 2019, Appendix D, Theorem 6: if CERTIFY ran with failure rate alpha on each of
    n_examples test points and certified a fraction approx_acc of them correctly at radius r, then
    with probability at least 1 - rho over the randomness in CERTIFY the certified accuracy at r is
    at least  approx_acc - alpha - sqrt(alpha (1 - alpha) log(1/rho) / n) - log(1/rho) / (3 n).

    approx_acc: scalar or array in [0, 1]. Returns the same shape, clipped below at 0 (a
    negative lower bound on an accuracy says nothing more than 0 does).
    """
    check_alpha(alpha)
    check_alpha(rho, name="rho")
    check_positive_int(n_examples, "n_examples")
    acc = np.asarray(approx_acc, dtype=float)
    if np.any(~np.isfinite(acc)) or np.any((acc < 0) | (acc > 1)):
        raise ValueError(f"approx_acc must lie in [0, 1], got {approx_acc!r}")
    log_term = np.log(1.0 / rho)
    bound = (
        acc
        - alpha
        - np.sqrt(alpha * (1 - alpha) * log_term / n_examples)
        - log_term / (3 * n_examples)
    )
    bound = np.maximum(bound, 0.0)
    return float(bound) if bound.ndim == 0 else bound
