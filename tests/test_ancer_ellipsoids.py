"""rsbook.ancer.ellipsoids: the intersection test of thesis eq. 3.16 / 4.9 and the projection distance of
eq. 3.17-3.19 / 4.10, against brute force (dense sampling) on random 2-D and 3-D ellipsoids, rotated
and axis-aligned, and against closed forms for balls."""

import numpy as np
import pytest

from rsbook.ancer.ellipsoids import (
    _reduce_pair,
    distance_to_ellipsoid,
    ellipsoids_intersect,
    min_separation,
)


def _random_ellipsoid(rng, d, rotated):
    """(center, A, L) with A = R diag(1/s^2) R^T and boundary points center + L u for unit u, L = R diag(s)."""
    center = rng.uniform(-1.2, 1.2, d)
    semi = rng.uniform(0.15, 1.0, d)
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0] if rotated else np.eye(d)
    A = (rotation / semi**2) @ rotation.T
    return center, (A if rotated else np.diag(A).copy()), rotation * semi


def _directions(d, count):
    """Nearly uniform unit vectors: a circle grid in 2-D, a Fibonacci sphere in 3-D."""
    if d == 2:
        phi = np.linspace(0, 2 * np.pi, count, endpoint=False)
        return np.stack([np.cos(phi), np.sin(phi)], axis=1)
    k = np.arange(count) + 0.5
    polar = np.arccos(1 - 2 * k / count)
    azimuth = np.pi * (1 + 5**0.5) * k
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


def _dense(A):
    return np.diag(A) if np.ndim(A) == 1 else A


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("rotated", [False, True])
def test_intersection_agrees_with_dense_sampling(d, rotated):
    # Eq. 4.9 (3): S_A and S_B are disjoint iff min_t K(t) < 0. Brute force: the least value of
    # (y - b)^T B (y - b) over dense samples y of S_A's boundary and interior (<= the sampled
    # minimum exceeds the true one, so a sampled value <= 1 proves an intersection, and one clearly
    # above 1 shows disjointness).
    rng = np.random.default_rng(10 * d + rotated)
    directions = _directions(d, 720 if d == 2 else 6000)
    shells = np.linspace(0.0, 1.0, 30)
    unit_ball = (shells[:, None, None] * directions[None]).reshape(-1, d)
    agree = {True: 0, False: 0}
    for _ in range(120):
        a, A, La = _random_ellipsoid(rng, d, rotated)
        b, B, _ = _random_ellipsoid(rng, d, rotated and rng.uniform() < 0.7)
        samples = a + unit_ball @ La.T
        offset = samples - b
        least = np.min(np.einsum("ni,ij,nj->n", offset, _dense(B), offset))
        ours = ellipsoids_intersect(a, A, b, B)
        assert ours == ellipsoids_intersect(b, B, a, A)  # symmetric
        if least <= 1.0:
            assert ours, (a, A, b, B, least)
            agree[True] += 1
        elif least > 1.15:
            assert not ours, (a, A, b, B, least)
            agree[False] += 1
    assert agree[True] >= 20 and agree[False] >= 20, agree


def test_diagonal_form_of_k_equals_the_general_form():
    # Eq. 3.16 (diagonal A, B) is eq. 4.9 (3) written out: compare K(t) on a grid of t.
    rng = np.random.default_rng(0)
    d = 4
    a, b = rng.standard_normal(d), rng.standard_normal(d)
    A, B = rng.uniform(0.5, 3, d), rng.uniform(0.5, 3, d)
    t = np.linspace(0.01, 0.99, 50)
    delta = b - a
    diagonal = 1 - np.sum(delta**2 * t[:, None] * (1 - t[:, None]) * A * B / (t[:, None] * A + (1 - t[:, None]) * B),
                          axis=1)
    general = np.array([1 - delta @ np.linalg.inv(np.diag(1 / B) / (1 - s) + np.diag(1 / A) / s) @ delta for s in t])
    c2, lam = _reduce_pair(delta, ("dense", np.diag(A)), ("dense", np.diag(B)))
    reduced = 1 - np.sum(c2 * t[:, None] * (1 - t[:, None]) / (lam * t[:, None] + 1 - t[:, None]), axis=1)
    np.testing.assert_allclose(diagonal, general, rtol=1e-10)
    np.testing.assert_allclose(reduced, general, rtol=1e-10)
    value, where = min_separation(c2[None], lam[None])
    assert value[0] <= general.min() + 1e-12 and 0 < where[0] < 1


def test_two_balls_intersect_exactly_when_the_radii_reach():
    # Closed form: balls of radii r1, r2 meet iff ||a - b|| <= r1 + r2.
    a, r1, r2 = np.zeros(3), 0.7, 0.4
    for gap in (-1e-3, -1e-7, 1e-7, 1e-3):
        b = np.array([r1 + r2 + gap, 0.0, 0.0])
        assert ellipsoids_intersect(a, np.full(3, 1 / r1**2), b, np.eye(3) / r2**2) == (gap < 0)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("rotated", [False, True])
def test_distance_agrees_with_dense_boundary_sampling(d, rotated):
    # Eq. 3.17-3.19 / 4.10: the distance to S is the least distance to its boundary points; the
    # projection's value must never exceed it (a lower bound: the shrunk ball stays outside S).
    rng = np.random.default_rng(100 + 10 * d + rotated)
    directions = _directions(d, 20000 if d == 2 else 60000)
    resolution = {2: 1e-4, 3: 4e-3}[d]
    outside = 0
    for _ in range(60):
        a, A, La = _random_ellipsoid(rng, d, rotated)
        p = rng.uniform(-2.5, 2.5, d)
        ours = distance_to_ellipsoid(p, a, A)
        offset = p - a
        if offset @ _dense(A) @ offset <= 1:
            assert ours == 0.0
            continue
        outside += 1
        brute = np.min(np.linalg.norm(a + directions @ La.T - p, axis=1))
        assert ours <= brute + 1e-12
        assert brute - ours <= resolution, (brute, ours)
    assert outside >= 30


def test_distance_to_a_ball_and_the_projection_optimality():
    # Closed form for a ball: ||p - a|| - r; and for an ellipsoid the projection x* satisfies KKT:
    # x* on the boundary with p - x* parallel to A (x* - a).
    ball = distance_to_ellipsoid(np.array([3.0, 4.0]), np.zeros(2), np.full(2, 1 / 4.0))  # radius 2, centre 0
    assert ball == pytest.approx(3.0, rel=1e-12)
    rng = np.random.default_rng(5)
    a, A, _ = _random_ellipsoid(rng, 3, True)
    p = a + np.array([2.0, -1.5, 1.0])
    distance = distance_to_ellipsoid(p, a, A)
    mu, vectors = np.linalg.eigh(A)
    z = vectors.T @ (p - a)
    # the multiplier that puts x(lambda) = z / (1 + 2 lambda mu) at distance `distance` from z
    lam = np.interp(distance, [np.linalg.norm(2 * s * mu / (1 + 2 * s * mu) * z) for s in np.linspace(0, 50, 200001)],
                    np.linspace(0, 50, 200001))
    x_star = z / (1 + 2 * lam * mu)
    assert np.sum(mu * x_star**2) == pytest.approx(1.0, abs=1e-6)
    normal = mu * x_star
    cosine = normal @ (z - x_star) / np.linalg.norm(normal) / np.linalg.norm(z - x_star)
    assert cosine == pytest.approx(1.0, abs=1e-9)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="A must be positive definite"):
        ellipsoids_intersect(np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="B given as a diagonal"):
        ellipsoids_intersect(np.zeros(2), np.ones(2), np.ones(2), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="A must have shape"):
        distance_to_ellipsoid(np.zeros(2), np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match="a and b must have the same dimension"):
        ellipsoids_intersect(np.zeros(2), np.ones(2), np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="p must be a finite vector"):
        distance_to_ellipsoid(np.array([np.nan, 0.0]), np.zeros(2), np.ones(2))
