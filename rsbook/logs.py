"""Certify and predict logs in the authors' TSV format, and the manifests of run folders and logs.

Certify log (locuslab/smoothing `certify.py`):  idx  label  predict  radius  correct  time
Predict log (locuslab/smoothing `predict.py`):  idx  label  predict  correct  time
`predict` is -1 (ABSTAIN) when the smoothed classifier abstained; `time` is seconds either as a plain
number or as H:MM:SS.ffffff (Python's str(timedelta), the authors' style). Both styles are read.

Writers append one row at a time and flush it, so a run that is killed leaves only complete rows
(plus at most one partial line, which the next writer removes) and resumes from the last complete row.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd

from rsbook._io import atomic_write

__all__ = [
    "run_folder",
    "CERTIFY_COLUMNS",
    "PREDICT_COLUMNS",
    "SEQUENTIAL_COLUMNS",
    "LogFormatError",
    "LogWriter",
    "ResultsTable",
    "table_rows",
    "table_keys",
    "fold_shards",
    "read_log",
    "read_certify_log",
    "read_predict_log",
    "parse_time",
    "format_time",
    "write_log",
    "write_manifest",
    "read_manifest",
    "update_manifest",
    "begin_run",
    "finish_manifest",
    "run_manifest",
    "log_manifest",
    "read_log_manifest",
    "begin_log",
    "finish_log",
]

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
SEQUENTIAL_COLUMNS = (*CERTIFY_COLUMNS, "samples")
"""A sequential certify log (`rsbook certify --radius r`): the authors' certify columns, with radius the
requested r where certified and 0 where not, plus the noisy samples drawn for the example (n0 included)."""
_COLUMNS = {"certify": CERTIFY_COLUMNS, "predict": PREDICT_COLUMNS, "sequential": SEQUENTIAL_COLUMNS}
_INT_COLUMNS = ("idx", "label", "predict", "correct", "samples")


class LogFormatError(ValueError):
    """A log file that does not follow the authors' format; the message names the file and line."""


def parse_time(text: str) -> float:
    """Seconds from '12.5' or from 'H:MM:SS.ffffff' (also 'D day(s), H:MM:SS'). Raises ValueError."""
    text = text.strip()
    days = 0
    if "day" in text:
        head, _, text = text.partition(",")
        days = int(head.split()[0])
        text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"time {text!r} is neither seconds nor H:MM:SS.ffffff")
        hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
        if not (0 <= minutes < 60 and 0 <= seconds < 60 and hours >= 0):
            raise ValueError(f"time {text!r} has out-of-range minutes or seconds")
        value = days * 86400 + hours * 3600 + minutes * 60 + seconds
    else:
        value = days * 86400 + float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"time {text!r} must be a finite, non-negative duration")
    return value


def format_time(seconds: float, style: str = "hms") -> str:
    """'hms': H:MM:SS.ffffff as the authors' logs write it; 'seconds': the plain number of seconds."""
    if style == "hms":
        return str(_dt.timedelta(seconds=float(seconds)))
    if style == "seconds":
        return repr(float(seconds))
    raise ValueError(f"time style must be 'hms' or 'seconds', got {style!r}")


def _parse_row(fields: list[str], columns: tuple[str, ...], where: str) -> dict:
    if len(fields) != len(columns):
        raise LogFormatError(f"{where}: expected {len(columns)} tab-separated fields {columns}, got {len(fields)}")
    row = {}
    for name, text in zip(columns, fields):
        try:
            if name in _INT_COLUMNS:
                row[name] = int(text)
            elif name == "radius":
                row[name] = float(text)
            else:
                row[name] = parse_time(text)
        except ValueError as err:
            raise LogFormatError(f"{where}: column {name!r} has {text!r}, which is not valid ({err})") from None
    if row.get("samples", 1) < 1:
        raise LogFormatError(f"{where}: column 'samples' must be a count >= 1, got {row['samples']}")
    if row["correct"] not in (0, 1):
        raise LogFormatError(f"{where}: column 'correct' must be 0 or 1, got {row['correct']}")
    if row["predict"] < -1:
        raise LogFormatError(f"{where}: column 'predict' must be a class or -1 (abstain), got {row['predict']}")
    if "radius" in row and (not math.isfinite(row["radius"]) or row["radius"] < 0):
        raise LogFormatError(f"{where}: column 'radius' must be a finite number >= 0, got {row['radius']}")
    if row["predict"] == -1 and row["correct"] == 1:
        raise LogFormatError(f"{where}: an abstention (predict = -1) cannot be correct")
    return row


def read_log(path, kind: str | None = None) -> pd.DataFrame:
    """Read a certify, predict or sequential log; `kind` ('certify', 'predict' or 'sequential') is
    inferred from the header.

    Returns a DataFrame with integer idx, label, predict, correct (and samples: sequential logs), float
    radius (certify and sequential logs) and float time in seconds, in file order. The header and every row are validated; a malformed
    row raises LogFormatError naming the file and the 1-based line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log {path} does not exist")
    lines = path.read_text().splitlines()
    if not lines:
        raise LogFormatError(f"{path}:1: empty file, expected a header line")
    header = tuple(lines[0].split("\t"))
    inferred = {cols: name for name, cols in _COLUMNS.items()}.get(header)
    if inferred is None:
        raise LogFormatError(
            f"{path}:1: header {header} is neither a certify log {CERTIFY_COLUMNS}, a predict log {PREDICT_COLUMNS} "
            f"nor a sequential log {SEQUENTIAL_COLUMNS}"
        )
    if kind is not None and kind != inferred:
        raise LogFormatError(f"{path}: expected a {kind} log, found a {inferred} log header")
    columns = _COLUMNS[inferred]
    rows, first_seen = [], {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        row = _parse_row(line.split("\t"), columns, f"{path}:{number}")
        if row["idx"] in first_seen:
            raise LogFormatError(
                f"{path}:{number}: example idx {row['idx']} already appears on line {first_seen[row['idx']]}"
            )
        first_seen[row["idx"]] = number
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(columns))
    for name in _INT_COLUMNS:
        if name in frame:
            frame[name] = frame[name].astype("int64")
    frame["time"] = frame["time"].astype(float)
    if "radius" in frame:
        frame["radius"] = frame["radius"].astype(float)
    return frame


def read_certify_log(path) -> pd.DataFrame:
    """A certify log (idx, label, predict, radius, correct, time); see read_log."""
    return read_log(path, "certify")


def read_predict_log(path) -> pd.DataFrame:
    """A predict log (idx, label, predict, correct, time); see read_log."""
    return read_log(path, "predict")


def _truncate_partial_line(path: Path):
    """Drop a trailing line without its newline (what a killed writer can leave)."""
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        if keep == 0:
            raise LogFormatError(f"{path}: holds no complete header line; remove it to start afresh")
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def _write_flushed(handle, line: str):
    handle.write(line + "\n")
    handle.flush()
    os.fsync(handle.fileno())


class ResultsTable:
    """A TSV of per-example results, appended one flushed row at a time and resumable: reopening
    it checks the header, drops a torn last line, and lists the keys already present in `done`.
    Floats are written with full precision."""

    def __init__(self, path, columns, key: str = "idx"):
        self.path, self.columns, self.key = Path(path), tuple(columns), key
        if key not in self.columns:
            raise ValueError(f"key {key!r} must be one of the columns {self.columns}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            _truncate_partial_line(self.path)
            header = tuple(self.path.read_text().split("\n", 1)[0].split("\t"))
            if header != self.columns:
                raise LogFormatError(f"{self.path}:1: header {header} is not the expected {self.columns}")
            self.done = set(self.read()[key].tolist())
        else:
            with open(self.path, "w", encoding="utf-8") as handle:
                _write_flushed(handle, "\t".join(self.columns))
            self.done = set()

    def append(self, rows):
        """Append rows (mappings with every column) and flush them; their keys join `done`."""
        with open(self.path, "a", encoding="utf-8") as handle:
            for row in rows:
                values = [row[c] for c in self.columns]
                _write_flushed(handle, "\t".join(repr(float(v)) if isinstance(v, float) else str(v) for v in values))
                self.done.add(row[self.key])

    def read(self) -> pd.DataFrame:
        """The table so far as a DataFrame."""
        return pd.read_csv(self.path, sep="\t")


def table_rows(path, columns) -> list[str]:
    """The complete rows (lines, no newline) of a TSV written by ResultsTable with `columns`: its header
    checked and dropped, and a torn last line (what a killed writer leaves: no newline) dropped; none
    for a missing or empty file."""
    path, columns = Path(path), tuple(columns)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    if len(lines) > 1 and lines[0] != "\t".join(columns):
        raise LogFormatError(f"{path}:1: header {tuple(lines[0].split(chr(9)))} is not the expected {columns}")
    return [line for line in lines[1:-1] if line.count("\t") == len(columns) - 1]


def _row_key(line: str) -> int:
    return int(line.split("\t", 1)[0])


def _groups(lines: list[str], group: int) -> list[tuple[int, list[str]]]:
    """(key, lines) of each example's group in `lines`: a run of consecutive rows with the same key (the
    first column), cut into pieces of `group` rows; a piece of fewer rows (an example whose rows were
    partly written when its writer was killed) is dropped."""
    out, run = [], []
    for line in [*lines, None]:
        if run and (line is None or _row_key(line) != _row_key(run[0])):
            out += [(_row_key(run[0]), run[i:i + group]) for i in range(0, len(run) - group + 1, group)]
            run = []
        if line is not None:
            run.append(line)
    return out


def table_keys(path, columns, group: int = 1) -> set:
    """The keys (first column, e.g. idx) of the examples whose `group` rows are all in the results table
    `path` (table_rows; a partly written example does not count)."""
    return {key for key, _ in _groups(table_rows(path, columns), group)}


def fold_shards(table, columns, order=None, group: int = 1) -> bool:
    """Fold the per-rank shards `<table>.part*` of a distributed run into the results table `table`
    (ResultsTable with `columns`, keyed by its first column; `group` rows per example, appended together,
    e.g. one per k): the complete groups of the table and of every shard (torn last lines and partly
    written groups dropped; the first complete group of each key kept), ordered by `order` (a function of
    the key; None: as found), written atomically; the shards are then removed. Without shards the table
    is left as it is unless it ends with a partly written example, which is cut (so that a resumed
    writer appends whole groups). Returns whether the table was rewritten."""
    table, columns = Path(table), tuple(columns)
    parts = sorted(table.parent.glob(f"{table.name}.part*"))
    found = {}
    for path in [table, *parts]:
        for key, rows in _groups(table_rows(path, columns), group):
            found.setdefault(key, rows)
    if not parts and sum(map(len, found.values())) == len(table_rows(table, columns)):
        return False
    keys = list(found) if order is None else sorted(found, key=order)
    with atomic_write(table, "w", encoding="utf-8") as out:
        out.write("\n".join(["\t".join(columns), *(row for key in keys for row in found[key])]) + "\n")
    for path in parts:
        path.unlink()
    return True


def _format_row(kind: str, time_style: str, where: str, *, idx, label, predict, correct, time, radius=None,
                samples=None) -> str:
    """One log line (no newline), validated by the reader's own checks: never write what cannot be read."""
    if (radius is None) == (kind in ("certify", "sequential")):
        raise ValueError("radius is required for a certify or sequential log and not allowed in a predict log")
    if (samples is None) == (kind == "sequential"):
        raise ValueError("samples is required for a sequential log and not allowed in the others")
    fields = [str(int(idx)), str(int(label)), str(int(predict))]
    if kind != "predict":
        fields.append(repr(float(radius)))
    fields += [str(int(correct)), format_time(time, time_style)]
    if kind == "sequential":
        fields.append(str(int(samples)))
    _parse_row(fields, _COLUMNS[kind], where)
    return "\t".join(fields)


def write_log(path, frame: pd.DataFrame, kind: str, time_style: str = "hms") -> Path:
    """Write a whole log atomically from a DataFrame with the log's columns (e.g. read_log's),
    rows in the frame's order."""
    if kind not in _COLUMNS:
        raise ValueError(f"kind must be one of {tuple(_COLUMNS)}, got {kind!r}")
    if frame["idx"].duplicated().any():
        raise ValueError(f"{path}: example idx {int(frame.loc[frame['idx'].duplicated(), 'idx'].iloc[0])} repeats")
    lines = ["\t".join(_COLUMNS[kind])]
    for row in frame.to_dict("records"):
        fields = {c: row[c] for c in _COLUMNS[kind]}
        lines.append(_format_row(kind, time_style, f"{path}: row for idx {row['idx']}", **fields))
    with atomic_write(path) as out:
        out.write("\n".join(lines) + "\n")
    return Path(path)


class LogWriter:
    """Append rows to a certify or predict log, one flushed line per example.

    Opening an existing log checks its header, drops a trailing partial line left by a killed
    run, and exposes the example indices already done in `done`, so a caller resumes by skipping
    them. Radii are written with full float precision (repr), unlike the authors' 3 digits.
    """

    def __init__(self, path, kind: str = "certify", time_style: str = "hms"):
        if kind not in _COLUMNS:
            raise ValueError(f"kind must be one of {tuple(_COLUMNS)}, got {kind!r}")
        format_time(0.0, time_style)
        self.path = Path(path)
        self.kind = kind
        self.columns = _COLUMNS[kind]
        self.time_style = time_style
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[int] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._truncate_partial_line()
            self.done = set(read_log(self.path, kind)["idx"].tolist())
            self._file = open(self.path, "a", encoding="utf-8")
        else:
            self._file = open(self.path, "w", encoding="utf-8")
            self._write_line("\t".join(self.columns))

    def _truncate_partial_line(self):
        _truncate_partial_line(self.path)

    def _write_line(self, line: str):
        _write_flushed(self._file, line)

    def write(self, idx: int, label: int, predict: int, correct: int, time: float, radius: float | None = None,
              samples: int | None = None):
        """Append one example's row and flush it to disk."""
        if int(idx) in self.done:
            raise ValueError(f"{self.path}: example idx {int(idx)} is already in the log")
        line = _format_row(self.kind, self.time_style, f"{self.path}: row for idx {int(idx)}", idx=idx, label=label,
                           predict=predict, correct=correct, time=time, radius=radius, samples=samples)
        self._write_line(line)
        self.done.add(int(idx))

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------- manifests

MANIFEST = "manifest.json"
LOG_MANIFEST_SUFFIX = ".manifest.json"
_PACKAGES = ("rsbook", "torch", "torchvision", "numpy", "scipy", "statsmodels", "pandas", "cvxpy")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _describe_device(device) -> str:
    import torch

    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _write_json_atomic(path: Path, payload: dict):
    with atomic_write(path) as out:
        json.dump(payload, out, indent=2, sort_keys=True, default=str)
        out.write("\n")


def _read_json(path: Path, subject: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{subject} has no {path.name}")
    return json.loads(path.read_text())


def read_manifest(run_dir) -> dict:
    """The manifest.json of a run folder."""
    return _read_json(Path(run_dir) / MANIFEST, f"run folder {run_dir}")


def update_manifest(run_dir, **fields) -> dict:
    """Set `fields` in run_dir/manifest.json (atomically) and return the manifest."""
    path = Path(run_dir) / MANIFEST
    payload = {**_read_json(path, f"run folder {run_dir}"), **fields}
    _write_json_atomic(path, payload)
    return payload


def log_manifest(log) -> Path:
    """Where the manifest of a certify or predict log lives: `<log>.manifest.json` beside it, so that
    several logs and a training run can share a folder, each with its own parameters."""
    log = Path(log)
    return log.with_name(log.name + LOG_MANIFEST_SUFFIX)


def read_log_manifest(log) -> dict:
    """The manifest of a certify or predict log (log_manifest)."""
    return _read_json(log_manifest(log), f"log {log}")


def _payload(parameters: dict, seed, device, extra: dict) -> dict:
    return {
        "parameters": parameters,
        "seed": seed,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "device": _describe_device(device),
        "start_time": _now(),
        "end_time": None,
        **extra,
    }


def write_manifest(run_dir, parameters: dict, seed=None, device=None, **extra) -> Path:
    """Write run_dir/manifest.json: parameters, seed, package versions, git commit, device, and
    start time (end time null until the run finishes). Written atomically."""
    path = Path(run_dir) / MANIFEST
    _write_json_atomic(path, _payload(parameters, seed, device, extra))
    return path


@contextmanager
def run_manifest(run_dir, parameters: dict, seed=None, device=None, **extra):
    """Context for a resumable run in `run_dir`: begin_run at entry, finish_manifest on normal exit."""
    path = begin_run(run_dir, parameters, seed=seed, device=device, **extra)
    yield path
    finish_manifest(run_dir)


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _begin(path: Path, subject: str, advice: str, parameters: dict, seed, device, extra: dict) -> Path:
    """Start the run whose manifest is `path`, or resume it if its parameters and seed are the same."""
    parameters, seed = json.loads(json.dumps([parameters, seed], default=str))
    if path.exists():
        old = json.loads(path.read_text())
        recorded = old.get("parameters", {})
        pairs = [(k, recorded.get(k), parameters.get(k)) for k in sorted(set(recorded) | set(parameters))]
        diff = [(k, a, b) for k, a, b in pairs + [("seed", old.get("seed"), seed)] if a != b]
        if diff:
            detail = "; ".join(f"{k}: recorded {_short(a)}, requested {_short(b)}" for k, a, b in diff)
            diff = [k for k, _, _ in diff]
            raise ValueError(f"{subject} holds a run with different parameters ({', '.join(diff)}): {detail}. "
                             f"Runs are immutable: {advice}")
        old.setdefault("resumed", []).append(_now())
        old.update(extra)
        old["end_time"] = None
        _write_json_atomic(path, old)
    else:
        _write_json_atomic(path, _payload(parameters, seed, device, extra))
    return path


def _finish(path: Path, subject: str) -> dict:
    manifest = _read_json(path, subject)
    manifest["end_time"] = _now()
    _write_json_atomic(path, manifest)
    return manifest


def begin_run(run_dir, parameters: dict, seed=None, device=None, **extra) -> Path:
    """Start or resume the run in `run_dir`; return its manifest path (run_dir/manifest.json).

    A new folder gets a manifest; an existing one must have been written with the same
    parameters and seed (a run folder is immutable: resuming may only finish or extend it), otherwise
    ValueError names each differing parameter with its recorded and requested value, and nothing is
    written. `extra` fields (e.g. how far the run should go) are recorded and updated on resume.
    """
    run_dir = Path(run_dir)
    return _begin(run_dir / MANIFEST, f"run folder {run_dir}", "choose a new output folder", parameters, seed,
                  device, extra)


def finish_manifest(run_dir) -> dict:
    """Stamp the end time into run_dir/manifest.json (atomically) and return the manifest."""
    return _finish(Path(run_dir) / MANIFEST, f"run folder {run_dir}")


def _adopt_folder_manifest(log: Path):
    """Before per-log manifests a log's parameters lived in its folder's manifest.json (one log per
    folder). Move such a manifest to the log's own, so that resuming it keeps its immutability check
    and frees the folder for other logs or a training run; refuse a log with rows but no manifest."""
    if log_manifest(log).exists():
        return
    if not (log.exists() and log.stat().st_size > 0) and not any(log.parent.glob(f"{log.name}.part*")):
        return
    legacy = log.parent / MANIFEST
    if legacy.is_file():
        payload = json.loads(legacy.read_text())
        if payload.get("parameters", {}).get("log") == log.name:
            _write_json_atomic(log_manifest(log), payload)
            legacy.unlink()
            return
    raise ValueError(f"log {log} exists but has no manifest {log_manifest(log).name}, so the parameters it was "
                     "written with are unknown: write to another path, or remove the log to start afresh")


def begin_log(log, parameters: dict, seed=None, device=None, **extra) -> Path:
    """Start or resume the certify or predict log `log`; return its manifest path (log_manifest).

    The same contract as begin_run, per log: each log has its own manifest, so logs with other
    parameters (and a training run) may share the folder, while resuming one log with parameters
    other than those it was written with raises ValueError naming them. A log left by an older
    rsbook whose folder manifest.json describes it (its parameters' 'log' is the log's name) has
    that manifest moved to the log's own; a log with rows but no manifest at all is refused.
    """
    log = Path(log)
    _adopt_folder_manifest(log)
    return _begin(log_manifest(log), f"log {log}", "write to another log path", parameters, seed, device, extra)


def finish_log(log) -> dict:
    """Stamp the end time into the log's manifest (atomically) and return the manifest."""
    return _finish(log_manifest(log), f"log {log}")


def run_folder(root, kind: str, label: str, parameters: dict) -> Path:
    """root/kind/<label>-<8 hex digits of the parameters' SHA-256>: one folder per parameter set,
    so changing a parameter starts a new run instead of colliding with an immutable one."""
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path(root) / kind / f"{label}-{digest}"
