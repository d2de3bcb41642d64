"""Embedded datasets and checkpoints: shapes, fixed splits, the authors' 2-D model, clear errors."""

import pytest
import torch

from rsbook.data import load_dataset, num_classes
from rsbook.models import build, load_checkpoint, save_checkpoint


def test_digits_split_is_fixed_and_in_pixel_space():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 540
    x, label = test[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= label < 10
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert torch.equal(load_dataset("digits", "test").x, test.x)  # the same split every time
    assert num_classes("digits") == 10


def test_rancer_toy_points(runs):
    data = load_dataset("rancer_toy")
    assert len(data) == 236 and data[0][0].shape == (2,) and set(data.labels.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="split must be one of \\('test',\\)"):
        load_dataset("rancer_toy", "train")


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("digits", "val")


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = build("digits_cnn", 10)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, "digits_cnn", "digits", noise_sd=0.5, epoch=3)
    loaded, payload = load_checkpoint(path, 10)
    assert payload["arch"] == "digits_cnn" and payload["noise_sd"] == 0.5 and payload["epoch"] == 3
    assert not loaded.training
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left
    with pytest.raises(ValueError, match="requested"):
        load_checkpoint(path, 10, arch="rancer_mlp")
    torch.save(build("rancer_mlp", 2).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare state_dict"):
        load_checkpoint(tmp_path / "bare.pt", 2)
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(tmp_path / "bare.pt", 10, arch="digits_cnn")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch file"):
        load_checkpoint(tmp_path / "junk.pt", 10)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", 10)
    with pytest.raises(ValueError, match="arch must be one of"):
        build("resnet9000", 10)
