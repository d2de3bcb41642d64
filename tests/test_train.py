"""Training with Gaussian data augmentation (Cohen et al. 2019, Sec. 3.3, App. F): the command line
contract, per-dataset defaults (issue 13, item 4), resuming to the same weights, learning, and the
CIFAR-10 path on a miniature dataset."""

import pytest
import torch

from rsbook import train as train_module
from rsbook.cli import main
from rsbook.distributed import all_sum, on_rank_zero, per_rank_batch, rank_key, rank_world, shard, unwrap, wrap
from rsbook.logs import read_manifest
from rsbook.models import load_checkpoint
from rsbook.train import COHEN, DEFAULTS, train, train_models, training_defaults


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
    manifest = read_manifest(out)
    assert manifest["seed"] == 0 and manifest["epochs"] == 2 and manifest["world_size"] == 1
    # the digits defaults actually used are recorded (the flags were left out)
    assert manifest["parameters"] == {"dataset": "digits", "arch": "digits_cnn", "noise_sd": 0.25, "epochs": 2,
                                      **{k: v for k, v in DEFAULTS["digits"].items() if k != "epochs"}}


def test_the_readme_command_trains_a_useful_digits_model(tmp_path):
    """The README's example (2 epochs at the digits defaults) must give a base classifier that the
    certify example after it can use: >= 0.9 accuracy on noisy test digits. (At batch 256 it was 0.30.)"""
    out = tmp_path / "runs" / "digits" / "0.25"
    assert main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--noise-sd", "0.25", "--epochs", "2",
                 "--seed", "0", "--out", str(out), "--no-progress"]) == 0
    assert float(_log_rows(out)[-1].split("\t")[4]) >= 0.9


def test_defaults_per_dataset():
    assert DEFAULTS["cifar10"] is COHEN and DEFAULTS["imagenet"] is COHEN
    assert dict(COHEN) == {"schedule": "step", "epochs": 90, "batch_size": 400, "lr": 0.1, "momentum": 0.9,
                           "weight_decay": 1e-4, "lr_step": 30, "gamma": 0.1}
    assert training_defaults("cifar10") == dict(COHEN)
    digits = training_defaults("digits", epochs=2)
    assert digits["schedule"] == "linear" and digits["epochs"] == 2 and digits["lr_step"] is None
    # naming a step size chooses Cohen's step recipe, as the chapters' calls expect
    stepped = training_defaults("digits", batch_size=128, lr_step=20, epochs=60)
    assert stepped == {**COHEN, "batch_size": 128, "lr_step": 20, "epochs": 60}
    assert training_defaults("imagenet", schedule="linear", epochs=5)["lr_step"] is None
    with pytest.raises(ValueError, match="lr_step belong to the step schedule"):
        training_defaults("digits", schedule="linear", lr_step=5)
    with pytest.raises(ValueError, match="to train on it"):
        training_defaults("rancer_toy")
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        training_defaults("digits", learning_rate=0.1)


def test_the_linear_schedule_reaches_zero_at_the_last_epoch(tmp_path):
    train("digits", "digits_cnn", 0.25, 4, tmp_path / "run", batch_size=128, schedule="linear", progress=False)
    assert [float(row.split("\t")[1]) for row in _log_rows(tmp_path / "run")] == pytest.approx([0.1, 0.075, 0.05,
                                                                                                0.025])


def test_resumed_training_ends_with_the_same_weights(tmp_path):
    kwargs = dict(seed=3, batch_size=128, lr_step=2, progress=False)
    straight = train("digits", "digits_cnn", 0.5, 3, tmp_path / "straight", **kwargs)
    train("digits", "digits_cnn", 0.5, 1, tmp_path / "resumed", **kwargs)
    resumed = train("digits", "digits_cnn", 0.5, 3, tmp_path / "resumed", **kwargs)  # extends to 3 epochs
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log_rows(tmp_path / "straight")[-1].split("\t")[:5] == _log_rows(tmp_path / "resumed")[-1].split("\t")[:5]
    assert len(read_manifest(tmp_path / "resumed")["resumed"]) == 1


@pytest.mark.parametrize("schedule", ["step", "linear"])
def test_a_crash_after_the_checkpoint_resumes_cleanly(tmp_path, monkeypatch, schedule):
    kwargs = dict(seed=1, batch_size=256, schedule=schedule, progress=False)
    epochs = {"step": 2, "linear": 3}[schedule]  # the linear schedule's epochs are a parameter: never extended
    straight = train("digits", "digits_cnn", 0.25, epochs, tmp_path / "straight", **kwargs)
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
    train("digits", "digits_cnn", 0.25, epochs, tmp_path / "crashed", **kwargs)
    rows = [row.split("\t") for row in _log_rows(tmp_path / "crashed")]
    if schedule == "step":  # stopped at 2 epochs: nothing left to do, epoch 2's row stays lost
        assert [row[0] for row in rows] == ["1"]
    else:  # resumed after epoch 2 to the same 3-epoch schedule
        assert [row[0] for row in rows] == ["1", "3"]
        assert rows[-1][1:5] == _log_rows(tmp_path / "straight")[-1].split("\t")[1:5]
    a, b = _weights(straight), _weights(tmp_path / "crashed" / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_noise_training_learns_digits_with_cohens_step_recipe(tmp_path):
    path = train("digits", "digits_cnn", 0.25, 15, tmp_path / "run", seed=0, batch_size=64, schedule="step",
                 progress=False)
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
                                          ({"dataset": "mnist"}, "dataset"), ({"momentum": 1.0}, "momentum"),
                                          ({"weight_decay": -1e-4}, "weight_decay"), ({"gamma": 0.0}, "gamma"),
                                          ({"schedule": "cosine"}, "schedule"), ({"lr_step": 0}, "lr_step")])
def test_bad_arguments(tmp_path, kwargs, name):
    arguments = {"dataset": "digits", "arch": "digits_cnn", "noise_sd": 0.25, "epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        train(arguments.pop("dataset"), arguments.pop("arch"), arguments.pop("noise_sd"), arguments.pop("epochs"),
              tmp_path / "run", progress=False, **arguments)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_finished_folder_refuses_other_parameters(tmp_path):
    train("digits", "digits_cnn", 0.25, 1, tmp_path / "run", batch_size=128, progress=False)
    with pytest.raises(ValueError, match="different parameters \\(noise_sd\\): noise_sd: recorded 0.25, requested 0.5"):
        train("digits", "digits_cnn", 0.5, 1, tmp_path / "run", batch_size=128, progress=False)
    # the linear schedule spans the run: more epochs would be another schedule, not an extension
    with pytest.raises(ValueError, match="different parameters \\(epochs\\): epochs: recorded 1, requested 2"):
        train("digits", "digits_cnn", 0.25, 2, tmp_path / "run", batch_size=128, progress=False)


def test_the_global_batch_must_split_evenly_over_the_processes():
    """Under torchrun the batch is the global one (rsbook.distributed; tests/test_distributed.py runs it)."""
    assert per_rank_batch(400, 4) == 100 and per_rank_batch(2, 2) == 1 and per_rank_batch(3, 1) == 3
    with pytest.raises(ValueError, match="the batch size 3 is the global batch and must be divisible by the world "
                                         "size 2 .* choose a batch that is a multiple of 2, or a number of processes "
                                         "that divides 3"):
        per_rank_batch(3, 2)


def test_one_process_keeps_its_streams_and_model():
    """Without a process group the data-parallel helpers change nothing, so single-process runs keep their
    weights (the resume tests above compare them bit for bit)."""
    model = torch.nn.Linear(2, 2)
    data = list(range(5))
    assert rank_world() == (0, 1) and rank_key(3) == (3,) and rank_key("fars", 3) == ("fars", 3)
    assert wrap(model, "cpu") is model and unwrap(model) is model and shard(data) is data
    assert all_sum([2, 3.5], "cpu") == [2.0, 3.5] and on_rank_zero(lambda a, b: a + b, 1, b=2) == 3


def test_train_models_names_folders_by_the_values_used(tmp_path):
    implicit = train_models(tmp_path, "digits", "digits_cnn", [0.25], epochs=1, batch_size=128)[0.25]
    explicit = train_models(tmp_path, "digits", "digits_cnn", [0.25], epochs=1, batch_size=128, lr=0.1,
                            momentum=0.0, schedule="linear")[0.25]
    stepped = train_models(tmp_path, "digits", "digits_cnn", [0.25], epochs=1, batch_size=128, lr_step=30)[0.25]
    assert implicit == explicit and stepped != implicit
