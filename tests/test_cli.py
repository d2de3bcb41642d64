"""The `rsbook` command line: certify, predict, fetch; a killed run resumes (bad input: tests/test_validation.py)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from rsbook.cli import main
from rsbook.logs import read_certify_log, read_log_manifest, read_manifest, read_predict_log

RSBOOK = [sys.executable, "-m", "rsbook"]


def _certify_args(checkpoint, out, *extra):
    return ["certify", "--dataset", "digits", "--checkpoint", str(checkpoint), "--sigma", "0.25", "--n0", "100",
            "--n", "1000", "--alpha", "0.001", "--batch", "500", "--skip", "1", "--seed", "0", "--out", str(out),
            "--no-progress", *extra]


def test_certify_contract_and_append_on_larger_max(tmp_path, digits_checkpoint, capsys):
    log_path = tmp_path / "run" / "certify.tsv"
    assert main(_certify_args(digits_checkpoint, log_path, "--max", "6")) == 0
    assert capsys.readouterr().out.strip() == str(log_path)
    first = read_certify_log(log_path)
    assert first["idx"].tolist() == list(range(6))
    assert main(_certify_args(digits_checkpoint, log_path, "--max", "9")) == 0
    second = read_certify_log(log_path)
    assert second["idx"].tolist() == list(range(9))
    assert second.head(6)[["predict", "radius"]].equals(first[["predict", "radius"]])
    manifest = read_log_manifest(log_path)
    assert manifest["parameters"]["checkpoint_sha256"] and manifest["parameters"]["arch"] == "digits_cnn"


def test_certify_next_to_the_checkpoint_as_the_readme_does(tmp_path, capsys):
    """Issue 13, item 2: train into a folder, then certify and predict into logs in that same folder; a
    second log with other parameters beside them; the same log with other parameters is refused."""
    folder = tmp_path / "runs" / "digits" / "0.25"
    assert main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--noise-sd", "0.25", "--epochs", "1",
                 "--batch", "128", "--out", str(folder), "--no-progress"]) == 0
    checkpoint = folder / "checkpoint.pt"
    assert main(_certify_args(checkpoint, folder / "certify.tsv", "--max", "3")) == 0
    assert main(["predict", "--dataset", "digits", "--checkpoint", str(checkpoint), "--sigma", "0.25", "--n", "100",
                 "--alpha", "0.001", "--batch", "100", "--max", "3", "--out", str(folder / "predict.tsv"),
                 "--no-progress"]) == 0
    other = _certify_args(checkpoint, folder / "sigma_0.50.tsv", "--max", "3")
    other[other.index("--sigma") + 1] = "0.5"
    assert main(other) == 0
    capsys.readouterr()
    assert [len(read_certify_log(folder / name)) for name in ("certify.tsv", "sigma_0.50.tsv")] == [3, 3]
    assert read_manifest(folder)["parameters"]["noise_sd"] == 0.25  # the training run's manifest
    assert read_log_manifest(folder / "sigma_0.50.tsv")["parameters"]["sigma"] == 0.5
    again = _certify_args(checkpoint, folder / "certify.tsv", "--max", "3")
    again[again.index("--sigma") + 1] = "0.5"
    assert main(again) == 2
    error = capsys.readouterr().err
    assert "certify.tsv holds a run with different parameters (sigma): sigma: recorded 0.25, requested 0.5" in error


def test_predict_command(tmp_path, digits_checkpoint):
    out = tmp_path / "p" / "predict.tsv"
    code = main(["predict", "--dataset", "digits", "--checkpoint", str(digits_checkpoint), "--sigma", "0.25",
                 "--n", "100", "--alpha", "0.001", "--batch", "100", "--max", "5", "--out", str(out), "--no-progress"])
    assert code == 0 and len(read_predict_log(out)) == 5


def test_certify_the_rancer_authors_model_on_their_points(runs, tmp_path, capsys):
    # The RANCER 2-D pipeline's released weights are a bare state_dict: --arch names it.
    assert main(["fetch", "tarasrumezhak/RANCER/pipeline_2D/weights/model_weights.pth"]) == 0
    weights = capsys.readouterr().out.strip()
    out = tmp_path / "rancer" / "certify.tsv"
    assert main(["certify", "--dataset", "rancer_toy", "--checkpoint", weights, "--arch", "rancer_mlp", "--sigma",
                 "0.25", "--n0", "100", "--n", "2000", "--alpha", "0.001", "--batch", "2000", "--out", str(out),
                 "--no-progress"]) == 0
    log = read_certify_log(out)
    assert len(log) == 236 and log["correct"].mean() > 0.5
    assert main(["certify", "--dataset", "rancer_toy", "--checkpoint", weights, "--sigma", "0.25",
                 "--out", str(tmp_path / "x.tsv")]) == 2
    assert "bare state_dict" in capsys.readouterr().err


def test_fetch_list_and_errors(runs, capsys):
    assert main(["fetch", "--list"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 21 and all(len(line.split("\t")[1]) == 64 for line in listed)
    assert main(["fetch", "no/such/artifact"]) == 2
    assert "unknown artifact" in capsys.readouterr().err
    assert main(["fetch"]) == 2


def test_killed_process_resumes_without_losing_rows(tmp_path, digits_checkpoint):
    """kill -9 in the middle of a run, rerun the same command: the log equals an uninterrupted
    run's, except for the wall-clock time column."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["certify", "--dataset", "digits", "--checkpoint", str(digits_checkpoint), "--sigma", "0.5", "--n0",
            "100", "--n", "20000", "--alpha", "0.001", "--batch", "2000", "--max", "12", "--seed", "3",
            "--no-progress"]
    whole = tmp_path / "whole" / "log.tsv"
    subprocess.run(RSBOOK + args + ["--out", str(whole)], check=True, env=env, capture_output=True)
    killed = tmp_path / "killed" / "log.tsv"
    proc = subprocess.Popen(RSBOOK + args + ["--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if killed.exists() and len(killed.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows_at_kill = len(read_certify_log(killed))
    assert 3 <= rows_at_kill < 12, "the run finished before it could be killed; make it longer"
    subprocess.run(RSBOOK + args + ["--out", str(killed)], check=True, env=env, capture_output=True)
    a, b = read_certify_log(whole), read_certify_log(killed)
    columns = ["idx", "label", "predict", "radius", "correct"]
    assert a[columns].equals(b[columns])
    assert np.all(b["time"] > 0)
