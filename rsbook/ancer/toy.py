"""Seeded 2-D toy data and the shallow classifiers of the RANCER thesis (Rumezhak 2022, Sec. 5.1.1, 5.3.2).

The thesis drew its "intuition-gathering" sets by hand (drawdata): 30 versions, 300 points with 2
classes or 1,200 points with 3 classes, of kinds such as axis-aligned and rotated linearly separable
classes, donuts and blobs. Only the test split of one 2-class set was released (rsbook.data's
`rancer_toy`, 236 points). `make_toy` draws sets of those kinds from a seed instead, in the same
coordinate range (about [-2, 2]^2).

Classifiers (Figure 5.5): for 2 classes the released architecture Linear(2, 3) -> tanh ->
Linear(3, 2) -> log-softmax (rsbook.models.RancerMLP), trained with NLLLoss and SGD; for 3 classes
Linear(2, 64) -> ReLU -> Linear(64, 32) -> ReLU -> Linear(32, 16) -> ReLU -> Linear(16, 3) (`ToyMLP`,
which returns logits; the thesis's softmax is applied by whoever needs probabilities), trained
with cross-entropy and Adam. Both train full-batch in about a second on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rsbook import streams
from rsbook._checks import check_num_classes, check_positive_int
from rsbook.models import RancerMLP

__all__ = ["TOY_KINDS", "make_toy", "train_test_split", "ToyMLP", "toy_classifier", "train_toy_classifier",
           "decision_grid"]

TOY_KINDS = ("linear", "rotated_linear", "donut", "blobs")


def _rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def _bands(rng, count: int, n_classes: int, margin: float, half: float) -> tuple[np.ndarray, np.ndarray]:
    """`count` uniform points in [-half, half]^2 labelled by which of n_classes vertical bands of equal
    width holds them, without the points closer than `margin` to a band boundary."""
    edges = np.linspace(-half, half, n_classes + 1)[1:-1]
    points = rng.uniform(-half, half, size=(count, 2))
    points = points[np.min(np.abs(points[:, :1] - edges[None, :]), axis=1) >= margin]
    return points, np.searchsorted(edges, points[:, 0])


def _per_class(count: int, n_classes: int) -> list[int]:
    return [count // n_classes + (1 if k < count % n_classes else 0) for k in range(n_classes)]


def make_toy(kind: str, n_points: int, n_classes: int, seed: int = 0, *, angle: float = np.pi / 6,
             margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A seeded 2-D toy set of the kinds the thesis drew (Sec. 5.1.1, Figures 5.1-5.2).

    kind: 'linear' (n_classes vertical bands: axis-aligned linear boundaries), 'rotated_linear' (the
    same bands rotated by `angle`), 'donut' (concentric rings, the innermost a disk), 'blobs'
    (Gaussian blobs on a circle). Classes are balanced; band and ring boundaries keep a gap of
    `margin`. Returns (points float32 (n_points, 2), labels int64 (n_points,)), shuffled.
    """
    if kind not in TOY_KINDS:
        raise ValueError(f"kind must be one of {TOY_KINDS}, got {kind!r}")
    n_points = check_positive_int(n_points, "n_points")
    if check_positive_int(n_classes, "n_classes") < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes!r}")
    if n_points < n_classes:
        raise ValueError(f"n_points must be >= n_classes = {n_classes}, got {n_points}")
    rng = streams.numpy_generator(seed, "data", "toy2d", kind)
    if kind in ("linear", "rotated_linear"):
        # bands drawn in a square whose rotation still covers [-2, 2]^2, then cut to it
        half, turn = (2.0, _rotation(0.0)) if kind == "linear" else (2.0 * np.sqrt(2.0), _rotation(angle))
        per_class = _per_class(n_points, n_classes)
        points, labels = np.zeros((0, 2)), np.zeros(0, dtype=int)
        while np.any(np.bincount(labels, minlength=n_classes) < per_class):
            draw, draw_labels = _bands(rng, 4 * n_points, n_classes, margin, half)
            draw = draw @ turn.T
            inside = np.all(np.abs(draw) <= 2.0, axis=1)
            points, labels = np.vstack([points, draw[inside]]), np.concatenate([labels, draw_labels[inside]])
        keep = np.concatenate([np.flatnonzero(labels == k)[: per_class[k]] for k in range(n_classes)])
        points, labels = points[keep], labels[keep]
    elif kind == "donut":
        width = (2.0 - margin * (n_classes - 1)) / n_classes
        chunks, labels = [], []
        for k, count in enumerate(_per_class(n_points, n_classes)):
            inner = k * (width + margin)
            radius = np.sqrt(rng.uniform(inner**2, (inner + width) ** 2, count))  # uniform over the ring's area
            phi = rng.uniform(0.0, 2 * np.pi, count)
            chunks.append(np.stack([radius * np.cos(phi), radius * np.sin(phi)], axis=1))
            labels.append(np.full(count, k))
        points, labels = np.vstack(chunks), np.concatenate(labels)
    else:
        chunks, labels = [], []
        for k, count in enumerate(_per_class(n_points, n_classes)):
            phi = 2 * np.pi * k / n_classes + np.pi / 2
            centre = 1.1 * np.array([np.cos(phi), np.sin(phi)])
            chunks.append(centre + 0.45 * rng.standard_normal((count, 2)))
            labels.append(np.full(count, k))
        points, labels = np.vstack(chunks), np.concatenate(labels)
    shuffle = rng.permutation(len(points))
    return points[shuffle].astype(np.float32), labels[shuffle].astype(np.int64)


def train_test_split(points, labels, test_fraction: float = 0.2, seed: int = 0):
    """A seeded split: ((train points, train labels), (test points, test labels)); the test part
    has round(test_fraction * N) examples (the released 2-D test set is about 20% of a 1,200-point set)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    points, labels = np.asarray(points), np.asarray(labels)
    order = streams.numpy_generator(seed, "subsample", "toy2d_split").permutation(len(points))
    cut = int(round(test_fraction * len(points)))
    test, train = order[:cut], order[cut:]
    return (points[train], labels[train]), (points[test], labels[test])


class ToyMLP(nn.Module):
    """The thesis's 3-class toy classifier (Figure 5.5): 2 -> 64 -> 32 -> 16 -> num_classes with ReLU;
    returns logits."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16),
                                 nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)


def toy_classifier(num_classes: int) -> nn.Module:
    """The thesis's architecture for `num_classes` (Figure 5.5): RancerMLP for 2, ToyMLP otherwise."""
    check_num_classes(num_classes)
    return RancerMLP(2) if num_classes == 2 else ToyMLP(num_classes)


def train_toy_classifier(points, labels, num_classes: int, *, epochs: int = 2000, learning_rate: float | None = None,
                         seed: int = 0) -> nn.Module:
    """Train the thesis's shallow classifier (Sec. 5.3.2) full-batch for `epochs` steps, from weights
    drawn with `seed`: for 2 classes RancerMLP with NLLLoss and SGD (momentum 0.9, default lr 0.5),
    for more ToyMLP with cross-entropy and Adam (default lr 0.01). Returns the model in eval mode."""
    epochs = check_positive_int(epochs, "epochs")
    x = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if x.dim() != 2 or x.shape[1] != 2 or len(x) != len(y):
        raise ValueError(f"points must have shape (N, 2) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    with streams.seeded_global(seed, "init", "toy2d"):
        model = toy_classifier(num_classes)
    if num_classes == 2:
        optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate or 0.5, momentum=0.9)
        criterion = nn.NLLLoss()  # RancerMLP returns log-probabilities
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate or 0.01)
        criterion = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()
    return model.eval()


def decision_grid(model, bounds=(-2.5, 2.5, -2.5, 2.5), resolution: int = 200) -> tuple[np.ndarray, np.ndarray,
                                                                                           np.ndarray]:
    """The base classifier's prediction on a resolution x resolution grid over bounds (x0, x1, y0,
    y1): (xx, yy, labels), each of shape (resolution, resolution), for drawing decision regions."""
    resolution = check_positive_int(resolution, "resolution")
    x0, x1, y0, y1 = bounds
    xx, yy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    grid = torch.as_tensor(np.stack([xx.ravel(), yy.ravel()], axis=1), dtype=torch.float32)
    with torch.inference_mode():
        labels = model(grid).argmax(dim=1).numpy().reshape(xx.shape)
    return xx, yy, labels
