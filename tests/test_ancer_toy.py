"""rsbook.ancer.toy: the seeded 2-D toy sets of the kinds the thesis drew (Sec. 5.1.1: 2 classes / 300
points, 3 classes / 1,200 points) and its shallow classifiers (Sec. 5.3.2, Figure 5.5)."""

import numpy as np
import pytest
import torch

from rsbook.ancer.toy import (
    TOY_KINDS,
    ToyMLP,
    decision_grid,
    make_toy,
    train_test_split,
    train_toy_classifier,
)
from rsbook.models import RancerMLP


@pytest.mark.parametrize("kind", TOY_KINDS)
@pytest.mark.parametrize("classes, points", [(2, 300), (3, 1200)])
def test_toy_sets_are_seeded_balanced_and_in_range(kind, classes, points):
    x, y = make_toy(kind, points, classes, seed=3)
    assert x.shape == (points, 2) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [points // classes] * classes
    assert np.abs(x).max() < 3.5
    again, labels = make_toy(kind, points, classes, seed=3)
    np.testing.assert_array_equal(again, x)
    other, _ = make_toy(kind, points, classes, seed=4)
    assert not np.array_equal(other, x)


def test_geometry_of_the_kinds():
    x, y = make_toy("linear", 300, 3, seed=0, margin=0.2)
    edges = np.linspace(-2, 2, 4)[1:-1]
    np.testing.assert_array_equal(y, np.searchsorted(edges, x[:, 0]))  # vertical bands: axis-aligned boundaries
    assert np.min(np.abs(x[:, :1] - edges)) >= 0.2 - 1e-6
    angle = np.pi / 5
    x, y = make_toy("rotated_linear", 300, 2, seed=0, angle=angle)
    back = x @ np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])  # rotate by -angle
    np.testing.assert_array_equal(y, (back[:, 0] > 0).astype(int))
    x, y = make_toy("donut", 300, 2, seed=0)
    radius = np.linalg.norm(x, axis=1)
    assert radius[y == 0].max() < radius[y == 1].min()


def test_shallow_classifiers_train_in_seconds():
    for classes, arch in ((2, RancerMLP), (3, ToyMLP)):
        x, y = make_toy("blobs" if classes == 3 else "rotated_linear", 300 * classes, classes, seed=1)
        (train_x, train_y), (test_x, test_y) = train_test_split(x, y, 0.2, seed=0)
        assert len(test_x) == round(0.2 * len(x))
        model = train_toy_classifier(train_x, train_y, classes, epochs=500, seed=0)
        assert isinstance(model, arch) and not model.training
        accuracy = (model(torch.as_tensor(test_x)).argmax(1).numpy() == test_y).mean()
        assert accuracy > 0.9
        xx, yy, labels = decision_grid(model, resolution=30)
        assert xx.shape == yy.shape == labels.shape == (30, 30) and set(np.unique(labels)) <= set(range(classes))


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="kind must be one of"):
        make_toy("spiral", 10, 2)
    with pytest.raises(ValueError, match="n_classes must be >= 2"):
        make_toy("blobs", 10, 1)
    with pytest.raises(ValueError, match="labels must lie in"):
        train_toy_classifier(np.zeros((3, 2)), np.array([0, 1, 2]), 2, epochs=1)
