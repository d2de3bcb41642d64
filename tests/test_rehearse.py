"""The rehearsal (issue 12, part 5, `make rehearse`): the full profile's path of the re-run chapter — training,
certify and predict as `rsbook` commands launched through torchrun, two gloo processes on the CPU — at a tiny
size on a miniature CIFAR-10 in its real on-disk format; the chapter reads the logs the launched steps wrote,
and executing it again resumes: every launched step is found complete and nothing is launched."""

import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from rsbook.book import steps
from rsbook.book.running import is_done
from rsbook.cohen import steps as cohen_steps
from rsbook.analysis import certified_accuracy
from rsbook.logs import read_log, read_log_manifest
from rsbook.book.profiles import chapter_parameters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import book  # noqa: E402  (tools/book.py, the build script)

pytestmark = pytest.mark.slow

TINY = {
    "experiments": {"cifar10": {"arch": "cifar_resnet20", "epochs": 1, "lr_step": 30, "batch": 4, "skip": 1,
                                "certify_batch": 16}},
    "sigmas": [0.25], "cross_sigmas": [0.5], "n0": 4, "n": 16,
    "predict": {"dataset": "cifar10", "sigma": 0.25, "ns": [4, 8], "reference_n": 16, "skip": 2, "batch": 8},
    "attack": {"dataset": "cifar10", "sigma": 0.25, "multipliers": [1.5, 2.0], "max_examples": 1, "steps": 1,
               "num_noise": 2, "n_predict": 8, "batch": 8},
    "topk": {"dataset": "cifar10", "sigma": 0.25, "ks": [1, 3], "n": 16, "skip": 2, "batch": 8, "radius": 0.5},
    "n_grid": [10, 100], "alpha_grid": [0.01, 0.001], "perf": {"n0": 4, "n": 32, "batch": 16, "repeats": 1},
    "figure_skip": 1, "device": "cpu", "devices": 2,
}


def _streams(notebook: Path) -> str:
    cells = nbformat.read(notebook, as_version=4).cells
    return "".join(o.get("text", "") for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_the_full_path_launches_its_steps_and_the_chapter_reads_their_logs(runs, cifar, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RSBOOK_BENCH", str(runs / "no-bench.json"))  # the chapter measures its own engine
    notebook = book.execute("chapters/cohen_rerun", "full", runs, overrides=TINY, force=True)
    output = _streams(notebook)
    parameters = chapter_parameters("cohen_rerun", "full", overrides=TINY)
    assert parameters["launch"] is True  # the full profile launches its steps
    plan = cohen_steps.steps(parameters, runs / "cohen_rerun" / "full")
    commands = [s for s in plan if s.runner == "command"]
    assert parameters["certify"] == "sequential"  # the tables certified sequentially, the figures' log with fixed n
    assert [s.kind for s in commands] == ["train", "certify_radius", "certify", "certify_radius", "predict", "predict",
                                          "predict", "topk", "attack"]
    for step in commands:
        assert is_done(step), step.name
        launched = "launched, 2 processes" if step.splits_work else "launched, 1 process"
        assert f"{step.name} ({launched})" in output
    for step in [*steps.outputs(plan, "certify"), *steps.outputs(plan, "certify_radius")]:
        log = read_log(step.output)
        assert list(log["idx"]) == [0, 1, 2, 3, 4]  # every image of the miniature test batch
        assert "checkpoint_sha256" in read_log_manifest(step.output)["parameters"]  # written by `rsbook certify`
    cells = pd.read_csv(notebook.parent / "comparisons.csv")
    table3 = cells[(cells["document"] == "cohen") & (cells["table"] == "Table 3")]
    matched = read_log(next(s for s in plan if s.kind == "certify_radius" and s.info["sigma"] == 0.25
                            and s.info["noise"] == 0.25).output)
    assert "samples" in matched  # a sequential log: its rows decide the table's radii
    assert float(table3[(table3["row"].astype(float) == 0.25) & (table3["column"].astype(float) == 0.0)]["ours"]
                 .iloc[0]) == pytest.approx(float(certified_accuracy(matched, [0.0]).iloc[0]))
    # executed again, it resumes: every launched step is complete, nothing is launched
    again = _streams(book.execute("chapters/cohen_rerun", "full", runs, overrides=TINY, force=True))
    assert "launched" not in again
