"""rsbook.ancer.memory: memory-based certification (thesis Algorithm 1) is sound — no region kept after
memory contains a point of an earlier region of another class — and with a fixed sigma it changes
nothing."""

import numpy as np
import pytest
import torch
from conftest import Linear2

from rsbook.ancer import memory as memory_module
from rsbook.ancer.anisotropic import certify
from rsbook.ancer.curvature import Rotation
from rsbook.ancer.memory import (
    MEMORY_STATUSES,
    Region,
    memory_certify,
    region_conflicts,
)


def _random_regions(rng, d, count, classes=3):
    """Heavily overlapping balls, axis-aligned and rotated ellipsoids with random classes."""
    regions = []
    for _ in range(count):
        center = rng.uniform(-1.5, 1.5, d)
        kind = rng.integers(0, 4)
        label = int(rng.integers(0, classes))
        gap = float(rng.uniform(0.3, 2.0))
        if kind == 0:
            regions.append(None)  # CERTIFY abstained
        elif kind == 1:
            regions.append(Region(center, label, gap, float(rng.uniform(0.1, 0.5))))
        elif kind == 2:
            regions.append(Region(center, label, gap, rng.uniform(0.05, 0.6, d)))
        else:
            basis = torch.linalg.qr(torch.as_tensor(rng.standard_normal((d, d))))[0]
            regions.append(Region(center, label, gap, rng.uniform(0.05, 0.6, d), Rotation.from_basis(basis)))
    return regions


def _sample_inside(region, rng, count):
    u = rng.standard_normal((count, region.dim))
    u *= (rng.uniform(0, 1, (count, 1)) ** (1 / region.dim)) / np.linalg.norm(u, axis=1, keepdims=True)
    local = u * region.semi_axes
    if region.rotation is not None:
        local = local @ region.rotation.dense(torch.float64).numpy().T
    return region.center + local


@pytest.mark.parametrize("d", [2, 3])
def test_no_region_after_memory_contains_a_point_of_an_earlier_rival_region(d):
    # Algorithm 1's guarantee, by brute force: sample each kept region and check that no region of
    # another class processed later contains any sample (and that the exact test finds no conflict).
    rng = np.random.default_rng(d)
    regions = _random_regions(rng, d, 80)
    assert len(region_conflicts(regions)) > 50  # plenty to resolve
    order = rng.permutation(len(regions))
    final, frame = memory_certify(regions, order)
    assert region_conflicts(final) == []
    assert set(frame["status"]) == set(MEMORY_STATUSES)
    processed = [p for p in order if final[p] is not None]
    for rank, earlier in enumerate(processed):
        points = _sample_inside(final[earlier], rng, 2000)
        for later in processed[rank + 1:]:
            if final[later].prediction != final[earlier].prediction:
                assert not final[later].contains(points).any(), (earlier, later)
                assert not final[earlier].contains(final[later].center[None])[0]
    kept = frame["status"] == MEMORY_STATUSES[0]
    for position in np.flatnonzero(kept):  # untouched regions keep their certificate
        assert final[position] is regions[position]
    for position in np.flatnonzero(frame["status"] == MEMORY_STATUSES[1]):  # LargestOutSubset: a ball inside R
        assert final[position].is_ball and final[position].inner_radius <= regions[position].inner_radius + 1e-12


def test_abstain_inside_a_rival_region_and_shrink_next_to_one():
    # The three cases of Figure 3.3 / Algorithm 1, with known distances.
    first = Region(np.zeros(2), 0, 1.0, np.array([2.0, 0.5]))  # ellipse with semi-axes 2 and 0.5
    inside = Region(np.array([1.0, 0.0]), 1, 1.0, 0.3)  # its centre lies in `first`
    beside = Region(np.array([0.0, 1.0]), 1, 1.0, np.array([0.8, 0.9]))  # meets `first`, centre outside
    same = Region(np.array([0.5, 0.0]), 0, 1.0, 0.5)  # same class: never a conflict
    far = Region(np.array([5.0, 5.0]), 1, 1.0, 0.2)
    final, frame = memory_certify([first, inside, beside, same, far])
    assert list(frame["status"]) == ["kept", "abstained", "shrunk", "kept", "kept"]
    assert final[1] is None and frame.loc[1, "radius"] == 0
    assert final[2].is_ball and final[2].inner_radius == pytest.approx(0.5, rel=1e-5)  # distance (0, 1) -> ellipse
    assert final[2].proxy_radius == final[2].inner_radius
    # the order is a parameter: processed first, `beside` keeps its region and `first` shrinks
    final, frame = memory_certify([first, inside, beside, same, far], order=[2, 0, 1, 3, 4])
    assert frame.loc[2, "status"] == "kept" and frame.loc[0, "status"] == "shrunk"
    assert region_conflicts(final) == []


def test_with_a_fixed_sigma_memory_changes_nothing():
    # Cohen et al.'s certificate (one sigma for every input) is sound by itself: for a linear
    # classifier its balls never cross the boundary, so Algorithm 1 keeps every region.
    model = Linear2(torch.tensor([1.0, -0.5], dtype=torch.float64), 0.1)
    rng = np.random.default_rng(0)
    points = torch.as_tensor(rng.uniform(-2, 2, (60, 2)))
    regions = []
    generator = torch.Generator().manual_seed(0)
    for x in points:
        result = certify(model, x, 0.5, num_classes=2, n0=50, n=2000, alpha=0.001, batch_size=2000,
                         generator=generator)
        regions.append(None if result.prediction < 0 else Region(x.numpy(), result.prediction, result.gap, 0.5))
    assert sum(r is not None for r in regions) > 40
    final, frame = memory_certify(regions, order=rng.permutation(60))
    assert set(frame["status"]) <= {MEMORY_STATUSES[0], MEMORY_STATUSES[3]}
    assert all(a is b for a, b in zip(final, regions))
    expected = [0.0 if r is None else r.inner_radius for r in regions]
    np.testing.assert_array_equal(frame["radius"], expected)


def test_structured_and_dense_memory_agree(monkeypatch):
    # High-dimensional inputs keep regions structured (no dense d x d matrices); the decisions must be
    # those of the vectorised dense path.
    rng = np.random.default_rng(7)
    regions = _random_regions(rng, 3, 40)
    _, dense = memory_certify(regions)
    monkeypatch.setattr(memory_module, "DENSE_MEMORY_LIMIT", 0)
    final, structured = memory_certify(regions)
    assert list(structured["status"]) == list(dense["status"])
    np.testing.assert_allclose(structured["radius"], dense["radius"], rtol=1e-9)
    assert region_conflicts(final) == []


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="order must be a permutation"):
        memory_certify([Region.ball(np.zeros(2), 0, 1.0)], order=[1])
    with pytest.raises(ValueError, match="scale must be a number or have 2 entries"):
        Region(np.zeros(2), 0, 1.0, np.ones(3))
