"""Running a chapter's steps and telling which are done.

`progress(step)` reads what is on disk (a checkpoint's epoch, a finished log or run folder, the authors' file);
`run(steps, launch=...)` runs, in order, every step with a command or a call that is not complete: in this process
through its module's main, or launched as a process of its own through rsbook.launch (torchrun with one process
per device for the commands that split their work); `summary` says in words how they ran, for a chapter's prose.
Every command resumes, so an interrupted `run` picks up where it stopped when it is called again.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rsbook.book.steps import KIND_NAMES, Step, StepError
from rsbook.logs import LOG_MANIFEST_SUFFIX, MANIFEST

__all__ = ["progress", "is_done", "run", "summary"]


def _checkpoint_epoch(path: Path) -> int:
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(f"checkpoint {path} is not a readable torch file ({err})") from err
    if not isinstance(payload, dict) or "epoch" not in payload:
        raise ValueError(f"checkpoint {path} records no epoch")
    return int(payload["epoch"])


def _log_rows(path: Path) -> int:
    """Distinct examples in a log and its per-rank shards (rsbook.dataset_runs), torn last lines ignored."""
    seen = set()
    for part in [path, *sorted(path.parent.glob(f"{path.name}.part*"))]:
        if not part.is_file():
            continue
        for line in part.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
            first = line.split("\t", 1)[0]
            if first.isdigit() and line.count("\t") >= 4:
                seen.add(int(first))
    return len(seen)


def _finished(manifest: Path, shards) -> bool:
    """Whether `manifest` is stamped finished and no per-rank shard (`shards`) is left to fold in."""
    return manifest.is_file() and bool(json.loads(manifest.read_text()).get("end_time")) and not any(shards)


def progress(step: Step) -> float:
    """The fraction of `step` already on disk, in [0, 1]: a checkpoint's epoch over the step's epochs;
    for a log, 1 once its manifest is stamped finished with no shard left (rsbook.dataset_runs), else
    its rows over the step's examples (below 1); for a run folder (an output that is a directory, e.g.
    ANCER's image run), 1 once its manifest.json is stamped finished with no shard
    left in it, else 0; for a RunRecord, 1 once a matching run folder is
    finished, else 0; 0 for a step with neither (a measurement that reruns every time)."""
    if step.output is not None:
        if not step.output.exists():
            return 0.0
        if step.kind == "released":
            return 1.0
        if step.output.is_dir():
            return 1.0 if _finished(step.output / MANIFEST, step.output.glob("*.part*")) else 0.0
        if step.output.suffix == ".pt":
            return min(1.0, _checkpoint_epoch(step.output) / step.epochs)
        if _finished(step.output.with_name(step.output.name + LOG_MANIFEST_SUFFIX),
                     step.output.parent.glob(f"{step.output.name}.part*")):
            return 1.0
        if not step.examples:
            return 0.0
        return min(_log_rows(step.output) / step.examples, 1.0 - 1e-9)
    if step.record is not None:
        return 1.0 if step.record.finished() else 0.0
    return 0.0


def is_done(step: Step) -> bool:
    """Whether `step` is complete on disk (progress(step) == 1)."""
    return progress(step) >= 1.0


# ----------------------------------------------------------------------------------------------- run


class _Tee(io.TextIOBase):
    """Write to `stream` and keep the last 64 KiB of what was written."""

    def __init__(self, stream):
        self.stream, self.kept = stream, ""

    def write(self, text):
        self.kept = (self.kept + text)[-(1 << 16):]
        if self.stream is not None:
            self.stream.write(text)
        return len(text)

    def flush(self):
        if self.stream is not None:
            self.stream.flush()

    def isatty(self):
        return False


def _main(module: str):
    """The `main(argv) -> exit status` of a step's module: rsbook.cli.main for 'rsbook' (looked up at
    call time), else <module>.main."""
    if module == "rsbook":
        from rsbook import cli

        return cli.main
    found = getattr(importlib.import_module(module), "main", None)
    if not callable(found):
        raise StepError(f"module {module} has no main(argv) to run a step's command with")
    return found


def _in_process(step: Step, progress_output: bool, stderr):
    from rsbook import launch as launcher

    main = _main(step.module)
    argv = list(step.argv) + ([] if progress_output else ["--no-progress"])
    errors = _Tee(stderr if progress_output else None)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse refusing the command line
            status = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    if status != 0:
        reported = [line for line in errors.kept.splitlines() if launcher.ERROR_LINE.match(line)]
        raise StepError(f"step {step.name!r} ({step.chapter}): `{' '.join(step.command_line)}` exited with status "
                        f"{status}: {' '.join(reported[-3:]) or errors.kept[-2000:] or 'no message'}")


def run(steps: Sequence[Step], *, launch: bool = False, devices="auto", cpu_processes: int = 1,
        progress_output: bool = True, stdout=None, stderr=None) -> dict[str, Path]:
    """Run, in order, every step of `steps` that has a command or a call and is not complete on disk
    (is_done); return {step name: its output} for those steps (done ones included): the output path for
    a command, what the call returned for a call. Steps the chapter runs itself are skipped.

    launch=False: commands run in this process through their module's main (rsbook.cli.main for
    `rsbook`), exactly as `rsbook <argv>` or `python -m <module> <argv>` would.
    launch=True: each command runs as its own process through rsbook.launch.launch (with the step's
    module): a command that splits its work (Step.splits_work: in rsbook.launch.SHARDED_COMMANDS, or
    sharded=True) with process_count(devices, cpu_processes) processes (torchrun, one per visible GPU
    for devices='auto', gloo on the CPU), any other with one. Calls always run here.
    progress_output: the steps' progress lines (stderr; stdout/stderr: streams for a launched step's
    output, default ours). A failing step raises StepError (in-process) or rsbook.launch.LaunchError
    (launched) naming it; the steps before it stay complete on disk and a new call resumes."""
    from rsbook import launch as launcher
    from rsbook.progress import echo

    steps = list(steps)
    if not all(isinstance(s, Step) for s in steps):
        raise ValueError("steps must be rsbook.book.steps.Step values")
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"step names must be unique, got duplicates {repeated}")
    processes = launcher.process_count(devices, cpu_processes=cpu_processes) if launch else 1
    results: dict[str, Path] = {}
    err = sys.stderr if stderr is None else stderr
    for step in steps:
        if step.runner == "chapter":
            continue
        if step.output is not None and is_done(step):
            results[step.name] = step.output
            continue
        started = time.perf_counter()
        if step.runner == "call":
            results[step.name] = Path(step.call())
            how = "in this process"
        elif launch:
            count = processes if step.splits_work else 1
            argv = list(step.argv) + ([] if progress_output else ["--no-progress"])
            try:
                launcher.launch(argv, devices=count, module=step.module, sharded=step.sharded, stdout=stdout,
                                stderr=stderr)
            except launcher.LaunchError as error:
                raise StepError(f"step {step.name!r} ({step.chapter}) failed: {error}") from error
            results[step.name] = step.output
            how = f"launched, {count} process{'es' if count > 1 else ''}"
        else:
            _in_process(step, progress_output, err)
            results[step.name] = step.output
            how = "in this process"
        if progress_output:
            echo(f"[steps] {step.chapter}: {step.name} ({how}) in {time.perf_counter() - started:.1f} s", err)
    return results


def _listing(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _label(step: Step) -> str:
    """A command step's command in words: the `rsbook` command ('certify'), or for another module what
    it does and its command line ('training with python -m <module> train')."""
    if step.module == "rsbook":
        return step.command
    return f"{KIND_NAMES[step.kind]} with python -m {step.module} {step.command}"


def summary(steps: Sequence[Step], *, launch: bool, devices="auto", cpu_processes: int = 1) -> str:
    """How `steps` run with these settings of `run`, in plain words for a chapter's prose (glued text, so
    no markup): how many run as commands and where (in this process, or launched, with
    process_count(devices) processes for the commands that split their work, Step.splits_work), and how
    many run in this process for lack of a command. Commands are `rsbook` commands ('train', 'certify')
    or, for a step of another module, what it does and its command line ('training with python -m
    <module> train'); with any of those the words say 'commands' rather than 'rsbook commands'."""
    from rsbook import launch as launcher

    steps = list(steps)
    runs = [s for s in steps if s.runner == "command"]
    commands = list(dict.fromkeys(_label(s) for s in runs))
    count = len(runs)
    noun = "rsbook command" if all(s.module == "rsbook" for s in runs) else "command"
    parts = []
    if commands and launch:
        processes = launcher.process_count(devices, cpu_processes=cpu_processes)
        sharded = list(dict.fromkeys(_label(s) for s in runs if s.splits_work))
        single = [c for c in commands if c not in sharded]
        where = ([f"{_listing(sharded)} through torchrun with {processes} process{'es' if processes > 1 else ''} "
                  "each"] if sharded else []) + ([f"{_listing(single)} as one process"] if single else [])
        parts.append(f"{count} of {len(steps)} ran as {noun}s in processes of their own "
                     f"({'; '.join(where)})")
    elif commands:
        parts.append(f"{count} of {len(steps)} ran as {noun}s ({_listing(commands)}) inside this "
                     "notebook's process")
    others = [s for s in steps if s.runner != "command"]
    if others:
        kinds = _listing(list(dict.fromkeys(KIND_NAMES[s.kind] for s in others)))
        parts.append(f"{len(others)} with no {noun} ({kinds}) run in this process")
    return "; ".join(parts)
