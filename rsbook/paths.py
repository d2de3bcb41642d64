"""Where runs, datasets and the authors' artifacts live, from the environment.

RSBOOK_RUNS    run folders and the artifact cache (default: ./runs under the working directory)
RSBOOK_DATA    full-scale datasets (CIFAR-10, ImageNet, Imagenette) in their usual on-disk layouts
RSBOOK_MIRROR  a local copy of the authors' released files, laid out as <owner>/<repo>/<path>
"""

from __future__ import annotations

import os
from pathlib import Path


def runs_dir() -> Path:
    """Root of all run folders: $RSBOOK_RUNS, else ./runs."""
    return Path(os.environ.get("RSBOOK_RUNS") or Path.cwd() / "runs")


def data_dir() -> Path:
    """Root of the full-scale datasets: $RSBOOK_DATA. Raises if it is not set or not a folder."""
    value = os.environ.get("RSBOOK_DATA")
    if not value:
        raise FileNotFoundError(
            "RSBOOK_DATA is not set: point it at a folder holding cifar-10-batches-py/, imagenet/ or imagenette/"
        )
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"RSBOOK_DATA={value} is not a folder")
    return path


def mirror_dir() -> Path | None:
    """$RSBOOK_MIRROR as a Path, or None when unset. Raises if it is set but not a folder."""
    value = os.environ.get("RSBOOK_MIRROR")
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"RSBOOK_MIRROR={value} is not a folder (expected <owner>/<repo>/<path> files)")
    return path
