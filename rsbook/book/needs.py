"""What each chapter needs, declared by its document package beside its steps: datasets (parameter paths),
the authors' artifacts it reads, what it writes to disk, and the models it would take from the authors' release.
A document package's `steps` module calls `declare(chapter, Needs(...))` at import; `needs(chapter)` imports
every such module first (rsbook.book.steps.discover). The machinery (requirements, disk estimate) names no
chapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["DEFAULT_DATASET_PARAMETERS", "Part", "Needs", "declare", "needs"]

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
        from rsbook.book.steps import discover

        discover()
    return _NEEDS.get(chapter, Needs())
