"""The shared argument checks (rsbook._checks) and the entry points that rely on them."""

import numpy as np
import pytest
from torch import nn

from rsbook._checks import check_num_classes, check_seed
from rsbook.ancer.toy import toy_classifier
from rsbook.fars import SparsemaxSmooth
from rsbook.smooth import Smooth


@pytest.mark.parametrize("good", [0, 7, np.int64(3)])
def test_check_seed_accepts_integers_and_returns_an_int(good):
    assert check_seed(good) == int(good) and type(check_seed(good)) is int


@pytest.mark.parametrize("bad", [-1, True, 1.0, "0", None])
def test_check_seed_names_the_argument(bad):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        check_seed(bad)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.0, True])
def test_check_num_classes_needs_two_or_more(bad):
    with pytest.raises(ValueError, match="num_classes must be"):
        check_num_classes(bad)
    assert check_num_classes(2) == 2


@pytest.mark.parametrize("build", [lambda k: Smooth(nn.Identity(), k, 0.25),
                                   lambda k: SparsemaxSmooth(nn.Identity(), k, 0.25),
                                   toy_classifier])
def test_classifiers_reject_one_class(build):
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build(1)


def test_check_checkpoint_names_the_missing_file_and_how_to_make_one(tmp_path):
    from rsbook._checks import check_checkpoint

    with pytest.raises(FileNotFoundError, match=r"nope\.pt does not exist \(train it first"):
        check_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError):
        check_checkpoint(tmp_path)  # a folder is not a checkpoint
    (tmp_path / "model.pt").write_bytes(b"")
    check_checkpoint(tmp_path / "model.pt")
