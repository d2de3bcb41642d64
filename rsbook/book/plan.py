"""A cost plan of the book's computing chapters at a profile (issue 12, part 4): every training and
certification step (rsbook.book.steps), its estimated time on this machine's devices, and whether it is
already done. Nothing is trained or certified, and no dataset is read.

    python -m rsbook.book.plan --profile full [--runs DIR] [--chapter NAME ...] [--budget SECONDS]

writes <runs>/plan-<profile>.json atomically,

    {"steps": [{"chapter", "step", "device", "seconds", "done", ...}, ...], "total_seconds", ...}

and prints it as a table with the total in hours. How the figures are made:

- The steps are the chapters' own descriptions (rsbook.book.steps.chapter_steps, from each chapter's
  parameters at the profile, rsbook.book.profiles.chapter_parameters, and its run folder
  <runs>/<chapter>/<profile>): exactly the checkpoints and logs the chapters read.
- Each step's Work items (inputs through a model for an operation at a batch size) are timed on this
  machine: for every distinct model, operation and device the model is built with random weights and
  run on uniform random inputs of the dataset's shape (Meter), at batch sizes growing by factors of 4 up
  to the step's batch; where a size would take longer than the time budget allows, the time per call at
  the step's batch is extrapolated linearly from the two largest sizes measured (recorded as
  measured_batch and extrapolated). seconds = sum of count / rate.
- A command that splits its work across processes (Step.splits_work: an `rsbook` command in
  rsbook.launch.SHARDED_COMMANDS, or a step of another module marked sharded, e.g. FaRS training's
  `python -m rsbook.fars.pipeline train`, data parallel) at a profile that launches its steps
  (`launch`) is divided by the chapter's process count (one per visible GPU for devices='auto'):
  linear scaling is assumed; on a CPU the processes share the cores, so nothing is divided.
- A step asking for CUDA on a machine without it is measured on the CPU: every figure is then a CPU
  figure, and the plan says so.
- Done: rsbook.book.running.progress (a checkpoint at its last epoch, a finished log, a finished run folder).
  `seconds` is what remains (the whole step times 1 - progress; 0 when done), `seconds_full` the whole
  step. A step without an estimate (the LP and MILP solves of the relaxation chapter) has seconds null
  and a note, and is left out of total_seconds, which the table says.
- A model the authors released whose file is under $RSBOOK_MODELS replaces its training step (rsbook.released):
  the plan lists the file it will use, at no cost.
- Sequential certification steps (`rsbook certify --radii`) are estimated from the mean draws per example that a
  replay of the authors' released log of the same dataset and noise level measures (rsbook.replay.grid_cost),
  or at n_max per example, an upper bound, where there is none.
- Paths: for a chapter that declares them (rsbook.book.steps.register_paths; the re-run chapter), the total of every
  way to its results on the devices at hand — from scratch, with the authors' models and fixed n, with their
  models and sequential certification, sampled — side by side (`paths`, and a second table), whatever is on disk.
- Not timed: data loading and augmentation, process start-up, and checkpoint and log writes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rsbook import streams
from rsbook.book import steps as book_steps
from rsbook.book.running import progress
from rsbook._io import atomic_write
from rsbook.paths import runs_dir
from rsbook.timing import synchronize

__all__ = ["COMPUTING_CHAPTERS", "Measurement", "Meter", "plan", "path_costs", "write_plan", "table", "paths_table",
           "main"]

COMPUTING_CHAPTERS = ("cohen_rerun", "relax", "fars", "ancer")
"""The chapters that train or certify models (the others read released logs or replay them)."""


@dataclass(frozen=True)
class Measurement:
    """`rate` inputs per second of one operation of one model on `device` at the batch asked: measured at
    that batch, or (extrapolated=True) from the time per call measured at smaller sizes, `batch` the
    largest of them (see Meter)."""

    rate: float
    batch: int
    device: str
    extrapolated: bool = False


def _iteration(model, module, operation: str, inputs, labels):
    if operation == "forward":
        with torch.inference_mode():
            module(inputs)
    elif operation == "train":
        loss = torch.nn.functional.cross_entropy(module(inputs), labels)
        module.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for weight in module.parameters():
                if weight.grad is not None:
                    weight -= 1e-3 * weight.grad
    elif operation == "gradient":
        inputs = inputs.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(module(inputs), labels)
        torch.autograd.grad(loss, inputs)
    else:
        model.operations[operation](module, inputs, labels)


class Meter:
    """Measures how many inputs per second an operation of a model processes on a device, and keeps the
    measurements (per model key, operation and device) for every later batch size.

    The batch grows from 1 (8 on a GPU) by factors of 4 up to the batch asked; each size gets an untimed
    warm-up and the median of up to 5 timed calls. The growth stops early when the next size's call,
    predicted in proportion to the batch, would take over budget / 2 (over 2 x budget while a single
    size is measured): the time per call at the batch asked is then extrapolated along the line through
    the two largest sizes measured (time = a + b x batch, a >= 0; proportional with one size), which
    keeps a fixed per-call cost from being charged to every input. budget: seconds, roughly, that one
    size may take."""

    def __init__(self, budget: float = 4.0, seed: int = 0):
        if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            raise ValueError(f"budget must be a number of seconds > 0, got {budget!r}")
        self.budget, self.seed = float(budget), int(seed)
        self._modules: dict = {}
        self._points: dict = {}  # key -> {batch: seconds per call}
        self._limits: dict = {}  # key -> the largest batch the budget allows
        self.seconds = 0.0

    def _module(self, model: book_steps.Model, device: torch.device):
        key = (model.key, str(device))
        if key not in self._modules:
            with streams.seeded_global(self.seed, "probe", "plan", model.key):
                self._modules[key] = model.build().to(device)
        return self._modules[key]

    def _time(self, model, module, operation, batch: int, device: torch.device) -> float:
        generator = streams.generator(self.seed, "probe", "plan", model.key, batch)
        inputs = torch.rand((batch, *model.input_shape), generator=generator).to(device)
        labels = torch.randint(0, model.classes, (batch,), generator=generator).to(device)
        module.train(operation in ("train",))
        synchronize(device)
        started = time.perf_counter()
        _iteration(model, module, operation, inputs, labels)
        synchronize(device)
        return time.perf_counter() - started

    def _call_seconds(self, model, module, operation, batch: int, device) -> float:
        """Median seconds of one call at `batch`, after an untimed warm-up (lazy initialisation, autotuning)."""
        self._time(model, module, operation, batch, device)
        first = self._time(model, module, operation, batch, device)
        repeats = max(1, min(5, int(self.budget / 2 / max(first, 1e-9))))
        return statistics.median([first] + [self._time(model, module, operation, batch, device)
                                            for _ in range(repeats - 1)])

    def _measure(self, key, model, operation: str, batch: int, device: torch.device):
        points, module = self._points[key], self._module(model, device)
        size = min(batch, 8 if device.type == "cuda" else 1)
        while True:
            if size not in points:
                try:
                    points[size] = self._call_seconds(model, module, operation, size, device)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    if not points:
                        raise
                    self._limits[key] = max(points)
                    return
            if size >= batch:
                return
            following = min(batch, size * 4)
            if points[size] * following / size > self.budget * (2.0 if len(points) < 2 else 0.5):
                self._limits[key] = size
                return
            size = following

    def rate(self, model: book_steps.Model, operation: str, batch: int, device) -> Measurement:
        """Inputs per second of `operation` of `model` at `batch` inputs per call on `device`."""
        device = torch.device(device)
        key = (model.key, operation, str(device))
        points = self._points.setdefault(key, {})
        limit = self._limits.get(key)
        if batch not in points and (limit is None or batch < limit):
            started = time.perf_counter()
            self._measure(key, model, operation, batch, device)
            self.seconds += time.perf_counter() - started
        if batch in points:
            return Measurement(batch / points[batch], batch, str(device))
        sizes = sorted(points)
        largest = sizes[-1]
        if len(sizes) == 1:
            return Measurement(largest / points[largest], largest, str(device), True)
        below = sizes[-2]
        slope = (points[largest] - points[below]) / (largest - below)
        slope = slope if slope > 0 else points[largest] / largest  # noise: fall back to proportional
        intercept = max(0.0, points[largest] - slope * largest)
        return Measurement(batch / (intercept + slope * batch), largest, str(device), True)


def _device_for(requested: str) -> tuple[torch.device, bool]:
    """(the device a step is measured on, whether it is the one requested): a CUDA step on a machine
    without a visible CUDA device is measured on the CPU."""
    device = torch.device(requested)
    if device.type == "cuda":
        index = device.index or 0
        if not torch.cuda.is_available() or torch.cuda.device_count() <= index:
            return torch.device("cpu"), False
    return device, True


def _describe(device: torch.device) -> str:
    from rsbook.book.throughput import describe_device

    return describe_device(device)


def _processes(step: book_steps.Step, parameters: Mapping, device: torch.device) -> int:
    from rsbook.launch import process_count

    if not parameters.get("launch") or not step.splits_work or device.type != "cuda":
        return 1
    return process_count(parameters.get("devices", "auto"), cpu_processes=1)


def _estimate(step: book_steps.Step, parameters: Mapping, meter: Meter) -> dict:
    device, as_requested = _device_for(step.device)
    processes = _processes(step, parameters, device)
    fraction = progress(step)
    done = fraction >= 1.0
    items, full = [], 0.0
    for work in step.work:
        found = meter.rate(work.model, work.operation, work.batch, device)
        seconds = work.count / found.rate / processes
        full += seconds
        items.append({"operation": work.operation, "model": work.model.key, "count": work.count,
                      "batch": work.batch, "measured_batch": found.batch, "extrapolated": found.extrapolated,
                      "inputs_per_second": found.rate, "seconds": seconds})
    estimated = bool(step.work) or step.kind == "released"
    where = _describe(device) + (f" x {processes} processes" if processes > 1 else "")
    if not as_requested:
        where += f" ({step.device} requested, not available here)"
    return {"chapter": step.chapter, "step": step.name, "kind": step.kind, "device": where,
            "seconds": 0.0 if done else (full * (1.0 - fraction) if estimated else None),
            "seconds_full": full if estimated else None, "done": done, "progress": fraction,
            "runner": step.runner, "command": None if step.argv is None else list(step.command_line),
            "output": None if step.output is None else str(step.output), "processes": processes,
            "cpu_figures": device.type == "cpu", "estimate": items, "note": step.note}


def _without_released(steps: list) -> list:
    """The steps with every training step of a model the authors released (rsbook.released) removed."""
    from rsbook import released

    return [s for s in steps if not (s.kind == "train" and released.find(s.info.get("dataset"), s.info.get("arch"),
                                                                         s.info.get("sigma", -1)) is not None)]


def path_costs(chapter: str, *, runs, book=None, meter: Meter | None = None) -> list[dict]:
    """The device seconds of each cost path `chapter` declares (rsbook.book.steps.chapter_paths), on this machine's
    devices, as if nothing were on disk: name, profile, seconds (whole steps; sequential steps at their replay
    estimate), training and certification (seconds of train steps and of the rest), tables (training and the
    logs behind the published tables, info['table']), steps, released (models taken from the authors),
    cpu_figures, ratio and ratio_tables (the first path's seconds / this one's)."""
    from rsbook.book.profiles import chapter_parameters

    meter = meter or Meter()
    rows = []
    for name, path in book_steps.chapter_paths(chapter).items():
        parameters = chapter_parameters(chapter, path.profile, book=book, overrides=dict(path.overrides))
        steps = book_steps.chapter_steps(chapter, parameters, Path(runs) / chapter / f"plan-{path.profile}")
        kept = _without_released(steps) if path.released else steps
        estimates = [(step, _estimate(step, parameters, meter)) for step in kept]
        seconds = {kind: sum(e["seconds_full"] or 0.0 for s, e in estimates if (s.kind == "train") == (kind == "train"))
                   for kind in ("train", "other")}
        tables = sum(e["seconds_full"] or 0.0 for s, e in estimates if s.kind == "train" or s.info.get("table"))
        rows.append({"path": name, "profile": path.profile, "seconds": seconds["train"] + seconds["other"],
                     "training": seconds["train"], "certification": seconds["other"], "tables": tables,
                     "steps": len(kept),
                     "released": len(steps) - len(kept),
                     "cpu_figures": any(e["cpu_figures"] for _, e in estimates if e["seconds_full"])})
    for row in rows:
        row["ratio"] = rows[0]["seconds"] / row["seconds"] if row["seconds"] else float("inf")
        row["ratio_tables"] = rows[0]["tables"] / row["tables"] if row["tables"] else float("inf")
    return rows


def plan(profile: str, *, chapters: Sequence[str] = COMPUTING_CHAPTERS, runs=None, book=None,
         overrides: Mapping | None = None, budget: float = 4.0, progress_output: bool = False,
         with_paths: bool | None = None) -> dict:
    """The plan of `chapters` at `profile` (see the module docstring): {"profile", "created", "runs",
    "steps": [...], "total_seconds", "unestimated": [step names], "paths": {chapter: path_costs(...)} (with_paths;
    by default at the paper-scale profiles only),
    "gpu": whether a CUDA device is visible, "cpu_figures": whether any step was measured on the CPU,
    "measurement_seconds"}. `overrides` maps a chapter to parameter overrides (as tools/book.py -p)."""
    from rsbook.book.profiles import PAPER_SCALE, chapter_parameters

    runs = Path(runs).resolve() if runs is not None else runs_dir().resolve()
    overrides = dict(overrides or {})
    with_paths = profile in PAPER_SCALE if with_paths is None else with_paths
    meter = Meter(budget)
    rows = []
    for chapter in chapters:
        parameters = chapter_parameters(chapter, profile, book=book, overrides=overrides.get(chapter))
        for step in book_steps.chapter_steps(chapter, parameters, runs / chapter / profile):
            row = _estimate(step, parameters, meter)
            if progress_output:
                print(f"[plan] {chapter}: {step.name}", file=sys.stderr, flush=True)
            rows.append(row)
    paths = {chapter: path_costs(chapter, runs=runs, book=book, meter=meter) for chapter in chapters
             if book_steps.chapter_paths(chapter)} if with_paths else {}
    estimated = [r["seconds"] for r in rows if r["seconds"] is not None]
    return {"profile": profile, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "runs": str(runs), "steps": rows, "total_seconds": float(sum(estimated)),
            "unestimated": [f"{r['chapter']}: {r['step']}" for r in rows if r["seconds"] is None], "paths": paths,
            "gpu": torch.cuda.is_available(), "cpu_figures": any(r["cpu_figures"] for r in rows),
            "measurement_seconds": meter.seconds}


def write_plan(found: dict, path) -> Path:
    """Write a plan as JSON at `path`, atomically (rsbook._io.atomic_write)."""
    path = Path(path)
    with atomic_write(path) as out:
        json.dump(found, out, indent=2, default=str)
        out.write("\n")
    return path


def _duration(seconds) -> str:
    if seconds is None:
        return "not estimated"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:,.1f} h"


def table(found: dict) -> str:
    """The plan as a plain-text table (chapter, step, device, remaining time, done), the total in hours,
    and, when any figure was measured on a CPU, a line saying so."""
    rows = [(r["chapter"], r["step"], r["device"], _duration(r["seconds_full"]), _duration(r["seconds"]),
             "yes" if r["done"] else "no") for r in found["steps"]]
    header = ("chapter", "step", "device", "whole step", "left", "done")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths[:3]) + "  " + "  ".join(
        f"{{:{align}{w}}}" for align, w in zip(">><", widths[3:]))
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*row) for row in rows]
    total = found["total_seconds"]
    out.append(f"total: {total / 3600:,.1f} hours ({total:,.0f} s) still to run at profile {found['profile']}"
               + (f", plus {len(found['unestimated'])} step(s) not estimated: {'; '.join(found['unestimated'])}"
                  if found["unestimated"] else ""))
    if found["cpu_figures"]:
        cuda = [r for r in found["steps"] if "requested, not available here" in r["device"]]
        out.append("These are CPU figures: " + ("no CUDA device is visible here" if not found["gpu"] else
                                                "some steps run on the CPU")
                   + (f"; the {len(cuda)} step(s) that ask for CUDA were measured on the CPU." if cuda else "."))
    return "\n".join(out)


def paths_table(found: dict) -> str:
    """The side-by-side cost of each declared path per chapter (plan's "paths"), in hours, with each path's
    ratio to the first (from scratch); '' when there is none."""
    out = []
    for chapter, rows in found.get("paths", {}).items():
        out.append(f"{chapter}: device time of each path on this machine ({'CPU figures' if any(r['cpu_figures'] for r in rows) else 'measured devices'})")
        width = max(len(r["path"]) for r in rows)
        out.append(f"  {'path':<{width}}  {'total':>11}  {'training':>11}  {'certification':>13}  {'vs first':>8}  "
                   f"{'tables only':>11}  {'vs first':>8}")
        for r in rows:
            out.append(f"  {r['path']:<{width}}  {r['seconds'] / 3600:>9,.1f} h  {r['training'] / 3600:>9,.1f} h  "
                       f"{r['certification'] / 3600:>11,.1f} h  {r['ratio']:>7.1f}x  {r['tables'] / 3600:>9,.1f} h  "
                       f"{r['ratio_tables']:>7.1f}x")
    return "\n".join(out)


def main(argv=None) -> int:
    """`python -m rsbook.book.plan`: write <runs>/plan-<profile>.json and print the table."""
    from rsbook.book.profiles import PROFILES

    parser = argparse.ArgumentParser(prog="python -m rsbook.book.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default", choices=PROFILES)
    parser.add_argument("--runs", type=Path, default=None, help="the runs folder (default $RSBOOK_RUNS or ./runs)")
    parser.add_argument("--chapter", action="append", default=None,
                        help=f"a chapter to plan (repeatable; default: {', '.join(COMPUTING_CHAPTERS)})")
    parser.add_argument("--budget", type=float, default=4.0,
                        help="seconds, roughly, that measuring one batch size may take (default 4)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file (default <runs>/plan-<profile>.json)")
    args = parser.parse_args(argv)
    runs = (args.runs if args.runs is not None else runs_dir()).resolve()
    try:
        found = plan(args.profile, chapters=args.chapter or COMPUTING_CHAPTERS, runs=runs, budget=args.budget,
                     progress_output=True)
    except (ValueError, FileNotFoundError) as err:
        print(f"rsbook plan: error: {err}", file=sys.stderr)
        return 2
    path = write_plan(found, args.out if args.out is not None else runs / f"plan-{args.profile}.json")
    print(table(found))
    if found["paths"]:
        print(paths_table(found))
    print(f"plan written to {path} (throughput measured in {found['measurement_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
