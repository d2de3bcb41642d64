"""Chapter plumbing: a chapter's run folder, its ours-vs-paper records, and the book's scoreboard.

A chapter creates one ChapterRun; every table it reproduces goes through `ChapterRun.compare`,
which compares with the published numbers (rsbook.published), records the cells in the run
folder's comparisons.csv, and returns a table for display. `scoreboard` gathers those records for
every table of every document, in two parts: the documents' published results (PUBLISHED), then what
the book adds beyond them (ADDED: results no document prints a number for). Writes only under the runs
folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from rsbook import published
from rsbook._io import atomic_write
from rsbook.analysis import DIFFERENT_DATA, STATUSES, compare, table_status
from rsbook.logs import finish_manifest, read_manifest, update_manifest, write_manifest
from rsbook.paths import runs_dir

__all__ = ["ChapterRun", "scoreboard", "scoreboard_markdown", "scoreboard_summary", "additions_markdown",
           "documents_without_tables", "comparison_table", "styled", "comparisons", "house_style", "model_origins",
           "COMPARISONS", "COMPUTED", "TABLE_CLASS", "PUBLISHED", "ADDED"]

COMPARISONS = "comparisons.csv"
COMPUTED = "computed (nothing published to compare)"
PUBLISHED = "published"
"""Scoreboard part of the documents' tables and text results, each with its status against the published numbers."""
ADDED = "added"
"""Scoreboard part of what the book adds beyond the documents: every row whose status is COMPUTED (results
recorded with ChapterRun.record, and a document's table whose printed values are unreadable, measured here)."""
_STATUS_COLORS = {STATUSES[1]: "#fff3c4", STATUSES[2]: "#ffd6d6", DIFFERENT_DATA: "#e8e8e8"}
TABLE_CLASS = "rsbook-table"
"""The HTML class of every table the book displays (styled, comparison_table)."""
_CELL_PADDING = "0.25em 0.5em"
_COMPARISON_KEY = ("Per row: ours, paper, Δ = ours − paper. Yellow: within tolerance; red: differs; grey: "
                   "different data (shown, not judged).")


class ChapterRun:
    """The run folder <runs>/<chapter>/<profile>/ of one execution of a chapter.

    Creating it writes the manifest (parameters, versions, commit, device, start time) and starts a
    fresh comparisons.csv; `finish` stamps the end time.
    """

    def __init__(self, chapter: str, profile: str, parameters: dict, runs: Path | str | None = None):
        from rsbook.book.profiles import PROFILES

        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
        self.chapter, self.profile = chapter, profile
        self.dir = Path(runs) if runs is not None else runs_dir()
        self.dir = self.dir / chapter / profile
        self.dir.mkdir(parents=True, exist_ok=True)
        write_manifest(self.dir, parameters, seed=parameters.get("seed"), chapter=chapter, profile=profile)
        self._records: list[pd.DataFrame] = []
        (self.dir / COMPARISONS).unlink(missing_ok=True)

    def compare(self, document: str, table: str, ours: pd.DataFrame, section: str, *, n_examples=None,
                z: float = 2.0, rel_tolerance=0.0, fmt: str = "{:.3f}", same_data: bool = True,
                interval: float | None = None):
        """Compare `ours` (rows and columns keyed as in the published table, accuracies as
        fractions) with the paper's `table` of `document`, record every cell under the MyST label
        `section`, and return (comparison, styled table). n_examples, z, interval and rel_tolerance set
        the tolerance; see rsbook.analysis.compare for the statuses. same_data=False when ours come from a
        stand-in for the paper's data: the cells are shown beside the paper's with the status
        'different data' (grey), never as reproduced or differing."""
        paper = published.table(document, table)
        digits = published.decimals(document, table)
        result = compare(ours, paper, decimals=digits, n_examples=n_examples, z=z, rel_tolerance=rel_tolerance,
                         same_data=same_data, interval=interval)
        self._records.append(result.assign(document=document, table=table, section=section, chapter=self.chapter))
        self._save()
        title = published.tables().set_index(["document", "table"]).loc[(document, table), "title"]
        caption = f"{document}, {table}: {title}. {_COMPARISON_KEY}"
        return result, comparison_table(result, paper.index.name, paper.columns.name, fmt=fmt, caption=caption)

    def record(self, document: str, table: str, ours: pd.DataFrame, section: str, fmt: str = "{:.3f}",
               caption: str | None = None):
        """Record a result the document prints no number for (e.g. a measurement on our own data),
        so that the scoreboard lists it with status COMPUTED; returns the styled table, captioned
        `caption` (default: the document and table name, marked as computed here)."""
        long = ours.stack(future_stack=True).rename("ours").reset_index()
        long.columns = ["row", "column", "ours"]
        long = long.assign(paper=np.nan, delta=np.nan, tolerance=np.nan, status=COMPUTED)
        self._records.append(long.assign(document=document, table=table, section=section, chapter=self.chapter))
        self._save()
        return styled(ours, fmt, caption=caption or f"{document}, {table}: computed here; no document prints these "
                                                    "numbers.")

    def _recorded(self) -> pd.DataFrame:
        if not self._records:
            return pd.DataFrame(columns=["document", "table", "section", "chapter", "row", "column", "ours",
                                         "paper", "delta", "tolerance", "status"])
        return pd.concat(self._records, ignore_index=True)

    def _save(self):
        with atomic_write(self.dir / COMPARISONS, newline="") as out:
            self._recorded().to_csv(out, index=False)

    def status(self, document: str, table: str) -> str:
        """The recorded status of one table (see rsbook.analysis.table_status); 'not yet
        reproduced' when nothing was recorded for it."""
        frame = self._recorded()
        return table_status(frame[(frame["document"] == document) & (frame["table"] == table)])

    def differences(self) -> pd.DataFrame:
        """Every recorded cell whose status is 'differs': document, table, row, column, paper, ours, delta."""
        frame = self._recorded()
        frame = frame[frame["status"] == STATUSES[2]]
        return frame[["document", "table", "row", "column", "paper", "ours", "delta"]].reset_index(drop=True)

    def record_models(self, models: pd.DataFrame) -> pd.DataFrame:
        """Record in the run's manifest (key 'models') every model the chapter used — one row each, e.g.
        dataset, sigma, origin ('trained here' or the authors' release), checkpoint, sha256 — and return them."""
        update_manifest(self.dir, models=models.to_dict("records"))
        return models

    def finish(self) -> dict:
        """Stamp the end time in the manifest and return it."""
        return finish_manifest(self.dir)

    def provenance(self, artifacts=()) -> pd.DataFrame:
        """A two-column table (item, value) for the chapter's provenance section: run folder,
        profile, parameters, git commit, package versions, device, and the artifacts read (path,
        repository@commit and the start of the pinned SHA-256 every read was verified against)."""
        manifest = read_manifest(self.dir)
        rows = [("run folder", str(self.dir)), ("profile", self.profile),
                ("parameters", json.dumps(manifest["parameters"], sort_keys=True)),
                ("git commit", manifest["git_commit"] or "not a git checkout"), ("device", manifest["device"]),
                ("started", manifest["start_time"])]
        rows += [(f"version: {k}", v) for k, v in manifest["versions"].items() if v]
        pinned = published.artifacts().set_index("name")
        for name in artifacts:
            row = pinned.loc[name]
            pinned_at = f"{row['repo']}@{row['commit'][:10]}, sha256 {row['sha256'][:16]}…"
            rows.append((f"artifact: {row['path']}", pinned_at))
        return pd.DataFrame(rows, columns=["item", "value"])


def model_origins(models: pd.DataFrame) -> str:
    """Where a chapter's models come from, in words (rows: dataset, sigma, origin; ChapterRun.record_models),
    e.g. "cifar10 σ = 0.25, 0.5: released (cohen); cifar10 σ = 1: trained here"."""
    if models.empty:
        return "no model"
    parts = []
    for (dataset, origin), group in models.groupby(["dataset", "origin"], sort=False):
        sigmas = ", ".join(f"{s:g}" for s in sorted(group["sigma"]))
        parts.append(f"{dataset} σ = {sigmas}: {origin}")
    return "; ".join(parts)


def _label(key) -> str:
    return f"{key:g}" if isinstance(key, (float, np.floating)) else str(key)


def house_style(style, caption: str | None = None):
    """The one style of every table the book displays: cells padded so that adjacent numbers never
    touch, numeric columns (and their headers) right-aligned in tabular figures, text columns
    left-aligned, and `caption` above the table saying what its cells are. Takes and returns a pandas
    Styler; the rules travel with the table's HTML (book/_static/rsbook.css gives plain DataFrames
    the same padding)."""
    frame = style.data
    numeric = [i for i in range(frame.shape[1]) if _is_numeric(frame.iloc[:, i])]
    rules = [{"selector": "", "props": "border-collapse: collapse; margin: 0.25em 0 1em;"},
             {"selector": "th, td", "props": f"padding: {_CELL_PADDING}; text-align: left; vertical-align: top;"},
             {"selector": "td", "props": "font-variant-numeric: tabular-nums;"},
             {"selector": "caption", "props": "caption-side: top; text-align: left; padding: 0 0 0.4em;"
                                              " font-size: 0.9em; line-height: 1.4; color: inherit;"}]
    if numeric:
        cells = ", ".join(f"td.col{i}, th.col_heading.col{i}" for i in numeric)
        rules.append({"selector": cells, "props": "text-align: right;"})
    style = style.set_table_styles(rules, overwrite=False)
    attributes = style.table_attributes or ""
    if TABLE_CLASS not in attributes:
        style = style.set_table_attributes(f'class="{TABLE_CLASS}" {attributes}'.strip())
    return style.set_caption(caption) if caption is not None else style


def _is_numeric(column: pd.Series) -> bool:
    """A column of numbers: a numeric dtype (not bool), or objects that are all ints or floats."""
    if pd.api.types.is_bool_dtype(column.dtype):
        return False
    if pd.api.types.is_numeric_dtype(column.dtype):
        return True
    values = column.dropna()
    return len(values) > 0 and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                                   for v in values)


def styled(frame: pd.DataFrame, fmt="{:.3f}", hide_index: bool = False, caption: str | None = None):
    """A table for display in the book's one style (house_style): values formatted with `fmt` (a
    format string or a per-column mapping), numeric row and column labels printed compactly (0.5, not
    0.500000), and `caption` saying what the cells are (every table the book shows has one)."""
    style = frame.style.format(fmt, na_rep="—").format_index(_label, axis=0).format_index(_label, axis=1)
    style = style.hide(axis="index") if hide_index else style
    return house_style(style, caption)


def comparison_table(result: pd.DataFrame, row_name: str | None = None, column_name: str | None = None,
                     fmt: str = "{:.3f}", caption: str | None = None):
    """Ours | paper | Δ as a styled table in the book's style (house_style): the published layout,
    with three lines per published row (ours, paper, Δ). Cells within tolerance are shaded yellow,
    cells that differ red, cells on different data grey."""
    rows, columns = pd.unique(result["row"]), pd.unique(result["column"])
    kinds = {"ours": "ours", "paper": "paper", "delta": "Δ"}
    index = pd.MultiIndex.from_tuples([(_label(r), label) for r in rows for label in kinds.values()],
                                      names=[row_name, ""])
    values = np.stack([result.pivot(index="row", columns="column", values=kind).reindex(index=rows, columns=columns)
                       .to_numpy(dtype=float) for kind in kinds], axis=1).reshape(len(index), len(columns))
    table = pd.DataFrame(values, index=index, columns=pd.Index([_label(c) for c in columns], name=column_name))
    status = result.pivot(index="row", columns="column", values="status").reindex(index=rows, columns=columns)
    colors = np.repeat(np.vectorize(lambda s: f"background-color: {_STATUS_COLORS[s]}; color: #1a1a1a"
                                    if s in _STATUS_COLORS else "")(status.to_numpy(dtype=object)), len(kinds), axis=0)
    delta_rows = [key for key in table.index if key[1] == "Δ"]
    style = (table.style.format(fmt, na_rep="—")
             .format(fmt.replace("{:", "{:+"), na_rep="—", subset=pd.IndexSlice[delta_rows, :])
             .apply(lambda frame: pd.DataFrame(colors, index=frame.index, columns=frame.columns), axis=None))
    return house_style(style, caption)


def comparisons(profile: str, runs: Path | str | None = None) -> pd.DataFrame:
    """Every cell every chapter recorded under `profile` (ChapterRun.compare and .record), one
    frame: the rows of <runs>/*/<profile>/comparisons.csv in chapter-folder order, with a `profile`
    column. Columns: profile, chapter, section, document, table, row, column, ours, paper, delta,
    tolerance, status (paper, delta and tolerance empty for results no document prints)."""
    root = Path(runs) if runs is not None else runs_dir()
    columns = ["profile", "chapter", "section", "document", "table", "row", "column", "ours", "paper", "delta",
               "tolerance", "status"]
    records = [pd.read_csv(path, dtype={"row": str, "column": str})
               for path in sorted(root.glob(f"*/{profile}/{COMPARISONS}"))]
    if not records:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(records, ignore_index=True).assign(profile=profile)
    return frame[columns + [c for c in frame.columns if c not in columns]]


def scoreboard(profile: str, runs: Path | str | None = None) -> pd.DataFrame:
    """Every table (and group of in-text results) of every document with its status under
    `profile`: reproduced exactly / within tolerance / differs / not yet reproduced / different
    data, worst cell
    first (rsbook.analysis.table_status), the chapter and section where it is reproduced, and the
    number of cells compared. A table reproduced by several chapters (say, from the authors' logs
    and by a re-run) gets one row per chapter; results recorded with ChapterRun.record, for which
    no document prints a number, have status COMPUTED.

    Column `part` splits the board: PUBLISHED rows (the documents' results, compared or not yet
    reproduced) come first, in document order, then the ADDED rows (status COMPUTED), in document
    order. Reads <runs>/*/<profile>/comparisons.csv."""
    recorded = comparisons(profile, runs)
    listed = published.tables()
    extra = recorded[["document", "table"]].drop_duplicates()
    extra = extra[~extra.set_index(["document", "table"]).index.isin(listed.set_index(["document", "table"]).index)]
    listed = pd.concat([listed, extra.assign(kind="ours", title=extra["table"])], ignore_index=True)
    out = []
    for row in listed.itertuples():
        cells = recorded[(recorded["document"] == row.document) & (recorded["table"] == row.table)]
        by_chapter = [group for _, group in cells.groupby("chapter", sort=False)] or [cells]
        for group in by_chapter:
            out.append({
                "document": row.document,
                "table": row.table,
                "kind": row.kind,
                "title": row.title,
                "status": table_status(group),
                "cells": int(len(group)),
                "differing_cells": int((group["status"] == STATUSES[2]).sum()),
                "chapter": group["chapter"].iloc[0] if len(group) else None,
                "section": group["section"].iloc[0] if len(group) else None,
            })
    board = pd.DataFrame(out)
    board["document"] = pd.Categorical(board["document"], categories=list(published.DOCUMENTS), ordered=True)
    board["part"] = pd.Categorical(np.where(board["status"] == COMPUTED, ADDED, PUBLISHED),
                                   categories=[PUBLISHED, ADDED], ordered=True)
    return board.sort_values(["part", "document"], kind="stable").reset_index(drop=True)


def scoreboard_summary(board: pd.DataFrame) -> dict:
    """The counts of the scoreboard's two summary lines, from `scoreboard`'s frame.

    published: tables (distinct document and table), rows, cells, and `statuses`, the number of rows
    per status (every status of rsbook.analysis.STATUSES and DIFFERENT_DATA, 0 when absent);
    added: rows, cells, and `chapters`, the number of rows per chapter in board order."""
    mine = board[board["part"] == PUBLISHED]
    added = board[board["part"] == ADDED]
    counts = mine["status"].value_counts()
    return {
        "published": {"tables": len(mine[["document", "table"]].drop_duplicates()), "rows": len(mine),
                      "cells": int(mine["cells"].sum()),
                      "statuses": {status: int(counts.get(status, 0)) for status in (*STATUSES, DIFFERENT_DATA)}},
        "added": {"rows": len(added), "cells": int(added["cells"].sum()),
                  "chapters": {str(k): int(v) for k, v in added.groupby("chapter", sort=False).size().items()}},
    }


def documents_without_tables() -> list[str]:
    """Documents that have no table or numeric result to reproduce (e.g. the LP slides)."""
    have = set(published.tables()["document"])
    return [d for d in published.DOCUMENTS if d not in have]


def _where(row) -> str:
    return f"{{ref}}`{row.chapter} <{row.section}>`" if isinstance(row.section, str) else "—"


def scoreboard_markdown(board: pd.DataFrame) -> str:
    """The published part of the scoreboard (rows with part PUBLISHED) as a MyST table: document,
    table, status, cells (differing), and where, each reproduced table linked to its section with {ref}."""
    lines = ["| document | table | status | cells (differing) | where |", "|---|---|---|---|---|"]
    for row in board[board["part"] == PUBLISHED].itertuples():
        cells = f"{row.cells} ({row.differing_cells})" if row.cells else "—"
        lines.append(f"| {row.document} | {row.table} | {row.status} | {cells} | {_where(row)} |")
    return "\n".join(lines)


def additions_markdown(board: pd.DataFrame) -> str:
    """The scoreboard's second part, what the book adds beyond the documents (rows with part ADDED),
    as a MyST table: the document it extends, the result, its cells, and where (a {ref} link)."""
    lines = ["| extends | result | cells | where |", "|---|---|---:|---|"]  # numbers right-aligned
    for row in board[board["part"] == ADDED].itertuples():
        lines.append(f"| {row.document} | {row.table} | {row.cells} | {_where(row)} |")
    return "\n".join(lines)
