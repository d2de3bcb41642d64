"""Seeded two-dimensional toy data for the relaxation chapter's pictures, and dataset lookup.

`two_moons`: two interleaved half circles (class 0: (cos θ, sin θ); class 1: (1 − cos θ, ½ − sin θ),
θ uniform on [0, π]) plus Gaussian noise — small, seeded, and not linearly separable, so a ReLU
network needs unstable neurons near the boundary. Kept local to this chapter.
"""

from __future__ import annotations

import numpy as np

from rsbook import streams
from rsbook._checks import check_positive_int
from rsbook.data import ArrayDataset, load_dataset, num_classes

__all__ = ["two_moons", "TOY_SIZES", "chapter_dataset", "dataset_classes"]

TOY_SIZES = {"train": 400, "test": 200}


def two_moons(n: int, seed: int = 0, noise: float = 0.1, split: str = "train") -> ArrayDataset:
    """n points (x float32 (n, 2), labels int64 (n,)), half of each class (class 1 gets the odd one),
    drawn from the stream (seed, 'data', 'two_moons', split) (rsbook.streams)."""
    n = check_positive_int(n, "n")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    rng = streams.numpy_generator(seed, "data", "two_moons", split)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    theta = rng.uniform(0.0, np.pi, n)
    points = np.where(labels[:, None] == 0, np.stack([np.cos(theta), np.sin(theta)], 1),
                      np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], 1))
    points = points + rng.normal(0.0, noise, points.shape)
    return ArrayDataset(points.astype(np.float32), labels.astype(np.int64))


def chapter_dataset(name: str, split: str = "test", seed: int = 0):
    """'two_moons' (this module, TOY_SIZES points per split, each split its own stream) or any
    rsbook.data dataset ('digits', 'cifar10', …)."""
    if name == "two_moons":
        if split not in TOY_SIZES:
            raise ValueError(f"split must be one of {tuple(TOY_SIZES)} for two_moons, got {split!r}")
        return two_moons(TOY_SIZES[split], seed=seed, split=split)
    return load_dataset(name, split)


def dataset_classes(name: str) -> int:
    """Number of classes of a chapter_dataset."""
    return 2 if name == "two_moons" else num_classes(name)
