"""Ellipsoid geometry behind memory-based certification (Rumezhak 2022, Sec. 3.3.4 and 4.6).

An ellipsoid is S = {y : (y - a)^T A (y - a) <= 1} with centre a (shape (d,)) and A positive definite,
given either dense (shape (d, d), symmetric) or diagonal (shape (d,), its diagonal entries). A
certified region of anisotropic smoothing {x + delta : ||Sigma^{-1/2} U^T delta||_2 <= gap} is such an
ellipsoid with A = U diag(1 / (sigma_i gap)^2) U^T (Sec. 4.1).

* `ellipsoids_intersect` decides whether two ellipsoids share a point with the convex test of Ros,
  Sabater & Thomas (2002) and Gilitschenski & Hanebeck (2012): with Delta = b - a,

      K(t) = 1 - Delta^T [ B^{-1} / (1 - t) + A^{-1} / t ]^{-1} Delta,          t in (0, 1)

  (thesis eq. 4.9 (3); eq. 3.16 is its diagonal form), and S_A, S_B are disjoint iff K(t) < 0 for
  some t. K is convex on (0, 1) with K(0+) = K(1-) = 1.
* `distance_to_ellipsoid` is the Euclidean distance from a point to S (0 inside), from the
  projection min_x 1/2 ||x - y||^2 s.t. x^T A x <= 1, y = p - a (eq. 3.17), whose multiplier lambda
  solves y^T (I + 2 lambda A)^{-1} A (I + 2 lambda A)^{-1} y = 1 (eq. 3.18 diagonal, eq. 4.10 dense).

Both are computed after reducing the pair (or the one ellipsoid) to a diagonal form, so that each
needs one factorisation and then only O(d) work per evaluation. Both err on the safe side for
certification: `ellipsoids_intersect` reports disjointness only when a t with K(t) < -tol was found
(a certificate of separation), and `distance_to_ellipsoid` returns a lower bound on the distance
that is tight to about 1e-12 relative. numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ellipsoids_intersect", "distance_to_ellipsoid", "min_separation", "intersect_test_diagonal",
           "distance_diagonal"]

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def _center(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite vector of shape (d,), got shape {arr.shape}")
    return arr


def _shape(A, d: int, name: str) -> tuple[str, np.ndarray]:
    """('diag', entries) or ('dense', matrix) for a positive definite A of dimension d."""
    arr = np.asarray(A, dtype=float)
    if arr.shape == (d,):
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} given as a diagonal must hold finite entries > 0, got {arr!r}")
        return "diag", arr
    if arr.shape != (d, d):
        raise ValueError(f"{name} must have shape ({d},) (diagonal) or ({d}, {d}) (dense), got {arr.shape}")
    if not np.all(np.isfinite(arr)) or not np.allclose(arr, arr.T, rtol=1e-8, atol=1e-12 * np.abs(arr).max()):
        raise ValueError(f"{name} must be a finite symmetric matrix")
    try:
        np.linalg.cholesky(arr)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name} must be positive definite") from None
    return "dense", 0.5 * (arr + arr.T)


def _reduce_pair(delta: np.ndarray, A, B) -> tuple[np.ndarray, np.ndarray]:
    """(c2, lam) with Delta^T [B^{-1}/(1-t) + A^{-1}/t]^{-1} Delta = sum_i c2_i t(1-t) / (lam_i t + 1 - t).

    For diagonal A, B: c2 = A Delta^2 and lam = A / B (eq. 3.16). Otherwise with A = L L^T and
    L^T B^{-1} L = V diag(lam) V^T: c = V^T L^T Delta (the simultaneous diagonalisation of A^{-1}
    and B^{-1} by W = L V).
    """
    (kind_a, a), (kind_b, b) = A, B
    if kind_a == "diag" and kind_b == "diag":
        return a * delta**2, a / b
    dense_a = np.diag(a) if kind_a == "diag" else a
    dense_b = np.diag(b) if kind_b == "diag" else b
    lower = np.linalg.cholesky(dense_a)
    chol_b = np.linalg.cholesky(dense_b)
    solved = np.linalg.solve(chol_b, lower)  # L_B^{-1} L, so L^T B^{-1} L = solved^T solved
    lam, vectors = np.linalg.eigh(solved.T @ solved)
    c = vectors.T @ (lower.T @ delta)
    return c**2, np.maximum(lam, 0.0)


def _k_values(t: np.ndarray, c2: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """K at t (shape (P, m)) for P reduced pairs c2, lam (shape (P, d)): shape (P, m)."""
    tt = t[:, :, None]
    return 1.0 - np.sum(c2[:, None, :] * tt * (1.0 - tt) / (lam[:, None, :] * tt + (1.0 - tt)), axis=2)


def min_separation(c2, lam, iterations: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """min over t in (0, 1) of K(t) = 1 - sum_i c2_i t(1-t) / (lam_i t + 1 - t) for each row of the
    (P, d) arrays c2 >= 0, lam >= 0 (a reduced pair, see the module docstring); returns (minimum,
    argmin), each of shape (P,). K is convex, so a grid bracket followed by golden-section search
    converges to the minimum (the bracket shrinks below 1e-17 of the grid step)."""
    c2 = np.atleast_2d(np.asarray(c2, dtype=float))
    lam = np.atleast_2d(np.asarray(lam, dtype=float))
    grid = np.linspace(0.0, 1.0, 33)[1:-1]
    values = _k_values(np.broadcast_to(grid, (len(c2), len(grid))), c2, lam)
    best = np.argmin(values, axis=1)
    rows = np.arange(len(c2))
    lo = np.where(best > 0, grid[np.maximum(best - 1, 0)], 0.0)
    hi = np.where(best < len(grid) - 1, grid[np.minimum(best + 1, len(grid) - 1)], 1.0)
    best_t, best_k = grid[best], values[rows, best]
    x1 = hi - _GOLDEN * (hi - lo)
    x2 = lo + _GOLDEN * (hi - lo)
    f1 = _k_values(x1[:, None], c2, lam)[:, 0]
    f2 = _k_values(x2[:, None], c2, lam)[:, 0]
    for _ in range(iterations):
        left = f1 <= f2  # minimum in [lo, x2]
        lo, hi = np.where(left, lo, x1), np.where(left, x2, hi)
        new = np.where(left, hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo))
        f_new = _k_values(new[:, None], c2, lam)[:, 0]
        x1, x2, f1, f2 = (np.where(left, new, x2), np.where(left, x1, new),
                          np.where(left, f_new, f2), np.where(left, f1, f_new))
    for t, k in ((x1, f1), (x2, f2)):
        better = k < best_k
        best_t, best_k = np.where(better, t, best_t), np.where(better, k, best_k)
    return best_k, best_t


def _tolerance(c2: np.ndarray) -> np.ndarray:
    """Floating-point slack on K: K is 1 minus a sum of terms each at most c2_i / 4."""
    return 1e-9 * (1.0 + np.sum(c2, axis=-1))


def intersect_test_diagonal(c2, lam) -> np.ndarray:
    """True where the reduced pair (rows of c2, lam) intersect: min K(t) >= -tol (see min_separation)."""
    c2 = np.atleast_2d(np.asarray(c2, dtype=float))
    value, _ = min_separation(c2, lam)
    return value >= -_tolerance(c2)


def ellipsoids_intersect(a, A, b, B) -> bool:
    """Whether S_A = {y : (y-a)^T A (y-a) <= 1} and S_B = {y : (y-b)^T B (y-b) <= 1} share a point.

    a, b: centres, shape (d,). A, B: positive definite, dense (d, d) or diagonal (d,).
    Thesis eq. 3.16 / 4.9 (3) (Gilitschenski & Hanebeck 2012): disjoint iff min_{t in (0,1)} K(t) < 0.
    Touching ellipsoids (min K = 0 up to rounding) count as intersecting, the safe answer for
    memory-based certification.
    """
    a = _center(a, "a")
    b = _center(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same dimension, got {a.shape} and {b.shape}")
    shape_a, shape_b = _shape(A, a.size, "A"), _shape(B, a.size, "B")
    c2, lam = _reduce_pair(b - a, shape_a, shape_b)
    return bool(intersect_test_diagonal(c2[None], lam[None])[0])


def distance_diagonal(z, mu, iterations: int = 200) -> np.ndarray:
    """Distance from each row of z (shape (P, d), coordinates relative to the centre in the
    eigenbasis of A) to the ellipsoid {x : sum_i mu_i x_i^2 <= 1}, mu > 0 (shape (P, d) or (d,)).

    Solves f(lambda) = sum_i mu_i z_i^2 / (1 + 2 lambda mu_i)^2 - 1 = 0 (thesis eq. 3.18) by
    bisection; f decreases in lambda, and ||z - x(lambda)|| with x(lambda) = z / (1 + 2 lambda mu)
    increases in lambda, so the distance is evaluated at the lower end of the final bracket: a
    lower bound on the true distance, tight to the bracket width. 0 for points inside.
    """
    z = np.atleast_2d(np.asarray(z, dtype=float))
    mu = np.broadcast_to(np.asarray(mu, dtype=float), z.shape)
    inside = np.sum(mu * z**2, axis=1) <= 1.0
    lo = np.zeros(len(z))
    hi = 0.5 * np.sqrt(np.sum(z**2 / mu, axis=1)) + 1e-300  # f(hi) <= 0 there
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        f = np.sum(mu * z**2 / (1.0 + 2.0 * mid[:, None] * mu) ** 2, axis=1) - 1.0
        lo, hi = np.where(f > 0, mid, lo), np.where(f > 0, hi, mid)
        if np.all(hi - lo <= 1e-15 * np.maximum(hi, 1e-300)):
            break
    shrink = 2.0 * lo[:, None] * mu / (1.0 + 2.0 * lo[:, None] * mu)  # z - x(lo) = shrink * z
    distance = np.linalg.norm(shrink * z, axis=1)
    return np.where(inside, 0.0, distance)


def distance_to_ellipsoid(p, a, A) -> float:
    """Euclidean distance from the point p to S = {y : (y-a)^T A (y-a) <= 1}; 0 when p is in S.

    p, a: shape (d,). A: positive definite, dense (d, d) or diagonal (d,). The projection of
    thesis eq. 3.17-3.19 (ANCER, diagonal A) and eq. 4.10 (RANCER, dense A), computed in the
    eigenbasis of A. The value is a lower bound on the exact distance (relative error ~1e-12), so a
    ball of that radius around p never enters S.
    """
    p = _center(p, "p")
    a = _center(a, "a")
    if p.shape != a.shape:
        raise ValueError(f"p and a must have the same dimension, got {p.shape} and {a.shape}")
    kind, values = _shape(A, a.size, "A")
    y = p - a
    if kind == "diag":
        return float(distance_diagonal(y[None], values[None])[0])
    mu, vectors = np.linalg.eigh(values)
    return float(distance_diagonal((vectors.T @ y)[None], np.maximum(mu, 1e-300)[None])[0])
