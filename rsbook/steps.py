"""The heavy steps of the book's computing chapters, described once: the chapters run them, the plan
(rsbook.plan) estimates them and tells which are done (issue 12, parts 2 and 4).

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
                          size), which rsbook.plan turns into seconds from a measured throughput
    device                the torch device it runs on; note: what its estimate leaves out or assumes

A step with neither argv nor call is run by the chapter's own library calls (e.g. the top-k radii);
it is listed so that the plan counts it. `run(steps, launch=..., devices=...)` runs every step that
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

import contextlib
import importlib
import importlib.util
import io
import json
import math
import pkgutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from rsbook import data
from rsbook.logs import LOG_MANIFEST_SUFFIX, MANIFEST, run_folder

__all__ = [
    "KINDS", "KIND_NAMES", "OPERATIONS", "TRAIN_SIZES", "Model", "Work", "RunRecord", "Step", "StepError",
    "register", "discover", "registered", "chapter_steps", "register_paths", "chapter_paths", "CostPath",
    "dataset_size", "core_model",
    "selected_examples", "train_folder", "train_step", "released_step", "certify_step", "certify_radius_step",
    "certify_grid_step", "predict_step",
    "progress", "is_done", "run", "outputs", "summary",
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
"""Operations whose throughput rsbook.plan measures for any model: 'forward' (inference), 'train' (a
training step: forward, backward and an SGD update of the weights) and 'gradient' (forward and the
gradient with respect to the input, as attacks and sigma optimisation take). A Model may add its own
(Model.operations)."""

TRAIN_SIZES = {"imagenet": 1_281_167}
"""Training examples of the datasets whose train split rsbook.data.FULL_SIZES leaves uncounted: the
ILSVRC-2012 training set (Russakovsky et al. 2015, Table 2)."""


# ------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Model:
    """A model whose throughput rsbook.plan measures: `key` names it (one measurement per key, device,
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
    parameters (a chapter's parameters cell, e.g. rsbook.preflight.chapter_parameters) with its run
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
    """One way to produce a chapter's results, for rsbook.plan's side-by-side costs: the chapter's steps at
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


# ------------------------------------------------------------------------------------ shared helpers


def dataset_size(name: str, split: str) -> int:
    """Examples in a split, without reading an on-disk dataset: rsbook.data.FULL_SIZES (and TRAIN_SIZES)
    for CIFAR-10, ImageNet and Imagenette, which rsbook.preflight checks the data against before the
    book runs; the bundled datasets are loaded (instant)."""
    if name in data.FULL_SIZES:
        key = "test" if split in ("test", "val") else split
        size = data.FULL_SIZES[name].get(key)
        size = TRAIN_SIZES.get(name) if size is None and key == "train" else size
        if size is None:
            raise ValueError(f"the size of {name} {split} is not known")
        return int(size)
    return len(data.load_dataset(name, split))


def core_model(arch: str, dataset: str) -> Model:
    """The Model of rsbook.models.build(arch, classes, dataset) on `dataset`'s inputs."""
    from rsbook.models import build

    classes = data.num_classes(dataset)
    return Model(f"{arch} ({dataset})", partial(build, arch, classes, dataset), data.input_shape(dataset), classes)


_TRAIN_FLAGS = {"batch_size": "--batch", "lr": "--lr", "schedule": "--schedule", "lr_step": "--lr-step",
                "gamma": "--gamma", "momentum": "--momentum", "weight_decay": "--weight-decay"}


def _number(value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def train_folder(root, dataset: str, arch: str, noise_sd: float, *, epochs: int | None, seed: int = 0,
                 **hyper) -> Path:
    """The run folder rsbook.train.train_models trains `arch` on `dataset` at `noise_sd` into (root/train/
    <arch>_<dataset>_noise<sigma>-<digest of the hyperparameters used>), so that `rsbook train --out` it
    and a later train_models call find the same run."""
    from rsbook.train import training_defaults

    unknown = sorted(set(hyper) - set(_TRAIN_FLAGS))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; expected some of {sorted(_TRAIN_FLAGS)}")
    settings = training_defaults(dataset, **{**hyper, "epochs": epochs})
    identity = {k: v for k, v in settings.items() if k != "epochs" or settings["schedule"] == "linear"}
    parameters = {"dataset": dataset, "arch": arch, "noise_sd": float(noise_sd), "seed": seed, **identity}
    return run_folder(root, "train", f"{arch}_{dataset}_noise{float(noise_sd):g}", parameters)


def train_step(chapter: str, root, dataset: str, arch: str, noise_sd: float, *, epochs: int | None, seed: int = 0,
               device: str = "cpu", workers: int | None = None, name: str | None = None, **hyper) -> Step:
    """`rsbook train` of `arch` on `dataset` with Gaussian noise `noise_sd` (rsbook.train) into
    train_folder(...): output its checkpoint.pt, complete at the run's epochs. Work per epoch: a
    training step on every training example and a forward pass over the test split (the noisy test
    accuracy of every epoch)."""
    from rsbook.train import training_defaults

    settings = training_defaults(dataset, **{**hyper, "epochs": epochs})
    folder = train_folder(root, dataset, arch, noise_sd, epochs=epochs, seed=seed, **hyper)
    argv = ["train", "--dataset", dataset, "--arch", arch, "--noise-sd", _number(float(noise_sd)),
            "--epochs", settings["epochs"], "--seed", seed, "--device", device, "--out", folder]
    for key, value in hyper.items():
        if value is not None:
            argv += [_TRAIN_FLAGS[key], _number(value)]
    if workers:
        argv += ["--workers", workers]
    model = core_model(arch, dataset)
    train_size, test_size = dataset_size(dataset, "train"), dataset_size(dataset, "test")
    batch = settings["batch_size"]
    return Step(chapter, name or f"train {arch} on {dataset}, σ = {float(noise_sd):g}", "train", device,
                argv=tuple(argv), output=folder / "checkpoint.pt", epochs=settings["epochs"],
                work=(Work("train", model, settings["epochs"] * train_size, batch),
                      Work("forward", model, settings["epochs"] * test_size, batch)),
                note="data loading and augmentation not timed",
                info={"dataset": dataset, "arch": arch, "sigma": float(noise_sd), "folder": folder})


def released_step(chapter: str, dataset: str, arch: str, noise: float, file, name: str | None = None) -> Step:
    """The authors' released checkpoint `file` of `arch` trained at `noise` on `dataset` (rsbook.released), used in
    place of a `train_step`: nothing to run or estimate, done when the file is there; info holds its SHA-256 (read
    once here) and its origin, for the chapter's manifest."""
    from rsbook import released
    from rsbook.published import file_sha256

    model = released.find(dataset, arch, noise)
    if model is None:
        raise ValueError(f"no released model of {arch} on {dataset} at noise {noise:g} is registered (rsbook.released)")
    file = Path(file)
    return Step(chapter, name or f"use the authors' {arch} on {dataset}, σ = {float(noise):g}", "released", "cpu",
                output=file, note=f"{model.document}'s released model, {file}",
                info={"dataset": dataset, "arch": arch, "sigma": float(noise), "origin": f"released ({model.document})",
                      "sha256": file_sha256(file)})


def selected_examples(dataset: str, split: str, skip: int, max_index: int = -1) -> int:
    """How many examples rsbook.dataset_runs selects (every skip-th, below max_index) from a split of
    dataset_size(dataset, split) examples."""
    from rsbook.dataset_runs import selected_indices

    return len(selected_indices(dataset_size(dataset, split), skip, max_index))


def _smoothing_argv(command: str, dataset: str, checkpoint, sigma: float, alpha: float, batch: int, skip: int,
                    seed: int, device: str, out: Path, split: str) -> list:
    return [command, "--dataset", dataset, "--split", split, "--checkpoint", Path(checkpoint), "--sigma",
            _number(float(sigma)), "--alpha", _number(float(alpha)), "--batch", batch, "--skip", skip, "--seed", seed,
            "--device", device, "--out", out]


def certify_step(chapter: str, root, dataset: str, checkpoint, arch: str, sigma: float, *, n0: int, n: int,
                 alpha: float, batch: int, skip: int = 1, seed: int = 0, device: str = "cpu", split: str = "test",
                 trained_epochs: int | None = None, noise: float | None = None, name: str | None = None,
                 table: bool = False) -> Step:
    """`rsbook certify` (CERTIFY, Cohen et al. 2019) of every skip-th example of `dataset` `split` with
    the model at `checkpoint` smoothed at `sigma`, into root/certify/<dataset>_noise<noise>_sigma<sigma>-
    <digest>/certify.tsv. The digest covers the command, the checkpoint and its `trained_epochs`, so a
    model trained further is certified into a new log. Work: (n0 + n) forward passes per example.
    table: the log behind a published table (info['table'], for rsbook.plan's per-path costs)."""
    noise = float(sigma if noise is None else noise)
    identity = {"command": "rsbook certify", "dataset": dataset, "split": split, "checkpoint": str(checkpoint),
                "trained_epochs": trained_epochs, "n0": n0, "n": n, "alpha": alpha, "batch": batch, "skip": skip,
                "seed": seed}
    out = run_folder(root, "certify", f"{dataset}_noise{noise:g}_sigma{float(sigma):g}", identity) / "certify.tsv"
    argv = _smoothing_argv("certify", dataset, checkpoint, sigma, alpha, batch, skip, seed, device, out, split)
    argv += ["--n0", n0, "-n", n]
    examples = selected_examples(dataset, split, skip)
    return Step(chapter, name or f"certify {dataset}, noise {noise:g}, σ = {float(sigma):g}", "certify", device,
                argv=tuple(argv), output=out, examples=examples,
                work=(Work("forward", core_model(arch, dataset), examples * (n0 + n), batch),),
                info={"dataset": dataset, "noise": noise, "sigma": float(sigma), "table": bool(table)})


def certify_radius_step(chapter: str, root, dataset: str, checkpoint, arch: str, sigma: float, radius: float, *,
                        n0: int, n_max: int, alpha: float, batch: int, method: str = "betting", skip: int = 1,
                        seed: int = 0, device: str = "cpu", split: str = "test", trained_epochs: int | None = None,
                        samples_per_example: float | None = None, name: str | None = None) -> Step:
    """`rsbook certify --radius` (sequential certification at one radius, rsbook.sequential) into
    root/sequential/<dataset>_sigma<sigma>_r<radius>-<digest>/certify.tsv. Work per example: n0 plus
    `samples_per_example` draws (e.g. the mean a replay of the authors' logs measured,
    rsbook.replay) or, without it, n_max: an upper bound, said in the step's note."""
    identity = {"command": "rsbook certify --radius", "dataset": dataset, "split": split,
                "checkpoint": str(checkpoint), "trained_epochs": trained_epochs, "radius": float(radius), "n0": n0,
                "n_max": n_max, "alpha": alpha, "batch": batch, "method": method, "skip": skip, "seed": seed}
    label = f"{dataset}_sigma{float(sigma):g}_r{float(radius):g}"
    out = run_folder(root, "sequential", label, identity) / "certify.tsv"
    argv = _smoothing_argv("certify", dataset, checkpoint, sigma, alpha, batch, skip, seed, device, out, split)
    argv += ["--n0", n0, "--radius", _number(float(radius)), "--n-max", n_max, "--method", method]
    examples = selected_examples(dataset, split, skip)
    drawn = n_max if samples_per_example is None else float(samples_per_example)
    note = ("upper bound: n_max samples per example" if samples_per_example is None
            else "mean samples per example from a replay")
    return Step(chapter, name or f"certify {dataset} at r = {float(radius):g}, σ = {float(sigma):g}", "certify_radius",
                device, argv=tuple(argv), output=out, examples=examples,
                work=(Work("forward", core_model(arch, dataset), examples * (n0 + drawn), batch),), note=note,
                info={"dataset": dataset, "sigma": float(sigma), "radius": float(radius)})


def certify_grid_step(chapter: str, root, dataset: str, checkpoint, arch: str, sigma: float, radii, *, n0: int,
                      n_max: int, alpha: float, batch: int, method: str = "betting", futility: float = 0.001,
                      stop_if_wrong: bool = False, skip: int = 1, seed: int = 0, device: str = "cpu",
                      split: str = "test", trained_epochs: int | None = None, noise: float | None = None,
                      samples_per_example: float | None = None, name: str | None = None,
                      table: bool = False) -> Step:
    """`rsbook certify --radii` (a table's radii decided from one stream per example, rsbook.sequential_grid) into
    root/sequential/<dataset>_noise<noise>_sigma<sigma>-<digest>/certify.tsv. Work per example: n0 plus
    `samples_per_example` draws (e.g. rsbook.replay.grid_cost on the authors' released log) or, without it, n_max:
    an upper bound, said in the step's note."""
    from rsbook.sequential_grid import check_radii

    radii = list(check_radii(radii))
    noise = float(sigma if noise is None else noise)
    identity = {"command": "rsbook certify --radii", "dataset": dataset, "split": split,
                "checkpoint": str(checkpoint), "trained_epochs": trained_epochs, "radii": radii, "n0": n0,
                "n_max": n_max, "alpha": alpha, "batch": batch, "method": method, "futility": float(futility),
                "stop_if_wrong": stop_if_wrong, "skip": skip, "seed": seed}
    out = run_folder(root, "sequential", f"{dataset}_noise{noise:g}_sigma{float(sigma):g}", identity) / "certify.tsv"
    argv = _smoothing_argv("certify", dataset, checkpoint, sigma, alpha, batch, skip, seed, device, out, split)
    argv += ["--n0", n0, "--radii", *[_number(r) for r in radii], "--n-max", n_max, "--method", method,
             "--futility", _number(float(futility))]
    argv += ["--stop-if-wrong"] if stop_if_wrong else []
    examples = selected_examples(dataset, split, skip)
    drawn = n_max if samples_per_example is None else float(samples_per_example) - n0
    note = ("upper bound: n_max samples per example" if samples_per_example is None
            else "mean samples per example from a replay of the authors' released log")
    return Step(chapter, name or f"certify {dataset}, noise {noise:g}, σ = {float(sigma):g}, radii "
                + "/".join(f"{r:g}" for r in radii), "certify_radius", device, argv=tuple(argv), output=out,
                examples=examples, work=(Work("forward", core_model(arch, dataset), examples * (n0 + drawn), batch),),
                note=note, info={"dataset": dataset, "noise": noise, "sigma": float(sigma), "radii": radii,
                                 "table": bool(table)})


def predict_step(chapter: str, root, dataset: str, checkpoint, arch: str, sigma: float, *, n: int, alpha: float,
                 batch: int, skip: int = 1, seed: int = 0, device: str = "cpu", split: str = "test",
                 trained_epochs: int | None = None, name: str | None = None) -> Step:
    """`rsbook predict` (PREDICT, Cohen et al. 2019) with n samples per example into
    root/predict/<dataset>_sigma<sigma>_n<n>-<digest>/predict.tsv. Work: n forward passes per example."""
    identity = {"command": "rsbook predict", "dataset": dataset, "split": split, "checkpoint": str(checkpoint),
                "trained_epochs": trained_epochs, "sigma": float(sigma), "n": int(n), "alpha": alpha, "batch": batch,
                "skip": skip, "seed": seed}
    out = run_folder(root, "predict", f"{dataset}_sigma{float(sigma):g}_n{int(n)}", identity) / "predict.tsv"
    argv = _smoothing_argv("predict", dataset, checkpoint, sigma, alpha, batch, skip, seed, device, out, split)
    argv += ["-n", int(n)]
    examples = selected_examples(dataset, split, skip)
    return Step(chapter, name or f"predict {dataset}, σ = {float(sigma):g}, n = {int(n):,}", "predict", device,
                argv=tuple(argv), output=out, examples=examples,
                work=(Work("forward", core_model(arch, dataset), examples * int(n), batch),),
                info={"dataset": dataset, "sigma": float(sigma), "n": int(n)})


# ------------------------------------------------------------------------------------------ progress


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
        raise ValueError("steps must be rsbook.steps.Step values")
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


def outputs(steps: Sequence[Step], kind: str) -> list[Step]:
    """The steps of `kind`, in order (e.g. every 'train' step, to read their checkpoints)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return [s for s in steps if s.kind == kind]


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
