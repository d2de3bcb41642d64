"""rsbook.launch: a heavy step as one process per device through torchrun (issue 12, part 2). On the CPU,
two gloo processes certifying digits write the rows one process writes (per-example seeding,
rsbook.dataset_runs), two train with DistributedDataParallel (section 1), and a failing step raises an
error that names the command, its exit status and the end of its standard error. A step of another
module's command line (FaRS training, `python -m rsbook.fars.pipeline train`) is launched the same way,
`-m <module> -- <argv>`, on several processes only when it says it shards."""

import io
import sys

import pytest

from rsbook import launch as launch_module
from rsbook.launch import (
    SHARDED_COMMANDS,
    LaunchError,
    check_module,
    launch,
    process_count,
    splits_work,
    torchrun_command,
)
from rsbook.logs import read_certify_log, read_log_manifest, read_manifest

ENV = {"OMP_NUM_THREADS": "1"}


def _certify(checkpoint, out, max_index=24):
    return ["certify", "--dataset", "digits", "--checkpoint", checkpoint, "--sigma", "0.25", "--n0", "100",
            "--n", "1000", "--alpha", "0.001", "--batch", "500", "--skip", "1", "--max", max_index, "--seed", "0",
            "--out", out, "--no-progress"]


def test_the_command_puts_torchrun_flags_first_and_the_step_after_a_double_dash():
    assert torchrun_command(["certify", "--n", "1000", "--max", "30"], 2) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rsbook", "--",
        "certify", "--n", "1000", "--max", "30"]
    assert torchrun_command(["certify", "--n", 1000], 1) == [sys.executable, "-m", "rsbook", "certify", "--n", "1000"]


def test_auto_is_one_process_per_visible_gpu_else_the_cpu_count(monkeypatch):
    monkeypatch.setattr(launch_module, "_cuda_count", lambda: 0)
    assert process_count("auto") == 1 and process_count("auto", cpu_processes=2) == 2
    monkeypatch.setattr(launch_module, "_cuda_count", lambda: 8)
    assert process_count("auto", cpu_processes=2) == 8 and process_count(3) == 3


@pytest.mark.parametrize("devices", [0, -1, 1.5, True, "two", None])
def test_a_bad_device_count_is_refused(devices):
    with pytest.raises(ValueError, match="devices must be 'auto' or an integer >= 1"):
        process_count(devices)


@pytest.mark.parametrize("argv, message", [([], "non-empty list"), ("certify --n 10", "non-empty list"),
                                           (["certify", None], "strings, paths or numbers"),
                                           (["--n", "10"], "must start with an rsbook command")])
def test_a_malformed_argv_is_refused_before_anything_starts(argv, message):
    with pytest.raises(ValueError, match=message):
        launch(argv, devices=1)


def test_a_step_that_does_not_shard_is_not_run_twice(tmp_path):
    assert SHARDED_COMMANDS == ("certify", "predict", "train")  # training: DDP (rsbook.distributed)
    with pytest.raises(ValueError, match="rsbook fetch does not split its work across processes; launch it with "
                                         "devices=1 \\(commands that do: certify, predict, train\\)"):
        launch(["fetch", "--all"], devices=2, cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_gloo_processes_train_through_the_launcher(tmp_path):
    """launch(['train', ...], devices=2) runs DDP training (tests/test_distributed.py checks its weights)."""
    out = tmp_path / "run"
    command = launch(["train", "--dataset", "digits", "--arch", "digits_cnn", "--noise-sd", "0.25", "--epochs", "1",
                      "--batch", "16", "--out", out, "--no-progress"], devices=2, env=ENV, stdout=io.StringIO())
    assert "--nproc_per_node=2" in command and command[command.index("rsbook") + 1:][:2] == ["--", "train"]
    assert read_manifest(out)["world_size"] == 2 and (out / "checkpoint.pt").is_file()


def test_more_processes_than_visible_gpus_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(launch_module, "_cuda_count", lambda: 1)
    with pytest.raises(ValueError, match="2 processes on --device cuda need 2 CUDA devices, but 1 are visible"):
        launch(["certify", "--device", "cuda", "--out", str(tmp_path / "log.tsv")], devices=2)


def test_a_failing_step_names_the_command_its_status_and_its_stderr(tmp_path):
    err = io.StringIO()
    with pytest.raises(LaunchError) as caught:
        launch(["fetch", "no/such/artifact"], devices=1, env=ENV, stderr=err)
    assert caught.value.returncode == 2 and caught.value.command[-3:] == ["rsbook", "fetch", "no/such/artifact"]
    message = str(caught.value)
    assert "-m rsbook fetch no/such/artifact exited with status 2" in message
    assert caught.value.errors == ["rsbook fetch: error: unknown artifact 'no/such/artifact'; `rsbook fetch --list` "
                                   "shows the pinned ones"]
    assert "unknown artifact 'no/such/artifact'" in message and "unknown artifact" in err.getvalue()


@pytest.mark.slow
def test_two_gloo_processes_write_the_single_process_rows(tmp_path, digits_checkpoint, monkeypatch):
    monkeypatch.setattr(launch_module, "_cuda_count", lambda: 0)  # auto: the CPU count, even on a GPU machine
    single, multi = tmp_path / "single" / "log.tsv", tmp_path / "multi" / "log.tsv"
    out = io.StringIO()
    assert launch(_certify(digits_checkpoint, single), devices=1, env=ENV, stdout=out)[2] == "rsbook"
    assert out.getvalue().strip() == str(single)  # the step's output was streamed through
    command = launch(_certify(digits_checkpoint, multi), devices="auto", cpu_processes=2, env=ENV,
                     stdout=io.StringIO())
    assert "--nproc_per_node=2" in command and command[command.index("rsbook") + 1] == "--"
    columns = ["idx", "label", "predict", "radius", "correct"]
    a, b = read_certify_log(single), read_certify_log(multi)
    assert len(b) == 24 and a[columns].equals(b[columns])
    assert sorted(p.name for p in multi.parent.iterdir()) == ["log.tsv", "log.tsv.manifest.json"]  # shards merged
    assert read_log_manifest(multi)["end_time"]
    # resumable: launched again with a larger --max, it keeps its rows and appends only the missing ones
    times = b["time"].tolist()
    launch(_certify(digits_checkpoint, multi, max_index=30), devices=2, env=ENV, stdout=io.StringIO())
    launch(_certify(digits_checkpoint, single, max_index=30), devices=1, env=ENV, stdout=io.StringIO())
    a, b = read_certify_log(single), read_certify_log(multi)
    assert len(b) == 30 and a[columns].equals(b[columns]) and b["time"].head(24).tolist() == times


@pytest.mark.slow
def test_a_failing_distributed_step_raises_with_torchrun_s_status(tmp_path):
    with pytest.raises(LaunchError) as caught:
        launch(_certify(tmp_path / "missing.pt", tmp_path / "log.tsv"), devices=2, env=ENV,
               stdout=io.StringIO(), stderr=io.StringIO())
    assert caught.value.returncode != 0 and "torch.distributed.run" in caught.value.command
    # each rank's own error line comes before torchrun's long summary: it is quoted first
    assert caught.value.errors and all("missing.pt" in line for line in caught.value.errors)
    assert str(caught.value).index("missing.pt") < str(caught.value).index("the end of its standard error")


def test_another_module_runs_its_own_command_line():
    fars = "rsbook.fars.pipeline"
    assert torchrun_command(["train", "--epochs", 2], 2, module=fars) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", fars, "--",
        "train", "--epochs", "2"]
    assert torchrun_command(["train", "--epochs", 2], 1, fars) == [sys.executable, "-m", fars, "train", "--epochs", "2"]
    assert check_module("rsbook") == "rsbook" and check_module(fars) == fars


@pytest.mark.parametrize("module, message", [
    ("", "dotted Python module name"), ("rsbook.", "dotted Python module name"), ("1up", "dotted Python module name"),
    ("rsbook fars", "dotted Python module name"), (None, "dotted Python module name"),
    ("rsbook.no_such_module", "no such module is importable here"), ("no_such_package.x", "no such module"),
    ("rsbook.fars", "the package has no rsbook.fars.__main__")])
def test_a_module_python_cannot_run_is_refused_before_anything_starts(module, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        launch(["train", "--out", str(tmp_path / "run")], devices=1, module=module, cwd=tmp_path)
    with pytest.raises(ValueError, match=message):
        torchrun_command(["train"], 1, module=module)
    assert list(tmp_path.iterdir()) == []


def test_sharded_none_is_the_rsbook_list_and_no_for_another_module(monkeypatch):
    assert splits_work("certify") and splits_work("train", "rsbook") and not splits_work("fetch")
    assert not splits_work("train", "rsbook.fars.pipeline") and splits_work("train", "rsbook.fars.pipeline", True)
    assert splits_work("fetch", "rsbook", True) and not splits_work("train", "rsbook", False)
    monkeypatch.setattr(launch_module, "SHARDED_COMMANDS", ("certify",))  # read at call time
    assert not splits_work("train")
    with pytest.raises(ValueError, match="sharded must be True, False or None"):
        splits_work("train", "rsbook", "yes")


def test_another_module_s_command_is_run_twice_only_when_it_says_it_shards(tmp_path):
    with pytest.raises(ValueError, match="python -m rsbook.fars.pipeline train is not known to split its work across "
                                         "processes; launch it with devices=1, or with sharded=True"):
        launch(["train", "--out", str(tmp_path / "run")], devices=2, module="rsbook.fars.pipeline", cwd=tmp_path)
    with pytest.raises(ValueError, match="rsbook train does not split its work across processes"):
        launch(["train", "--out", str(tmp_path / "run")], devices=2, sharded=False, cwd=tmp_path)
    with pytest.raises(ValueError, match="must start with a command of python -m rsbook.fars.pipeline"):
        launch(["--epochs", "1"], devices=1, module="rsbook.fars.pipeline")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_command_of_another_module_is_quoted_by_its_own_error_line(tmp_path):
    err = io.StringIO()
    with pytest.raises(LaunchError) as caught:
        launch(["train", "--dataset", "digits", "--backbone", "[4, 8]", "--epochs", "1", "--out", tmp_path / "bad",
                "--no-progress"], devices=1, module="rsbook.fars.pipeline", sharded=True, env=ENV, stderr=err)
    assert caught.value.returncode == 2 and caught.value.command[1:4] == ["-m", "rsbook.fars.pipeline", "train"]
    assert caught.value.errors and caught.value.errors[0].startswith(
        "rsbook.fars train: error: --backbone must be a JSON object of sll_backbone options")
    assert not (tmp_path / "bad").exists()
