"""Preflight: before the book executes a chapter, check everything its parameters will need, and list
every unmet item at once (issue 12, part 3).

    python -m rsbook.book.preflight --profile full [--chapter NAME ...] [--runs DIR] [--book DIR]

prints each requirement with ok or MISSING, every missing one with the layout or setting expected, and
exits 2 when any is missing (0 otherwise). It executes nothing, downloads nothing, decodes no image
and writes nothing; it takes seconds (importing torch is most of it).

A chapter's parameters are read the way the build injects them (tools/book.py): the literal
assignments of the chapter's one `parameters` cell, replaced key by key by its profile in
book/profiles/<chapter>.yml, then by any overrides, plus `profile`. What a chapter needs of them is
declared by its document package beside its steps (`declare(chapter, Needs(...))` in the package's
`steps` module, found by rsbook.book.steps.discover): this module names no chapter. From the parameters and
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
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from rsbook import data
from rsbook.book.profiles import BOOK, PROFILES, book_chapters
from rsbook.book.requirements import (
    ArtifactRequirement,
    CudaRequirement,
    DatasetRequirement,
    DiskRequirement,
    Missing,
    ModelRequirement,
    requirements,
    size_text,
)
from rsbook.paths import mirror_dir

__all__ = ["check", "report", "main"]


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
            parts = "; ".join(f"{', '.join(r.chapters) or 'requirement'} {size_text(r.bytes)} ("
                              + ", ".join(f"{what}: {size_text(b)}" for what, b in r.parts) + ")" for r in group)
            folders = ", ".join(sorted({str(r.folder) for r in group}))
            out.append(Missing("disk", f"free disk under {folders}",
                               f"{size_text(free)} free on the file system of {places[device]}, "
                               f"an estimated {size_text(needed)} needed", f"at least {size_text(needed)} free: {parts}",
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
    """`python -m rsbook.book.preflight`: print the report; exit status 2 when an item is missing, else 0."""
    parser = argparse.ArgumentParser(prog="python -m rsbook.book.preflight", description=__doc__.split("\n\n")[0])
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
