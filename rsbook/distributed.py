"""Data-parallel training across torchrun processes: the plumbing rsbook.train and rsbook.fars share.

    torchrun --standalone --nproc_per_node=K -m rsbook -- train --dataset ... --batch B --out RUN

joins a process group (join: gloo on the CPU, NCCL on GPUs, one GPU per process, cuda:LOCAL_RANK) and
the training functions see it through rank_world(); so does FaRS's `torchrun ... -m
rsbook.fars.pipeline -- train ...`. With world size K > 1 a run is data parallel
with PyTorch's DistributedDataParallel:

- the global batch B is split over the ranks, B / K examples each (per_rank_batch refuses a B that K
  does not divide); DDP averages the gradients, so an optimizer step is one step of the global batch
  and learning-rate schedules count the same steps as one process;
- every epoch the training set is permuted by torch's DistributedSampler, seeded from the run's
  'shuffle' stream and the epoch (rsbook.streams), and dealt out to the ranks (no example dropped; the
  last few examples of a permutation that K does not divide repeat at most K - 1 examples);
- the noise and augmentation streams of a rank are keyed by (epoch, rank) (rank_key), so ranks draw
  different noise and a resumed epoch replays the same draws;
- BatchNorm is per rank, as in the authors' ImageNet ResNet-50 under nn.DataParallel (each replica
  normalises its own B / K examples; running statistics from the first replica): the running
  statistics are rank 0's, since DDP broadcasts them before each training forward and sync_buffers
  does before an evaluation and a checkpoint. (SyncBatchNorm would normalise over the global batch at
  the cost of a collective per layer per step; it is not what the authors trained with.)
- the losses and accuracies logged per epoch come from counts summed over the ranks (all_sum): each
  rank evaluates its share of the test set (shard), with its own noise stream where it is noisy;
- rank 0 alone writes: the manifest (start_run, finish_run), the checkpoint in the single-process
  format (unwrap: no 'module.' prefix) and the training log; a refusal on rank 0 is raised on every
  rank (on_rank_zero), and barriers keep a rank from reading a checkpoint that is being rewritten
  and from returning before the last one is on disk;
- the manifest records K (like the device, not a parameter): a run with epochs left resumes only
  with the same K (resumed_world_size), and then ends with the weights of an uninterrupted run.

With one process (no process group, or world size 1) the helpers reduce to what the training
functions always did: the same streams, the same weights.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from rsbook import streams
from rsbook._checks import check_device
from rsbook._io import read_torch_dict, trim_epoch_rows
from rsbook.logs import MANIFEST, begin_run, finish_manifest

__all__ = ["join", "rank_world", "local_device", "per_rank_batch", "resumed_world_size", "rank_key", "epoch_loader",
           "shard", "wrap", "unwrap", "sync_buffers", "all_sum", "barrier", "on_rank_zero", "start_run", "finish_run",
           "run_command", "command_flags"]


def join(device) -> bool:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1 and not joined yet: gloo
    for a CPU `device`, NCCL for a CUDA one, with this process's GPU, cuda:LOCAL_RANK, made current
    (NCCL collectives need it). Returns whether it joined (the caller then ends with
    torch.distributed.destroy_process_group())."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    torch.distributed.init_process_group(backend)
    return True


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: from the initialized torch.distributed process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def local_device(device) -> torch.device:
    """The torch device this process computes on: `device` (default CPU), except that a CUDA device
    under a distributed run (world size > 1) is this process's own GPU, cuda:LOCAL_RANK (torchrun sets
    LOCAL_RANK), so that K processes on a K-GPU machine use K different GPUs."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and rank_world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def per_rank_batch(batch_size: int, world: int) -> int:
    """The examples each of `world` processes takes per optimizer step of the global batch
    `batch_size`. Raises ValueError naming both when `world` does not divide `batch_size`."""
    if batch_size % world:
        raise ValueError(f"the batch size {batch_size} is the global batch and must be divisible by the world size "
                         f"{world} (each of the {world} processes takes batch / {world} examples per step): choose a "
                         f"batch that is a multiple of {world}, or a number of processes that divides {batch_size}")
    return batch_size // world


def resumed_world_size(run_dir, world: int, epochs_left: bool) -> int:
    """The world size to record in the manifest of the training run in `run_dir` when `world`
    processes (re)start it: `world` for a new run; for an existing one, the world size it was trained
    with (its manifest's, 1 for a manifest without one), which must be `world` when `epochs_left`:
    the noise streams and shards depend on it, so resuming with another would end with the weights of
    neither run (ValueError naming both sizes). A finished run may be read back by any number of
    processes; it keeps its record."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return world
    recorded = int(json.loads(path.read_text()).get("world_size") or 1)
    if epochs_left and recorded != world:
        how = f"torchrun --nproc_per_node={recorded}" if recorded > 1 else "one process"
        raise ValueError(f"run folder {run_dir} holds a run trained with world size {recorded} (processes); resuming "
                         f"it with world size {world} would end with the weights of neither run: relaunch it with "
                         f"{how}, or train into a new folder")
    return recorded


def rank_key(*key) -> tuple:
    """The key of a per-rank random stream: `key` itself with one process (so a single-process run
    keeps its streams), `key` + (rank,) under a distributed run, so that ranks draw different noise
    and a resumed run replays each rank's draws."""
    rank, world = rank_world()
    return key if world == 1 else (*key, rank)


def epoch_loader(dataset, batch_size: int, epoch: int, *, seed: int, tag: tuple = (), workers: int = 0) -> DataLoader:
    """The training DataLoader of epoch `epoch` (0-based) over `dataset` at the global batch
    `batch_size`, with torch's global generator seeded for the dataset's augmentation.

    One process: batches of `batch_size` in the order of the stream (seed, 'shuffle', *tag, epoch);
    augmentation from (seed, 'augment', *tag, epoch). World size K > 1: a DistributedSampler (shuffled,
    seed rsbook.streams.stream_seed(seed, 'shuffle', *tag), set to `epoch`, no example dropped) deals
    this rank batches of batch_size / K; augmentation from (seed, 'augment', *tag, epoch, rank), and
    data-loading workers' seeds from (seed, 'augment', *tag, epoch, rank, 'workers'). Every rank gets
    the same number of batches of the same sizes, so the DDP steps line up."""
    rank, world = rank_world()
    streams.seed_global(seed, "augment", *rank_key(*tag, epoch))
    if world == 1:
        order = streams.generator(seed, "shuffle", *tag, epoch)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=order, num_workers=workers,
                          drop_last=False)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=streams.stream_seed(seed, "shuffle", *tag), drop_last=False)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=per_rank_batch(batch_size, world), sampler=sampler, num_workers=workers,
                      generator=streams.generator(seed, "augment", *tag, epoch, rank, "workers"), drop_last=False)


def shard(dataset):
    """This rank's share of `dataset` for an evaluation: examples rank, rank + K, rank + 2K, ... (all of
    them with one process). The shares are disjoint and cover the dataset; sum counts with all_sum."""
    rank, world = rank_world()
    return dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))


def wrap(model: nn.Module, device) -> nn.Module:
    """`model` (already on `device`) in DistributedDataParallel under a distributed run (its
    parameters and buffers broadcast from rank 0, gradients averaged over the ranks at each
    backward), else `model` itself. Call the wrapper's forward for every use of a trained parameter."""
    if rank_world()[1] == 1:
        return model
    device = torch.device(device)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (its state_dict has no 'module.' prefix,
    the format of a single-process checkpoint), or `model` itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), in place: after a training
    step each rank has updated them from its own examples; the checkpoint holds rank 0's."""
    if rank_world()[1] == 1:
        return
    for buffer in unwrap(model).buffers():
        torch.distributed.broadcast(buffer, src=0)


def all_sum(values, device) -> list[float]:
    """The sums over all ranks of the numbers `values` (e.g. correct predictions, examples seen), as
    floats (float64 on `device`, which must suit the process group's backend); `values` themselves
    with one process."""
    values = [float(v) for v in values]
    if rank_world()[1] == 1:
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(totals)
    return totals.tolist()


def barrier() -> None:
    """Wait until every rank gets here (nothing with one process)."""
    if rank_world()[1] > 1:
        torch.distributed.barrier()


def on_rank_zero(function, *args, **kwargs):
    """Run function(*args, **kwargs) on rank 0 only and return its result on every rank (broadcast;
    it must be picklable). An exception on rank 0 is raised on every rank (the same exception, or a
    RuntimeError with its message when it cannot be pickled), so that no rank waits forever for a
    rank that gave up; the call is also a barrier. With one process: function(*args, **kwargs)."""
    rank, world = rank_world()
    if world == 1:
        return function(*args, **kwargs)
    message, error = [None, None], None
    if rank == 0:
        try:
            message[1] = function(*args, **kwargs)
        except Exception as err:  # every rank must learn of it
            error = err
            try:
                message[0] = pickle.loads(pickle.dumps(err))
            except Exception:
                message[0] = RuntimeError(f"rank 0 failed: {type(err).__name__}: {err}")
    torch.distributed.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise message[0]
    return message[1]


def command_flags(args, **aliases) -> dict[str, str]:
    """{argument name: its flag} for a command's parsed arguments `args` (vars of argparse's namespace): each
    dest as --dest-with-dashes, and `aliases` where the library's name for the value differs from the dest
    (e.g. batch_size="--batch")."""
    return {**{dest: "--" + dest.replace("_", "-") for dest in args}, **aliases}


def _in_flag_terms(message: str, flags) -> str:
    """A refusal in the command's terms: a message that opens with an argument's name (the library's
    convention, e.g. 'batch_size must be an integer >= 1') opens with its flag instead."""
    for name, flag in (flags or {}).items():
        if message.startswith(name + " "):
            return flag + message[len(name):]
    return message


def run_command(prog: str, device, work, flags=None) -> int:
    """A command line around `work` (a callable returning what to print, or None): run it in the process
    group joined for `device` (join; left again at the end; device None: no group), print its result on
    rank 0 and return 0; a refused input (ValueError, KeyError, FileNotFoundError, ConnectionError, raised
    by `work` on any rank, or a `device` this machine lacks: the command's --device, checked first) prints
    one line `<prog>: error: <message>` on standard error and returns 2. `flags` ({argument name: flag},
    command_flags) makes a message that names an argument name its flag."""
    import sys

    joined = False
    try:
        if device is not None:
            check_device(device, "--device")
        joined = device is not None and join(device)
        result = work()
        if result is not None and rank_world()[0] == 0:
            print(result)
    except (ValueError, KeyError, FileNotFoundError, ConnectionError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{prog}: error: {_in_flag_terms(str(message), flags)}", file=sys.stderr)
        return 2
    finally:
        if joined:
            torch.distributed.destroy_process_group()
    return 0


def _start(run_dir: Path, parameters: dict, seed, device, epochs: int, world: int, checkpoint: Path, log: Path) -> int:
    done = int(read_torch_dict(checkpoint)["epoch"]) if checkpoint.exists() else 0
    world = resumed_world_size(run_dir, world, done < epochs)
    begin_run(run_dir, parameters, seed=seed, device=device, epochs=epochs, world_size=world)
    trim_epoch_rows(log, done)
    return done


def start_run(run_dir, parameters: dict, *, seed, device, epochs: int, checkpoint, log) -> int:
    """Start or resume the training run in `run_dir` (checkpoint and log: its files) and return, on
    every rank, the epochs its checkpoint holds (0 for a new run). Rank 0 alone writes: the manifest
    (rsbook.logs.begin_run: the parameters must match a recorded run's; `epochs` and the world size,
    resumed_world_size, are recorded) and the log, cut to the checkpoint's epochs (a crash between
    writing one and the other must not leave rows of epochs that will rerun). Any refusal is raised on
    every rank, before anything is written."""
    return on_rank_zero(_start, Path(run_dir), parameters, seed, device, epochs, rank_world()[1], Path(checkpoint),
                        Path(log))


def finish_run(run_dir) -> None:
    """End the training run in `run_dir` on every rank: wait until every rank is done (so the last
    checkpoint is on disk before any rank returns its path), then rank 0 stamps the manifest's end time."""
    barrier()
    if rank_world()[0] == 0:
        finish_manifest(run_dir)
