"""Scale-out: `torchrun --nproc_per_node=2 -m rsbook certify ...` (gloo on CPU) shards the examples
across ranks and merges them into the same rows a single process writes for the same seed;
`torchrun --nproc_per_node=2 -m rsbook -- train ...` trains with DistributedDataParallel into the
single-process checkpoint format, and a killed run resumes to the uninterrupted weights (issue 12, section 1)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsbook.dataset_runs import merge_parts
from rsbook.logs import read_certify_log, read_log_manifest, read_manifest

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


# ------------------------------------------------------------- data-parallel training (issue 12, section 1)

DIGITS_TRAIN = ["--dataset", "digits", "--arch", "digits_cnn", "--noise-sd", "0.25", "--seed", "0", "--no-progress"]


def _train(out, *flags):
    return ["train", *DIGITS_TRAIN, *flags, "--out", str(out)]


def _torchrun(args, timeout=120):
    return subprocess.run(TORCHRUN + ["-m", "rsbook", "--", *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _smoothed_accuracy(checkpoint, out) -> float:
    """Approximate certified accuracy at radius 0 (Cohen et al. 2019, Sec. 4) of `rsbook certify` on every
    third test digit."""
    from rsbook.analysis import certified_accuracy
    from rsbook.cli import main

    assert main(["certify", "--dataset", "digits", "--checkpoint", str(checkpoint), "--sigma", "0.25", "--n0", "100",
                 "--n", "1000", "--alpha", "0.001", "--batch", "1000", "--skip", "3", "--seed", "0", "--out", str(out),
                 "--no-progress"]) == 0
    log = read_certify_log(out)
    assert len(log) == 180
    return float(certified_accuracy(log, [0.0])[0])


def test_two_process_training_certifies_like_one_process(tmp_path, one_thread):
    """`torchrun --nproc_per_node=2 -m rsbook -- train` (gloo, DDP, the global batch 2 split 1 + 1) gives a
    checkpoint in the single-process format that `rsbook certify` reads, and a base classifier whose smoothed
    classifier is as accurate as the one-process model's on the same 180 test digits."""
    import torch

    from rsbook.models import load_checkpoint
    from rsbook.train import train

    single = train("digits", "digits_cnn", 0.25, 2, tmp_path / "single", seed=0, progress=False)
    result = _torchrun(_train(tmp_path / "ddp", "--epochs", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = tmp_path / "ddp" / "checkpoint.pt"
    assert result.stdout.strip() == str(ddp)  # printed once, by rank 0
    a, b = torch.load(single, weights_only=True), torch.load(ddp, weights_only=True)
    assert set(a) == set(b) and list(a["state_dict"]) == list(b["state_dict"])  # no 'module.' prefix
    assert set(a["optimizer"]["state"]) == set(b["optimizer"]["state"]) and b["epoch"] == 2
    model, payload = load_checkpoint(ddp, 10, dataset="digits")
    assert payload["arch"] == "digits_cnn" and not model.training
    manifest = read_manifest(tmp_path / "ddp")
    assert manifest["world_size"] == 2 and manifest["end_time"]
    assert manifest["parameters"]["batch_size"] == 2  # the global batch
    assert len((tmp_path / "ddp" / "train_log.tsv").read_text().splitlines()) == 3  # one row per epoch, once
    one, two = _smoothed_accuracy(single, tmp_path / "single.tsv"), _smoothed_accuracy(ddp, tmp_path / "ddp.tsv")
    assert min(one, two) >= 0.85 and abs(one - two) <= 0.05, (one, two)


def _rows(folder):
    return [row.split("\t") for row in (folder / "train_log.tsv").read_text().splitlines()[1:]]


def test_a_killed_two_process_training_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGTERM to torchrun's process group once the first epoch is logged, then the same command again:
    the weights, optimizer state and log rows are those of an uninterrupted 2-process run, bit for bit."""
    import signal
    import time

    import torch

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    flags = ["--epochs", "3", "--batch", "4"]  # 315 steps of 2 + 2 examples per epoch
    result = _torchrun(_train(whole, *flags))
    assert result.returncode == 0, result.stderr[-3000:]
    process = subprocess.Popen(TORCHRUN + ["-m", "rsbook", "--", *_train(killed, *flags)], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((killed / "train_log.tsv").exists() and len(_rows(killed)) >= 1):
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(60) != 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stopped = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= stopped < 3 and read_manifest(killed)["end_time"] is None  # killed mid-run
    result = _torchrun(_train(killed, *flags))
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = torch.load(whole / "checkpoint.pt", weights_only=True), torch.load(killed / "checkpoint.pt",
                                                                             weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["optimizer"]["state"][i][k], b["optimizer"]["state"][i][k])
               for i in a["optimizer"]["state"] for k in a["optimizer"]["state"][i])
    assert [row[:5] for row in _rows(whole)] == [row[:5] for row in _rows(killed)]  # all but the seconds
    assert len(read_manifest(killed)["resumed"]) == 1


def test_a_batch_the_processes_cannot_share_is_refused(tmp_path):
    result = _torchrun(_train(tmp_path / "run", "--epochs", "1", "--batch", "3"))
    assert result.returncode != 0
    assert ("rsbook train: error: the batch size 3 is the global batch and must be divisible by the world size 2"
            in result.stderr)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_run_resumed_with_another_world_size_is_refused(tmp_path):
    """The noise streams and the shards depend on the world size: training on with another one would end
    with neither run's weights. A finished run is read back by any number of processes. Rank 0's refusal
    reaches every rank (none waits forever)."""
    import torch

    from rsbook.train import train

    step = ["--batch", "8", "--lr-step", "1"]  # the step schedule: a finished run may be extended
    result = _torchrun(_train(tmp_path / "ddp", "--epochs", "1", *step))
    assert result.returncode == 0, result.stderr[-3000:]
    before = (tmp_path / "ddp" / "checkpoint.pt").read_bytes()
    train("digits", "digits_cnn", 0.25, 1, tmp_path / "ddp", seed=0, batch_size=8, lr_step=1, progress=False)
    assert (tmp_path / "ddp" / "checkpoint.pt").read_bytes() == before  # nothing left to train: read back
    assert read_manifest(tmp_path / "ddp")["world_size"] == 2  # still the world size that trained it
    with pytest.raises(ValueError, match=r"trained with world size 2 \(processes\); resuming it with world size 1 "
                                         r"would end with the weights of neither run: relaunch it with "
                                         r"torchrun --nproc_per_node=2"):
        train("digits", "digits_cnn", 0.25, 2, tmp_path / "ddp", seed=0, batch_size=8, lr_step=1, progress=False)
    assert torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    train("digits", "digits_cnn", 0.25, 1, tmp_path / "single", seed=0, batch_size=8, lr_step=1, progress=False)
    result = _torchrun(_train(tmp_path / "single", "--epochs", "2", *step))
    assert result.returncode != 0
    refusal = "rsbook train: error: run folder {} holds a run trained with world size 1".format(tmp_path / "single")
    assert result.stderr.count(refusal) == 2, result.stderr[-3000:]  # both ranks
    assert read_manifest(tmp_path / "single")["world_size"] == 1 and "resumed" not in read_manifest(tmp_path / "single")


def test_the_ancer_resnet18_trains_on_two_processes(tmp_path, cifar):
    """ANCER/RANCER's CIFAR-10 ResNet-18 (BatchNorm, random crops and flips) on the miniature CIFAR-10:
    DDP with per-rank BatchNorm, whose running statistics (rank 0's) land in a loadable checkpoint."""
    import torch

    from rsbook.models import load_checkpoint

    out = tmp_path / "resnet18"
    result = _torchrun(["train", "--dataset", "cifar10", "--arch", "cifar_resnet18", "--noise-sd", "0.12",
                        "--epochs", "1", "--batch", "4", "--seed", "0", "--out", str(out), "--no-progress"])
    assert result.returncode == 0, result.stderr[-3000:]
    model, payload = load_checkpoint(out / "checkpoint.pt", 10)
    assert payload["arch"] == "cifar_resnet18" and payload["dataset"] == "cifar10"
    bn = payload["state_dict"]["1.bn1.running_mean"]
    assert not torch.equal(bn, torch.zeros_like(bn))  # updated by training
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert read_manifest(out)["world_size"] == 2
