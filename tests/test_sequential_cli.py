"""`rsbook certify --radius r`: sequential certification of a dataset from the command line (issue 14).

The log is the authors' certify log plus a samples column; its top class is CERTIFY's (the same selection
stream), a certified row carries the requested radius, the run resumes and appends, a log is immutable, and
under torchrun two processes write the rows of one.
"""

import io

import pytest

from rsbook.cli import main
from rsbook.launch import launch
from rsbook.logs import SEQUENTIAL_COLUMNS, LogWriter, read_certify_log, read_log, read_log_manifest

ENV = {"OMP_NUM_THREADS": "1"}


def _args(checkpoint, out, *extra, radius="0.25", max_index="12"):
    return ["certify", "--dataset", "digits", "--checkpoint", str(checkpoint), "--sigma", "0.25", "--n0", "100",
            "--n", "5000", "--alpha", "0.001", "--batch", "500", "--seed", "0", "--max", max_index,
            "--radius", radius, "--out", str(out), "--no-progress", *extra]


def test_a_sequential_log_answers_at_the_radius_with_its_sample_counts(tmp_path, digits_checkpoint, capsys):
    log = tmp_path / "runs" / "sequential.tsv"
    assert main(_args(digits_checkpoint, log, max_index="8")) == 0
    assert main(_args(digits_checkpoint, log)) == 0  # a larger --max appends the missing examples
    capsys.readouterr()
    frame = read_log(log)
    assert tuple(frame.columns) == SEQUENTIAL_COLUMNS and frame["idx"].tolist() == list(range(12))
    certified = frame["predict"] != -1
    assert certified.any()
    assert (frame.loc[certified, "radius"] == 0.25).all() and (frame.loc[~certified, "radius"] == 0.0).all()
    assert ((frame["samples"] > 100) & (frame["samples"] <= 100 + 5000)).all()
    assert frame["samples"].mean() < 100 + 5000  # clear digits are decided early
    manifest = read_log_manifest(log)["parameters"]
    assert manifest["radius"] == 0.25 and manifest["method"] == "betting" and manifest["n_max"] == 5000

    fixed = tmp_path / "runs" / "fixed.tsv"
    arguments = _args(digits_checkpoint, fixed)
    del arguments[arguments.index("--radius"):arguments.index("--radius") + 2]
    assert main(arguments) == 0
    capsys.readouterr()
    both = read_certify_log(fixed).merge(frame, on="idx", suffixes=("_fixed", "_sequential"))
    answered = (both["predict_fixed"] != -1) & (both["predict_sequential"] != -1)
    assert answered.any() and (both.loc[answered, "predict_fixed"] == both.loc[answered, "predict_sequential"]).all()


def test_a_sequential_log_is_immutable_and_bad_flags_are_named(tmp_path, digits_checkpoint, capsys):
    log = tmp_path / "sequential.tsv"
    assert main(_args(digits_checkpoint, log, max_index="2")) == 0
    assert main(_args(digits_checkpoint, log, radius="0.5", max_index="2")) == 2
    assert "radius: recorded 0.25, requested 0.5" in capsys.readouterr().err
    plain = _args(digits_checkpoint, tmp_path / "fixed.tsv", "--n-max", "100")
    del plain[plain.index("--radius"):plain.index("--radius") + 2]
    assert main(plain) == 2
    assert "--n-max needs --radius" in capsys.readouterr().err
    assert main(_args(digits_checkpoint, tmp_path / "negative.tsv", radius="-1")) == 2
    assert "radius must be a finite number >= 0" in capsys.readouterr().err


def test_the_sequential_log_format_round_trips_and_is_checked(tmp_path):
    path = tmp_path / "log.tsv"
    with LogWriter(path, "sequential") as writer:
        writer.write(0, 3, 3, 1, 1.5, radius=0.5, samples=412)
        writer.write(1, 2, -1, 0, 2.0, radius=0.0, samples=100100)
        with pytest.raises(ValueError, match="samples is required"):
            writer.write(2, 2, 2, 1, 1.0, radius=0.5)
    frame = read_log(path, "sequential")
    assert frame["samples"].tolist() == [412, 100100] and frame["radius"].tolist() == [0.5, 0.0]
    path.write_text(path.read_text() + "2\t1\t1\t0.5\t1\t0:00:01\t0\n")
    with pytest.raises(ValueError, match="samples"):
        read_log(path)


@pytest.mark.slow
def test_two_gloo_processes_write_the_rows_of_one(tmp_path, digits_checkpoint):
    single, multi = tmp_path / "single.tsv", tmp_path / "multi" / "log.tsv"
    launch(_args(digits_checkpoint, single, max_index="10"), devices=1, env=ENV, stdout=io.StringIO())
    launch(_args(digits_checkpoint, multi, max_index="10"), devices=2, env=ENV, stdout=io.StringIO())
    columns = ["idx", "label", "predict", "radius", "correct", "samples"]
    assert read_log(single)[columns].equals(read_log(multi)[columns])
    assert sorted(p.name for p in multi.parent.iterdir()) == ["log.tsv", "log.tsv.manifest.json"]
