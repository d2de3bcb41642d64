"""Profiles and a chapter's parameters as the build injects them.

A profile is a named parameter set (PROFILES): smoke, default, full, paper-sample. A chapter's parameters at a
profile are the literal assignments of its one `parameters` cell, replaced key by key by its entry in
book/profiles/<chapter>.yml (on top of its base profile's, PROFILE_BASE), then by any overrides, plus `profile`
(`chapter_parameters`): what tools/book.py injects with papermill, and what preflight and the plan read.
`toc_documents` / `book_chapters` list the book's documents in reading order.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

__all__ = ["PROFILES", "PROFILE_BASE", "PAPER_SCALE", "BOOK", "profile_parameters", "chapter_parameters",
           "toc_documents", "book_chapters", "check_profile"]

PROFILES = ("smoke", "default", "full", "paper-sample")
"""smoke (tests, CI), default (the embedded CPU run), full (paper scale) and paper-sample (the paper's settings on
every k-th test example, each published cell compared within its binomial sampling interval)."""

PROFILE_BASE = {"paper-sample": "full"}
"""A profile built on another: a chapter's parameters at paper-sample are its full ones, replaced key by key by
its paper-sample entry (none: the full profile as it is)."""

PAPER_SCALE = ("full", "paper-sample")
"""The profiles that run at the paper's scale (datasets on disk, GPUs, released models; a disk estimate)."""
BOOK = Path(__file__).resolve().parents[2] / "book"
"""The book of this checkout (chapters and book/profiles/), the default of every `book` argument."""


def check_profile(profile: str):
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
    check_profile(profile)
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
    check_profile(profile)
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
