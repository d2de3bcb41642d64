"""Scale-out: `torchrun --nproc_per_node=2 -m rsbook certify ...` (gloo on CPU) shards the examples
across ranks and merges them into the same rows a single process writes for the same seed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsbook.dataset_runs import merge_parts
from rsbook.logs import read_certify_log, read_log_manifest

pytestmark = pytest.mark.slow
TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2"]


def _args(checkpoint, out, n="-n", max_flag="--max-index"):
    return ["certify", "--dataset", "digits", "--checkpoint", str(checkpoint), "--sigma", "0.25", "--n0", "100",
            n, "1000", "--alpha", "0.001", "--batch", "500", "--skip", "1", max_flag, "30", "--seed", "0",
            "--out", str(out), "--no-progress"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_two_ranks_write_the_single_process_rows(tmp_path, digits_checkpoint):
    # the very same flags as the single process; `--` keeps torchrun's own parser off them
    single, multi = tmp_path / "single" / "log.tsv", tmp_path / "multi" / "log.tsv"
    subprocess.run([sys.executable, "-m", "rsbook", *_args(digits_checkpoint, single, "--n", "--max")],
                   check=True, env=_env(), capture_output=True, timeout=300)
    result = subprocess.run(TORCHRUN + ["-m", "rsbook", "--", *_args(digits_checkpoint, multi, "--n", "--max")],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    columns = ["idx", "label", "predict", "radius", "correct"]
    a, b = read_certify_log(single), read_certify_log(multi)
    assert len(b) == 30 and a[columns].equals(b[columns])
    # shards merged away; the log's own manifest beside it
    assert sorted(p.name for p in multi.parent.iterdir()) == ["log.tsv", "log.tsv.manifest.json"]
    assert read_log_manifest(multi)["end_time"]


def test_an_interrupted_distributed_run_resumes_from_its_shards(tmp_path, digits_checkpoint):
    whole, resumed = tmp_path / "whole" / "log.tsv", tmp_path / "resumed" / "log.tsv"
    subprocess.run([sys.executable, "-m", "rsbook", *_args(digits_checkpoint, whole)], check=True, env=_env(),
                   capture_output=True, timeout=300)
    # what a killed 2-rank run leaves: the log's manifest, an empty log, and two shards with a torn last line
    subprocess.run([sys.executable, "-m", "rsbook", *_args(digits_checkpoint, resumed)[:-5], "--max-index", "0",
                    "--seed", "0", "--out", str(resumed), "--no-progress"], check=True, env=_env(), capture_output=True)
    lines = whole.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    (resumed.parent / "log.tsv.part0").write_text("\n".join([header, *rows[0:10:2]]) + "\n" + rows[10][:7])
    (resumed.parent / "log.tsv.part1").write_text("\n".join([header, *rows[1:10:2]]) + "\n")
    result = subprocess.run(TORCHRUN + ["-m", "rsbook", *_args(digits_checkpoint, resumed)], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    columns = ["idx", "label", "predict", "radius", "correct"]
    assert read_certify_log(whole)[columns].equals(read_certify_log(resumed)[columns])
    # the rows that came from the shards kept their recorded times
    assert read_certify_log(resumed)["time"].head(10).tolist() == read_certify_log(whole)["time"].head(10).tolist()


def test_rank_zero_refusal_stops_every_rank(tmp_path, digits_checkpoint):
    out = tmp_path / "run" / "log.tsv"
    subprocess.run([sys.executable, "-m", "rsbook", *_args(digits_checkpoint, out)], check=True, env=_env(),
                   capture_output=True, timeout=300)
    other = _args(digits_checkpoint, out)
    other[other.index("--sigma") + 1] = "0.5"  # a different run in the same folder
    result = subprocess.run(TORCHRUN + ["-m", "rsbook", *other], env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "different parameters (sigma)" in result.stderr


def test_two_ranks_certify_beside_another_log(tmp_path, digits_checkpoint):
    """A sharded log shares its folder with a log of other parameters (issue 13, item 2)."""
    first = tmp_path / "run" / "sigma_0.25.tsv"
    subprocess.run([sys.executable, "-m", "rsbook", *_args(digits_checkpoint, first)], check=True, env=_env(),
                   capture_output=True, timeout=300)
    second = _args(digits_checkpoint, tmp_path / "run" / "sigma_0.50.tsv")[:-1]  # with progress output
    second[second.index("--sigma") + 1] = "0.5"
    result = subprocess.run(TORCHRUN + ["-m", "rsbook", *second], env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stderr and "[rank 1]: 15/15 example" in result.stderr  # plain lines in a pipe
    assert len(read_certify_log(tmp_path / "run" / "sigma_0.50.tsv")) == 30
    assert read_log_manifest(tmp_path / "run" / "sigma_0.50.tsv")["parameters"]["sigma"] == 0.5
    assert sorted(p.name for p in first.parent.iterdir()) == ["sigma_0.25.tsv", "sigma_0.25.tsv.manifest.json",
                                                             "sigma_0.50.tsv", "sigma_0.50.tsv.manifest.json"]


def test_merge_parts_is_a_no_op_without_shards(tmp_path):
    path = tmp_path / "log.tsv"
    assert merge_parts(path, "certify") == path and not path.exists()
    shutil.rmtree(tmp_path)
