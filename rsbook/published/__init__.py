"""The documents' published numbers as data, and the authors' released artifacts.

numbers.csv holds every cell of every table the book reproduces (and checkable numbers stated in
the text), each tagged with its document and table; tables.csv lists the tables. Documents:
`notes` (lecture notes), `cohen` (Cohen et al. 2019), `fars` (FaRS), `lp` (LP-relaxation slides,
no tables), `rancer` (Rumezhak: DDS/ANCER/RANCER). Values keep the precision they were printed with.

artifacts.csv pins the authors' released files (repository, commit, SHA-256); `fetch` brings one
into the cache under the runs folder, from $RSBOOK_MIRROR when set, else from its raw GitHub URL.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

from rsbook._io import atomic_write
from rsbook.paths import mirror_dir, runs_dir

__all__ = [
    "ChecksumError",
    "numbers",
    "tables",
    "table",
    "decimals",
    "artifacts",
    "fetch",
    "artifact_url",
    "released_logs",
    "released_certify_logs",
    "released_predict_logs",
]

DOCUMENTS = {
    "notes": "Lecture notes: certified robustness, randomized smoothing, top-k (000)",
    "cohen": "Cohen, Rosenfeld & Kolter 2019, Certified Adversarial Robustness via Randomized Smoothing (001)",
    "fars": "Ghazanfari, FaRS: Fast Randomized Smoothing (002)",
    "lp": "Lecture slides: exact certification and LP relaxation (003)",
    "rancer": "Rumezhak, Non-Axis Aligned Anisotropic Certification with Randomized Smoothing (004)",
}


class ChecksumError(ValueError):
    """A fetched file whose SHA-256 differs from the pinned digest."""


def _read_csv(name: str) -> pd.DataFrame:
    with resources.files(__package__).joinpath(name).open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle, dtype=str, keep_default_na=False)


@lru_cache(maxsize=None)
def _numbers() -> pd.DataFrame:
    frame = _read_csv("numbers.csv")
    frame["printed"] = frame["value"]
    frame["value"] = frame["printed"].astype(float)
    frame["decimals"] = frame["printed"].map(lambda s: len(s.partition(".")[2]))
    return frame


def numbers(document: str | None = None, table: str | None = None) -> pd.DataFrame:
    """Published cells, long format: document, table, row_name, row, column_name, column, value
    (float), printed (the text as printed), decimals (digits after the point), unit, note."""
    frame = _numbers()
    if document is not None:
        _check_document(document)
        frame = frame[frame["document"] == document]
    if table is not None:
        frame = frame[frame["table"] == table]
        if frame.empty:
            raise KeyError(f"no published numbers for table {table!r} of document {document!r}")
    return frame.reset_index(drop=True).copy()


def tables() -> pd.DataFrame:
    """Every table (and group of in-text results) of every document: document, table, title, kind, note."""
    return _read_csv("tables.csv")


def table(document: str, name: str, unit_scale: dict | None = None) -> pd.DataFrame:
    """One published table as a wide DataFrame of floats: index = row keys, columns = column keys.

    Row and column keys are parsed as floats where they are numeric (sigma, radius, n). Cells in
    percent are divided by 100 when unit_scale is None, so accuracies are fractions everywhere.
    """
    cells = numbers(document, name)
    scale = {"percent": 0.01} if unit_scale is None else unit_scale
    values = cells["value"] * cells["unit"].map(lambda u: scale.get(u, 1.0))
    wide = cells.assign(value=values, row=_keys(cells["row"]), column=_keys(cells["column"]))
    out = wide.pivot(index="row", columns="column", values="value")
    out.index.name = cells["row_name"].iloc[0]
    out.columns.name = cells["column_name"].iloc[0]
    return out.reindex(index=pd.unique(wide["row"]), columns=pd.unique(wide["column"]))


def decimals(document: str, name: str) -> pd.DataFrame:
    """Digits after the point with which each cell of `table(document, name)` was printed, in the
    units `table` returns (a percent printed as '49' is 0.49: two decimals)."""
    cells = numbers(document, name)
    shift = cells["unit"].map(lambda u: 2 if u == "percent" else 0)
    wide = cells.assign(decimals=cells["decimals"] + shift, row=_keys(cells["row"]), column=_keys(cells["column"]))
    out = wide.pivot(index="row", columns="column", values="decimals")
    out.index.name = cells["row_name"].iloc[0]
    out.columns.name = cells["column_name"].iloc[0]
    return out.reindex(index=pd.unique(wide["row"]), columns=pd.unique(wide["column"]))


def _keys(series: pd.Series) -> list:
    converted = pd.to_numeric(series, errors="coerce")
    return converted.tolist() if converted.notna().all() else series.tolist()


def _check_document(document: str):
    if document not in DOCUMENTS:
        raise KeyError(f"unknown document {document!r}; expected one of {sorted(DOCUMENTS)}")


# ----------------------------------------------------------------------------------------- artifacts


@lru_cache(maxsize=None)
def _artifacts() -> pd.DataFrame:
    return _read_csv("artifacts.csv")


def artifacts(**filters) -> pd.DataFrame:
    """The pinned artifacts (name, repo, commit, path, sha256, kind, dataset, noise, sigma, split,
    n, split_size, stride, protocol_rows, note), filtered by equality on any column, e.g.
    artifacts(kind="certify_log", dataset="imagenet")."""
    frame = _artifacts()
    for column, value in filters.items():
        if column not in frame:
            raise KeyError(f"artifacts have no column {column!r}")
        if column in _NUMERIC_KEYS:
            frame = frame[pd.to_numeric(frame[column], errors="coerce") == float(value)]
        else:
            frame = frame[frame[column] == str(value)]
    return frame.reset_index(drop=True).copy()


_NUMERIC_KEYS = ("noise", "sigma", "n")


def _artifact(name: str) -> pd.Series:
    match = _artifacts()[_artifacts()["name"] == name]
    if match.empty:
        raise KeyError(f"unknown artifact {name!r}; `rsbook fetch --list` shows the pinned ones")
    return match.iloc[0]


def artifact_url(name: str) -> str:
    """The raw GitHub URL of an artifact at its pinned commit."""
    row = _artifact(name)
    return f"https://raw.githubusercontent.com/{row['repo']}/{row['commit']}/{row['path']}"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, cache: Path | str | None = None) -> Path:
    """Local path of the pinned artifact `name` (e.g. 'locuslab/smoothing/data/certify/...'),
    verified against its SHA-256.

    Looks in the cache (<runs>/artifacts/<repo>/<commit>/<path>) first; otherwise copies it from
    $RSBOOK_MIRROR/<name> when that is set, else downloads its raw URL. The file is written to a
    temporary name and moved into place only once its digest matches, so a missing source, a failed
    download or a ChecksumError leaves nothing in the cache.
    """
    row = _artifact(name)
    root = Path(cache) if cache is not None else runs_dir() / "artifacts"
    target = root / row["repo"] / row["commit"] / row["path"]
    expected = row["sha256"]
    if target.is_file():
        if file_sha256(target) == expected:
            return target
        target.unlink()
    mirror = mirror_dir()
    digest = hashlib.sha256()
    with atomic_write(target, "wb") as out:
        if mirror is not None:
            origin = str(mirror / name)
            if not (mirror / name).is_file():
                raise FileNotFoundError(
                    f"artifact {name} is not in RSBOOK_MIRROR={mirror} (expected {origin}, sha256 {expected})"
                )
            source = open(mirror / name, "rb")
        else:
            origin = artifact_url(name)
            try:
                source = urllib.request.urlopen(origin, timeout=60)
            except (urllib.error.URLError, OSError) as err:
                raise ConnectionError(
                    f"could not download artifact {name} from {origin} ({err}); set RSBOOK_MIRROR to a local "
                    f"copy laid out as <owner>/<repo>/<path> (expected sha256 {expected})"
                ) from err
        with source:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != expected:
            raise ChecksumError(
                f"checksum mismatch for artifact {name} from {origin}: expected sha256 {expected}, "
                f"got {digest.hexdigest()}"
            )
    return target


def released_logs(kind: str = "certify_log", max_rows: int | None = None, **filters) -> pd.DataFrame:
    """The authors' released logs of `kind` ('certify_log' or 'predict_log'), fetched and parsed:
    the artifacts() rows matching `filters`, with a `log` column holding each parsed DataFrame
    (only its first max_rows rows when given, for reduced runs)."""
    from rsbook.logs import read_log

    rows = artifacts(kind=kind, **filters)
    if rows.empty:
        available = artifacts(kind=kind)[["dataset", "noise", "sigma", "split", "n"]].drop_duplicates()
        raise KeyError(f"no released logs of kind {kind!r} matching {filters}; available:\n{available.to_string()}")
    reader_kind = kind.removesuffix("_log")
    rows["log"] = [read_log(fetch(name), reader_kind).head(max_rows) for name in rows["name"]]
    return rows


def released_certify_logs(dataset: str, split: str = "test", max_rows: int | None = None, **filters) -> dict:
    """The authors' certify logs for `dataset` ('cifar10' or 'imagenet'): {(noise, sigma): DataFrame},
    noise being the training noise level and sigma the certification one."""
    rows = released_logs("certify_log", max_rows, dataset=dataset, split=split, **filters)
    return {(float(r.noise), float(r.sigma)): r.log for r in rows.itertuples()}


def released_predict_logs(max_rows: int | None = None) -> dict:
    """The authors' ImageNet PREDICT logs (sigma = 0.25): {n: DataFrame}."""
    rows = released_logs("predict_log", max_rows)
    return {int(r.n): r.log for r in rows.itertuples()}
