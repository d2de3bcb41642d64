"""Certifying a dataset into the authors' log format: selection, per-example seeding, resume."""

import itertools

import numpy as np
import pytest

from rsbook.data import load_dataset
from rsbook.dataset_runs import certify_dataset, predict_dataset, selected_indices
from rsbook.logs import log_manifest, read_certify_log, read_log_manifest, read_manifest, read_predict_log
from rsbook.models import load_checkpoint
from rsbook.smooth import ABSTAIN, Smooth


def _smooth(checkpoint, sigma=0.25):
    model, _ = load_checkpoint(checkpoint, 10)
    return Smooth(model, 10, sigma)


def _fixed_clock():
    # start/stop pairs 1.5 s apart: deterministic times make whole files comparable byte for byte
    return itertools.cycle([0.0, 1.5]).__next__


def test_selection_follows_the_authors_skip_and_max():
    assert selected_indices(10, skip=3) == [0, 3, 6, 9]
    assert selected_indices(10, skip=2, max_index=5) == [0, 2, 4]
    assert selected_indices(10, skip=1, max_index=40) == list(range(10))
    with pytest.raises(ValueError, match="skip"):
        selected_indices(10, skip=0)


def test_certify_dataset_writes_the_log_and_manifest(tmp_path, digits_checkpoint):
    data = load_dataset("digits", "test")
    out = certify_dataset(_smooth(digits_checkpoint), data, tmp_path / "run" / "certify.tsv", n0=50, n=500,
                          alpha=0.001, batch_size=250, skip=10, max_index=100, seed=0, progress=False,
                          parameters={"dataset": "digits"})
    log = read_certify_log(out)
    assert log["idx"].tolist() == list(range(0, 100, 10))
    assert log["label"].tolist() == [data[i][1] for i in range(0, 100, 10)]
    assert np.all((log["predict"] == -1) == (log["radius"] == 0))
    assert np.all(log.loc[log["correct"] == 1, "predict"] == log.loc[log["correct"] == 1, "label"])
    assert log["correct"].mean() > 0.5  # a noise-trained CNN on digits, sigma = 0.25
    manifest = read_log_manifest(out)
    assert log_manifest(out).name == "certify.tsv.manifest.json"
    assert manifest["parameters"]["n"] == 500 and manifest["parameters"]["dataset"] == "digits"
    assert manifest["seed"] == 0 and manifest["end_time"] is not None


def test_interrupted_run_resumes_to_the_identical_file(tmp_path, digits_checkpoint):
    data = load_dataset("digits", "test")
    kwargs = dict(n0=20, n=300, alpha=0.01, batch_size=100, skip=3, max_index=30, seed=4, progress=False)
    whole = certify_dataset(_smooth(digits_checkpoint), data, tmp_path / "whole" / "log.tsv",
                            clock=_fixed_clock(), **kwargs)

    calls = {"n": 0}
    model, _ = load_checkpoint(digits_checkpoint, 10)

    def dies_midway(batch):
        calls["n"] += 1
        if calls["n"] == 13:  # inside the fifth example (each takes 1 + 3 forward passes)
            raise KeyboardInterrupt
        return model(batch)

    with pytest.raises(KeyboardInterrupt):
        certify_dataset(Smooth(dies_midway, 10, 0.25), data, tmp_path / "split" / "log.tsv",
                        clock=_fixed_clock(), **kwargs)
    partial = read_certify_log(tmp_path / "split" / "log.tsv")
    assert 0 < len(partial) < 10
    with open(tmp_path / "split" / "log.tsv", "a") as handle:
        handle.write("12\t3\t3\t0.4")  # and a torn last line, as a kill -9 can leave
    resumed = certify_dataset(_smooth(digits_checkpoint), data, tmp_path / "split" / "log.tsv",
                              clock=_fixed_clock(), **kwargs)
    assert resumed.read_bytes() == whole.read_bytes()
    assert read_log_manifest(resumed)["resumed"]


def test_larger_max_appends_only_missing_rows(tmp_path, digits_checkpoint):
    data = load_dataset("digits", "test")
    path = tmp_path / "run" / "log.tsv"
    kwargs = dict(n0=20, n=200, alpha=0.01, batch_size=200, seed=0, progress=False)
    certify_dataset(_smooth(digits_checkpoint), data, path, max_index=5, **kwargs)
    first = read_certify_log(path)
    certify_dataset(_smooth(digits_checkpoint), data, path, max_index=8, **kwargs)
    second = read_certify_log(path)
    assert second["idx"].tolist() == list(range(8))
    assert second.head(5)[["predict", "radius"]].equals(first[["predict", "radius"]])
    assert read_log_manifest(path)["max_index"] == 8


def test_a_log_refuses_other_parameters(tmp_path, digits_checkpoint):
    data = load_dataset("digits", "test")
    path = tmp_path / "run" / "log.tsv"
    certify_dataset(_smooth(digits_checkpoint), data, path, n0=10, n=100, alpha=0.01, batch_size=100,
                    max_index=2, progress=False)
    with pytest.raises(ValueError, match="different parameters \\(n\\): n: recorded 100, requested 200"):
        certify_dataset(_smooth(digits_checkpoint), data, path, n0=10, n=200, alpha=0.01, batch_size=100,
                        max_index=3, progress=False)
    with pytest.raises(ValueError, match="different parameters \\(sigma\\)"):
        certify_dataset(_smooth(digits_checkpoint, sigma=0.5), data, path, n0=10, n=100, alpha=0.01,
                        batch_size=100, max_index=3, progress=False)
    assert len(read_certify_log(path)) == 2


def test_logs_share_a_folder_with_each_other_and_a_training_run(tmp_path, digits_checkpoint):
    """Issue 13, item 2: the authors keep noise_0.25/test/sigma_0.25 and sigma_0.50 in one folder, and
    a user certifies next to the checkpoint; each log is immutable on its own."""
    from rsbook.train import train

    data = load_dataset("digits", "test")
    folder = tmp_path / "runs" / "digits" / "0.25"
    checkpoint = train("digits", "digits_cnn", 0.25, 1, folder, batch_size=128, progress=False)
    kwargs = dict(n0=10, n=100, alpha=0.01, batch_size=100, max_index=3, progress=False)
    certify_dataset(_smooth(checkpoint), data, folder / "certify.tsv", **kwargs)
    certify_dataset(_smooth(checkpoint, sigma=0.5), data, folder / "sigma_0.50.tsv", **kwargs)
    predict_dataset(_smooth(checkpoint), data, folder / "predict.tsv", n=100, alpha=0.01, batch_size=100,
                    max_index=3, progress=False)
    assert read_log_manifest(folder / "certify.tsv")["parameters"]["sigma"] == 0.25
    assert read_log_manifest(folder / "sigma_0.50.tsv")["parameters"]["sigma"] == 0.5
    assert read_log_manifest(folder / "predict.tsv")["parameters"]["kind"] == "predict"
    assert read_manifest(folder)["parameters"]["arch"] == "digits_cnn"  # the training run's, untouched
    assert len(read_certify_log(folder / "sigma_0.50.tsv")) == 3
    with pytest.raises(ValueError, match="different parameters \\(sigma\\)"):
        certify_dataset(_smooth(checkpoint, sigma=0.5), data, folder / "certify.tsv", **kwargs)
    train("digits", "digits_cnn", 0.25, 1, folder, batch_size=128, progress=False)  # resumes: nothing to do


def test_predict_dataset(tmp_path, digits_checkpoint):
    data = load_dataset("digits", "test")
    out = predict_dataset(_smooth(digits_checkpoint), data, tmp_path / "p" / "predict.tsv", n=200, alpha=0.001,
                          batch_size=200, max_index=20, progress=False)
    log = read_predict_log(out)
    assert len(log) == 20 and set(log["predict"]) <= set(range(10)) | {ABSTAIN}
    assert np.all(log["correct"] == (log["predict"] == log["label"]).astype(int))
