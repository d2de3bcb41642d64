"""`rsbook analyze`: the papers' certified-accuracy tables and curves from certify logs on disk.

Reads certify logs in the authors' layout (locuslab/smoothing: idx label predict radius correct time) or
this project's (the same columns; a sequential log of `rsbook certify --radius r` adds samples), and gives

  per log     certified accuracy at each requested radius (rsbook.analysis.certified_accuracy: the fraction of
              examples predicted correctly with a certified radius >= r, and > 0), the average certified
              radius (analysis.average_certified_radius) and the abstention rate (predict = -1);
  across logs the best-sigma envelope (analysis.best_sigma_table, the layout of Cohen et al.'s Table 1): at
              each radius the log with the highest certified accuracy, its sigma, that accuracy and the
              same log's standard accuracy (its certified accuracy at r = 0), ties to the smaller sigma;

computed by the same functions as the cohen_logs chapter, so on the authors' released logs the cells are
the chapter's. `render` prints them as Markdown, LaTeX (booktabs; per radius the best log's cell in bold,
as the authors' analyze.py) or CSV (long, full precision); `curves_figure` draws the certified-accuracy
curves in the book's style (rsbook.plots.plot_certified_accuracy).

Each log's sigma, needed for the envelope and the tables: given (`sigmas`, `rsbook analyze --sigma`, one
per log), else the log's manifest (<log>.manifest.json, rsbook.logs), else the last component of its path
named sigma_<value> (the authors' layout, data/certify/cifar10/resnet110/noise_0.25/test/sigma_0.50). A log
whose sigma none of these gives is refused, naming it.

A sequential log answers only "is each example certified at the log's radius r?" (`certify --radius r`) or at
each radius of its grid (`certify --radii ...`; r then the grid's largest), r from its manifest, else the
largest radius its rows certify. At radii up to r its cells count the examples certified at a radius of the log
at least as large, whose certificates cover every smaller ball (at the log's own radii, its decisions); at radii
above r it says nothing, and those cells are empty (NaN), as is its average certified radius. It takes no part
in the envelope, which compares CERTIFY logs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsbook import analysis
from rsbook._checks import check_nonnegative_int, check_output_path, check_sigma
from rsbook._checks import check_radii as checked_radii
from rsbook.logs import LogFormatError, log_manifest, read_log

__all__ = ["LoggedRun", "FORMATS", "PLOT_SUFFIXES", "log_sigma", "read_logs", "check_radii", "summary", "envelope",
           "render", "curves_figure", "check_plot_path", "save_figure"]

FORMATS = ("md", "latex", "csv")
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
_SIGMA_COMPONENT = re.compile(r"^sigma[_=-]?(\d+(?:\.\d*)?)(?:\.[A-Za-z]\w*)?$")


@dataclass(frozen=True)
class LoggedRun:
    """One certify log read for analysis: its path, the label it is shown under, its sigma and where that
    came from ('given', 'manifest' or 'path'), the parsed log (rsbook.logs.read_log), and for a sequential
    log the one radius it tests (None for a CERTIFY log)."""

    path: Path
    label: str
    sigma: float
    sigma_source: str
    log: pd.DataFrame
    tested_radius: float | None = None


def _manifest_parameters(path: Path) -> dict:
    manifest = log_manifest(path)
    if not manifest.is_file():
        return {}
    try:
        return dict(json.loads(manifest.read_text()).get("parameters", {}))
    except (ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"the manifest {manifest} of log {path} is not a readable manifest ({err})") from None


def log_sigma(path, given: float | None = None) -> tuple[float, str]:
    """(sigma, source) of the certify log at `path`: `given` when not None ('given'), else its manifest's
    parameters.sigma ('manifest'), else the last path component named sigma_<value>, e.g. sigma_0.50 or
    sigma_0.50.tsv ('path'). ValueError naming the log when none of these gives it."""
    path = Path(path)
    if given is not None:
        return check_sigma(given, "sigmas"), "given"
    recorded = _manifest_parameters(path).get("sigma")
    if recorded is not None:
        return check_sigma(recorded, f"the sigma in the manifest of log {path}"), "manifest"
    for part in reversed(path.parts):
        match = _SIGMA_COMPONENT.match(part)
        if match:
            return check_sigma(float(match.group(1)), f"the sigma in the path of log {path}"), "path"
    raise ValueError(f"the sigma of log {path} is unknown: give it (sigmas=[...]; on the command line --sigma, one "
                     f"per log, in order), keep the log's manifest {log_manifest(path).name} beside it, or name a "
                     "folder or the file sigma_<value> as the authors' layout does")


def _tested_radius(path: Path, log: pd.DataFrame) -> float:
    """The largest radius a sequential log decides: its manifest's radius (certify --radius) or the largest of its
    radii (certify --radii), else the largest radius its rows certify."""
    recorded = _manifest_parameters(path)
    if recorded.get("radius") is not None:
        return float(recorded["radius"])
    if recorded.get("radii"):
        return float(max(recorded["radii"]))
    certified = log.loc[log["predict"] != -1, "radius"]
    if certified.empty:
        raise ValueError(f"sequential log {path} certifies no example and has no manifest, so the radii it tested "
                         "are unknown")
    return float(certified.max())


def _default_labels(paths: list[Path]) -> list[str]:
    """The shortest trailing parts of the paths that tell them apart (sigma_0.25; noise_0.25/test/sigma_0.50)."""
    parts = [p.parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]  # the same path twice: refused by read_logs


def read_logs(paths, sigmas=None, labels=None) -> list[LoggedRun]:
    """The certify logs at `paths` (authors' or this project's layout, with or without a samples column),
    each with its sigma (log_sigma; `sigmas`: None or one per log) and label (`labels`: None or one per log,
    distinct; default the shortest trailing parts of the paths that tell them apart). A missing file, a file
    in neither layout, a predict log or a log without rows raises an error naming the file."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no certify log was given: analysis needs at least one")
    repeated = sorted({str(p) for p in paths if paths.count(p) > 1})
    if repeated:
        raise ValueError(f"the log {repeated[0]} is given more than once")
    for name, values in (("sigmas", sigmas), ("labels", labels)):
        if values is not None and len(values) != len(paths):
            raise ValueError(f"{name} must give one value per log: {len(paths)} logs, {len(values)} values")
    if labels is not None and len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {list(labels)}")
    labels = _default_labels(paths) if labels is None else [str(v) for v in labels]
    runs = []
    for i, path in enumerate(paths):
        log = read_log(path)
        if "radius" not in log:
            raise LogFormatError(f"{path} is a predict log; analyze reads certify logs (with a radius column)")
        if log.empty:
            raise LogFormatError(f"{path} holds no rows")
        sigma, source = log_sigma(path, None if sigmas is None else sigmas[i])
        tested = _tested_radius(path, log) if "samples" in log else None
        runs.append(LoggedRun(path, labels[i], sigma, source, log, tested))
    return runs


def check_radii(radii) -> list[float]:
    """The radii of a table: at least one, each a finite number >= 0 (rsbook._checks.check_radii), none twice;
    returned as floats in the order given."""
    values = checked_radii(radii)
    if len(set(values)) != len(values):
        raise ValueError(f"radii must be distinct, got {values}")
    return values


def summary(runs: list[LoggedRun], radii) -> pd.DataFrame:
    """One row per log (index: its label): sigma, examples (rows), certified accuracy at each radius (float
    column labels, rsbook.analysis.certified_accuracy), acr (analysis.average_certified_radius), abstain (the
    fraction with predict = -1) and, when a sequential log is among them, mean_samples (NaN for the others).
    A sequential log's cells above its radius and its acr are NaN (see the module docstring)."""
    radii = check_radii(radii)
    sequential = any(run.tested_radius is not None for run in runs)
    rows = {}
    for run in runs:
        accuracy = analysis.certified_accuracy(run.log, radii)
        if run.tested_radius is not None:
            accuracy[accuracy.index > run.tested_radius] = np.nan
        rows[run.label] = {"sigma": run.sigma, "examples": len(run.log), **accuracy.to_dict(),
                           "acr": analysis.average_certified_radius(run.log) if run.tested_radius is None else np.nan,
                           "abstain": float((run.log["predict"] == -1).mean())}
        if sequential:
            rows[run.label]["mean_samples"] = (float(run.log["samples"].mean()) if "samples" in run.log
                                               else np.nan)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "log"
    return table


def envelope(runs: list[LoggedRun], radii) -> pd.DataFrame:
    """The best-sigma envelope over the CERTIFY logs among `runs` (sequential ones take no part):
    rsbook.analysis.best_sigma_table over the logs ordered by (sigma, position), so that ties go to the
    smaller sigma and two logs may share a sigma. Index: radius; columns best_sigma, certified_accuracy,
    standard_accuracy (analysis.best_sigma_table's) and log (the label of the log they come from).
    Empty when no CERTIFY log is given."""
    radii = check_radii(radii)
    certify = sorted((run for run in runs if run.tested_radius is None), key=lambda run: run.sigma)
    if not certify:
        return pd.DataFrame(columns=["best_sigma", "certified_accuracy", "standard_accuracy", "log"])
    best = analysis.best_sigma_table({position: run.log for position, run in enumerate(certify)}, radii)
    chosen = [certify[int(position)] for position in best["best_sigma"]]
    return best.assign(best_sigma=[run.sigma for run in chosen], log=[run.label for run in chosen])


# ------------------------------------------------------------------------------------------ rendering

def _number(value, decimals: int) -> str:
    """value printed as tables print it: rounded half up (rsbook.analysis.round_half_up) to `decimals`."""
    return f"{float(analysis.round_half_up(value, decimals)):.{decimals}f}"


def _latex_text(text: str) -> str:
    escapes = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(escapes.get(c, c) for c in text)


def _columns(table: pd.DataFrame) -> list[tuple[object, str, str]]:
    """(column, Markdown header, LaTeX header) of a summary table, in print order."""
    named = {"sigma": ("σ", r"$\sigma$"), "examples": ("examples", "examples"), "acr": ("ACR", "ACR"),
             "abstain": ("abstain", "abstain"), "mean_samples": ("mean samples", "mean samples")}
    out = []
    for column in table.columns:
        if isinstance(column, str):
            out.append((column, *named[column]))
        else:
            out.append((column, f"r = {column:g}", f"$r = {column:g}$"))
    return out


def _cells(table: pd.DataFrame, decimals: int, blank: str, bold) -> list[list[str]]:
    """The printed cells of a summary table, row by row (label first); `bold(text)` marks, per radius,
    the cells holding that column's largest certified accuracy (when it is above 0)."""
    rows = []
    for label, row in table.iterrows():
        cells = [str(label)]
        for column, _, _ in _columns(table):
            value = row[column]
            if column == "examples":
                cells.append(str(int(value)))
            elif column == "sigma":
                cells.append(f"{value:g}")
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append(blank)
            else:
                text = _number(value, decimals)
                best = not isinstance(column, str) and len(table) > 1 and value == table[column].max() > 0
                cells.append(bold(text) if best else text)
        rows.append(cells)
    return rows


def _markdown(header: list[str], rows: list[list[str]], align: str) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _latex(header: list[str], rows: list[list[str]], align: str) -> str:
    body = [r"\begin{tabular}{" + align + "}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    body += [" & ".join(row) + r" \\" for row in rows]
    return "\n".join(body + [r"\bottomrule", r"\end{tabular}"])


def _envelope_rows(best: pd.DataFrame, decimals: int) -> list[list[str]]:
    return [[f"{radius:g}", f"{row.best_sigma:g}", _number(row.certified_accuracy, decimals),
             _number(row.standard_accuracy, decimals), str(row.log)] for radius, row in best.iterrows()]


def render(table: pd.DataFrame, best: pd.DataFrame, fmt: str = "md", decimals: int = 2) -> str:
    """The summary table (summary) and, unless it is empty, the envelope (envelope) as text: 'md' (two
    Markdown tables), 'latex' (two booktabs tabulars; labels escaped) or 'csv' (one long table, columns
    table, log, sigma, quantity, radius, value, every number in full precision). Numbers in 'md' and
    'latex' are rounded half up to `decimals` places as printed tables are (rsbook.analysis.round_half_up);
    empty cells (NaN) print as '–' / '--'. Per radius the largest positive certified accuracy is in bold."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    decimals = check_nonnegative_int(decimals, "decimals")
    if fmt == "csv":
        return _csv(table, best)
    columns = _columns(table)
    align = "l" + "r" * len(columns)
    envelope_align = "rrrrl"
    if fmt == "md":
        rows = [[row[0].replace("|", r"\|"), *row[1:]] for row in _cells(table, decimals, "–", lambda t: f"**{t}**")]
        text = _markdown(["log", *(md for _, md, _ in columns)], rows, align)
        if not best.empty:
            text += "\n\nBest σ per radius (over the CERTIFY logs):\n\n" + _markdown(
                ["r", "best σ", "certified accuracy", "standard accuracy", "log"],
                [[*row[:4], row[4].replace("|", r"\|")] for row in _envelope_rows(best, decimals)], envelope_align)
        return text + "\n"
    rows = [[_latex_text(row[0]), *row[1:]] for row in _cells(table, decimals, "--", lambda t: r"\textbf{" + t + "}")]
    text = _latex(["log", *(tex for _, _, tex in columns)], rows, align)
    if not best.empty:
        rows = [[*row[:4], _latex_text(row[4])] for row in _envelope_rows(best, decimals)]
        text += "\n\n" + _latex(["$r$", r"best $\sigma$", "certified accuracy", "standard accuracy", "log"], rows,
                                envelope_align)
    return text + "\n"


def _csv(table: pd.DataFrame, best: pd.DataFrame) -> str:
    records = []
    for label, row in table.iterrows():
        for column in table.columns:
            if column == "sigma":
                continue
            quantity = column if isinstance(column, str) else "certified_accuracy"
            radius = np.nan if isinstance(column, str) else float(column)
            records.append(("logs", label, row["sigma"], quantity, radius, float(row[column])))
    for radius, row in best.iterrows():
        for quantity in ("certified_accuracy", "standard_accuracy"):
            records.append(("envelope", row["log"], row["best_sigma"], quantity, float(radius), float(row[quantity])))
    frame = pd.DataFrame.from_records(records, columns=["table", "log", "sigma", "quantity", "radius", "value"])
    return frame.to_csv(index=False)


# ------------------------------------------------------------------------------------------- figures

def curves_figure(runs: list[LoggedRun], title: str | None = None):
    """Certified accuracy against radius, one step curve per log under its label, in the book's style
    (rsbook.analysis.certified_accuracy_curves, rsbook.plots.plot_certified_accuracy): the CERTIFY logs on
    the radii of them all, so that each curve drops to 0 past its largest radius, as in the book; a
    sequential log's curve stops at its radius. Returns (fig, ax)."""
    from rsbook import plots

    certify = {run.label: run.log for run in runs if run.tested_radius is None}
    parts = [analysis.certified_accuracy_curves(certify, name="log")] if certify else []
    parts += [analysis.certified_accuracy_curves({run.label: run.log}, name="log") for run in runs
              if run.tested_radius is not None]
    return plots.plot_certified_accuracy(pd.concat(parts, ignore_index=True), hue="log", title=title)


def save_figure(fig, path) -> Path:
    """Write `fig` to `path` (.png, .pdf or .svg, the format its suffix names) atomically: the file appears
    complete or not at all. The figure is closed."""
    import matplotlib.pyplot as plt

    from rsbook._io import atomic_write

    path = check_plot_path(path)
    try:
        with atomic_write(path, "wb") as out:
            fig.savefig(out, format=path.suffix[1:].lower())
    finally:
        plt.close(fig)
    return path


def check_plot_path(path) -> Path:
    """A figure's file: a path ending in one of PLOT_SUFFIXES that can be created (not a folder)."""
    path = check_output_path(path, "plot", folder=False)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"plot must be a file ending in {' or '.join(PLOT_SUFFIXES)}, got {str(path)!r}")
    return path
