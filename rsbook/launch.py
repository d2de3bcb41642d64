"""Run a heavy `rsbook` step (certify, predict, train) as one process per device (issue 12).

    launch(["certify", "--dataset", "cifar10", ..., "--device", "cuda", "--out", LOG], devices="auto")

runs ``python -m torch.distributed.run --standalone --nproc_per_node=K -m rsbook -- certify ...``
with K = the number of visible CUDA devices (devices="auto"; `cpu_processes` when there is none) or
K = devices when it is an integer. Each rank certifies a disjoint shard of the examples and rank 0
merges the shards into the log (rsbook.dataset_runs), with the rows one process writes for the same
seed; an interrupted launch resumes from its shards when it is run again. A `train` step trains
data parallel (DistributedDataParallel, the global `--batch` split over the K processes,
rank 0 writing the checkpoint in the single-process format; rsbook.distributed), and an interrupted
launch resumes from its last checkpoint to the weights of an uninterrupted one with the same K.
The `--` keeps torchrun's own parser, which reads `--n` and `--max` as its `--nnodes` and
`--max-restarts`, off the step's flags (rsbook.cli). With K = 1 the step runs as one plain
``python -m rsbook ...`` process. Processes use gloo on the CPU and NCCL on GPUs (rsbook.cli picks
it from `--device`).

A step whose command line is another module's runs the same way with `module`:

    launch(["train", "--dataset", "imagenette", ..., "--out", RUN], devices="auto",
           module="rsbook.fars.pipeline", sharded=True)

runs ``python -m torch.distributed.run ... -m rsbook.fars.pipeline -- train ...`` (``python -m
rsbook.fars.pipeline train ...`` with one process). Whether such a command splits its work across
processes is not known here: it is run on K > 1 processes only with sharded=True (the module's own
promise, e.g. FaRS training's DDP), and with one otherwise.

The child's standard output and error are streamed to ours as they arrive (in a notebook: into the
cell's output); a failure raises LaunchError naming the command, its exit status and the tail of its
standard error.
"""

from __future__ import annotations

import codecs
import importlib.util
import numbers
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence

__all__ = ["SHARDED_COMMANDS", "ERROR_LINE", "LaunchError", "process_count", "check_module", "splits_work", "torchrun_command",
           "launch"]

SHARDED_COMMANDS = ("certify", "predict", "train")
"""The `rsbook` commands that split their work across torchrun ranks (the examples of certify and
predict, each batch of train); any other runs with one process. Commands of other modules say so
themselves (launch's `sharded`)."""

DEFAULT_MODULE = "rsbook"
"""The module whose command line runs a step unless another is named (rsbook.cli, `python -m rsbook`)."""

STDERR_TAIL_LINES = 40
"""Lines of the child's standard error quoted by a LaunchError."""


class LaunchError(RuntimeError):
    """A launched step exited with a non-zero status: `command` (the argv run), `returncode`,
    `stderr_tail` (its last STDERR_TAIL_LINES lines of standard error) and `errors` (the lines in which
    a process of the step reported its error, 'rsbook <command>: error: ...' or, from a command of a
    module of rsbook, e.g. 'rsbook.fars train: error: ...', at most 10)."""

    def __init__(self, command: list[str], returncode: int, stderr_tail: str, errors=()):
        self.command, self.returncode, self.stderr_tail = command, returncode, stderr_tail
        self.errors = list(errors)
        reported = "".join(f"\n  {line}" for line in self.errors)
        super().__init__(f"{shlex.join(command)} exited with status {returncode}"
                         + (f"; the step reported:{reported}" if reported else "")
                         + f"\nthe end of its standard error:\n{stderr_tail or '(empty)'}")


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def process_count(devices="auto", *, cpu_processes: int = 1) -> int:
    """How many processes a launch uses: devices="auto" gives the number of visible CUDA devices
    (torch.cuda.device_count()), or `cpu_processes` when none is visible; an integer gives itself.
    Raises ValueError for anything else, or for a count below 1."""
    if isinstance(cpu_processes, bool) or not isinstance(cpu_processes, numbers.Integral) or cpu_processes < 1:
        raise ValueError(f"cpu_processes must be an integer >= 1, got {cpu_processes!r}")
    if devices == "auto":
        return _cuda_count() or int(cpu_processes)
    if isinstance(devices, bool) or not isinstance(devices, numbers.Integral) or devices < 1:
        raise ValueError(f"devices must be 'auto' or an integer >= 1 (processes, one per device), got {devices!r}")
    return int(devices)


_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def check_module(module) -> str:
    """`module` if it names a Python module that `python -m` can run here: a dotted name
    (e.g. 'rsbook', 'rsbook.fars.pipeline') that importlib.util.find_spec finds, with a __main__
    submodule when it is a package; ValueError otherwise."""
    if not isinstance(module, str) or _MODULE_NAME.fullmatch(module) is None:
        raise ValueError(f"module must be a dotted Python module name (e.g. 'rsbook' or 'rsbook.fars.pipeline'), "
                         f"got {module!r}")
    if module == DEFAULT_MODULE:
        return module
    try:
        spec = importlib.util.find_spec(module)
        package = spec is not None and spec.submodule_search_locations is not None
        if package:  # python -m runs a package's __main__
            spec = importlib.util.find_spec(f"{module}.__main__")
    except (ImportError, ValueError):
        spec, package = None, False
    if spec is None:
        raise ValueError(f"module {module!r} cannot be run with `python -m`: "
                         + (f"the package has no {module}.__main__" if package else "no such module is importable here"))
    return module


def splits_work(command, module: str = DEFAULT_MODULE, sharded: bool | None = None) -> bool:
    """Whether `command` (the first argument) of `python -m module` splits its work across torchrun
    ranks: `sharded` when it is True or False; for sharded=None, command in SHARDED_COMMANDS (read at
    call time) for module 'rsbook' and False for any other module."""
    if sharded is not None:
        if not isinstance(sharded, bool):
            raise ValueError(f"sharded must be True, False or None, got {sharded!r}")
        return sharded
    return module == DEFAULT_MODULE and command in SHARDED_COMMANDS


def _arguments(argv, module: str = DEFAULT_MODULE) -> list[str]:
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence) or not argv:
        raise ValueError(f"argv must be a non-empty list of command-line arguments (e.g. ['certify', '--dataset', "
                         f"'digits', ...]), got {argv!r}")
    out = []
    for value in argv:
        if isinstance(value, bool) or not isinstance(value, (str, os.PathLike, numbers.Real)):
            raise ValueError(f"argv entries must be strings, paths or numbers, got {value!r} in {list(argv)!r}")
        out.append(os.fspath(value) if isinstance(value, os.PathLike) else str(value))
    if out[0].startswith("-"):
        if module == DEFAULT_MODULE:
            raise ValueError(f"argv must start with an rsbook command (e.g. 'certify'), got {out[0]!r}")
        raise ValueError(f"argv must start with a command of python -m {module} (e.g. 'train'), got {out[0]!r}")
    return out


def torchrun_command(argv, processes: int, module: str = DEFAULT_MODULE) -> list[str]:
    """The argv that runs ``<module> <argv>`` (module 'rsbook': the `rsbook` command; another, e.g.
    'rsbook.fars.pipeline', its `python -m` command line) with `processes` processes: with one,
    ``python -m <module> ...``; with more, ``python -m torch.distributed.run --standalone
    --nproc_per_node=K -m <module> -- ...`` (the `--` is required; see the module docstring). Raises
    ValueError for a module check_module refuses."""
    module = check_module(module)
    args = _arguments(argv, module)
    processes = process_count(processes)
    if processes == 1:
        return [sys.executable, "-m", module, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", module, "--", *args]


def _requested_device(args: list[str]) -> str | None:
    for i, value in enumerate(args):
        if value == "--device" and i + 1 < len(args):
            return args[i + 1]
        if value.startswith("--device="):
            return value.split("=", 1)[1]
    return None


ERROR_LINE = re.compile(r"rsbook(?:\.[\w.]+)? [\w-]+: error: ")
"""A step's own report of its error: 'rsbook certify: error: ...' (rsbook.cli), or from a command of a
module of rsbook 'rsbook.fars train: error: ...' (rsbook.distributed.run_command); .match for a line
that is the report, .search for one torchrun prefixed with its rank."""


def _pump(source, sink, tail: bytearray | None = None, errors: list | None = None, limit: int = 1 << 16):
    """Copy a child's pipe to `sink` as it arrives (chunks, so progress bars pass through), keeping the
    last `limit` bytes in `tail` and the first 10 lines the step reports as errors ("rsbook <command>:
    error: ...", ERROR_LINE, which under torchrun come before its own long summary) in `errors`."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""

    def forward(text: str):
        nonlocal pending, sink
        if sink is not None and text:
            try:
                sink.write(text)
                sink.flush()
            except (OSError, ValueError):  # a closed stream: keep draining the pipe, or the child would block
                sink = None
        if errors is not None:
            *lines, pending = (pending + text).split("\n")
            for line in lines:
                found = ERROR_LINE.search(line)
                if found and len(errors) < 10:
                    errors.append(line[found.start():].rstrip("\r"))
            pending = pending[-4096:]

    while True:
        chunk = os.read(source.fileno(), 1 << 16)
        if not chunk:
            break
        if tail is not None:
            tail.extend(chunk)
            del tail[:-limit]
        forward(decoder.decode(chunk))
    forward(decoder.decode(b"", final=True) + "\n")
    source.close()


def _stop(process: subprocess.Popen):
    """End the launched process group (torchrun and its workers): SIGTERM, then SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def launch(argv, devices="auto", *, module: str = DEFAULT_MODULE, sharded: bool | None = None,
           cpu_processes: int = 1, env: Mapping[str, str] | None = None, cwd=None, stdout=None, stderr=None,
           timeout: float | None = None) -> list[str]:
    """Run ``rsbook <argv>`` (e.g. ['certify', '--dataset', 'cifar10', ..., '--out', LOG]) with one
    process per device (process_count(devices, cpu_processes=...)) and return the command it ran.

    module: the module whose command line runs argv (``python -m <module> <argv>``, torchrun's
    ``-m <module> -- <argv>``): 'rsbook' (rsbook.cli), or e.g. 'rsbook.fars.pipeline' for FaRS
    training; check_module validates it. sharded: whether the command splits its work across processes
    (splits_work): None means argv[0] in SHARDED_COMMANDS for module 'rsbook' and False for any other
    module; True or False say it for the command.

    env: variables set for the step on top of ours (PYTHONUNBUFFERED=1 unless given). stdout, stderr:
    text streams the child's output is copied to as it arrives (default: sys.stdout and sys.stderr at
    call time). timeout: seconds before the step's process group is ended (then LaunchError). Raises
    ValueError before starting anything for a malformed argv, module, sharded or devices, for K > 1
    processes of a command that does not shard (splits_work), or for a CUDA `--device` with fewer visible
    devices than processes; LaunchError when the step exits with a non-zero status. The step's own guarantees
    hold unchanged: a certify log has the rows one process writes, a training run resumes to the weights
    of an uninterrupted run with the same number of processes, and reruns resume."""
    module = check_module(module)
    args = _arguments(argv, module)
    shards = splits_work(args[0], module, sharded)
    processes = process_count(devices, cpu_processes=cpu_processes)
    if processes > 1 and not shards:
        if module == DEFAULT_MODULE:
            raise ValueError(f"rsbook {args[0]} does not split its work across processes; launch it with devices=1 "
                             f"(commands that do: {', '.join(SHARDED_COMMANDS)})")
        raise ValueError(f"python -m {module} {args[0]} is not known to split its work across processes; launch it "
                         "with devices=1, or with sharded=True if it does (data parallel under torchrun)")
    device = _requested_device(args)
    if device is not None and device.startswith("cuda"):
        visible = _cuda_count()
        if processes > visible:
            raise ValueError(f"{processes} processes on --device {device} need {processes} CUDA devices, but "
                             f"{visible} are visible")
    if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError(f"env must map variable names to string values, got {dict(env)!r}")
    command = torchrun_command(args, processes, module)
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    out, err = stdout if stdout is not None else sys.stdout, stderr if stderr is not None else sys.stderr
    tail, errors = bytearray(), []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env, cwd=cwd,
                               start_new_session=True)
    pumps = [threading.Thread(target=_pump, args=(process.stdout, out, None), daemon=True),
             threading.Thread(target=_pump, args=(process.stderr, err, tail, errors), daemon=True)]
    for pump in pumps:
        pump.start()
    try:
        returncode = process.wait(timeout)
    except subprocess.TimeoutExpired:
        _stop(process)
        for pump in pumps:
            pump.join(10)
        lines = tail.decode("utf-8", errors="replace").splitlines()[-STDERR_TAIL_LINES:]
        raise LaunchError(command, process.returncode if process.returncode is not None else -signal.SIGKILL,
                          "\n".join([*lines, f"(stopped after the timeout of {timeout} s)"]), errors) from None
    except BaseException:  # KeyboardInterrupt in a notebook: leave no worker behind
        _stop(process)
        raise
    for pump in pumps:
        pump.join()
    if returncode != 0:
        lines = tail.decode("utf-8", errors="replace").splitlines()[-STDERR_TAIL_LINES:]
        raise LaunchError(command, returncode, "\n".join(lines), errors)
    return command
