"""Requirements of the chapters a build will run, as plain values, gathered from their parameters and
declarations (rsbook.book.needs): datasets on disk with their real counts, CUDA devices, free disk, the
authors' pinned artifacts and released models. rsbook.book.preflight checks them.

Requirements are plain values (DatasetRequirement, CudaRequirement, DiskRequirement, ArtifactRequirement,
ModelRequirement), so a caller may build its own, e.g. with small counts for a miniature dataset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rsbook import data
from rsbook.book.disk import disk_estimate
from rsbook.book.needs import needs
from rsbook.book.profiles import PAPER_SCALE, chapter_parameters, check_profile
from rsbook.paths import runs_dir

__all__ = ["DatasetRequirement", "CudaRequirement", "DiskRequirement", "ArtifactRequirement", "ModelRequirement",
           "Missing", "requirements_for", "requirements", "size_text"]


def size_text(n: int) -> str:
    """A byte count in words (GiB, MiB, KiB or B)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"

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
        return f"an estimated {size_text(self.bytes)} of free disk under {self.folder}"


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
    check_profile(profile)
    if isinstance(chapters, str):
        raise ValueError(f"chapters must be a list of chapter names, got the string {chapters!r}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(chapters))
    if unknown:
        raise ValueError(f"overrides name chapters that are not checked: {unknown}")
    parameters = {name: chapter_parameters(name, profile, book=book, overrides=overrides.get(name))
                  for name in chapters}
    return requirements_for(parameters, runs=runs)
