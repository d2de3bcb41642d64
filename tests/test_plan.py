"""rsbook.book.plan (issue 12, part 4): a measured rate is cached and capped by the time budget; a step's seconds
are its work over the measured rate, divided across processes only for a launched command that shards on
GPUs, scaled by what is left; the plan of a profile lists every step of the four computing chapters, writes
plan-<profile>.json with the agreed keys and prints the total in hours, with CPU figures said to be CPU
figures; after the smoke book every step the chapters ran is found done."""

import json

import pytest
import torch

from rsbook import launch as launch_module
from rsbook.book import commands, steps
from rsbook.book import plan as planner
from rsbook.book.running import is_done
from rsbook.book.plan import COMPUTING_CHAPTERS, Meter
from rsbook.book.profiles import chapter_parameters


def _count_iterations(monkeypatch):
    calls = []
    original = Meter._time

    def counted(self, *args):
        calls.append(args[2:4])
        return original(self, *args)

    monkeypatch.setattr(Meter, "_time", counted)
    return calls


def test_a_rate_is_measured_once_and_grows_to_the_batch_asked(monkeypatch, one_thread):
    calls = _count_iterations(monkeypatch)
    meter = Meter(budget=5.0)
    model = commands.core_model("digits_cnn", "digits")
    found = meter.rate(model, "forward", 16, "cpu")
    assert found.batch == 16 and found.rate > 0 and found.device == "cpu" and not found.extrapolated
    assert list(dict.fromkeys(size for _, size in calls)) == [1, 4, 16]  # x4 from 1, a warm-up and timed calls each
    before = len(calls)
    assert meter.rate(model, "forward", 16, "cpu") == found and len(calls) == before  # kept
    assert meter.rate(model, "forward", 4, "cpu").batch == 4 and len(calls) == before  # measured on the way
    trained = meter.rate(model, "train", 8, "cpu")
    assert trained.batch == 8 and {op for op, _ in calls[before:]} == {"train"}


def test_a_slow_operation_is_extrapolated_from_the_sizes_it_could_afford(monkeypatch):
    # a fixed cost per call plus a cost per input: 1 and 4 are measured (16 would take over budget / 2)
    monkeypatch.setattr(Meter, "_time", lambda self, model, module, operation, size, device: 0.5 + 0.01 * size)
    meter = Meter(budget=2.0)
    model = commands.core_model("digits_cnn", "digits")
    found = meter.rate(model, "forward", 1000, "cpu")
    assert found.extrapolated and found.batch == 4
    assert found.rate == pytest.approx(1000 / (0.5 + 0.01 * 1000))  # the fixed cost is paid once per call
    assert meter.rate(model, "forward", 4, "cpu") == planner.Measurement(4 / 0.54, 4, "cpu")
    # one size only, when even the next would take over 2 x budget: proportional, an upper bound on the time
    monkeypatch.setattr(Meter, "_time", lambda self, model, module, operation, size, device: 3.0 * size)
    alone = Meter(budget=2.0).rate(model, "train", 256, "cpu")
    assert alone.extrapolated and alone.batch == 1 and alone.rate == pytest.approx(1 / 3.0)


class _FixedMeter:
    def __init__(self, rate):
        self._rate, self.seconds = rate, 0.0

    def rate(self, model, operation, batch, device):
        return planner.Measurement(self._rate, batch, str(device))


def _certify_and_train(tmp_path, device="cpu"):
    model = commands.core_model("digits_cnn", "digits")
    certify = steps.Step("t", "certify", "certify", device, argv=("certify", "--out", "x"),
                         output=tmp_path / "certify.tsv", examples=10, work=(steps.Work("forward", model, 1000, 100),))
    train = steps.Step("t", "train", "train", device, argv=("train", "--out", "x"), output=tmp_path / "checkpoint.pt",
                       epochs=2, work=(steps.Work("train", model, 600, 64), steps.Work("forward", model, 400, 64)))
    return certify, train


def test_seconds_are_work_over_rate_and_what_is_left(tmp_path):
    certify, train = _certify_and_train(tmp_path)
    row = planner._estimate(certify, {"launch": True, "devices": "auto"}, _FixedMeter(100.0))
    assert row["seconds_full"] == pytest.approx(10.0) and row["seconds"] == pytest.approx(10.0) and not row["done"]
    assert row["processes"] == 1 and row["cpu_figures"]  # on the CPU the processes would share the cores
    from rsbook.models import build, save_checkpoint

    save_checkpoint(tmp_path / "checkpoint.pt", build("digits_cnn", 10), "digits_cnn", "digits", 0.25, epoch=1)
    row = planner._estimate(train, {}, _FixedMeter(100.0))
    assert row["seconds_full"] == pytest.approx(10.0) and row["seconds"] == pytest.approx(5.0)
    assert row["progress"] == pytest.approx(0.5) and not row["done"]
    unestimated = steps.Step("t", "lp", "relaxation", note="not estimated")
    assert planner._estimate(unestimated, {}, _FixedMeter(1.0))["seconds"] is None


def test_launched_sharded_commands_divide_over_the_gpus(tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "_device_for", lambda requested: (torch.device("cuda"), True))
    monkeypatch.setattr(planner, "_describe", lambda device: "GPU")
    monkeypatch.setattr(launch_module, "_cuda_count", lambda: 4)
    certify, train = _certify_and_train(tmp_path, device="cuda")
    row = planner._estimate(certify, {"launch": True, "devices": "auto"}, _FixedMeter(100.0))
    assert row["processes"] == 4 and row["seconds"] == pytest.approx(2.5) and row["device"] == "GPU x 4 processes"
    assert planner._estimate(certify, {"launch": False}, _FixedMeter(100.0))["processes"] == 1
    assert planner._estimate(certify, {"launch": True, "devices": 2}, _FixedMeter(100.0))["processes"] == 2
    monkeypatch.setattr(launch_module, "SHARDED_COMMANDS", ("certify", "predict"))
    assert planner._estimate(train, {"launch": True}, _FixedMeter(100.0))["processes"] == 1


def test_a_cuda_step_is_measured_on_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert planner._device_for("cuda") == (torch.device("cpu"), False)
    assert planner._device_for("cpu") == (torch.device("cpu"), True)


def test_the_smoke_plan_lists_every_step_writes_its_json_and_prints_hours(tmp_path, runs, capsys, monkeypatch):
    assert planner.main(["--profile", "smoke", "--runs", str(runs), "--budget", "0.5"]) == 0
    written = json.loads((runs / "plan-smoke.json").read_text())
    assert set(written) >= {"steps", "total_seconds"}
    for row in written["steps"]:
        assert set(row) >= {"chapter", "step", "device", "seconds", "done"}
    assert {r["chapter"] for r in written["steps"]} == set(COMPUTING_CHAPTERS)
    expected = sum(len(steps.chapter_steps(c, chapter_parameters(c, "smoke"), runs / c / "smoke"))
                   for c in COMPUTING_CHAPTERS)
    assert len(written["steps"]) == expected
    assert not any(r["done"] for r in written["steps"])  # nothing has run in a fresh runs folder
    estimated = [r["seconds"] for r in written["steps"] if r["seconds"] is not None]
    assert written["total_seconds"] == pytest.approx(sum(estimated)) and written["total_seconds"] > 0
    printed = capsys.readouterr().out
    assert f"total: {written['total_seconds'] / 3600:,.1f} hours" in printed
    assert ("These are CPU figures" in printed) == written["cpu_figures"]
    assert not any((runs / c).exists() for c in COMPUTING_CHAPTERS)  # nothing trained or certified


@pytest.mark.slow
def test_after_the_smoke_book_every_step_the_chapters_ran_is_done(smoke_book, monkeypatch):
    """The step descriptions name exactly the checkpoints, logs and run folders the chapters write."""
    from conftest import mirror_path

    monkeypatch.setenv("RSBOOK_MIRROR", str(mirror_path()))
    runs_dir, _ = smoke_book
    for chapter in COMPUTING_CHAPTERS:
        for step in steps.chapter_steps(chapter, chapter_parameters(chapter, "smoke"), runs_dir / chapter / "smoke"):
            if step.output is None and step.record is None:
                continue  # a measurement, rerun at every execution
            assert is_done(step), (chapter, step.name)


def test_the_rerun_chapter_s_paths_side_by_side(tmp_path, monkeypatch):
    """Issue 18, part 4: the cost of each way to the Cohen tables on the devices at hand — from scratch, the
    authors' models with fixed n, with sequential certification, sampled — each path's certification from the
    same measured rates (here a fixed rate), the sequential steps at their replay estimate (rsbook.replay on the
    released logs), the authors' models without their training."""
    monkeypatch.delenv("RSBOOK_MODELS", raising=False)
    rows = {r["path"]: r for r in planner.path_costs("cohen_rerun", runs=tmp_path, meter=_FixedMeter(1000.0))}
    scratch, fixed = rows["from scratch"], rows["released models, fixed n"]
    sequential, sampled = rows["released models, sequential"], rows["sampled (paper-sample)"]
    assert scratch["training"] > 0 and scratch["released"] == 0
    assert fixed["training"] == 0 and fixed["released"] == 7 and fixed["certification"] == scratch["certification"]
    assert sequential["certification"] < fixed["certification"] / 4  # the replay's savings, not n_max
    assert sampled["seconds"] < sequential["seconds"] / 5
    assert scratch["ratio"] == 1 and sampled["ratio"] == pytest.approx(scratch["seconds"] / sampled["seconds"])
    text = planner.paths_table({"paths": {"cohen_rerun": list(rows.values())}})
    assert "released models, sequential" in text and "x" in text.splitlines()[-1]
