"""Training with Gaussian data augmentation (Cohen et al. 2019, Sec. 3.3, App. F): the command line
contract, resuming to the same weights, learning, and the CIFAR-10 path on a miniature dataset."""

import pytest
import torch

from rsbook import train as train_module
from rsbook.cli import main
from rsbook.logs import read_manifest
from rsbook.models import load_checkpoint
from rsbook.train import train


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def _log_rows(folder):
    return (folder / "train_log.tsv").read_text().splitlines()[1:]


def test_cli_contract_writes_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--noise-sd", "0.25", "--epochs", "2",
                 "--seed", "0", "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "checkpoint.pt")
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {"arch", "dataset", "state_dict", "noise_sd", "epoch", "optimizer"} <= set(payload)
    assert payload["epoch"] == 2 and payload["noise_sd"] == 0.25 and payload["arch"] == "digits_cnn"
    assert len(_log_rows(out)) == 2
    assert read_manifest(out)["parameters"]["lr"] == 0.1 and read_manifest(out)["seed"] == 0


def test_resumed_training_ends_with_the_same_weights(tmp_path):
    kwargs = dict(seed=3, batch_size=128, lr_step=2, progress=False)
    straight = train("digits", "digits_cnn", 0.5, 3, tmp_path / "straight", **kwargs)
    train("digits", "digits_cnn", 0.5, 1, tmp_path / "resumed", **kwargs)
    resumed = train("digits", "digits_cnn", 0.5, 3, tmp_path / "resumed", **kwargs)  # extends to 3 epochs
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log_rows(tmp_path / "straight")[-1].split("\t")[:5] == _log_rows(tmp_path / "resumed")[-1].split("\t")[:5]
    assert len(read_manifest(tmp_path / "resumed")["resumed"]) == 1


def test_a_crash_after_the_checkpoint_resumes_cleanly(tmp_path, monkeypatch):
    kwargs = dict(seed=1, batch_size=256, progress=False)
    straight = train("digits", "digits_cnn", 0.25, 2, tmp_path / "straight", **kwargs)
    calls = {"n": 0}
    real_append = train_module.append_epoch_row

    def crash_on_second_epoch(path, columns, row):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # epoch 2's checkpoint is on disk, its log row is not
        real_append(path, columns, row)

    monkeypatch.setattr(train_module, "append_epoch_row", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train("digits", "digits_cnn", 0.25, 3, tmp_path / "crashed", **kwargs)
    monkeypatch.setattr(train_module, "append_epoch_row", real_append)
    train("digits", "digits_cnn", 0.25, 2, tmp_path / "crashed", **kwargs)  # nothing left to do for 2 epochs
    assert [row.split("\t")[0] for row in _log_rows(tmp_path / "crashed")] == ["1"]
    a, b = _weights(straight), _weights(tmp_path / "crashed" / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_noise_training_learns_digits(tmp_path):
    path = train("digits", "digits_cnn", 0.25, 15, tmp_path / "run", seed=0, batch_size=64, progress=False)
    last = _log_rows(tmp_path / "run")[-1].split("\t")
    assert float(last[4]) > 0.85  # the base classifier's accuracy on noisy test digits
    model, payload = load_checkpoint(path, 10)
    assert payload["epoch"] == 15 and not model.training


def test_cifar_resnet_trains_on_the_on_disk_format(tmp_path, cifar):
    path = train("cifar10", "cifar_resnet20", 0.12, 1, tmp_path / "run", seed=0, batch_size=4, progress=False)
    model, payload = load_checkpoint(path, 10)
    assert payload["dataset"] == "cifar10" and payload["arch"] == "cifar_resnet20"
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("kwargs, name", [({"epochs": 0}, "epochs"), ({"noise_sd": -0.5}, "noise_sd"),
                                          ({"batch_size": 0}, "batch_size"), ({"lr": 0.0}, "lr"),
                                          ({"seed": -1}, "seed"), ({"arch": "vgg"}, "arch"),
                                          ({"dataset": "mnist"}, "dataset")])
def test_bad_arguments(tmp_path, kwargs, name):
    arguments = {"dataset": "digits", "arch": "digits_cnn", "noise_sd": 0.25, "epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        train(arguments.pop("dataset"), arguments.pop("arch"), arguments.pop("noise_sd"), arguments.pop("epochs"),
              tmp_path / "run", progress=False, **arguments)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_finished_folder_refuses_other_parameters(tmp_path):
    train("digits", "digits_cnn", 0.25, 1, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="different parameters \\(noise_sd\\)"):
        train("digits", "digits_cnn", 0.5, 2, tmp_path / "run", progress=False)
