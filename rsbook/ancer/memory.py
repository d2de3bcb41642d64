"""Memory-based certification (Alfarra et al.; Eiras et al.; Rumezhak 2022, Algorithm 1, Sec. 3.2.1,
3.3.4, 4.6).

With a data-dependent sigma, two inputs can receive certified regions that overlap with different
predictions: both certificates cannot hold for one classifier, so neither is sound. Algorithm 1
processes the inputs in a fixed order, keeps every certified region in a memory, and for a new
input x with prediction C and region R, against every earlier region R_i of another class C_i:

  * if x lies in R_i: ABSTAIN (radius 0);
  * else, if R meets R_i (first the cheap test on the enclosing balls, MaxIntersect, then the exact
    ellipsoid test, Intersect: rsbook.ancer.ellipsoids.ellipsoids_intersect), R is replaced by the largest
    ball around x inside R that does not meet R_i (LargestOutSubset): radius
    min(inner radius of R, distance(x, R_i) - margin), the distance by the projection of eq. 3.17-3.19
    and 4.10 (rsbook.ancer.ellipsoids.distance_to_ellipsoid).

Afterwards no two remaining regions of different classes share a point, whatever their shapes;
with a fixed sigma (Cohen et al.) the regions are already disjoint and nothing changes (up to the
alpha-probability failures of the Monte Carlo bounds). The result depends on the order, which is
a parameter.

A `Region` is {y : || diag(scale)^{-1} U^T (y - center) ||_2 <= gap}: a ball (scale a number, U = I),
an axis-aligned ellipsoid (scale per coordinate) or a rotated one (scale per column of U).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rsbook.ancer.curvature import Rotation
from rsbook.ancer.ellipsoids import (
    _reduce_pair,
    distance_diagonal,
    intersect_test_diagonal,
)
from rsbook.smooth import ABSTAIN

__all__ = ["Region", "memory_certify", "region_conflicts", "MEMORY_STATUSES"]

MEMORY_STATUSES = ("kept", "shrunk", "abstained", "abstained before memory")


@dataclass
class Region:
    """A certified region: center (d,), the predicted class, gap, scale (a number, or (d,): per
    coordinate when rotation is None, else per column of the rotation U, an unbatched
    rsbook.ancer.curvature.Rotation of dimension d). Semi-axes are scale * gap."""

    center: np.ndarray
    prediction: int
    gap: float
    scale: object
    rotation: Rotation | None = None

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=float).reshape(-1)
        scale = np.asarray(self.scale, dtype=float)
        self.scale = float(scale) if scale.ndim == 0 else scale.reshape(-1)
        d = self.center.size
        if np.ndim(self.scale) == 1 and self.scale.size != d:
            raise ValueError(f"scale must be a number or have {d} entries, got {self.scale.size}")
        if not np.all(np.asarray(self.scale) > 0) or not self.gap >= 0:
            raise ValueError(f"scale must be > 0 and gap >= 0, got scale {self.scale!r}, gap {self.gap!r}")
        if self.rotation is not None and (self.rotation.batch_shape != () or self.rotation.dim != d):
            raise ValueError(f"rotation must be one unbatched rotation of dimension {d}")

    @classmethod
    def ball(cls, center, prediction: int, radius: float) -> "Region":
        """The l2 ball of `radius` around center (gap 1, scale radius; radius 0 is the center alone)."""
        if radius == 0:
            return cls(center, prediction, 0.0, 1.0)
        return cls(center, prediction, 1.0, float(radius))

    @property
    def dim(self) -> int:
        return self.center.size

    @property
    def semi_axes(self) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.scale) * self.gap, (self.dim,))

    @property
    def inner_radius(self) -> float:
        """Radius of the largest l2 ball around the center inside the region: min(scale) * gap."""
        return float(np.min(self.scale) * self.gap)

    @property
    def outer_radius(self) -> float:
        """Radius of the smallest l2 ball around the center containing the region: max(scale) * gap."""
        return float(np.max(self.scale) * self.gap)

    @property
    def proxy_radius(self) -> float:
        """gap * geometric mean of the scales (eq. 3.14)."""
        return float(np.exp(np.mean(np.log(np.broadcast_to(self.scale, (self.dim,))))) * self.gap)

    @property
    def is_ball(self) -> bool:
        return np.ndim(self.scale) == 0 or (self.rotation is None and np.ptp(self.scale) == 0)

    def local(self, points) -> np.ndarray:
        """Coordinates of points (n, d) relative to the center in the region's basis: U^T (p - center)."""
        offset = np.atleast_2d(np.asarray(points, dtype=float)) - self.center
        if self.rotation is None:
            return offset
        rotated = self.rotation.apply_transpose(torch.as_tensor(offset, dtype=torch.float64)[None].to(
            self.rotation.reflectors.device))
        return rotated[0].cpu().numpy()

    def shape_diagonal(self) -> np.ndarray:
        """mu with the region = {y : sum_i mu_i (U^T (y - c))_i^2 <= 1}: 1 / (scale * gap)^2 per axis."""
        if self.gap == 0:
            return np.full(self.dim, np.inf)
        return 1.0 / np.broadcast_to(np.asarray(self.scale) * self.gap, (self.dim,)) ** 2

    def matrix(self) -> np.ndarray:
        """The region as {y : (y - c)^T A (y - c) <= 1}: A, dense (d, d) (U diag(mu) U^T), or its
        diagonal (d,) when there is no rotation."""
        mu = self.shape_diagonal()
        if self.rotation is None:
            return mu
        u = self.rotation.dense(torch.float64).cpu().numpy()
        return (u * mu) @ u.T

    def contains(self, points, tol: float = 0.0) -> np.ndarray:
        """Whether each point (n, d) lies in the region (boundary included, widened by tol relative)."""
        if self.gap == 0:
            return np.all(np.isclose(np.atleast_2d(points), self.center, rtol=0, atol=0), axis=1)
        z = self.local(points)
        return np.sum(z**2 * self.shape_diagonal(), axis=1) <= 1.0 + tol

    def distance(self, point) -> float:
        """Euclidean distance from `point` to the region (0 inside); a lower bound tight to ~1e-12."""
        if self.gap == 0:
            return float(np.linalg.norm(np.asarray(point, dtype=float) - self.center))
        return float(distance_diagonal(self.local(point), self.shape_diagonal()[None])[0])


def _intersect(new: Region, old: Region) -> bool:
    """Exact ellipsoid intersection test (thesis eq. 3.16 / 4.9) in the cheapest common basis."""
    if new.gap == 0 or old.gap == 0:
        point, other = (new, old) if new.gap == 0 else (old, new)
        return bool(other.contains(point.center[None])[0])
    if new.rotation is None and old.rotation is None:
        delta = old.center - new.center
        shapes = (("diag", new.shape_diagonal()), ("diag", old.shape_diagonal()))
        c2, lam = _reduce_pair(delta, *shapes)
        return bool(intersect_test_diagonal(c2[None], lam[None])[0])
    if new.is_ball or old.is_ball:  # a ball is the same in every basis: use the other's
        ball, other = (new, old) if new.is_ball else (old, new)
        delta = other.local(ball.center[None])[0]
        mu_ball = np.full(ball.dim, 1.0 / ball.outer_radius**2)
        c2, lam = _reduce_pair(delta, ("diag", other.shape_diagonal()), ("diag", mu_ball))
        return bool(intersect_test_diagonal(c2[None], lam[None])[0])
    a, b = new.matrix(), old.matrix()
    shape_a = ("diag", a) if a.ndim == 1 else ("dense", a)
    shape_b = ("diag", b) if b.ndim == 1 else ("dense", b)
    c2, lam = _reduce_pair(old.center - new.center, shape_a, shape_b)
    return bool(intersect_test_diagonal(c2[None], lam[None])[0])


DENSE_MEMORY_LIMIT = 64
"""Up to this dimension the memory holds every region as dense matrices and answers each query for
all earlier regions at once; above it, regions keep their structured form and are tested one by one
(rotated regions of image-sized inputs never become dense unless two rotated ones must be compared)."""


class _Memory:
    """The regions accepted so far, with the queries Algorithm 1 needs."""

    def __init__(self, dim: int, capacity: int):
        self.dim, self.size, self.regions = dim, 0, []
        self.dense = dim <= DENSE_MEMORY_LIMIT
        self.centers, self.outer = np.zeros((capacity, dim)), np.zeros(capacity)
        self.labels, self.point = np.zeros(capacity, dtype=int), np.zeros(capacity, dtype=bool)
        if self.dense:
            self.basis = np.zeros((capacity, dim, dim))  # U_i: region i is {y : sum mu_i (U_i^T (y - c_i))^2 <= 1}
            self.mu = np.ones((capacity, dim))
            self.chol = np.zeros((capacity, dim, dim))  # Cholesky factor of A_i = U_i diag(mu_i) U_i^T

    @staticmethod
    def _dense_form(region: Region):
        basis = np.eye(region.dim) if region.rotation is None else region.rotation.dense(torch.float64).cpu().numpy()
        mu = region.shape_diagonal()
        matrix = (basis * mu) @ basis.T
        return basis, mu, np.linalg.cholesky(0.5 * (matrix + matrix.T))

    def add(self, region: Region):
        i = self.size
        self.centers[i], self.outer[i], self.labels[i] = region.center, region.outer_radius, region.prediction
        self.point[i] = region.gap == 0
        if self.dense and not self.point[i]:
            self.basis[i], self.mu[i], self.chol[i] = self._dense_form(region)
        self.regions.append(region)
        self.size += 1

    def candidates(self, region: Region) -> np.ndarray:
        """Earlier regions of another class whose enclosing balls meet the region's (MaxIntersect)."""
        n = self.size
        distance = np.linalg.norm(self.centers[:n] - region.center, axis=1)
        near = (self.labels[:n] != region.prediction) & (distance <= self.outer[:n] + region.outer_radius + 1e-12)
        return np.flatnonzero(near)

    def _local(self, idx, point) -> np.ndarray:
        return np.einsum("pij,pi->pj", self.basis[idx], point[None, :] - self.centers[idx])

    def contains(self, idx, point, tol: float) -> np.ndarray:
        """Whether `point` lies in each region idx (boundary included, widened by tol)."""
        if not self.dense:
            return np.array([self.regions[i].contains(point[None], tol)[0] for i in idx], dtype=bool)
        out = np.zeros(len(idx), dtype=bool)
        solid = ~self.point[idx]
        z = self._local(idx[solid], point)
        out[solid] = np.sum(self.mu[idx[solid]] * z**2, axis=1) <= 1.0 + tol
        out[~solid] = np.all(self.centers[idx[~solid]] == point, axis=1)
        return out

    def intersecting(self, idx, region: Region) -> np.ndarray:
        """The regions idx that share a point with `region` (exact test, touching counts)."""
        if not self.dense or len(idx) == 0:
            return np.array([i for i in idx if _intersect(region, self.regions[i])], dtype=int)
        hit = np.zeros(len(idx), dtype=bool)
        solid = ~self.point[idx]
        points = idx[~solid]
        if region.gap == 0:
            hit[solid] = self.contains(idx[solid], region.center, 0.0)
            hit[~solid] = np.all(self.centers[points] == region.center, axis=1)
            return idx[hit]
        hit[~solid] = region.contains(self.centers[points]) if len(points) else []
        others = idx[solid]
        if len(others):
            _, _, lower = self._dense_form(region)
            delta = self.centers[others] - region.center
            solved = np.linalg.solve(self.chol[others], np.broadcast_to(lower, (len(others), *lower.shape)))
            lam, vectors = np.linalg.eigh(np.swapaxes(solved, 1, 2) @ solved)
            c = np.einsum("pij,pi->pj", vectors, (delta @ lower))
            hit[solid] = intersect_test_diagonal(c**2, np.maximum(lam, 1e-300))
        return idx[hit]

    def distances(self, idx, point) -> np.ndarray:
        """Distance from `point` to each region idx (lower bounds, see rsbook.ancer.ellipsoids.distance_diagonal)."""
        if not self.dense:
            return np.array([self.regions[i].distance(point) for i in idx])
        out = np.linalg.norm(self.centers[idx] - point, axis=1)
        solid = ~self.point[idx]
        if np.any(solid):
            out[solid] = distance_diagonal(self._local(idx[solid], point), self.mu[idx[solid]])
        return out


def memory_certify(regions, order=None, margin: float = 1e-6) -> tuple[list, pd.DataFrame]:
    """Algorithm 1 over a sequence of certified regions (Region, or None for an input that CERTIFY
    already abstained on), processed in `order` (a permutation of their positions; default the given
    order).

    Returns (final regions, one per input in the given positions, None where abstained; a frame with
    position, rank in the processing order, prediction (ABSTAIN where abstained), radius (inner
    radius), proxy_radius, status (MEMORY_STATUSES) and conflicts (earlier regions of another class
    whose region met this one)). A shrunk region is the ball of radius min(inner radius, distance to
    each conflicting region - margin * (1 + distance)); its proxy radius is that radius. An input within
    the margin of a rival region (radius <= 0) abstains, as one inside it does.
    Guarantee: no two returned regions of different classes intersect (`region_conflicts`).
    """
    regions = list(regions)
    count = len(regions)
    order = np.arange(count) if order is None else np.asarray(order)
    if sorted(order.tolist()) != list(range(count)):
        raise ValueError(f"order must be a permutation of 0..{count - 1}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    dim = next((r.dim for r in regions if r is not None), 0)
    memory = _Memory(dim, count)
    final: list = [None] * count
    rows = [None] * count
    for rank, position in enumerate(order.tolist()):
        region = regions[position]
        if region is None:
            rows[position] = (position, rank, ABSTAIN, 0.0, 0.0, MEMORY_STATUSES[3], 0)
            continue
        if region.dim != dim:
            raise ValueError(f"every region must have dimension {dim}; region {position} has {region.dim}")
        close = memory.candidates(region)
        abstain = bool(np.any(memory.contains(close, region.center, 1e-9)))
        conflicts = np.zeros(0, dtype=int) if abstain else memory.intersecting(close, region)
        if len(conflicts):
            distance = memory.distances(conflicts, region.center)
            radius = min(region.inner_radius, float(np.min(distance - margin * (1.0 + distance))))
            abstain = radius <= 0  # within the margin of a rival region: as good as inside it
            region = Region.ball(region.center, region.prediction, max(radius, 0.0))
        if abstain:
            rows[position] = (position, rank, ABSTAIN, 0.0, 0.0, MEMORY_STATUSES[2], 0)
            continue
        final[position] = region
        status = MEMORY_STATUSES[1] if len(conflicts) else MEMORY_STATUSES[0]
        rows[position] = (position, rank, region.prediction, region.inner_radius, region.proxy_radius, status,
                          len(conflicts))
        memory.add(region)
    frame = pd.DataFrame(rows, columns=["position", "rank", "prediction", "radius", "proxy_radius", "status",
                                        "conflicts"])
    return final, frame


def region_conflicts(regions) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of regions (None entries skipped) with different predictions that share a
    point, by the exact ellipsoid test: the soundness check of memory-based certification."""
    regions = list(regions)
    dim = next((r.dim for r in regions if r is not None), 0)
    memory, positions, pairs = _Memory(dim, len(regions)), [], []
    for j, region in enumerate(regions):
        if region is None:
            continue
        pairs += [(positions[i], j) for i in memory.intersecting(memory.candidates(region), region)]
        memory.add(region)
        positions.append(j)
    return pairs
