"""The ANCER chapter's image run as a sharded command (issue 12): `torchrun --nproc_per_node=2 -m
rsbook.ancer.pipeline -- certify-image ...` (gloo on the CPU) gives each rank whole chunks of inputs
and folds the ranks' shards into the rows the one-process run_methods call writes; a killed run's
shards are folded in when it resumes; the chapter's own call afterwards only reads back; a refused
command line writes nothing."""

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from rsbook.book import steps as core
from rsbook.book.running import is_done
from rsbook.ancer import pipeline as ar
from rsbook.ancer.steps import MODULE, image_argv

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
SETTINGS = {"fixed_sigma": 0.25, "sigma0": 0.25, "iso": {"iterations": 2, "learning_rate": 0.05, "num_samples": 8},
            "ancer": {"iterations": 2, "learning_rate": 0.04, "num_samples": 8, "kappa": 2.0},
            "rancer": {"iterations": 2, "learning_rate": 0.04, "num_samples": 8, "kappa": 2.0,
                       "clip_sigma": [0.15, 0.15], "rank": 2, "lanczos_steps": 6},
            "n0": 10, "n": 60, "alpha": 0.01, "batch_size": 60}
EXAMPLES, CHUNK, SEED = 8, 2, 3  # four chunks: ranks 0 and 1 take two each
COLUMNS = [c for c in ar.RESULT_COLUMNS if not c.endswith("seconds")]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _argv(checkpoint, root, *extra):
    argv = image_argv(checkpoint, "digits", "digits_cnn", EXAMPLES, SETTINGS, root=root, chunk_size=CHUNK, seed=SEED,
                      num_threads=1)
    return [str(a) for a in argv] + ["--no-progress", *extra]


def _torchrun(checkpoint, root, *extra):
    result = subprocess.run(TORCHRUN + ["-m", MODULE, "--", *_argv(checkpoint, root, *extra)], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def _in_process(checkpoint, root):
    """The chapter's own calls: image_examples, then run_methods with the chapter's arguments."""
    data = ar.image_examples(checkpoint, "digits", "digits_cnn", EXAMPLES, seed=SEED)
    return ar.run_methods(root, "digits", data["model"], *data["test"], indices=data["indices"], num_classes=10,
                          model_id=data["model_id"], chunk_size=CHUNK, seed=SEED, num_threads=1, **SETTINGS)


def _rows(folder: Path, method: str) -> pd.DataFrame:
    """The method's table as written (file order), without the timing columns."""
    return pd.read_csv(folder / f"{method}.tsv", sep="\t")[COLUMNS]


@pytest.fixture(scope="module")
def single(digits_checkpoint, tmp_path_factory):
    """The one-process run (the chapter's in-process call before the command existed)."""
    return _in_process(digits_checkpoint, tmp_path_factory.mktemp("single"))


def _same_as(folder: Path, run):
    assert folder.name == run.folder.name  # the same parameters, the same run folder digest
    for method in ar.METHODS:
        pd.testing.assert_frame_equal(_rows(folder, method), _rows(run.folder, method))
        for start in range(0, EXAMPLES, CHUNK):
            ours = torch.load(folder / "parameters" / f"{method}-{start:06d}.pt", weights_only=False)
            theirs = torch.load(run.folder / "parameters" / f"{method}-{start:06d}.pt", weights_only=False)
            assert torch.equal(ours["sigma"], theirs["sigma"])
    assert not list(folder.glob("*.part*"))  # the shards are folded away
    assert json.loads((folder / "manifest.json").read_text())["end_time"]


@pytest.mark.slow
def test_two_processes_write_the_one_process_rows_and_the_chapter_only_reads_back(
        single, digits_checkpoint, tmp_path, monkeypatch):
    root = tmp_path / "root"
    folder = _torchrun(digits_checkpoint, root)
    assert folder == ar.image_run_folder(root, "digits", digits_checkpoint, EXAMPLES, SETTINGS, chunk_size=CHUNK,
                                         seed=SEED)
    _same_as(folder, single)
    # the step is complete on disk: its run folder's manifest is stamped finished, no shard left
    step = core.Step("ancer", "image", "optimise_certify", argv=tuple(_argv(digits_checkpoint, root)), module=MODULE,
                     sharded=True, output=folder, examples=EXAMPLES)
    assert is_done(step)

    def boom(*args, **kwargs):
        raise AssertionError("the chapter's call computed a row the command had written")

    monkeypatch.setattr(ar, "certify", boom)
    monkeypatch.setattr(ar, "_optimize", boom)
    again = _in_process(digits_checkpoint, root)
    assert again.folder == folder
    for method in ar.METHODS:
        pd.testing.assert_frame_equal(again.results(method)[COLUMNS], single.results(method)[COLUMNS])


def _kill(folder: Path):
    """What a 2-process run killed in its second round of chunks leaves: the merged tables of an earlier
    run (chunk 0), each rank's shard (rank 0: chunk 4's rows, the last torn; rank 1: chunk 2's and a
    part of chunk 6's), no parameters of chunk 6 for ANCER and RANCER, and no end time."""
    for method in ar.METHODS:
        lines = (folder / f"{method}.tsv").read_text().splitlines()
        header, rows = lines[0], lines[1:]
        (folder / f"{method}.tsv").write_text("\n".join([header, *rows[0:2]]) + "\n")
        (folder / f"{method}.tsv.part0").write_text("\n".join([header, *rows[4:6]]) + "\n" + rows[6][:9])
        (folder / f"{method}.tsv.part1").write_text("\n".join([header, *rows[2:4], *rows[6:7]]) + "\n")
    for method in ("ANCER", "RANCER"):
        (folder / "parameters" / f"{method}-000006.pt").unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "end_time": None}))


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_from_its_shards(single, digits_checkpoint, tmp_path):
    root = tmp_path / "root"
    folder = root / "anisotropic" / single.folder.name
    shutil.copytree(single.folder, folder)
    _kill(folder)
    assert _torchrun(digits_checkpoint, root) == folder
    _same_as(folder, single)


def test_one_process_resumes_what_two_left(single, digits_checkpoint, tmp_path):
    # the shards are folded in whatever the number of processes now; the missing rows are recomputed
    root = tmp_path / "root"
    folder = root / "anisotropic" / single.folder.name
    shutil.copytree(single.folder, folder)
    _kill(folder)
    assert ar.main(_argv(digits_checkpoint, root)) == 0
    _same_as(folder, single)


@pytest.mark.parametrize("change, message", [
    ({"checkpoint": "missing.pt"}, "does not exist"),
    ({"settings": "{not json"}, "--settings must be a JSON object"),
    ({"settings": json.dumps({k: v for k, v in SETTINGS.items() if k != "n0"})}, "missing \\['n0'\\]"),
])
def test_a_refused_command_line_says_why_and_writes_nothing(digits_checkpoint, tmp_path, capsys, change, message):
    argv = _argv(tmp_path / change.get("checkpoint", digits_checkpoint), tmp_path / "root")
    if "settings" in change:
        argv[argv.index("--settings") + 1] = change["settings"]
    assert ar.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsbook.ancer certify-image: error: ")
    assert re.search(message, lines[0])
    assert not (tmp_path / "root").exists()


@pytest.mark.slow
def test_two_processes_refuse_a_missing_checkpoint_and_write_nothing(tmp_path):
    result = subprocess.run(TORCHRUN + ["-m", MODULE, "--", *_argv(tmp_path / "missing.pt", tmp_path / "root")],
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "rsbook.ancer certify-image: error: --checkpoint" in result.stderr
    assert not (tmp_path / "root").exists()
