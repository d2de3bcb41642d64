"""Preflight: before the book executes a chapter, check everything its parameters will need, and list
every unmet item at once (issue 12, part 3).

    python -m rsbook.preflight --profile full [--chapter NAME ...] [--runs DIR] [--book DIR]

prints each requirement with ok or MISSING, every missing one with the layout or setting expected, and
exits 2 when any is missing (0 otherwise). It executes nothing, downloads nothing, decodes no image
and writes nothing; it takes seconds (importing torch is most of it).

A chapter's parameters are read the way the build injects them (tools/book.py): the literal
assignments of the chapter's one `parameters` cell, replaced key by key by its profile in
book/profiles/<chapter>.yml, then by any overrides, plus `profile`. What a chapter needs of them is
declared by its document package beside its steps (`declare(chapter, Needs(...))` in the package's
`steps` module, found by rsbook.steps.discover): this module names no chapter. From the parameters and
the declaration:

- datasets: every on-disk dataset (rsbook.data.FULL_SIZES) named at the parameter paths the chapter
  declares (Needs.datasets, e.g. `image.dataset`; DEFAULT_DATASET_PARAMETERS for a chapter that declares
  nothing). A chapter that names one trains on its train split and
  evaluates on its test split, so both must be present under $RSBOOK_DATA in the layout rsbook.data
  reads, with the real datasets' counts (FULL_SIZES: CIFAR-10 50,000 / 10,000, ImageNet val 50,000,
  Imagenette 9,469 / 3,925) and, for the ImageFolder datasets, their number of class folders in
  train/ and val/ alike.
- a CUDA device: when the chapter's `device` is cuda (cuda:i needs i + 1 devices), as many visible
  devices as its `devices` asks for ('auto' or absent: at least one; an integer k: k).
- free disk under the runs folder ($RSBOOK_RUNS) for each chapter at profile full: checkpoint_bytes per
  model it trains and whatever else it declares (Needs.disk), plus OUTPUT_ALLOWANCE for its logs,
  executed notebook and figures; see `disk_estimate`.
- the authors' artifacts the chapter reads (Needs.artifacts, and those of the rancer_toy dataset): in
  the artifact cache (<runs>/artifacts/<repo>/<commit>/<path>) or in $RSBOOK_MIRROR with the pinned
  SHA-256.
- the authors' released models the chapter can use (Needs.models, rsbook.released): each is listed as the
  authors' file under $RSBOOK_MODELS or as trained here; a file that is present is checked (loaded with
  weights_only=True, its state_dict's keys and shapes against the architecture and number of classes).

Requirements are plain values (DatasetRequirement, CudaRequirement, DiskRequirement,
ArtifactRequirement, ModelRequirement), so a caller may build its own, e.g. with small counts for a
miniature dataset.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import yaml

from rsbook import data
from rsbook.paths import mirror_dir, runs_dir

__all__ = [
    "PROFILES", "PROFILE_BASE", "PAPER_SCALE", "BOOK", "DEFAULT_DATASET_PARAMETERS", "OUTPUT_ALLOWANCE",
    "profile_parameters",
    "Needs", "declare", "needs", "Part", "model_parts", "core_parameters",
    "DatasetRequirement", "CudaRequirement", "DiskRequirement", "ArtifactRequirement", "ModelRequirement", "Missing",
    "chapter_parameters", "toc_documents", "book_chapters", "requirements", "requirements_for", "disk_estimate",
    "checkpoint_bytes", "check", "report", "main",
]

PROFILES = ("smoke", "default", "full", "paper-sample")
"""smoke (tests, CI), default (the embedded CPU run), full (paper scale) and paper-sample (the paper's settings on
every k-th test example, each published cell compared within its binomial sampling interval)."""

PROFILE_BASE = {"paper-sample": "full"}
"""A profile built on another: a chapter's parameters at paper-sample are its full ones, replaced key by key by
its paper-sample entry (none: the full profile as it is)."""

PAPER_SCALE = ("full", "paper-sample")
"""The profiles that run at the paper's scale (datasets on disk, GPUs, released models; a disk estimate)."""
BOOK = Path(__file__).resolve().parents[1] / "book"
"""The book of this checkout (chapters and book/profiles/), the default of every `book` argument."""

DEFAULT_DATASET_PARAMETERS = ("dataset", "experiments.*")
"""The parameter paths naming datasets of a chapter that declares none (dotted paths into its parameters;
'experiments.*': the keys of `experiments`)."""


class Part(NamedTuple):
    """One item of a disk estimate: `count` things of `each` bytes, described by `what`; `checkpoint` when it
    is a model checkpoint (the largest is counted once more, rewritten beside the old one)."""

    what: str
    count: int
    each: int
    checkpoint: bool


@dataclass(frozen=True)
class Needs:
    """What one chapter needs of its parameters, declared by its document package (`declare`):

    datasets: dotted parameter paths naming datasets it loads ('experiments.*': the keys of `experiments`;
        values elsewhere named `dataset` that pick, e.g., a released log are not data to read);
    artifacts: function(parameters) -> rsbook.published.artifacts() filters of the artifacts it reads;
    disk: function(parameters) -> [Part] of what it writes besides logs (checkpoints, records);
    models: function(parameters) -> [(dataset, arch, noise)] of the models it would use the authors' release
        of (rsbook.released) when present under $RSBOOK_MODELS."""

    datasets: tuple = DEFAULT_DATASET_PARAMETERS
    artifacts: object = None
    disk: object = None
    models: object = None


_NEEDS: dict[str, Needs] = {}


def declare(chapter: str, declared: Needs) -> Needs:
    """Declare what `chapter` needs (called by a document package's steps module at import)."""
    if not isinstance(chapter, str) or not chapter or not isinstance(declared, Needs):
        raise ValueError(f"declare takes a chapter name and a Needs value, got {chapter!r}, {declared!r}")
    _NEEDS[chapter] = declared
    return declared


def needs(chapter: str) -> Needs:
    """What `chapter` declared (every document package's steps module imported first), or the defaults."""
    if chapter not in _NEEDS:
        from rsbook.steps import discover

        discover()
    return _NEEDS.get(chapter, Needs())


OUTPUT_ALLOWANCE = 256 * 2**20
"""Bytes allowed per chapter for its logs, result tables, manifests, executed notebook and figures
(the largest, profile full of cohen_rerun, writes about 10^5 log rows of under 100 bytes)."""

VALUES_PER_PARAMETER = 3
"""Values a checkpoint holds per parameter: the weight and the optimizer state. SGD with momentum (rsbook.train)
keeps one more, so the third covers the file's overhead (tests/test_preflight.py saves one to check);
Adam (relax, FaRS) keeps two more, and their packages' MODEL_PARAMETERS bounds leave the margin there."""



# ------------------------------------------------------------------------------------------ requirements


@dataclass(frozen=True)
class DatasetRequirement:
    """On-disk dataset `dataset` under $RSBOOK_DATA with, per split ('train', 'test'), `sizes[split]`
    examples (None: present, not counted) and, for an ImageFolder dataset, `classes` class folders in
    every split (None: not checked; train/ and val/ must still hold the same class folders)."""

    dataset: str
    sizes: Mapping[str, int | None]
    classes: int | None = None
    chapters: tuple[str, ...] = ()

    def __post_init__(self):
        if self.dataset not in data.FULL_SIZES:
            raise ValueError(f"dataset must be one of the on-disk datasets {sorted(data.FULL_SIZES)}, "
                             f"got {self.dataset!r}")
        if not isinstance(self.sizes, Mapping) or not self.sizes:
            raise ValueError(f"sizes must map at least one split to an example count or None, got {self.sizes!r}")
        splits = data.DATASETS[self.dataset]["splits"]
        for split, size in self.sizes.items():
            if split not in splits:
                raise ValueError(f"sizes: split must be one of {splits} for dataset {self.dataset!r}, got {split!r}")
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
                raise ValueError(f"sizes[{split!r}] must be an integer >= 0 or None, got {size!r}")
        if self.classes is not None and (isinstance(self.classes, bool) or not isinstance(self.classes, int)
                                         or self.classes < 1):
            raise ValueError(f"classes must be an integer >= 1 or None, got {self.classes!r}")
        object.__setattr__(self, "sizes", dict(self.sizes))
        object.__setattr__(self, "chapters", tuple(self.chapters))

    def describe(self) -> str:
        folders = {} if self.dataset == "cifar10" else data.IMAGE_FOLDER_SPLITS
        names = {split: split + (f" ({folders[split]}/)" if folders.get(split, split) != split else "")
                 for split in self.sizes}
        counts = ", ".join(f"{size:,} {names[split]}" if size is not None
                           else f"{names[split]} with an image in every class folder"
                           for split, size in self.sizes.items())
        classes = f", {self.classes} class folders in each split" if self.classes is not None else ""
        return f"{counts} examples{classes}"


@dataclass(frozen=True)
class CudaRequirement:
    """At least `devices` CUDA devices visible to torch."""

    devices: int = 1
    chapters: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1:
            raise ValueError(f"devices must be an integer >= 1, got {self.devices!r}")
        object.__setattr__(self, "chapters", tuple(self.chapters))

    def describe(self) -> str:
        return f"{self.devices} CUDA device(s) visible to torch"


@dataclass(frozen=True)
class DiskRequirement:
    """`bytes` free on the file system holding `folder` (which need not exist yet); `parts` says what the
    estimate is made of, as (description, bytes) pairs. Requirements on the same file system add up."""

    folder: Path
    bytes: int
    parts: tuple[tuple[str, int], ...] = ()
    chapters: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.bytes, bool) or not isinstance(self.bytes, int) or self.bytes < 0:
            raise ValueError(f"bytes must be an integer >= 0, got {self.bytes!r}")
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "parts", tuple((str(a), int(b)) for a, b in self.parts))
        object.__setattr__(self, "chapters", tuple(self.chapters))

    def describe(self) -> str:
        return f"an estimated {_size(self.bytes)} of free disk under {self.folder}"


@dataclass(frozen=True)
class ArtifactRequirement:
    """The pinned artifact `name` (rsbook.published.artifacts()) in the cache under `cache`
    (<cache>/<repo>/<commit>/<path>, where rsbook.published.fetch keeps it) or in $RSBOOK_MIRROR,
    with its pinned SHA-256."""

    name: str
    cache: Path
    chapters: tuple[str, ...] = ()

    def __post_init__(self):
        from rsbook import published

        if published.artifacts(name=self.name).empty:
            raise ValueError(f"unknown artifact {self.name!r}; `rsbook fetch --list` shows the pinned ones")
        object.__setattr__(self, "cache", Path(self.cache))
        object.__setattr__(self, "chapters", tuple(self.chapters))

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class ModelRequirement:
    """A model a chapter uses: `released` (rsbook.released.ReleasedModel), taken from `root` (default
    $RSBOOK_MODELS) when its file is there, else trained here. Met unless the file is there and broken."""

    released: object
    root: Path | None = None
    chapters: tuple[str, ...] = ()

    def __post_init__(self):
        from rsbook.released import ReleasedModel

        if not isinstance(self.released, ReleasedModel):
            raise ValueError(f"released must be an rsbook.released.ReleasedModel, got {self.released!r}")
        object.__setattr__(self, "root", None if self.root is None else Path(self.root))
        object.__setattr__(self, "chapters", tuple(self.chapters))

    def describe(self) -> str:
        from rsbook.released import describe

        model = self.released
        return f"{model.arch} on {model.dataset}, σ = {model.noise:g}: {describe(model.dataset, model.arch, model.noise, self.root)}"


@dataclass(frozen=True)
class Missing:
    """One unmet item: its kind ('dataset', 'cuda', 'disk', 'artifact', 'model'), what it is, what is wrong,
    what is expected (the layout or setting), and the chapters that need it."""

    kind: str
    item: str
    problem: str
    expected: str
    chapters: tuple[str, ...] = field(default=())
    requirements: tuple = field(default=(), repr=False, compare=False)

    def __str__(self) -> str:
        needed = f" (needed by {', '.join(self.chapters)})" if self.chapters else ""
        return f"[{self.kind}] {self.item}{needed}: {self.problem}\n    expected: {self.expected}"


# ------------------------------------------------------------------------------------- chapter parameters


def _check_profile(profile: str):
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")


def _chapter_source(name: str, book: Path) -> Path:
    for path in (book / f"{name}.md", book / "chapters" / f"{name}.md"):
        if path.is_file():
            return path
    known = sorted(p.stem for p in [*book.glob("*.md"), *(book / "chapters").glob("*.md")])
    raise FileNotFoundError(f"no chapter {name!r}: neither {book / f'{name}.md'} nor "
                            f"{book / 'chapters' / f'{name}.md'} exists; chapters: {known}")


_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", flags=re.S | re.M)


def _cell_defaults(path: Path) -> dict:
    """The literal assignments of the one code cell tagged `parameters` ({} when there is none)."""
    cells = []
    for body in _CELL.findall(path.read_text(encoding="utf-8")):
        lines = body.splitlines()
        options = [line for line in lines if line.startswith(":")]
        tags = next((re.search(r"\[(.*)\]", line) for line in options if line.startswith(":tags:")), None)
        if tags and "parameters" in [t.strip().strip("'\"") for t in tags.group(1).split(",")]:
            cells.append("\n".join(line for line in lines if not line.startswith(":")))
    if len(cells) > 1:
        raise ValueError(f"{path}: expected at most one cell tagged 'parameters', found {len(cells)}")
    defaults = {}
    for node in ast.parse(cells[0] if cells else "").body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{path}: the parameters cell may only assign literals to names "
                             f"(line {node.lineno} is not `name = literal`)")
        try:
            defaults[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"{path}: parameter {node.targets[0].id!r} (line {node.lineno}) is not a literal"
                             ) from None
    return defaults


def profile_parameters(name: str, profile: str, *, book: Path | str | None = None) -> dict:
    """The values book/profiles/<name>.yml sets at `profile` ({} when it has no file or no entry), on top of its
    base profile's (PROFILE_BASE) for a profile built on another. Raises ValueError for an unknown profile or a
    profile file that is not a mapping."""
    _check_profile(profile)
    book = Path(book) if book is not None else BOOK
    path = book / "profiles" / f"{name}.yml"
    profiles = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}
    if not isinstance(profiles, dict):
        raise ValueError(f"{path} must map profile names to parameter sets")
    base = profile_parameters(name, PROFILE_BASE[profile], book=book) if profile in PROFILE_BASE else {}
    return {**base, **(profiles.get(profile) or {})}


def chapter_parameters(name: str, profile: str, *, book: Path | str | None = None,
                       overrides: Mapping | None = None) -> dict:
    """The parameters chapter `name` executes with at `profile`: the defaults of its `parameters` cell,
    each replaced by the value of book/profiles/<name>.yml at that profile (profile_parameters), then by
    `overrides`, plus `profile` (what tools/book.py injects with papermill). Raises ValueError for an unknown
    profile or a parameters cell that is not literal assignments, FileNotFoundError for an unknown chapter."""
    _check_profile(profile)
    book = Path(book) if book is not None else BOOK
    if not book.is_dir():
        raise FileNotFoundError(f"book folder {book} does not exist (expected the chapters and profiles/ there)")
    parameters = _cell_defaults(_chapter_source(name, book))
    parameters.update(profile_parameters(name, profile, book=book))
    parameters.update(overrides or {})
    parameters["profile"] = profile
    return parameters


def toc_documents(book: Path | str | None = None) -> list[str]:
    """The documents of book/_toc.yml in reading order, root first, as paths relative to book/ without
    suffix (e.g. 'chapters/relax')."""
    book = Path(book) if book is not None else BOOK
    toc_path = book / "_toc.yml"
    if not toc_path.is_file():
        raise FileNotFoundError(f"{toc_path} does not exist: cannot list the book's chapters")
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8")) or {}
    files = [toc.get("root")]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    return [f for f in files if f]


def book_chapters(book: Path | str | None = None) -> list[str]:
    """Names (file stems) of the documents of book/_toc.yml, root first, in reading order."""
    return [Path(f).name for f in toc_documents(book)]


# ----------------------------------------------------------------------------------------- disk estimate


def checkpoint_bytes(parameters: int) -> int:
    """Bytes of a checkpoint of a model with `parameters` float32 values: the weights and up to two
    optimizer values per weight (VALUES_PER_PARAMETER)."""
    return 4 * VALUES_PER_PARAMETER * int(parameters)


@lru_cache(maxsize=None)
def core_parameters(arch: str, classes: int) -> int:
    """Parameters and buffers of rsbook.models.build(arch, classes), counted on the meta device (nothing
    is allocated; the dataset's normalisation adds six values, left out)."""
    import torch

    from rsbook.models import build

    with torch.device("meta"):
        model = build(arch, classes)
    return sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())


def model_parts(count: int, what: str, parameters: int) -> list[Part]:
    """The checkpoints of `count` trained models of `parameters` parameters ([] for none)."""
    if count <= 0:
        return []
    return [Part(f"{count} x {what} checkpoint ({parameters:,} parameters)", count, checkpoint_bytes(parameters),
                 True)]


def disk_estimate(chapter: str, parameters: Mapping) -> list[tuple[str, int]]:
    """(what, bytes) of everything chapter `chapter` writes under the runs folder with `parameters`,
    for a fresh run (a resumed one needs less): what the chapter declares (Needs.disk: checkpoint_bytes of
    each model it trains, counted on its architectures, and e.g. the ANCER chapter's per-input records), and
    OUTPUT_ALLOWANCE for logs, notebook and figures. The largest checkpoint is counted once more: it is
    written beside the old one before replacing it."""
    declared = needs(chapter).disk
    items = list(declared(parameters)) if declared is not None else []
    parts = [(item.what, item.count * item.each) for item in items]
    checkpoints = [item.each for item in items if item.checkpoint]
    if checkpoints:
        parts.append(("the largest checkpoint again, while it is rewritten", max(checkpoints)))
    parts.append(("logs, tables, executed notebook and figures (allowance)", OUTPUT_ALLOWANCE))
    return parts


# -------------------------------------------------------------------------------------------- gathering


def _datasets(chapter: str, parameters: Mapping) -> list[str]:
    """The dataset names at the parameter paths chapter declares (Needs.datasets) in `parameters` (missing keys
    are skipped)."""
    found = []
    for path in needs(chapter).datasets:
        *keys, last = path.split(".")
        value = parameters
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        if not isinstance(value, Mapping):
            continue
        if last == "*":
            found += [name for name in value if isinstance(name, str)]
        elif isinstance(value.get(last), str):
            found.append(value[last])
    return list(dict.fromkeys(found))


def _cuda_devices(chapter: str, parameters: Mapping) -> int:
    """CUDA devices chapter needs: 0 unless its `device` is cuda."""
    device = parameters.get("device")
    if not isinstance(device, str) or not device.startswith("cuda"):
        return 0
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise ValueError(f"chapter {chapter}: device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    needed = int(match.group(1)) + 1 if match.group(1) else 1
    devices = parameters.get("devices", "auto")
    if devices in (None, "auto"):
        return needed
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"chapter {chapter}: devices must be 'auto' or an integer >= 1, got {devices!r}")
    return max(needed, devices)


def requirements_for(parameters: Mapping[str, Mapping], *, runs: Path | str | None = None) -> list:
    """The requirements of chapters given as {chapter name: its parameters}, merged across chapters
    (each names the chapters that need it): DatasetRequirement with the real counts (rsbook.data.
    FULL_SIZES), one CudaRequirement (the most devices any chapter asks for), one DiskRequirement per
    chapter under `runs` (default $RSBOOK_RUNS) at profile full (the smoke and default profiles write
    tens of megabytes), one ArtifactRequirement per artifact read, and one ModelRequirement per released
    model a chapter can use (rsbook.released; $RSBOOK_MODELS)."""
    from rsbook import released as releases
    from rsbook import published

    runs = Path(runs) if runs is not None else runs_dir()
    datasets: dict[str, list[str]] = {}
    artifacts: dict[str, list[str]] = {}
    cuda, cuda_chapters = 0, []
    disks = []
    models: dict = {}
    for chapter, p in parameters.items():
        declared = needs(chapter)
        found = _datasets(chapter, p)
        for name in found:
            if name in data.FULL_SIZES:
                datasets.setdefault(name, []).append(chapter)
        for key in (declared.models(p) if declared.models is not None else []):
            model = releases.find(*key)
            if model is not None:
                models.setdefault(model, []).append(chapter)
        filters = list(declared.artifacts(p)) if declared.artifacts is not None else []
        filters += [{"dataset": "rancer_toy", "kind": kind} for kind in ("points", "labels") if "rancer_toy" in found]
        for selection in filters:
            for name in published.artifacts(**selection)["name"]:
                artifacts.setdefault(name, []).append(chapter)
        devices = _cuda_devices(chapter, p)
        if devices:
            cuda = max(cuda, devices)
            cuda_chapters.append(chapter)
        if p.get("profile", "full") in PAPER_SCALE:  # smoke and default write tens of MB: no estimate needed
            parts = disk_estimate(chapter, p)
            disks.append(DiskRequirement(runs, sum(b for _, b in parts), tuple(parts), (chapter,)))
    out: list = []
    for name, chapters in datasets.items():
        classes = None if name == "cifar10" else data.num_classes(name)
        out.append(DatasetRequirement(name, data.FULL_SIZES[name], classes, tuple(dict.fromkeys(chapters))))
    if cuda:
        out.append(CudaRequirement(cuda, tuple(cuda_chapters)))
    out += disks
    out += [ArtifactRequirement(name, runs / "artifacts", tuple(dict.fromkeys(chapters)))
            for name, chapters in artifacts.items()]
    out += [ModelRequirement(model, None, tuple(dict.fromkeys(chapters))) for model, chapters in models.items()]
    return out


def requirements(chapters, profile: str, *, book: Path | str | None = None, runs: Path | str | None = None,
                 overrides: Mapping[str, Mapping] | None = None) -> list:
    """The requirements of `chapters` (names, e.g. book_chapters()) at `profile`, from their
    parameters (chapter_parameters; `overrides` maps a chapter to its -p overrides); see
    requirements_for. `runs` is where the build writes (default $RSBOOK_RUNS)."""
    _check_profile(profile)
    if isinstance(chapters, str):
        raise ValueError(f"chapters must be a list of chapter names, got the string {chapters!r}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(chapters))
    if unknown:
        raise ValueError(f"overrides name chapters that are not checked: {unknown}")
    parameters = {name: chapter_parameters(name, profile, book=book, overrides=overrides.get(name))
                  for name in chapters}
    return requirements_for(parameters, runs=runs)


# -------------------------------------------------------------------------------------------------- check


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _names(names, limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _check_dataset(req: DatasetRequirement) -> list[Missing]:
    expected = f"{data.layout(req.dataset).removeprefix('expected ')}; {req.describe()}"
    surveys = {split: data.survey(req.dataset, split, count=size is not None) for split, size in req.sizes.items()}
    problems: dict[str, list[str]] = {}
    for split, found in surveys.items():
        for problem in found.problems:
            problems.setdefault(problem, []).append(split)
    out = [Missing("dataset", f"{req.dataset} {'/'.join(splits)}", problem, expected, req.chapters)
           for problem, splits in problems.items()]
    limit = data.num_classes(req.dataset)
    for split, found in surveys.items():
        size = req.sizes[split]
        if size is not None and found.examples is not None and found.examples != size:
            out.append(Missing("dataset", f"{req.dataset} {split}",
                               f"{found.folder} holds {found.examples:,} examples, expected {size:,}",
                               expected, req.chapters))
        if req.classes is not None and found.classes and len(found.classes) != req.classes \
                and len(found.classes) <= limit:  # more than the dataset's classes is a survey problem already
            out.append(Missing("dataset", f"{req.dataset} {split}",
                               f"{found.folder} has {len(found.classes)} class folders, expected {req.classes}",
                               expected, req.chapters))
    with_classes = {split: set(found.classes) for split, found in surveys.items() if found.classes}
    if len(with_classes) == 2:
        (a, classes_a), (b, classes_b) = with_classes.items()
        if classes_a != classes_b:
            only_a, only_b = sorted(classes_a - classes_b), sorted(classes_b - classes_a)
            out.append(Missing(
                "dataset", f"{req.dataset} {a}/{b}",
                f"the class folders of {surveys[a].folder} and {surveys[b].folder} differ (only in "
                f"{surveys[a].folder.name}/: {_names(only_a) or 'none'}; only in {surveys[b].folder.name}/: "
                f"{_names(only_b) or 'none'}), so their labels would not match", expected, req.chapters))
    return out


def _check_cuda(req: CudaRequirement) -> list[Missing]:
    import torch

    expected = (f"{req.devices} CUDA device(s) visible to torch (the profile runs on device cuda): a CUDA build "
                f"of torch (this is {torch.__version__}, CUDA {torch.version.cuda or 'none'}), a driver "
                "(nvidia-smi), and CUDA_VISIBLE_DEVICES listing them")
    if not torch.cuda.is_available():
        return [Missing("cuda", "CUDA device", "no CUDA device is visible (torch.cuda.is_available() is False)",
                        expected, req.chapters)]
    count = torch.cuda.device_count()
    if count < req.devices:
        return [Missing("cuda", "CUDA devices", f"{count} CUDA device(s) visible, {req.devices} needed",
                        expected, req.chapters)]
    return []


def _existing(folder: Path) -> Path:
    folder = folder.resolve()
    while not folder.exists():
        folder = folder.parent
    return folder


def _check_disks(reqs: list[DiskRequirement]) -> list[Missing]:
    groups: dict[int, list[DiskRequirement]] = {}
    places: dict[int, Path] = {}
    for req in reqs:
        place = _existing(req.folder)
        device = place.stat().st_dev
        groups.setdefault(device, []).append(req)
        places.setdefault(device, place)
    out = []
    for device, group in groups.items():
        free = shutil.disk_usage(places[device]).free
        needed = sum(r.bytes for r in group)
        if free < needed:
            chapters = tuple(dict.fromkeys(c for r in group for c in r.chapters))
            parts = "; ".join(f"{', '.join(r.chapters) or 'requirement'} {_size(r.bytes)} ("
                              + ", ".join(f"{what}: {_size(b)}" for what, b in r.parts) + ")" for r in group)
            folders = ", ".join(sorted({str(r.folder) for r in group}))
            out.append(Missing("disk", f"free disk under {folders}",
                               f"{_size(free)} free on the file system of {places[device]}, "
                               f"an estimated {_size(needed)} needed", f"at least {_size(needed)} free: {parts}",
                               chapters, tuple(group)))
    return out


def _check_artifact(req: ArtifactRequirement) -> list[Missing]:
    from rsbook import published

    row = published.artifacts(name=req.name).iloc[0]
    sha = row["sha256"]
    cached = req.cache / row["repo"] / row["commit"] / row["path"]
    if cached.is_file() and published.file_sha256(cached) == sha:
        return []
    found = [f"{cached} holds other content" if cached.is_file() else f"not in the cache ({cached})"]
    try:
        mirror = mirror_dir()
    except FileNotFoundError as err:
        found.append(str(err))
    else:
        if mirror is None:
            found.append("RSBOOK_MIRROR is not set")
        elif not (mirror / req.name).is_file():
            found.append(f"not in RSBOOK_MIRROR ({mirror / req.name} does not exist)")
        elif (actual := published.file_sha256(mirror / req.name)) != sha:
            found.append(f"{mirror / req.name} has sha256 {actual}, not the pinned one")
        else:
            return []
    expected = (f"the file pinned at {row['repo']}@{row['commit'][:10]} with sha256 {sha}, in the cache or at "
                f"$RSBOOK_MIRROR/{req.name}; `rsbook fetch {req.name}` (or `rsbook fetch --all`) downloads and "
                "verifies it")
    return [Missing("artifact", req.name, "; ".join(found), expected, req.chapters)]


def _check_model(req: ModelRequirement) -> list[Missing]:
    from rsbook import released as releases

    model = req.released
    expected = (f"the authors' checkpoint of {model.arch} on {model.dataset} at σ = {model.noise:g} "
                f"({model.source}) at ${releases.ENV}/{model.relative}, a dict with its state_dict; or no file there "
                "(the model is then trained)")
    try:
        file = releases.path(model.dataset, model.arch, model.noise, req.root)
    except FileNotFoundError as err:
        return [Missing("model", model.name, str(err), expected, req.chapters)]
    problems = [] if file is None else releases.problems(model, file)
    return [Missing("model", model.name, "; ".join(problems), expected, req.chapters)] if problems else []


def check(requirements) -> list[Missing]:
    """Every unmet item of `requirements`, in their order, each naming what is missing and what is
    expected; [] when all are met. Datasets are surveyed without decoding images (rsbook.data.survey);
    nothing is downloaded, executed or written. Raises ValueError for an object that is not a requirement."""
    requirements = list(requirements)
    kinds = (DatasetRequirement, CudaRequirement, DiskRequirement, ArtifactRequirement, ModelRequirement)
    for req in requirements:
        if not isinstance(req, kinds):
            raise ValueError(f"check takes DatasetRequirement, CudaRequirement, DiskRequirement, ArtifactRequirement "
                             f"or ModelRequirement values, got {req!r}")
    out: list[Missing] = []
    disks = [r for r in requirements if isinstance(r, DiskRequirement)]
    for req in requirements:
        if isinstance(req, DatasetRequirement):
            found = _check_dataset(req)
        elif isinstance(req, CudaRequirement):
            found = _check_cuda(req)
        elif isinstance(req, ArtifactRequirement):
            found = _check_artifact(req)
        elif isinstance(req, ModelRequirement):
            found = _check_model(req)
        elif req is disks[0]:
            out += _check_disks(disks)
            continue
        else:
            continue
        out += [replace(item, requirements=(req,)) for item in found]
    return out


_KINDS = {DatasetRequirement: "dataset", CudaRequirement: "cuda", DiskRequirement: "disk",
          ArtifactRequirement: "artifact", ModelRequirement: "model"}


def report(requirements, missing) -> str:
    """A plain-text report: each requirement marked ok or MISSING (the artifacts of one repository that
    are all present on one line), then every missing item with what is expected."""
    requirements, missing = list(requirements), list(missing)
    unmet = {id(r) for item in missing for r in item.requirements}
    lines = [f"{len(requirements)} requirement(s) checked, {len(missing)} item(s) missing"]
    present: dict[tuple, list] = {}
    for req in requirements:
        if isinstance(req, ArtifactRequirement) and id(req) not in unmet:
            present.setdefault(("/".join(req.name.split("/")[:2]), req.chapters), []).append(req)
            continue
        status = "MISSING" if id(req) in unmet else "ok"
        label = f"{_KINDS[type(req)]} {req.dataset}" if isinstance(req, DatasetRequirement) else _KINDS[type(req)]
        chapters = f" ({', '.join(req.chapters)})" if req.chapters else ""
        lines.append(f"  {status:<8}{label}: {req.describe()}{chapters}")
    for (repo, chapters), group in present.items():
        needed = f" ({', '.join(chapters)})" if chapters else ""
        lines.append(f"  {'ok':<8}artifact: {len(group)} file(s) of {repo}, SHA-256 verified{needed}")
    if missing:
        lines.append("missing:")
        lines += [f"  {item}" for item in missing]
    return "\n".join(lines)


def main(argv=None) -> int:
    """`python -m rsbook.preflight`: print the report; exit status 2 when an item is missing, else 0."""
    parser = argparse.ArgumentParser(prog="python -m rsbook.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True, choices=PROFILES)
    parser.add_argument("--chapter", action="append", default=None,
                        help="a chapter to check (repeatable; default: every document of book/_toc.yml)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="where the build writes (default $RSBOOK_RUNS or ./runs)")
    parser.add_argument("--book", type=Path, default=BOOK, help=f"the book folder (default {BOOK})")
    args = parser.parse_args(argv)
    try:
        chapters = args.chapter or book_chapters(args.book)
        reqs = requirements(chapters, args.profile, book=args.book, runs=args.runs)
        missing = check(reqs)
    except (ValueError, FileNotFoundError) as err:
        print(f"rsbook preflight: error: {err}", file=sys.stderr)
        return 2
    print(f"rsbook preflight: profile {args.profile}, chapters {', '.join(chapters)}")
    print(report(reqs, missing))
    print("preflight: every requirement is met" if not missing
          else f"preflight: {len(missing)} item(s) missing; nothing was executed")
    return 2 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
