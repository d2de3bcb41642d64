"""Datasets, as (x, label) sequences with x a float tensor in [0, 1] pixel space (or raw
coordinates for 2-D toy data), so that noise and radii are measured in input units.

Embedded (no download, no RSBOOK_DATA needed):
  digits      scikit-learn's bundled 8x8 digits, shape (1, 8, 8), 10 classes, a fixed seeded split
  rancer_toy  the 236 two-dimensional test points of the RANCER thesis's 2-D pipeline (2 classes),
              fetched from the authors' pinned repository (rsbook.published.fetch)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ArrayDataset", "load_dataset", "num_classes", "DATASETS"]

DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0


class ArrayDataset(Dataset):
    """In-memory dataset: x of shape (N, *example_shape) float32, labels of shape (N,) int64."""

    def __init__(self, x, labels):
        self.x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if len(self.x) != len(self.labels):
            raise ValueError(f"x has {len(self.x)} examples but labels has {len(self.labels)}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.x[index], int(self.labels[index])


def _digits(split: str) -> ArrayDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, bunch.target, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=bunch.target
    )
    return ArrayDataset(x_train, y_train) if split == "train" else ArrayDataset(x_test, y_test)


def _rancer_toy(split: str) -> ArrayDataset:
    """The authors released only their test points."""
    from rsbook.published import fetch

    points = np.loadtxt(fetch("tarasrumezhak/RANCER/pipeline_2D/data/X_test.out"), delimiter=",", ndmin=2)
    labels = np.loadtxt(fetch("tarasrumezhak/RANCER/pipeline_2D/data/y_test.out"), delimiter=",", ndmin=1)
    if points.shape[1] != 2 or len(points) != len(labels) or not np.all(np.mod(labels, 1) == 0):
        raise ValueError(f"rancer_toy files are malformed: points {points.shape}, labels {labels.shape}")
    return ArrayDataset(points.astype(np.float32), labels.astype(np.int64))


DATASETS = {
    "digits": {"loader": _digits, "num_classes": 10, "splits": ("train", "test")},
    "rancer_toy": {"loader": _rancer_toy, "num_classes": 2, "splits": ("test",)},
}


def _entry(name: str) -> dict:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]


def load_dataset(name: str, split: str = "test") -> Dataset:
    """The `split` ('train' or 'test') of dataset `name`, indexable as dataset[i] -> (x, label)."""
    entry = _entry(name)
    if split not in entry["splits"]:
        raise ValueError(f"split must be one of {entry['splits']} for dataset {name!r}, got {split!r}")
    return entry["loader"](split)


def num_classes(name: str) -> int:
    """Number of classes of dataset `name`."""
    return _entry(name)["num_classes"]
