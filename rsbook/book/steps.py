"""The heavy steps of the book's computing chapters, described once: the chapters run them, the plan
(rsbook.book.plan) estimates them and tells which are done (issue 12, parts 2 and 4).

A `Step` is one resumable unit of a chapter's work at its parameters — a training run, a certify or
predict log, a results table — with

    chapter, name, kind   who it belongs to, a name unique in the chapter, and what it does (KINDS)
    argv                  the command that runs it: an `rsbook` command (rsbook.cli), or one of the
                          command line of `module`; None when it has none
    module                the module whose command line runs argv (`python -m <module> <argv>`): 'rsbook'
                          (rsbook.cli), or a document package's own (FaRS training's pipeline module, which
                          the core's `rsbook` command may not import), whose `main(argv)` returns an exit
                          status and whose commands take --no-progress
    sharded               whether the command splits its work across torchrun's processes: None for
                          rsbook.launch.SHARDED_COMMANDS (module 'rsbook'; no for another module), or
                          True / False (rsbook.launch.splits_work)
    call                  an in-process callable that runs it and returns its output (a library call
                          with no command yet), or None
    output                the checkpoint, log or run folder the chapter reads afterwards, exactly that path,
                          or None
    record                for a step without output: where its run folder is found (RunRecord)
    epochs, examples      what complete means: the checkpoint's epoch, the log's rows
    work                  what it costs, as Work items (inputs through a Model for an operation at a batch
                          size), which rsbook.book.plan turns into seconds from a measured throughput
    device                the torch device it runs on; note: what its estimate leaves out or assumes

A step with neither argv nor call is run by the chapter's own library calls (e.g. the top-k radii);
it is listed so that the plan counts it. rsbook.book.commands builds the steps of `rsbook` commands (train,
certify, predict, the authors' released model in place of training); rsbook.book.running runs them.
`run(steps, launch=..., devices=...)` (rsbook.book.running) runs every step that
has a command or a call, in order, skipping those already complete (`progress`): with launch=True a
command runs through rsbook.launch — torchrun with one process per device for the commands that
split their work (Step.splits_work: rsbook.launch.SHARDED_COMMANDS, read at call time, so a command
that learns to shard is launched on every device without a change here, or the step's `sharded`), one
plain process otherwise — and with launch=False in this process through its module's main
(rsbook.cli.main for `rsbook`). Both ways write the same files: a log or a training run is always
written by its command, whichever process runs it, so resuming one never meets another writer's
manifest (rsbook.logs.begin_log refuses that). Every command resumes (certify and predict append the
missing rows; training continues from its checkpoint), so an interrupted `run` picks up where it
stopped when it is called again.

Each document package describes its chapters' steps in its own `steps` module and registers the
function with `@register(chapter)`. The core never imports a document package: `discover()` imports
the `steps` module of every subpackage of rsbook that has one (pkgutil), which fills the registry.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rsbook.logs import MANIFEST

__all__ = [
    "KINDS", "KIND_NAMES", "OPERATIONS", "Model", "Work", "RunRecord", "Step", "StepError",
    "register", "discover", "registered", "chapter_steps", "register_paths", "chapter_paths", "CostPath", "outputs",
]

KINDS = ("train", "released", "certify", "predict", "certify_radius", "topk", "attack", "certify_head",
         "optimise_certify", "relaxation", "timing")
"""What a step does: train a model, or use the authors' released one in its place (rsbook.released: nothing to
run; done when the file is there); CERTIFY, PREDICT or sequential certification of a dataset split
(`rsbook certify`, `rsbook predict`, `rsbook certify --radius/--radii`); top-k radii; attacks; certification in
an embedding space (FaRS); ANCER's optimise-then-certify per input; LP / MILP relaxations (CPU);
a timing measurement that reruns with every execution."""

KIND_NAMES = {"train": "training", "released": "the authors' model", "certify": "CERTIFY", "predict": "PREDICT",
              "certify_radius": "sequential certification", "topk": "top-k radii", "attack": "attacks",
              "certify_head": "certificates in the embedding space", "optimise_certify": "optimise-then-certify runs",
              "relaxation": "LP / MILP relaxations", "timing": "timing"}
"""Each kind in words (summary)."""

OPERATIONS = ("forward", "train", "gradient")
"""Operations whose throughput rsbook.book.plan measures for any model: 'forward' (inference), 'train' (a
training step: forward, backward and an SGD update of the weights) and 'gradient' (forward and the
gradient with respect to the input, as attacks and sigma optimisation take). A Model may add its own
(Model.operations)."""



@dataclass(frozen=True)
class Model:
    """A model whose throughput rsbook.book.plan measures: `key` names it (one measurement per key, device,
    operation and batch), `build()` returns a freshly initialised nn.Module (weights do not change the
    cost), `input_shape` is one input's shape and `classes` its number of outputs. `operations` adds
    operations beyond OPERATIONS: name -> function(module, inputs, labels) doing one iteration on the
    batch (e.g. a robust-training step, or a Hessian-vector product)."""

    key: str
    build: Callable
    input_shape: tuple
    classes: int
    operations: Mapping = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "operations", dict(self.operations))


@dataclass(frozen=True)
class Work:
    """`count` inputs through `model` for `operation` (OPERATIONS or one of model.operations), `batch`
    inputs per call. A step costs the sum of its Work items' count / (measured inputs per second)."""

    operation: str
    model: Model
    count: float
    batch: int

    def __post_init__(self):
        if self.operation not in OPERATIONS and self.operation not in self.model.operations:
            raise ValueError(f"operation must be one of {OPERATIONS} or of the model's own "
                             f"{sorted(self.model.operations)}, got {self.operation!r}")
        if not (isinstance(self.count, (int, float)) and math.isfinite(self.count) and self.count >= 0):
            raise ValueError(f"count must be a finite number >= 0, got {self.count!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {self.batch!r}")


@dataclass(frozen=True)
class RunRecord:
    """Where a chapter's own library call leaves its run folder: <folder>/<label>-<8 hex>/<manifest>
    (rsbook.logs.run_folder; the folder's manifest.json, or a log's <log>.manifest.json), the one whose
    recorded parameters include every item of `match`. Used for steps whose folder digest covers what
    is only known once they run (trained weights, test labels)."""

    folder: Path
    label: str
    match: Mapping
    manifest: str = MANIFEST

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "match", json.loads(json.dumps(dict(self.match), default=str)))

    def manifests(self) -> list[dict]:
        """The manifests of the matching run folders (possibly none)."""
        found = []
        for path in sorted(self.folder.glob(f"{self.label}-" + "[0-9a-f]" * 8)):
            manifest = path / self.manifest
            if not manifest.is_file():
                continue
            payload = json.loads(manifest.read_text())
            recorded = payload.get("parameters", {})
            if all(recorded.get(key) == value for key, value in self.match.items()):
                found.append(payload)
        return found

    def finished(self) -> bool:
        """Whether a matching run folder's manifest has its end time stamped (the call ran to the end)."""
        return any(m.get("end_time") for m in self.manifests())


@dataclass(frozen=True)
class Step:
    """One resumable unit of a chapter's work (see the module docstring). `info` carries what the
    chapter needs to find the step again (dataset, sigma, n, ...)."""

    chapter: str
    name: str
    kind: str
    device: str = "cpu"
    argv: tuple | None = None
    call: Callable | None = None
    output: Path | None = None
    record: RunRecord | None = None
    epochs: int | None = None
    examples: int | None = None
    work: tuple = ()
    note: str = ""
    info: Mapping = field(default_factory=dict)
    module: str = "rsbook"
    sharded: bool | None = None

    def __post_init__(self):
        from rsbook.launch import check_module

        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.argv is not None and self.call is not None:
            raise ValueError(f"step {self.name!r}: give a command (argv) or a call, not both")
        if self.sharded is not None and not isinstance(self.sharded, bool):
            raise ValueError(f"step {self.name!r}: sharded must be True, False or None, got {self.sharded!r}")
        if self.module != "rsbook" or self.sharded is not None:
            if self.argv is None:
                raise ValueError(f"step {self.name!r}: a module or sharded describes a command: give argv")
            try:
                check_module(self.module)
            except ValueError as err:
                raise ValueError(f"step {self.name!r}: {err}") from None
        if self.argv is not None:
            args = tuple(str(a) for a in self.argv)
            if not args or args[0].startswith("-"):
                what = "an rsbook command" if self.module == "rsbook" else f"a command of python -m {self.module}"
                raise ValueError(f"step {self.name!r}: argv must start with {what}, got {self.argv!r}")
            if self.output is None:
                raise ValueError(f"step {self.name!r}: a command step names the output it leaves")
            object.__setattr__(self, "argv", args)
        if self.output is not None:
            object.__setattr__(self, "output", Path(self.output))
            if self.output.suffix == ".pt" and self.epochs is None:
                raise ValueError(f"step {self.name!r}: a checkpoint output needs `epochs` (when it is complete)")
        work = tuple(self.work)
        if not all(isinstance(w, Work) for w in work):
            raise ValueError(f"step {self.name!r}: work must be Work items, got {self.work!r}")
        object.__setattr__(self, "work", work)
        object.__setattr__(self, "info", dict(self.info))

    @property
    def command(self) -> str | None:
        """The step's command, the first of argv (e.g. 'certify' of `rsbook`, 'train' of FaRS's
        `python -m <module>`), or None."""
        return None if self.argv is None else self.argv[0]

    @property
    def command_line(self) -> tuple | None:
        """The whole command as one would type it: ('rsbook', *argv) for module 'rsbook', else
        ('python', '-m', module, *argv); None without argv."""
        if self.argv is None:
            return None
        return ("rsbook", *self.argv) if self.module == "rsbook" else ("python", "-m", self.module, *self.argv)

    @property
    def splits_work(self) -> bool:
        """Whether, launched, the command splits its work across processes (rsbook.launch.splits_work:
        `sharded`, or for None the command in rsbook.launch.SHARDED_COMMANDS, read now, for module
        'rsbook'); False for a step without a command."""
        from rsbook import launch as launcher

        return self.argv is not None and launcher.splits_work(self.command, self.module, self.sharded)

    @property
    def runner(self) -> str:
        """'command', 'call' or 'chapter' (the chapter's own library calls run it)."""
        return "command" if self.argv is not None else "call" if self.call is not None else "chapter"


class StepError(RuntimeError):
    """A step failed: names the step, its command, and what the command reported."""


# ------------------------------------------------------------------------------------------ registry

_REGISTRY: dict[str, Callable] = {}


def register(chapter: str):
    """Decorator: `function(parameters, root) -> list[Step]` lists the steps of `chapter` at those
    parameters (a chapter's parameters cell, e.g. rsbook.book.profiles.chapter_parameters) with its run
    folder `root` (<runs>/<chapter>/<profile>). Registering a chapter twice with another function is
    refused."""
    if not isinstance(chapter, str) or not chapter:
        raise ValueError(f"chapter must be a non-empty string, got {chapter!r}")

    def decorate(function):
        known = _REGISTRY.get(chapter)
        if known is not None and (known.__module__, known.__qualname__) != (function.__module__, function.__qualname__):
            raise ValueError(f"chapter {chapter!r} is registered already, by {known.__module__}.{known.__qualname__}")
        _REGISTRY[chapter] = function
        return function

    return decorate


def discover() -> dict[str, Callable]:
    """Import the `steps` module of every subpackage of rsbook that has one (each registers its
    chapters) and return {chapter: step function}."""
    import rsbook

    for found in pkgutil.iter_modules(rsbook.__path__):
        if found.ispkg and importlib.util.find_spec(f"rsbook.{found.name}.steps") is not None:
            importlib.import_module(f"rsbook.{found.name}.steps")
    return dict(_REGISTRY)


def registered() -> dict[str, Callable]:
    """{chapter: step function} registered so far (see discover)."""
    return dict(_REGISTRY)


def chapter_steps(chapter: str, parameters: Mapping, root) -> list[Step]:
    """The steps of `chapter` at `parameters` with run folder `root`, from its registered function
    (discovered on first use). Raises ValueError for a chapter with no registered steps."""
    functions = _REGISTRY if chapter in _REGISTRY else discover()
    if chapter not in functions:
        raise ValueError(f"no steps are registered for chapter {chapter!r}; chapters with steps: {sorted(functions)}")
    return list(functions[chapter](parameters, Path(root)))


@dataclass(frozen=True)
class CostPath:
    """One way to produce a chapter's results, for rsbook.book.plan's side-by-side costs: the chapter's steps at
    `profile` with `overrides`, and, with `released`, every model the authors released (rsbook.released) taken
    as present, so that its training step is dropped."""

    profile: str
    overrides: Mapping = field(default_factory=dict)
    released: bool = False


_PATHS: dict[str, dict[str, CostPath]] = {}


def register_paths(chapter: str, paths: Mapping[str, CostPath]) -> dict:
    """Declare `chapter`'s cost paths ({name: CostPath}, in the order a plan prints them)."""
    if not all(isinstance(p, CostPath) for p in paths.values()):
        raise ValueError(f"paths must map names to CostPath values, got {paths!r}")
    _PATHS[chapter] = dict(paths)
    return _PATHS[chapter]


def chapter_paths(chapter: str) -> dict[str, CostPath]:
    """{name: CostPath} declared for `chapter` (discovered on first use); {} when none."""
    if chapter not in _PATHS:
        discover()
    return dict(_PATHS.get(chapter, {}))


def outputs(steps: Sequence[Step], kind: str) -> list[Step]:
    """The steps of `kind`, in order (e.g. every 'train' step, to read their checkpoints)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return [s for s in steps if s.kind == kind]
