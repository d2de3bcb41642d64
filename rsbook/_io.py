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


def read_torch_dict(path) -> dict:
    """The dict saved by torch.save at `path` (loaded on the CPU with weights_only), with an error that
    names the file when it is missing, unreadable, or holds something other than a dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {path} is not a readable torch file ({err})") from err
    if not isinstance(payload, dict):
        raise ValueError(f"checkpoint {path} holds a {type(payload).__name__}, expected a dict")
    return payload


def append_epoch_row(path, columns, row):
    """Append one row of a tab-separated training log (header first when the file is new); flushed,
    so an interrupted run keeps every epoch it finished."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as handle:
        if new:
            handle.write("\t".join(columns) + "\n")
        handle.write("\t".join(repr(float(v)) if isinstance(v, float) else str(v) for v in row) + "\n")
        handle.flush()


def trim_epoch_rows(path, epochs_done: int):
    """Keep the header and the rows of the epochs a checkpoint holds (a crash between saving the log row
    and the checkpoint, or the reverse, must not leave rows for epochs that will rerun)."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = lines[:1] + [line for line in lines[1:] if line.split("\t")[0].isdigit()
                        and int(line.split("\t")[0]) <= epochs_done]
    with atomic_write(path) as out:
        out.write("\n".join(kept) + "\n")
