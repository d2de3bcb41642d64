"""rsbook.book.steps: one description of each computing chapter's heavy steps (issue 12, part 2). A train step
leaves its checkpoint where rsbook.train.train_models puts it; steps run in this process and steps
launched through torchrun (two gloo processes) write the same logs; a complete step is not run again;
progress reads a checkpoint's epoch, a log's rows and a finished run folder; every chapter registers its
steps and the core names no document package; a failing step names itself and its command. A step may
name the module whose command line runs it (`python -m <module> <argv>`, e.g. FaRS training): it runs in
this process through that module's main, or launched through it, sharded only when it says so."""

import io
import json
import os
import sys
from pathlib import Path

import pytest

from rsbook import cli
from rsbook.book import commands, running, steps
from rsbook import launch as launch_module
from rsbook.logs import begin_log, read_certify_log, read_log_manifest, read_predict_log
from rsbook.train import train_models

ENV = {"OMP_NUM_THREADS": "1"}


def _digits_steps(root, checkpoint=None):
    """A miniature cohen-style pipeline on the bundled digits: train, certify, predict (with `checkpoint`
    given: only certify and predict, with that model)."""
    train = commands.train_step("test", root, "digits", "digits_cnn", 0.25, epochs=1, seed=0, batch_size=64, lr_step=1)
    model = train.output if checkpoint is None else checkpoint
    certify = commands.certify_step("test", root, "digits", model, "digits_cnn", 0.25, n0=20, n=200,
                                 alpha=0.001, batch=200, skip=45, trained_epochs=train.epochs)
    predict = commands.predict_step("test", root, "digits", model, "digits_cnn", 0.25, n=100, alpha=0.001,
                                 batch=100, skip=45, trained_epochs=train.epochs)
    return [train, certify, predict] if checkpoint is None else [certify, predict]


def test_a_train_step_leaves_its_checkpoint_where_train_models_does(tmp_path, one_thread):
    expected = train_models(tmp_path, "digits", "digits_cnn", [0.25], epochs=1, seed=0, batch_size=64,
                            lr_step=1)[0.25]
    step = commands.train_step("test", tmp_path, "digits", "digits_cnn", 0.25, epochs=1, seed=0, batch_size=64, lr_step=1)
    assert step.output == expected and running.is_done(step)
    assert step.argv[:2] == ("train", "--dataset") and ("--lr-step", "1") == step.argv[-2:]
    # the step schedule lets a run grow: two epochs continue the same folder, which holds half of them
    longer = commands.train_step("test", tmp_path, "digits", "digits_cnn", 0.25, epochs=2, seed=0, batch_size=64,
                              lr_step=1)
    assert longer.output == expected and running.progress(longer) == pytest.approx(0.5)
    other = commands.train_step("test", tmp_path, "digits", "digits_cnn", 0.25, epochs=1, seed=1, batch_size=64,
                             lr_step=1)
    assert other.output != expected and running.progress(other) == 0.0


def test_steps_run_in_this_process_and_are_not_run_twice(tmp_path, one_thread, monkeypatch):
    plan = _digits_steps(tmp_path)
    assert [s.runner for s in plan] == ["command"] * 3 and not any(running.is_done(s) for s in plan)
    found = running.run(plan, launch=False, progress_output=False)
    assert found == {s.name: s.output for s in plan} and all(running.is_done(s) for s in plan)
    log = read_certify_log(plan[1].output)
    assert list(log["idx"]) == list(range(0, 540, 45))
    # written by `rsbook certify`: its manifest names the checkpoint's SHA-256, as a launched step's does
    assert "checkpoint_sha256" in read_log_manifest(plan[1].output)["parameters"]
    assert len(read_predict_log(plan[2].output)) == len(log)
    # complete steps are skipped: no command runs again
    monkeypatch.setattr(cli, "main", lambda argv: pytest.fail(f"ran {argv} again"))
    assert running.run(plan, launch=False, progress_output=False) == found


@pytest.mark.slow
def test_launched_steps_write_the_rows_of_in_process_steps(tmp_path, monkeypatch):
    """The full profile's path: certify and predict of the same model through torchrun with two gloo
    processes write the rows one process writes (per-example seeding)."""
    monkeypatch.setattr(launch_module, "_cuda_count", lambda: 0)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    here = _digits_steps(tmp_path / "here")
    there = _digits_steps(tmp_path / "there", checkpoint=here[0].output)
    running.run(here, launch=False, progress_output=False)
    out = io.StringIO()
    running.run(there, launch=True, devices=2, progress_output=True, stdout=out, stderr=out)
    assert out.getvalue().count("launched, 2 processes") == 2
    columns = ["idx", "label", "predict", "radius", "correct"]
    assert read_certify_log(here[1].output)[columns].equals(read_certify_log(there[0].output)[columns])
    assert read_predict_log(here[2].output)[columns[:3]].equals(read_predict_log(there[1].output)[columns[:3]])
    assert sorted(p.name for p in there[0].output.parent.iterdir()) == ["certify.tsv", "certify.tsv.manifest.json"]


def test_progress_counts_a_partial_log_and_its_shards(tmp_path):
    step = _digits_steps(tmp_path)[1]
    assert step.examples == 12 and running.progress(step) == 0.0
    begin_log(step.output, {"kind": "certify"}, seed=0)
    step.output.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t0\t0\t0.5\t1\t0:00:00.1\n")
    step.output.with_name("certify.tsv.part1").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                                                          "45\t1\t1\t0.5\t1\t0:00:00.1\n90\t2\t2")  # torn last row
    assert running.progress(step) == pytest.approx(2 / 12)
    assert not running.is_done(step)


def test_a_run_folder_output_is_done_once_its_manifest_is_finished_with_no_shard_left(tmp_path):
    folder = tmp_path / "anisotropic" / "digits-0123abcd"
    step = steps.Step("ancer", "image", "optimise_certify", argv=("certify-image",), module="rsbook.ancer.pipeline",
                      sharded=True, output=folder, examples=8)
    assert running.progress(step) == 0.0  # not there yet
    folder.mkdir(parents=True)
    manifest = {"parameters": {"n": 100}, "end_time": None}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert running.progress(step) == 0.0  # begun, not finished
    (folder / "manifest.json").write_text(json.dumps({**manifest, "end_time": "2026-01-01T00:00:00+00:00"}))
    (folder / "Fixed.tsv.part1").write_text("idx\n3\n")
    assert not running.is_done(step)  # a shard still to fold in
    (folder / "Fixed.tsv.part1").unlink()
    assert running.is_done(step)


def test_a_run_record_finds_the_finished_run_folder_it_matches(tmp_path):
    folder = tmp_path / "topk" / "digits_sigma0.5-0123abcd"
    folder.mkdir(parents=True)
    manifest = {"parameters": {"dataset": "digits", "ks": [1, 3], "n": 100}, "end_time": None}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    record = steps.RunRecord(tmp_path / "topk", "digits_sigma0.5", {"dataset": "digits", "ks": (1, 3)})
    assert len(record.manifests()) == 1 and not record.finished()
    (folder / "manifest.json").write_text(json.dumps({**manifest, "end_time": "2026-01-01T00:00:00+00:00"}))
    assert record.finished()
    assert not steps.RunRecord(tmp_path / "topk", "digits_sigma0.5", {"n": 1000}).finished()
    assert not steps.RunRecord(tmp_path / "topk", "digits_sigma0", {"dataset": "digits"}).finished()  # a prefix


def test_every_computing_chapter_registers_its_steps():
    found = steps.discover()
    assert {"cohen_rerun", "relax", "fars", "ancer"} <= set(found)
    assert {f.__module__ for f in found.values()} >= {"rsbook.cohen.steps", "rsbook.relax.steps", "rsbook.fars.steps",
                                                      "rsbook.ancer.steps"}
    with pytest.raises(ValueError, match="registered already"):
        steps.register("cohen_rerun")(lambda parameters, root: [])
    with pytest.raises(ValueError, match="no steps are registered for chapter 'cohen_logs'"):
        steps.chapter_steps("cohen_logs", {}, "runs")


def test_the_core_names_no_document_package():
    source = Path(steps.__file__).read_text()
    assert not any(f"rsbook.{name}" in source for name in ("cohen", "relax", "fars", "ancer"))


def test_a_step_is_checked_when_it_is_made(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        steps.Step("x", "a", "sing")
    with pytest.raises(ValueError, match="names the output it leaves"):
        steps.Step("x", "a", "certify", argv=("certify",))
    with pytest.raises(ValueError, match="needs `epochs`"):
        steps.Step("x", "a", "train", argv=("train",), output=tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="a command .* or a call, not both"):
        steps.Step("x", "a", "train", argv=("train",), call=print, output=tmp_path / "c.pt", epochs=1)
    model = commands.core_model("digits_cnn", "digits")
    with pytest.raises(ValueError, match="operation must be one of"):
        steps.Work("hvp", model, 10, 1)
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        steps.Work("forward", model, 10, 0)
    with pytest.raises(ValueError, match="step names must be unique"):
        running.run([steps.Step("x", "a", "timing"), steps.Step("x", "a", "timing")])


def test_a_failing_step_names_itself_and_what_its_command_said(tmp_path):
    step = commands.certify_step("test", tmp_path, "digits", tmp_path / "missing.pt", "digits_cnn", 0.25, n0=10, n=100,
                              alpha=0.001, batch=100, skip=100)
    with pytest.raises(steps.StepError, match=r"step 'certify digits, noise 0.25, σ = 0.25' \(test\).*missing\.pt"):
        running.run([step], launch=False, progress_output=False)
    with pytest.raises(ValueError, match="devices must be 'auto' or an integer >= 1"):
        running.run([step], launch=True, devices=0)


def test_dataset_sizes_need_no_data_on_disk(monkeypatch):
    monkeypatch.delenv("RSBOOK_DATA", raising=False)
    assert commands.dataset_size("cifar10", "train") == 50_000 and commands.dataset_size("imagenet", "test") == 50_000
    assert commands.dataset_size("imagenet", "train") == 1_281_167 and commands.dataset_size("digits", "test") == 540
    assert commands.selected_examples("imagenet", "test", 100) == 500


def test_a_sequential_certification_step_runs_rsbook_certify_radius(tmp_path, digits_checkpoint, one_thread):
    from rsbook.logs import read_log

    step = commands.certify_radius_step("test", tmp_path, "digits", digits_checkpoint, "digits_cnn", 0.25, 0.25, n0=50,
                                     n_max=2000, alpha=0.001, batch=500, skip=100)
    assert step.kind == "certify_radius" and "--radius" in step.argv and step.note.startswith("upper bound")
    assert step.work[0].count == step.examples * (50 + 2000)  # without a replay's mean: n_max per example
    running.run([step], launch=False, progress_output=False)
    log = read_log(step.output)
    assert running.is_done(step) and list(log["idx"]) == [0, 100, 200, 300, 400, 500]
    assert (log["samples"] <= 50 + 2000).all() and set(log["radius"]) <= {0.0, 0.25}
    replayed = commands.certify_radius_step("test", tmp_path, "digits", digits_checkpoint, "digits_cnn", 0.25, 0.25,
                                         n0=50, n_max=2000, alpha=0.001, batch=500, skip=100, samples_per_example=300)
    assert replayed.output == step.output and replayed.work[0].count == step.examples * (50 + 300)


def test_the_summary_says_where_the_steps_ran(tmp_path, monkeypatch):
    plan = _digits_steps(tmp_path) + [steps.Step("test", "top-k", "topk")]
    assert running.summary(plan, launch=False) == ("3 of 4 ran as rsbook commands (train, certify and predict) "
                                                 "inside this notebook's process; 1 with no rsbook command "
                                                 "(top-k radii) run in this process")
    monkeypatch.setattr(launch_module, "_cuda_count", lambda: 8)
    monkeypatch.setattr(launch_module, "SHARDED_COMMANDS", ("certify", "predict"))
    assert running.summary(plan, launch=True, devices="auto").startswith(
        "3 of 4 ran as rsbook commands in processes of their own (certify and predict through torchrun with "
        "8 processes each; train as one process)")


_FAKE = """
import argparse, os, sys
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rsbook.fake")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make")
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--fail", action="store_true")
    make.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.fail:
        print("rsbook.fake make: error: boom", file=sys.stderr)
        return 2
    args.out.write_text(f"{os.getpid()} {os.environ.get('WORLD_SIZE', '1')} {args.no_progress}")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
"""


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    """A module `rsbook_fake_step` with a command line `make --out PATH [--fail]` (main(argv) -> status),
    importable here and in launched processes."""
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "rsbook_fake_step.py").write_text(_FAKE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]))
    yield "rsbook_fake_step"
    sys.modules.pop("rsbook_fake_step", None)


def _made(out: Path) -> tuple[int, int, str]:
    pid, world, no_progress = out.read_text().split()
    return int(pid), int(world), no_progress


def test_a_step_of_another_module_runs_through_its_main_here_or_launched(tmp_path, fake_module, monkeypatch):
    out = tmp_path / "made.txt"
    step = steps.Step("t", "make it", "certify", argv=("make", "--out", out), output=out, module=fake_module)
    assert step.command == "make" and step.command_line == ("python", "-m", fake_module, "make", "--out", str(out))
    assert not step.splits_work and steps.Step("t", "s", "certify", argv=("make",), output=out, module=fake_module,
                                               sharded=True).splits_work
    monkeypatch.setattr(cli, "main", lambda argv: pytest.fail("ran through rsbook.cli"))
    assert running.run([step], launch=False, progress_output=False) == {"make it": out}
    assert _made(out) == (os.getpid(), 1, "True")  # in this process, with --no-progress
    err = io.StringIO()
    running.run([step], launch=True, devices=2, progress_output=True, stdout=io.StringIO(), stderr=err)
    assert _made(out)[0] != os.getpid() and "make it (launched, 1 process)" in err.getvalue()  # sharded None: one
    failing = steps.Step("t", "fail", "certify", argv=("make", "--out", out, "--fail"), output=out, module=fake_module)
    with pytest.raises(steps.StepError, match=r"step 'fail' \(t\): `python -m rsbook_fake_step make --out .* --fail` "
                                              r"exited with status 2: rsbook.fake make: error: boom"):
        running.run([failing], launch=False, progress_output=False)
    refused = steps.Step("t", "refused", "certify", argv=("make", "--out", out, "--no-such-flag"), output=out, module=fake_module)
    with pytest.raises(steps.StepError, match="(?s)exited with status 2: .*unrecognized arguments: --no-such-flag"):
        running.run([refused], launch=False, progress_output=False)  # argparse's SystemExit, not the kernel's end


def test_a_sharded_step_of_another_module_is_launched_on_every_process(tmp_path, fake_module, monkeypatch):
    launched = []
    monkeypatch.setattr(launch_module, "launch", lambda argv, **kwargs: launched.append((argv, kwargs)))
    monkeypatch.setattr(launch_module, "_cuda_count", lambda: 4)
    out = tmp_path / "made.txt"
    plan = [steps.Step("t", "sharded", "train", argv=("make", "--out", out), output=out, module=fake_module,
                       sharded=True),
            steps.Step("t", "single", "certify", argv=("make", "--out", out), output=out, module=fake_module)]
    running.run(plan, launch=True, devices="auto", progress_output=False)
    assert [(kw["devices"], kw["module"], kw["sharded"]) for _, kw in launched] == [
        (4, fake_module, True), (1, fake_module, None)]
    assert launched[0][0] == ["make", "--out", str(out), "--no-progress"]


def test_a_step_of_another_module_is_checked_when_it_is_made(tmp_path):
    fars = "rsbook.fars.pipeline"
    with pytest.raises(ValueError, match="must start with a command of python -m rsbook.fars.pipeline"):
        steps.Step("x", "a", "train", argv=("--epochs", "1"), output=tmp_path / "c.pt", epochs=1, module=fars)
    with pytest.raises(ValueError, match="a module or sharded describes a command: give argv"):
        steps.Step("x", "a", "train", call=print, output=tmp_path / "c.pt", epochs=1, module=fars)
    with pytest.raises(ValueError, match="a module or sharded describes a command"):
        steps.Step("x", "a", "timing", sharded=True)
    with pytest.raises(ValueError, match="step 'a': module 'rsbook.no_such' cannot be run with `python -m`"):
        steps.Step("x", "a", "train", argv=("train",), output=tmp_path / "c.pt", epochs=1, module="rsbook.no_such")
    with pytest.raises(ValueError, match="sharded must be True, False or None"):
        steps.Step("x", "a", "train", argv=("train",), output=tmp_path / "c.pt", epochs=1, module=fars, sharded=1)
    with pytest.raises(ValueError, match="argv must start with an rsbook command"):
        steps.Step("x", "a", "train", argv=("--epochs",), output=tmp_path / "c.pt", epochs=1)
    plain = steps.Step("x", "a", "train", argv=("train",), output=tmp_path / "c.pt", epochs=1)
    assert plain.module == "rsbook" and plain.sharded is None and plain.command_line == ("rsbook", "train")
    assert plain.splits_work and steps.Step("x", "t", "timing").command_line is None


def test_the_summary_names_another_module_s_command_line(tmp_path, monkeypatch):
    fars = "rsbook.fars.pipeline"
    training = [steps.Step("fars", f"train {i}", "train", argv=("train", "--out", tmp_path / str(i)), module=fars,
                           sharded=True, output=tmp_path / str(i) / "checkpoint.pt", epochs=1) for i in range(3)]
    plan = [*training, steps.Step("fars", "timing", "timing")]
    assert running.summary(plan, launch=False) == (
        "3 of 4 ran as commands (training with python -m rsbook.fars.pipeline train) inside this notebook's "
        "process; 1 with no command (timing) run in this process")
    assert running.summary(plan, launch=True, devices=2) == (
        "3 of 4 ran as commands in processes of their own (training with python -m rsbook.fars.pipeline train "
        "through torchrun with 2 processes each); 1 with no command (timing) run in this process")
    mixed = [*_digits_steps(tmp_path), *plan]
    monkeypatch.setattr(launch_module, "_cuda_count", lambda: 8)
    monkeypatch.setattr(launch_module, "SHARDED_COMMANDS", ("certify", "predict"))
    assert running.summary(mixed, launch=True).startswith(
        "6 of 7 ran as commands in processes of their own (certify, predict and training with python -m "
        "rsbook.fars.pipeline train through torchrun with 8 processes each; train as one process)")
