"""Certify/predict logs in the authors' TSV format (locuslab/smoothing `certify.py`, `predict.py`) and
run manifests (DESIGN.md, "Runs are immutable and self-describing; a rerun with the same parameters and
seed gives the same file")."""

import datetime as dt
import json
import os

import numpy as np
import pytest

from rsbook.logs import (
    CERTIFY_COLUMNS,
    PREDICT_COLUMNS,
    LogFormatError,
    LogWriter,
    begin_log,
    begin_run,
    finish_log,
    format_time,
    log_manifest,
    parse_time,
    read_certify_log,
    read_log,
    read_log_manifest,
    read_manifest,
    read_predict_log,
    run_manifest,
    write_manifest,
)

CERTIFY_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"
PREDICT_HEADER = "idx\tlabel\tpredict\tcorrect\ttime"

# The first rows of the authors' ImageNet sigma = 0.25 log (H:MM:SS.ffffff times), an abstention,
# a wrong prediction, and a row timed in plain seconds.
AUTHORS_CERTIFY = (
    CERTIFY_HEADER + "\n"
    "0\t0\t0\t0.165\t1\t0:02:31.238689\n"
    "100\t2\t2\t0.978\t1\t0:02:28.472100\n"
    "200\t4\t-1\t0.0\t0\t0:02:30.000001\n"
    "300\t7\t9\t0.0734\t0\t12.5\n"
)
AUTHORS_PREDICT = (
    PREDICT_HEADER + "\n"
    "0\t0\t0\t1\t0:00:01.737771\n"
    "100\t2\t2\t1\t0.158496\n"
    "200\t5\t-1\t0\t1.25\n"
)


def _write(path, text):
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------- reading


def test_read_authors_certify_log(tmp_path):
    log = read_log(_write(tmp_path / "sigma_0.25", AUTHORS_CERTIFY))
    assert tuple(log.columns) == CERTIFY_COLUMNS
    assert {c: str(log[c].dtype) for c in log} == {
        "idx": "int64", "label": "int64", "predict": "int64", "radius": "float64", "correct": "int64", "time": "float64"}
    assert log["idx"].tolist() == [0, 100, 200, 300]
    assert log["label"].tolist() == [0, 2, 4, 7]
    assert log["predict"].tolist() == [0, 2, -1, 9]  # -1 is ABSTAIN
    assert log["radius"].tolist() == [0.165, 0.978, 0.0, 0.0734]
    assert log["correct"].tolist() == [1, 1, 0, 0]
    np.testing.assert_allclose(log["time"], [151.238689, 148.4721, 150.000001, 12.5], rtol=0, atol=1e-9)


def test_read_authors_predict_log(tmp_path):
    log = read_log(_write(tmp_path / "N_100", AUTHORS_PREDICT))
    assert tuple(log.columns) == PREDICT_COLUMNS
    assert "radius" not in log
    assert [str(log[c].dtype) for c in ("idx", "label", "predict", "correct")] == ["int64"] * 4
    assert log["time"].dtype == np.float64
    assert log["predict"].tolist() == [0, 2, -1]
    np.testing.assert_allclose(log["time"], [1.737771, 0.158496, 1.25], rtol=0, atol=1e-12)


def test_kind_is_inferred_and_checked(tmp_path):
    certify = _write(tmp_path / "c.tsv", AUTHORS_CERTIFY)
    predict = _write(tmp_path / "p.tsv", AUTHORS_PREDICT)
    assert len(read_certify_log(certify)) == 4 and len(read_predict_log(predict)) == 3
    assert len(read_log(certify, "certify")) == 4
    with pytest.raises(LogFormatError, match="expected a predict log") as err:
        read_log(certify, "predict")
    assert str(certify) in str(err.value)
    with pytest.raises(LogFormatError, match="expected a certify log"):
        read_certify_log(predict)


def test_header_only_log_is_empty_with_dtypes(tmp_path):
    log = read_log(_write(tmp_path / "c.tsv", CERTIFY_HEADER + "\n"))
    assert len(log) == 0 and tuple(log.columns) == CERTIFY_COLUMNS
    assert log["idx"].dtype == np.int64 and log["radius"].dtype == np.float64


# ----------------------------------------------------------------------------------------- times


@pytest.mark.parametrize("text, seconds", [
    ("0:02:31.238689", 151.238689),
    ("0:00:13.736080", 13.73608),
    ("1:00:00", 3600.0),
    ("12.5", 12.5),
    ("0", 0.0),
    ("1 day, 1:01:01.500000", 90061.5),
    ("2 days, 0:00:05", 172805.0),
])
def test_parse_time(text, seconds):
    assert parse_time(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("bad", ["abc", "1:2", "0:61:00", "0:00:75", "-3", "nan", "inf"])
def test_parse_time_rejects(bad):
    with pytest.raises(ValueError):
        parse_time(bad)


@pytest.mark.parametrize("seconds", [0.0, 12.5, 151.238689, 3599.999999, 90061.5, 3 * 86400 + 7.25])
def test_format_time_round_trip_hms(seconds):
    text = format_time(seconds, "hms")
    assert ":" in text
    assert parse_time(text) == pytest.approx(seconds, abs=1e-6)  # str(timedelta) keeps microseconds


def test_format_time_authors_style_and_days():
    assert format_time(151.238689) == "0:02:31.238689"  # default style is the authors'
    assert format_time(90061.5) == "1 day, 1:01:01.500000"


@pytest.mark.parametrize("seconds", [0.0, 12.5, 0.1 + 0.2, 151.238689, 90061.123456789])
def test_format_time_round_trip_seconds_is_exact(seconds):
    text = format_time(seconds, "seconds")
    assert ":" not in text
    assert parse_time(text) == seconds


def test_format_time_bad_style():
    with pytest.raises(ValueError, match="style"):
        format_time(1.0, "minutes")


# ----------------------------------------------------------------------------------------- writing

CERTIFY_ROWS = [  # idx, label, predict, correct, time, radius
    (0, 3, 3, 1, 13.73608, 0.123456789012345),
    (20, 7, -1, 0, 13.771528, 0.0),
    (40, 1, 4, 0, 151.238689, 0.5),
    (60, 9, 9, 1, 90061.5, 1.0 / 3.0),
    (80, 2, 2, 1, 0.25, 2.718281828459045),
]
PREDICT_ROWS = [(0, 0, 0, 1, 1.737771), (100, 2, -1, 0, 0.158496), (200, 5, 6, 0, 3.5)]


def _write_certify(writer, rows):
    for idx, label, predict, correct, time, radius in rows:
        writer.write(idx, label, predict, correct, time, radius=radius)


@pytest.mark.parametrize("style", ["hms", "seconds"])
def test_writer_certify_round_trip(tmp_path, style):
    path = tmp_path / "run" / "certify.tsv"  # the folder is created
    with LogWriter(path, "certify", time_style=style) as writer:
        _write_certify(writer, CERTIFY_ROWS)
    assert path.read_text().splitlines()[0] == CERTIFY_HEADER
    log = read_certify_log(path)
    assert log["idx"].tolist() == [r[0] for r in CERTIFY_ROWS]
    assert log["label"].tolist() == [r[1] for r in CERTIFY_ROWS]
    assert log["predict"].tolist() == [r[2] for r in CERTIFY_ROWS]
    assert log["correct"].tolist() == [r[3] for r in CERTIFY_ROWS]
    # full precision radii, unlike the authors' 3 digits
    assert log["radius"].tolist() == [r[5] for r in CERTIFY_ROWS]
    assert log["radius"].iloc[0] == 0.123456789012345
    times = [r[4] for r in CERTIFY_ROWS]
    if style == "seconds":
        assert log["time"].tolist() == times
    else:
        np.testing.assert_allclose(log["time"], times, rtol=0, atol=1e-6)


def test_writer_predict_round_trip(tmp_path):
    path = tmp_path / "predict.tsv"
    with LogWriter(path, "predict", time_style="seconds") as writer:
        for row in PREDICT_ROWS:
            writer.write(*row)
    assert path.read_text().splitlines()[0] == PREDICT_HEADER
    log = read_predict_log(path)
    assert log.to_numpy().tolist() == [list(map(float, r)) for r in PREDICT_ROWS]


def test_writer_radius_required_only_for_certify(tmp_path):
    with LogWriter(tmp_path / "c.tsv", "certify") as writer:
        with pytest.raises(ValueError, match="radius"):
            writer.write(0, 1, 1, 1, 1.0)
    with LogWriter(tmp_path / "p.tsv", "predict") as writer:
        with pytest.raises(ValueError, match="radius"):
            writer.write(0, 1, 1, 1, 1.0, radius=0.5)
    with pytest.raises(ValueError, match="kind"):
        LogWriter(tmp_path / "x.tsv", "attack")


# ----------------------------------------------------------------------------------------- resuming


def test_resume_exposes_done_and_appends(tmp_path):
    path = tmp_path / "c.tsv"
    with LogWriter(path) as writer:
        assert writer.done == set()
        _write_certify(writer, CERTIFY_ROWS[:2])
        assert writer.done == {0, 20}
    with LogWriter(path) as writer:
        assert writer.done == {0, 20}
        _write_certify(writer, CERTIFY_ROWS[2:])
    log = read_certify_log(path)
    assert log["idx"].tolist() == [0, 20, 40, 60, 80]
    assert path.read_text().count(CERTIFY_HEADER) == 1  # header written once


def test_resume_on_authors_log(tmp_path):
    path = _write(tmp_path / "sigma_0.25", AUTHORS_CERTIFY)
    with LogWriter(path, "certify") as writer:
        assert writer.done == {0, 100, 200, 300}


def test_partial_line_is_removed_on_reopen(tmp_path):
    path = tmp_path / "c.tsv"
    with LogWriter(path) as writer:
        _write_certify(writer, CERTIFY_ROWS[:3])
    complete = path.read_bytes()
    with open(path, "ab") as handle:  # a run killed in the middle of a row
        handle.write(b"60\t9\t9\t0.33")
    with pytest.raises(LogFormatError):  # the partial row is not a valid row
        read_certify_log(path)
    writer = LogWriter(path)
    assert writer.done == {0, 20, 40}
    writer.close()
    assert path.read_bytes() == complete
    assert read_certify_log(path)["idx"].tolist() == [0, 20, 40]


def test_reopen_with_partial_header_fails(tmp_path):
    path = _write(tmp_path / "c.tsv", "idx\tlabel\tpre")
    with pytest.raises(LogFormatError, match="header"):
        LogWriter(path)


def test_reopen_of_other_kind_fails(tmp_path):
    path = _write(tmp_path / "p.tsv", AUTHORS_PREDICT)
    with pytest.raises(LogFormatError):
        LogWriter(path, "certify")


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("style", ["hms", "seconds"])
def test_interrupted_run_resumes_to_identical_file(tmp_path, k, style):
    # DESIGN.md convention 6: a rerun with the same parameters and seed gives the same file.
    whole = tmp_path / "whole.tsv"
    with LogWriter(whole, time_style=style) as writer:
        _write_certify(writer, CERTIFY_ROWS)

    resumed = tmp_path / "resumed.tsv"
    with LogWriter(resumed, time_style=style) as writer:
        _write_certify(writer, CERTIFY_ROWS[:k])
    with open(resumed, "ab") as handle:
        handle.write(b"999\t1\t1\t0.5")  # killed mid-row
    with LogWriter(resumed, time_style=style) as writer:
        _write_certify(writer, [row for row in CERTIFY_ROWS if row[0] not in writer.done])
    assert resumed.read_bytes() == whole.read_bytes()


# ----------------------------------------------------------------------------------------- corrupt logs

_GOOD = "0\t1\t1\t0.5\t1\t0:00:01.000000"


@pytest.mark.parametrize("lines, line_number, words", [
    ([CERTIFY_HEADER, _GOOD, "1\t1\t1\t0.5\t1"], 3, "fields"),
    ([CERTIFY_HEADER, _GOOD, "1\tcat\t1\t0.5\t1\t1.0"], 3, "label"),
    ([CERTIFY_HEADER, _GOOD, "1\t1\t1\t-0.25\t1\t1.0"], 3, "radius"),
    ([CERTIFY_HEADER, _GOOD, "1\t1\t1\tnan\t1\t1.0"], 3, "radius"),
    ([CERTIFY_HEADER, _GOOD, "1\t1\t1\t0.5\t2\t1.0"], 3, "correct"),
    ([CERTIFY_HEADER, _GOOD, "1\t1\t-1\t0.0\t1\t1.0"], 3, "abstention"),
    ([CERTIFY_HEADER, _GOOD, "1\t1\t-2\t0.0\t0\t1.0"], 3, "predict"),
    ([CERTIFY_HEADER, _GOOD, "1\t1\t1\t0.5\t1\tlater"], 3, "time"),
    ([PREDICT_HEADER, "0\t1\t1\t1\t1.0", "1\t1\t1\t1\t1.0", "2\t1\t1\t3\t1.0"], 4, "correct"),
    (["idx\tlabel\tprediction\tradius\tcorrect\ttime", _GOOD], 1, "header"),
    (["idx label predict radius correct time", _GOOD], 1, "header"),
    ([CERTIFY_HEADER, _GOOD, "5\t1\t1\t0.5\t1\t1.0", "0\t2\t2\t0.7\t1\t1.0"], 4, "idx 0"),  # duplicate idx 0
])
def test_corrupt_log_names_file_and_line(tmp_path, lines, line_number, words):
    path = _write(tmp_path / "bad.tsv", "\n".join(lines) + "\n")
    with pytest.raises(LogFormatError, match=words) as err:
        read_log(path)
    assert isinstance(err.value, ValueError)
    assert f"{path}:{line_number}" in str(err.value)


def test_duplicate_idx_is_rejected(tmp_path):
    path = _write(tmp_path / "dup.tsv", "\n".join([CERTIFY_HEADER, _GOOD, "3\t1\t1\t0.5\t1\t1.0", _GOOD]) + "\n")
    with pytest.raises(LogFormatError, match="idx 0"):
        read_log(path)


def test_empty_file_names_file_and_line(tmp_path):
    path = _write(tmp_path / "empty.tsv", "")
    with pytest.raises(LogFormatError, match="empty") as err:
        read_log(path)
    assert f"{path}:1" in str(err.value)


def test_missing_log(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.tsv"):
        read_log(tmp_path / "nowhere.tsv")


# ----------------------------------------------------------------------------------------- manifests

PARAMS = {"sigma": 0.25, "n": 100, "alpha": 0.001, "radii": [0.0, 0.5]}


def _parse_iso(text):
    stamp = dt.datetime.fromisoformat(text)
    assert stamp.tzinfo is not None
    return stamp


def test_write_and_read_manifest(tmp_path):
    import numpy
    import torch

    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    path = write_manifest(tmp_path / "run", PARAMS, seed=7, chapter="cohen")
    assert path == tmp_path / "run" / "manifest.json"
    manifest = read_manifest(tmp_path / "run")
    assert manifest == json.loads(path.read_text())
    assert manifest["parameters"] == PARAMS
    assert manifest["seed"] == 7
    assert manifest["chapter"] == "cohen"
    versions = manifest["versions"]
    assert versions["numpy"] == numpy.__version__
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["python"].count(".") == 2
    assert "git_commit" in manifest
    assert manifest["device"].startswith("cpu")
    assert before <= _parse_iso(manifest["start_time"]) <= dt.datetime.now(dt.timezone.utc)
    assert manifest["end_time"] is None
    assert os.listdir(tmp_path / "run") == ["manifest.json"]


def test_read_manifest_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_manifest(tmp_path)


def test_run_manifest_stamps_end_time(tmp_path):
    run = tmp_path / "run"
    with run_manifest(run, PARAMS, seed=1) as path:
        assert path == run / "manifest.json"
        inside = read_manifest(run)
        assert inside["end_time"] is None and inside["parameters"] == PARAMS and inside["seed"] == 1
    after = read_manifest(run)
    assert after["end_time"] is not None
    assert _parse_iso(after["end_time"]) >= _parse_iso(after["start_time"])
    assert "resumed" not in after
    assert os.listdir(run) == ["manifest.json"]


def test_run_manifest_resume_with_same_parameters(tmp_path):
    run = tmp_path / "run"
    params = {"sigma": 0.5, "radii": (0.0, 0.5)}  # a tuple is stored as a JSON list and still matches
    with run_manifest(run, params, seed=3):
        pass
    first = read_manifest(run)
    with run_manifest(run, dict(params), seed=3):
        during = read_manifest(run)
        assert during["end_time"] is None
        assert len(during["resumed"]) == 1
    again = read_manifest(run)
    assert again["start_time"] == first["start_time"]
    assert len(again["resumed"]) == 1 and again["end_time"] is not None
    assert os.listdir(run) == ["manifest.json"]


def test_run_manifest_refuses_other_parameters(tmp_path):
    run = tmp_path / "run"
    with run_manifest(run, {"sigma": 0.25, "n": 100}, seed=3):
        pass
    before = (run / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="sigma") as err:
        with run_manifest(run, {"sigma": 0.5, "n": 100}, seed=3):
            pytest.fail("the body must not run")
    assert "n," not in str(err.value) and ", n" not in str(err.value)
    with pytest.raises(ValueError, match="seed"):
        with run_manifest(run, {"sigma": 0.25, "n": 100}, seed=4):
            pass
    with pytest.raises(ValueError, match="batch"):
        with run_manifest(run, {"sigma": 0.25, "n": 100, "batch": 400}, seed=3):
            pass
    assert (run / "manifest.json").read_bytes() == before
    assert os.listdir(run) == ["manifest.json"]


def test_run_manifest_resume_with_numpy_seed(tmp_path):
    # Seeds often come from numpy (e.g. rng.integers); the same seed must allow a resume, as the
    # parameters do (they are compared after a JSON round trip).
    run = tmp_path / "run"
    with run_manifest(run, {"n": 10, "sigma": np.float64(0.25)}, seed=np.int64(3)):
        pass
    with run_manifest(run, {"n": 10, "sigma": np.float64(0.25)}, seed=np.int64(3)):
        pass
    assert len(read_manifest(run)["resumed"]) == 1


def test_refusal_names_each_parameter_with_both_values(tmp_path):
    run = tmp_path / "run"
    begin_run(run, {"sigma": 0.25, "n": 100, "indices": list(range(1000))}, seed=3)
    with pytest.raises(ValueError) as err:
        begin_run(run, {"sigma": 0.5, "n": 100, "indices": list(range(1001))}, seed=3)
    message = str(err.value)
    assert "different parameters (indices, sigma)" in message
    assert "sigma: recorded 0.25, requested 0.5" in message
    assert len(message) < 400  # long values are shortened


# Issue 13, item 2: a log's manifest is its own (`<log>.manifest.json`), so logs and a training run share a folder.

def test_each_log_has_its_own_manifest_beside_a_training_run(tmp_path):
    folder = tmp_path / "runs" / "digits" / "0.25"
    with run_manifest(folder, {"dataset": "digits", "noise_sd": 0.25}, seed=0):  # a training run
        pass
    first, second = folder / "certify.tsv", folder / "certify_sigma0.5.tsv"
    assert begin_log(first, {"sigma": 0.25, "log": first.name}, seed=0) == log_manifest(first)
    assert log_manifest(first) == folder / "certify.tsv.manifest.json"
    begin_log(second, {"sigma": 0.5, "log": second.name}, seed=0)  # other parameters, same folder
    finish_log(first)
    assert read_log_manifest(first)["parameters"]["sigma"] == 0.25 and read_log_manifest(first)["end_time"]
    assert read_log_manifest(second)["parameters"]["sigma"] == 0.5 and read_log_manifest(second)["end_time"] is None
    assert read_manifest(folder)["parameters"] == {"dataset": "digits", "noise_sd": 0.25}
    assert sorted(p.name for p in folder.iterdir()) == ["certify.tsv.manifest.json",
                                                       "certify_sigma0.5.tsv.manifest.json", "manifest.json"]


def test_a_log_resumed_with_other_parameters_is_refused_naming_them(tmp_path):
    log = tmp_path / "certify.tsv"
    begin_log(log, {"sigma": 0.25, "n": 1000}, seed=0)
    before = log_manifest(log).read_bytes()
    with pytest.raises(ValueError, match=r"different parameters \(n, seed\): n: recorded 1000, requested 2000"):
        begin_log(log, {"sigma": 0.25, "n": 2000}, seed=1)
    assert log_manifest(log).read_bytes() == before
    begin_log(log, {"sigma": 0.25, "n": 1000}, seed=0, max_index=40)
    assert read_log_manifest(log)["resumed"] and read_log_manifest(log)["max_index"] == 40


def test_a_log_from_before_per_log_manifests_adopts_its_folder_manifest(tmp_path):
    folder = tmp_path / "run"
    log = folder / "certify.tsv"
    write_manifest(folder, {"sigma": 0.25, "log": "certify.tsv"}, seed=0)  # how rsbook used to record a log
    log.write_text(CERTIFY_HEADER + "\n0\t1\t1\t0.5\t1\t1.0\n")
    begin_log(log, {"sigma": 0.25, "log": "certify.tsv"}, seed=0)
    assert not (folder / "manifest.json").exists()  # the folder is free for a training run or other logs
    assert read_log_manifest(log)["resumed"]
    with pytest.raises(ValueError, match="sigma"):
        begin_log(log, {"sigma": 0.5, "log": "certify.tsv"}, seed=0)  # still immutable


@pytest.mark.parametrize("folder_manifest", [None, {"dataset": "digits", "noise_sd": 0.25}])
def test_a_log_with_rows_but_no_manifest_is_refused(tmp_path, folder_manifest):
    log = tmp_path / "certify.tsv"
    if folder_manifest:
        write_manifest(tmp_path, folder_manifest, seed=0)  # a training run's, not this log's
    log.write_text(CERTIFY_HEADER + "\n0\t1\t1\t0.5\t1\t1.0\n")
    with pytest.raises(ValueError, match="has no manifest certify.tsv.manifest.json"):
        begin_log(log, {"sigma": 0.25, "log": "certify.tsv"}, seed=0)
    assert not log_manifest(log).exists()


@pytest.mark.parametrize("row, match", [
    (dict(idx=0, label=1, predict=1, correct=1, time=1.0, radius=0.2), "already in the log"),
    (dict(idx=5, label=1, predict=1, correct=2, time=1.0, radius=0.2), "correct"),
    (dict(idx=5, label=1, predict=1, correct=1, time=1.0, radius=-0.2), "radius"),
    (dict(idx=5, label=1, predict=-1, correct=1, time=1.0, radius=0.0), "abstention"),
    (dict(idx=5, label=1, predict=1, correct=1, time=-3.0, radius=0.2), "time"),
])
def test_writer_refuses_rows_the_reader_would_reject(tmp_path, row, match):
    path = tmp_path / "log.tsv"
    with LogWriter(path, "certify") as writer:
        writer.write(idx=0, label=1, predict=1, correct=1, time=1.0, radius=0.2)
        before = path.read_bytes()
        with pytest.raises(ValueError, match=match):
            writer.write(**row)
    assert path.read_bytes() == before
    assert len(read_log(path)) == 1
