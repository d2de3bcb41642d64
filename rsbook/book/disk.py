"""The disk a chapter's run at paper scale needs under the runs folder: its checkpoints (counted on its
architectures), what else it declares (Needs.disk, e.g. the ANCER chapter's per-input records), and an allowance
for logs, notebook and figures (`disk_estimate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from rsbook.book.needs import Part, needs

__all__ = ["OUTPUT_ALLOWANCE", "VALUES_PER_PARAMETER", "checkpoint_bytes", "core_parameters", "model_parts",
           "disk_estimate"]

OUTPUT_ALLOWANCE = 256 * 2**20
"""Bytes allowed per chapter for its logs, result tables, manifests, executed notebook and figures
(the largest, profile full of cohen_rerun, writes about 10^5 log rows of under 100 bytes)."""

VALUES_PER_PARAMETER = 3
"""Values a checkpoint holds per parameter: the weight and the optimizer state. SGD with momentum (rsbook.train)
keeps one more, so the third covers the file's overhead (tests/test_preflight.py saves one to check);
Adam (relax, FaRS) keeps two more, and their packages' MODEL_PARAMETERS bounds leave the margin there."""


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
