"""Atomic file writes: a file appears under its name complete, or not at all."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path, mode: str = "w", **open_kwargs):
    """Yield a handle on a temporary file beside `path`; on normal exit it is renamed to `path`,
    on an exception it is removed, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, **open_kwargs) as out:
            yield out
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
