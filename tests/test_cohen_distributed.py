"""The re-run chapter's top-k radii and attacks as sharded commands: `torchrun --nproc_per_node=2 -m
rsbook.cohen.pipeline -- topk|attack ...` (gloo on the CPU) gives each rank every other example still
missing and folds the ranks' shards into the rows the one-process call writes; a killed run's shards
(a torn last line, an example whose rows were partly written) are folded in when it resumes; the
chapter's own call afterwards only reads back; a refused command line writes nothing."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rsbook.book import steps as core
from rsbook.book.running import is_done
from rsbook.cohen import pipeline as ex
from rsbook.cohen.steps import MODULE, attack_argv, topk_argv
from rsbook.data import load_dataset
from rsbook.logs import ResultsTable, fold_shards, table_keys, write_log

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
SIGMA, KS, SKIP, SEED = 0.25, [1, 3], 60, 2  # 9 examples, 2 rows each
TOPK = {"n": 100, "alpha": 0.01, "batch_size": 100, "skip": SKIP}
MULTIPLIERS = [1.5, 2.0]
ATTACK = {"n_predict": 40, "alpha": 0.01, "batch_size": 40, "steps": 2, "num_noise": 4, "clip": None}
MAX_EXAMPLES = 5


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _topk_argv(checkpoint, root):
    argv = topk_argv(root, "digits", checkpoint, SIGMA, KS, n=TOPK["n"], alpha=TOPK["alpha"],
                     batch=TOPK["batch_size"], skip=SKIP, seed=SEED, device="cpu")
    return [str(a) for a in argv] + ["--no-progress"]


def _attack_argv(checkpoint, root, log):
    options = {k: v for k, v in ATTACK.items() if k != "batch_size"}
    argv = attack_argv(root, "digits", checkpoint, SIGMA, log, MULTIPLIERS, batch=ATTACK["batch_size"],
                       max_examples=MAX_EXAMPLES, seed=SEED, device="cpu", **options)
    return [str(a) for a in argv] + ["--no-progress"]


def _torchrun(argv):
    result = subprocess.run(TORCHRUN + ["-m", MODULE, "--", *argv], env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def _topk(checkpoint, root):
    return ex.topk_radii(root, "digits", checkpoint, SIGMA, KS, seed=SEED, **TOPK)


def _attack(checkpoint, root, log):
    from rsbook.logs import read_certify_log

    return ex.attack_runs(root, "digits", checkpoint, SIGMA, read_certify_log(log), MULTIPLIERS, seed=SEED,
                          max_examples=MAX_EXAMPLES, **ATTACK)


@pytest.fixture(scope="module")
def certify_log(tmp_path_factory):
    """A certify log of every 40th test digit: certified correctly with radius 0.2 except two examples
    (one wrong, one abstained), so the attack picks its examples from the log."""
    data = load_dataset("digits", "test")
    idx = list(range(0, 400, 40))
    labels = [int(data[i][1]) for i in idx]
    frame = pd.DataFrame({"idx": idx, "label": labels, "predict": labels, "radius": [0.2] * len(idx),
                          "correct": [1] * len(idx), "time": [0.0] * len(idx)})
    frame.loc[1, "correct"], frame.loc[1, "predict"] = 0, (labels[1] + 1) % 10
    frame.loc[3, "radius"], frame.loc[3, "predict"], frame.loc[3, "correct"] = 0.0, -1, 0
    path = tmp_path_factory.mktemp("certify") / "certify.tsv"
    write_log(path, frame, "certify")
    return path


@pytest.fixture(scope="module")
def single(digits_checkpoint, certify_log, tmp_path_factory):
    """The one-process runs (the chapter's in-process calls before the commands existed)."""
    root = tmp_path_factory.mktemp("single")
    return {"topk": _topk(digits_checkpoint, root), "attack": _attack(digits_checkpoint, root, certify_log),
            "root": root}


def _finished(folder: Path):
    assert not list(folder.glob("*.part*"))
    step = core.Step("cohen_rerun", folder.name, "topk", argv=("topk",), module=MODULE, sharded=True, output=folder)
    assert is_done(step)


def test_two_processes_write_the_one_process_topk_rows_and_the_chapter_only_reads_back(
        single, digits_checkpoint, tmp_path, monkeypatch):
    root = tmp_path / "root"
    folder = _torchrun(_topk_argv(digits_checkpoint, root))
    assert folder == ex.topk_folder(root, "digits", digits_checkpoint, SIGMA, KS, **{k: v for k, v in TOPK.items()})
    assert folder.name == next((single["root"] / "topk").iterdir()).name
    rows = pd.read_csv(folder / "results.tsv", sep="\t")
    pd.testing.assert_frame_equal(rows, single["topk"])
    assert len(rows) == 9 * len(KS)
    _finished(folder)

    def boom(*args, **kwargs):
        raise AssertionError("the chapter's call computed a row the command had written")

    monkeypatch.setattr(ex, "certify_topk", boom)
    pd.testing.assert_frame_equal(_topk(digits_checkpoint, root), single["topk"])


def test_two_processes_write_the_one_process_attack_rows_and_the_chapter_only_reads_back(
        single, digits_checkpoint, certify_log, tmp_path, monkeypatch):
    root = tmp_path / "root"
    folder = _torchrun(_attack_argv(digits_checkpoint, root, certify_log))
    assert folder == ex.attack_folder(root, "digits", digits_checkpoint, SIGMA, MULTIPLIERS, **ATTACK)
    assert folder.name == next((single["root"] / "attack").iterdir()).name
    rows = pd.read_csv(folder / "results.tsv", sep="\t")
    pd.testing.assert_frame_equal(rows, single["attack"])
    assert list(rows["idx"].unique()) == [0, 80, 160, 200, 240]  # log order, the wrong and the abstained skipped
    _finished(folder)

    def boom(*args, **kwargs):
        raise AssertionError("the chapter's call computed a row the command had written")

    monkeypatch.setattr(ex, "attack_certify_log", boom)
    pd.testing.assert_frame_equal(_attack(digits_checkpoint, root, certify_log), single["attack"])


def _kill(folder: Path, group: int):
    """What a 2-process run killed mid-way leaves: the table of an earlier run (the first example), rank
    0's shard with one whole example and a torn last line (the first row of another), rank 1's with one
    whole example and the first row of the next (its other rows never written), and no end time."""
    lines = (folder / "results.tsv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    example = [rows[i:i + group] for i in range(0, len(rows), group)]
    (folder / "results.tsv").write_text("\n".join([header, *example[0]]) + "\n")
    (folder / "results.tsv.part0").write_text("\n".join([header, *example[2]]) + "\n" + example[4][0][:5])
    (folder / "results.tsv.part1").write_text("\n".join([header, *example[1], example[3][0]]) + "\n")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "end_time": None}))


def test_a_killed_two_process_topk_run_resumes_from_its_shards(single, digits_checkpoint, tmp_path):
    root = tmp_path / "root"
    folder = root / "topk" / next((single["root"] / "topk").iterdir()).name
    shutil.copytree(next((single["root"] / "topk").iterdir()), folder)
    _kill(folder, len(KS))
    assert not is_done(core.Step("cohen_rerun", "t", "topk", argv=("topk",), module=MODULE, sharded=True,
                                      output=folder))
    assert _torchrun(_topk_argv(digits_checkpoint, root)) == folder
    pd.testing.assert_frame_equal(pd.read_csv(folder / "results.tsv", sep="\t"), single["topk"])
    _finished(folder)


def test_one_process_resumes_what_two_left_of_an_attack(single, digits_checkpoint, certify_log, tmp_path):
    root = tmp_path / "root"
    folder = root / "attack" / next((single["root"] / "attack").iterdir()).name
    shutil.copytree(next((single["root"] / "attack").iterdir()), folder)
    _kill(folder, len(MULTIPLIERS))
    assert ex.main(_attack_argv(digits_checkpoint, root, certify_log)) == 0
    pd.testing.assert_frame_equal(pd.read_csv(folder / "results.tsv", sep="\t"), single["attack"])
    _finished(folder)


def test_the_fold_keeps_every_row_of_an_example_and_drops_a_partial_one(tmp_path):
    columns = ("idx", "label", "k", "radius")
    table = ResultsTable(tmp_path / "results.tsv", columns)
    table.append([{"idx": 7, "label": 1, "k": k, "radius": 0.5} for k in (1, 3, 5)])
    header = "idx\tlabel\tk\tradius"
    (tmp_path / "results.tsv.part0").write_text(
        f"{header}\n3\t2\t1\t0.1\n3\t2\t3\t0.2\n3\t2\t5\t0.3\n9\t0\t1\t0.4\n9\t0\t3\t0.5\n9\t0\t5\t0.6\n"
        "4\t0\t1\t0.0\n4")  # example 4: one row, then a torn one
    (tmp_path / "results.tsv.part1").write_text(f"{header}\n5\t4\t1\t0.7\n5\t4\t3\t0.8\n")  # k = 5 never written
    assert table_keys(tmp_path / "results.tsv.part0", columns, group=3) == {3, 9}
    order = {3: 0, 4: 1, 5: 2, 7: 3, 9: 4}
    assert fold_shards(tmp_path / "results.tsv", columns, order=order.get, group=3)
    folded = pd.read_csv(tmp_path / "results.tsv", sep="\t")
    assert folded["idx"].tolist() == [3, 3, 3, 7, 7, 7, 9, 9, 9]
    assert folded["k"].tolist() == [1, 3, 5] * 3
    assert not list(tmp_path.glob("*.part*"))
    assert ResultsTable(tmp_path / "results.tsv", columns).done == {3, 7, 9}
    # without shards: a whole table is left alone, one ending in a partial example is cut
    before = (tmp_path / "results.tsv").read_text()
    assert not fold_shards(tmp_path / "results.tsv", columns, group=3)
    (tmp_path / "results.tsv").write_text(before + "2\t0\t1\t0.0\n")
    assert fold_shards(tmp_path / "results.tsv", columns, order=order.get, group=3)
    assert (tmp_path / "results.tsv").read_text() == before


@pytest.mark.parametrize("command", ["topk", "attack"])
def test_a_refused_command_line_says_why_and_writes_nothing(digits_checkpoint, certify_log, tmp_path, capsys,
                                                           command):
    root = tmp_path / "root"
    for argv, message in [
        ((_topk_argv if command == "topk" else lambda c, r: _attack_argv(c, r, certify_log))(
            tmp_path / "missing.pt", root), "checkpoint .* does not exist"),
        (_topk_argv(digits_checkpoint, root)[:-1] + ["--n", "0"] if command == "topk"
         else _attack_argv(digits_checkpoint, root, tmp_path / "missing.tsv"),
         "n must be|certify log .* does not exist"),
    ]:
        assert ex.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"rsbook.cohen {command}: error: "), lines
        assert re.search(message, lines[0]), lines[0]
        assert not root.exists()


def test_two_processes_refuse_a_missing_checkpoint_and_write_nothing(tmp_path):
    result = subprocess.run(TORCHRUN + ["-m", MODULE, "--", *_topk_argv(tmp_path / "missing.pt", tmp_path / "root")],
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "rsbook.cohen topk: error: --checkpoint" in result.stderr
    assert not (tmp_path / "root").exists()
