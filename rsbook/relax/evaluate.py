"""Certificates over a test subsample, resumable, and the chapter's summaries and timings.

`certify_examples` answers YES / MAYBE / NO (rsbook.relax.certify) for every selected example, every
radius of a grid and every method, plus the PGD attack alone (method 'pgd': NO when it finds an
adversarial example, else MAYBE), so that for each radius

    certified accuracy (share of YES)  ≤  robust accuracy  ≤  1 − share of NO (PGD and argmin)

Every NO rests on a verified witness (rsbook.relax.certify.Certifier.witness: a point checked inside
the ball in float64 and in the network's dtype, which the network misclassifies); its float64 distance
from x in the ball's norm is the row's `witness_distance` (NaN for the other answers).

Work is skipped only where the answer is implied, never guessed:
  * a witness (x itself, a PGD example, an LP / MILP / branch-and-bound argmin projected into the ball)
    answers NO for every method at this radius and at every larger radius of the grid (the point lies
    in the larger balls too; its distance is recorded on each such row);
  * an LP whose intermediate bounds lie inside those of a cheap method (ibp, dual, crown, alpha-crown)
    that said YES is at least as tight (with the same bounds each is ≤ the LP, and the LP only gains
    from tighter bounds: rsbook.relax.certify), so it says YES too; α-CROWN says YES when CROWN or the
    dual bound did on the bounds it starts from (its value is at least theirs); the MILP is exact, so
    any YES implies its YES. Branch and bound is always run (its answers are compared with the MILP's).
Such rows have solved = False and no margin; per-certificate timings come from `time_methods`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rsbook import streams
from rsbook.analysis import certified_accuracy
from rsbook.dataset_runs import certify_dataset, selected_indices
from rsbook.logs import (
    ResultsTable,
    begin_run,
    finish_manifest,
    read_certify_log,
    run_folder,
)
from rsbook.progress import track
from rsbook.relax.certify import CHEAP, DECISIONS, DEFAULT_BOUNDS, GUARANTEED, METHODS, Certifier, ball_distance
from rsbook.relax.interval import NORMS
from rsbook.relax.lp import SolverError
from rsbook.smooth import Smooth

__all__ = ["RESULT_COLUMNS", "certify_examples", "run_certification", "answer_shares", "certified_accuracy_table",
           "share_table", "long_curves", "time_methods", "time_compiled_lp", "smoothing_radii",
           "smoothing_curve", "smoothing_curves", "smoothing_table", "relaxation_curve", "relaxation_curves",
           "compare_bounds", "margin_table", "order_table", "compare_decisions", "flatten_index", "SLIDES_LP",
           "ORDER_PAIRS", "ORDERED"]

RESULT_COLUMNS = ("idx", "label", "norm", "eps", "method", "answer", "margin", "seconds", "solved", "status",
                  "witness_distance")
_ALL_KINDS = {"ibp", "dual", "ibp+dual", "crown", "alpha-crown", "lp"}
_INSIDE = {"ibp": {"ibp"}, "dual": {"dual"}, "ibp+dual": {"ibp", "dual", "ibp+dual"}, "crown": {"crown"},
           "alpha-crown": _ALL_KINDS - {"lp"}, "lp": _ALL_KINDS}
"""_INSIDE[a]: the kinds of intermediate bounds that the bounds of kind a always lie inside
(rsbook.relax.crown.alpha_crown_bounds intersects with the interval, dual and CROWN bounds; the 'lp'
kind tightens the 'alpha-crown' bounds)."""


def _implied_yes(method: str, kinds: dict, yes: dict) -> bool:
    """Whether the YES answers so far imply `method`'s (module docstring): the MILP is exact, so any sound
    YES implies its YES; an LP with bounds inside those of a cheap method that said YES is at least as
    tight; α-CROWN is at least CROWN and the dual bound on the bounds it starts from (its own kind of
    bounds, or, on 'alpha-crown' bounds, theirs)."""
    if method == "milp":
        return any(yes.values())
    if method == "lp":
        inside = _INSIDE.get(kinds["lp"], set())
        return any(yes.get(m, False) and kinds.get(m) in inside for m in CHEAP)
    if method == "alpha-crown":
        own = kinds["alpha-crown"]
        return any(yes.get(m, False) and (kinds.get(m) == own or (own == "alpha-crown" and kinds.get(m) == m))
                   for m in ("dual", "crown"))
    return False


def certify_examples(net, dataset, eps_grid, norm: str, methods=METHODS, *, out, bounds=None, skip: int = 1,
                     max_index: int = -1, limits=None, attack_steps: int = 40, attack_restarts: int = 1, seed: int = 0,
                     time_limit: float | None = None, node_limit: int | None = None,
                     progress: bool = False) -> pd.DataFrame:
    """Answers for the examples dataset[i] selected by (skip, max_index) (rsbook.dataset_runs), radii
    eps_grid (sorted ascending), ball `norm`, and `methods` (rsbook.relax.certify.DECISIONS, run in this
    order; each on its default intermediate bounds, DEFAULT_BOUNDS, unless `bounds` maps it to another
    kind). time_limit: seconds per solve of the LP and MILP, the whole search of branch and bound ('bab',
    MAYBE when reached, as at node_limit domains: Certifier.decide).

    limits: {method: {"examples": k, "eps": [...]}} restricts a method (e.g. the MILP) to the first k
    selected examples and to some radii. PGD (`attack_restarts` random starts of `attack_steps` steps,
    seeded per example from (seed, idx)) runs first. A solver failure or time limit (SolverError)
    is recorded as answer 'ERROR' with the solver status, never as a certificate.

    Resumable: rows are appended per example to out/results.tsv (out is a folder; a manifest records
    the parameters). Returns a frame with RESULT_COLUMNS."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    eps_grid = sorted(float(e) for e in eps_grid)
    if not eps_grid or eps_grid[0] < 0:
        raise ValueError(f"eps_grid must hold at least one radius >= 0, got {eps_grid!r}")
    out = Path(out)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in DECISIONS]
    if unknown:
        raise ValueError(f"methods must be among {DECISIONS}, got {unknown}")
    kinds = {m: (bounds or {}).get(m, DEFAULT_BOUNDS[m]) for m in methods}
    limits = limits or {}
    parameters = {"eps": eps_grid, "norm": norm, "methods": list(methods), "bounds": kinds, "skip": skip,
                  "max_index": max_index, "limits": limits, "attack_steps": attack_steps,
                  "attack_restarts": attack_restarts, "time_limit": time_limit, "node_limit": node_limit}
    begin_run(out, parameters, seed=seed)
    table = ResultsTable(out / "results.tsv", RESULT_COLUMNS)
    indices = selected_indices(len(dataset), skip, max_index)
    example_shape = tuple(dataset[indices[0]][0].shape)
    certifier = Certifier(net, example_shape)
    position = {idx: k for k, idx in enumerate(indices)}
    for idx in track([i for i in indices if i not in table.done], f"certify {norm}", unit="example",
                     disable=not progress):
        x, label = dataset[idx]
        label = int(label)
        generator = streams.generator(seed, "attack", idx)
        rows = []
        witness = certifier.witness(x, x, label, 0.0, norm)  # x itself, when misclassified: in every ball
        for eps in eps_grid:
            attacked = witness is None
            if attacked:
                witness = certifier.attack_witness(x, label, eps, norm, attack_steps, attack_restarts, generator)
            broken = witness is not None
            distance = _witness_distance(witness, x, norm)
            rows.append(dict(eps=eps, method="pgd", answer="NO" if broken else "MAYBE", margin=np.nan, seconds=0.0,
                             solved=attacked, status="", witness_distance=distance))
            yes = {}
            for method in methods:
                limit = limits.get(method, {})
                if position[idx] >= limit.get("examples", len(indices)) or \
                        ("eps" in limit and not any(np.isclose(eps, limit["eps"]))):
                    continue
                row = dict(eps=eps, method=method, margin=np.nan, seconds=0.0, solved=False, status="",
                           witness_distance=np.nan)
                if broken:
                    row.update(answer="NO", witness_distance=distance)
                elif _implied_yes(method, kinds, yes):
                    row["answer"] = "YES"
                else:
                    started = time.perf_counter()
                    try:
                        answer, margin, found = _answer(certifier, x, label, eps, norm, method, kinds[method],
                                                        time_limit, node_limit)
                        row.update(answer=answer, margin=margin, solved=True)
                        if found is not None:  # a verified witness, which also lies in every larger ball
                            witness, broken = found, True
                            distance = row["witness_distance"] = _witness_distance(witness, x, norm)
                    except SolverError as err:
                        row.update(answer="ERROR", status=err.status, solved=True)
                    row["seconds"] = time.perf_counter() - started
                yes[method] = row["answer"] == "YES"
                rows.append(row)
        table.append([{"idx": idx, "label": label, "norm": norm, **row} for row in rows])
    finish_manifest(out)
    return table.read()


def _answer(certifier: Certifier, x, label: int, eps: float, norm: str, method: str, kind: str, time_limit,
            node_limit=None):
    """(answer, smallest margin bound found, the verified witness of a NO or None), without an attack."""
    answer, margin, point = certifier.decide(x, label, eps, norm, method, kind, time_limit, node_limit=node_limit)
    return answer, margin, point if answer == "NO" else None


def _witness_distance(witness, x, norm: str) -> float:
    """The witness's float64 distance from x in `norm` (rsbook.relax.certify.ball_distance); NaN for None."""
    return np.nan if witness is None else ball_distance(witness, x, norm)


def answer_shares(results: pd.DataFrame) -> pd.DataFrame:
    """Share of each answer (YES, MAYBE, NO, ERROR) per (method, eps), over the examples each covers."""
    counts = results.groupby(["method", "eps"])["answer"].value_counts(normalize=True).unstack(fill_value=0.0)
    for answer in ("YES", "MAYBE", "NO", "ERROR"):
        if answer not in counts:
            counts[answer] = 0.0
    return counts[["YES", "MAYBE", "NO", "ERROR"]]


def certified_accuracy_table(results: pd.DataFrame, methods=METHODS, examples=None) -> pd.DataFrame:
    """Rows: each method's certified accuracy (share of YES) and 'PGD (upper bound)' = 1 − share of
    NO from the attack and the argmins; columns: ε. examples: restrict to these idx (e.g. the
    MILP's subset, so that every row covers the same examples)."""
    frame = results if examples is None else results[results["idx"].isin(examples)]
    rows = {}
    for method in methods:
        part = frame[frame["method"] == method]
        if len(part):
            rows[method] = part.groupby("eps")["answer"].apply(lambda a: float((a == "YES").mean()))
    refuted = frame.groupby(["eps", "idx"])["answer"].apply(lambda a: bool((a == "NO").any()))
    rows["PGD (upper bound)"] = 1.0 - refuted.groupby("eps").mean()
    table = pd.DataFrame(rows).T
    table.index.name, table.columns.name = "method", "ε"
    return table


def _targets(label: int, classes: int, count):
    others = [t for t in range(classes) if t != label]
    return others if count is None else others[:count]


def time_methods(net, dataset, indices, eps: float, norm: str, methods=METHODS, bounds=None,
                 time_limit: float | None = None, targets: int | None = None) -> pd.DataFrame:
    """Seconds per certificate — the intermediate bounds and the bound of every target (or of the
    first `targets` targets, scaled up to all of them), no screening — for each method on the
    examples `indices` at radius eps: columns bounds, median, mean, n, status (the solver status when
    a solve failed or hit time_limit; its time is then missing, never counted as a certificate)."""
    example_shape = tuple(dataset[indices[0]][0].shape)
    certifier = Certifier(net, example_shape)
    rows = []
    for method in methods:
        if method == "milp" and norm != "linf":
            continue
        kind = (bounds or {}).get(method, DEFAULT_BOUNDS[method])
        times, status = [], ""
        for idx in indices:
            x, label = dataset[idx]
            chosen = _targets(int(label), certifier.num_classes, targets)
            certifier.forget()  # every certificate from scratch: its own intermediate bounds
            started = time.perf_counter()
            try:
                certifier.margin_lower_bounds(x, int(label), eps, norm, method, kind, targets=chosen,
                                              time_limit=time_limit)
            except SolverError as err:
                status = err.status
                continue
            times.append((time.perf_counter() - started) * (certifier.num_classes - 1) / len(chosen))
        rows.append({"method": method, "bounds": kind, "median": float(np.median(times)) if times else np.nan,
                     "mean": float(np.mean(times)) if times else np.nan, "n": len(times), "status": status})
    return pd.DataFrame(rows).set_index("method")


def time_compiled_lp(net, dataset, indices, eps: float, norm: str = "linf", bounds: str = "ibp",
                     targets: int | None = None) -> pd.DataFrame:
    """Seconds per LP certificate (every target, or the first `targets` scaled up to all) when the
    parametrized LP is compiled once and re-solved ('compiled once') and when a new problem is built
    and compiled for every solve ('rebuilt per call'), on the same examples; the first, compiling
    call of the cached problem is counted too. Columns: seconds per certificate, problems built."""
    example_shape = tuple(dataset[indices[0]][0].shape)
    rows = {}
    for name, cache in (("compiled once", True), ("rebuilt per call", False)):
        certifier = Certifier(net, example_shape, cache=cache)
        elapsed, solves = 0.0, 0
        for idx in indices:
            x, label = dataset[idx]
            chosen = _targets(int(label), certifier.num_classes, targets)
            certifier.forget()
            started = time.perf_counter()
            certifier.margin_lower_bounds(x, int(label), eps, norm, "lp", bounds, targets=chosen)
            elapsed += (time.perf_counter() - started) * (certifier.num_classes - 1) / len(chosen)
            solves += len(chosen)
        rows[name] = {"seconds per certificate": elapsed / len(indices),
                      "problems built": len(certifier._problems) if cache else solves}
    return pd.DataFrame(rows).T


def smoothing_radii(root, name: str, net, num_classes: int, dataset, sigma: float, *, n0: int, n: int,
                    alpha: float, batch_size: int, skip: int = 1, max_index: int = -1, seed: int = 0, device=None,
                    progress: bool = False) -> pd.DataFrame:
    """Cohen et al.'s CERTIFY (rsbook.smooth.Smooth at noise sigma) of the examples selected by (skip,
    max_index), into a resumable certify log in root/smoothing/<name>_sigma<sigma>-<digest>; returns
    the log (idx, label, predict, radius, correct, time)."""
    from rsbook.relax.network import network_fingerprint

    parameters = {"network": network_fingerprint(net), "sigma": float(sigma), "n0": n0, "n": n, "alpha": alpha,
                  "skip": skip, "max_index": max_index, "seed": seed}
    folder = run_folder(root, "smoothing", f"{name}_sigma{float(sigma):g}", parameters)
    device = torch.device("cpu" if device is None else device)
    smooth = Smooth(net.to(device).eval(), num_classes, sigma, device=device)
    path = certify_dataset(smooth, dataset, folder / "certify.tsv", n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                           skip=skip, max_index=max_index, seed=seed, parameters={"network": parameters["network"]},
                           progress=progress)
    return read_certify_log(path)


def smoothing_curve(log: pd.DataFrame, radii) -> pd.Series:
    """Certified accuracy of the smoothed classifier at each radius (rsbook.analysis.certified_accuracy)."""
    return certified_accuracy(log, radii)


def relaxation_curve(results: pd.DataFrame, method: str) -> pd.Series:
    """Certified accuracy (share of YES) of `method` at each ε of a results frame (index: ε)."""
    part = results[results["method"] == method]
    return part.groupby("eps")["answer"].apply(lambda a: float((a == "YES").mean())).rename("certified_accuracy")


def run_certification(root, name: str, net, dataset, eps_grid, norm: str, methods=METHODS, **kwargs) -> pd.DataFrame:
    """certify_examples into the run folder root/relax/<name>_<norm>-<digest> (rsbook.logs.run_folder),
    the digest covering the network's weights and every setting, so a changed model or parameter
    starts a new run and an unchanged one resumes."""
    from rsbook.relax.network import network_fingerprint

    parameters = {"network": network_fingerprint(net), "eps": sorted(float(e) for e in eps_grid), "norm": norm,
                  "methods": list(methods), "columns": list(RESULT_COLUMNS),
                  **{k: v for k, v in kwargs.items() if k != "progress"}}
    folder = run_folder(root, "relax", f"{name}_{norm}", parameters)
    return certify_examples(net, dataset, eps_grid, norm, methods, out=folder, **kwargs)


def long_curves(results: dict, methods=METHODS) -> pd.DataFrame:
    """{model name: results frame} → long frame (eps, certified_accuracy, method, model) of each
    method's certified accuracy and the attacks' upper bound ('PGD (upper bound)')."""
    frames = []
    for model, frame in results.items():
        table = certified_accuracy_table(frame, methods)
        long = table.stack().rename("certified_accuracy").reset_index()
        long.columns = ["method", "eps", "certified_accuracy"]
        frames.append(long.assign(model=model))
    return pd.concat(frames, ignore_index=True)


def share_table(results: pd.DataFrame, answer: str = "MAYBE", methods=METHODS) -> pd.DataFrame:
    """Share of `answer` per method (rows) and ε (columns)."""
    shares = answer_shares(results[results["method"].isin(methods)])[answer].unstack("eps")
    shares = shares.reindex([m for m in methods if m in shares.index])
    shares.index.name, shares.columns.name = "method", "ε"
    return shares


def smoothing_table(results: pd.DataFrame, logs: dict, methods=("ibp", "dual", "lp")) -> pd.DataFrame:
    """ℓ₂ certified accuracy at the radii of a results frame: one row per relaxation method, one per
    smoothed classifier ({name: certify log}); columns the radii."""
    rows = {method: relaxation_curve(results, method) for method in methods
            if (results["method"] == method).any()}
    radii = sorted(results["eps"].unique())
    for name, log in logs.items():
        rows[name] = pd.Series(smoothing_curve(log, radii).to_numpy(), index=radii)
    table = pd.DataFrame(rows).T
    table.index.name, table.columns.name = "method", "ℓ₂ radius"
    return table


def smoothing_curves(logs: dict, radii) -> pd.DataFrame:
    """Long frame (radius, certified_accuracy, model) of each smoothed classifier's certified accuracy."""
    frames = [pd.DataFrame({"radius": np.asarray(radii, dtype=float),
                            "certified_accuracy": smoothing_curve(log, radii).to_numpy(), "model": name})
              for name, log in logs.items()]
    return pd.concat(frames, ignore_index=True)


def relaxation_curves(results: pd.DataFrame, methods=("ibp", "dual", "lp")) -> pd.DataFrame:
    """Long frame (eps, certified_accuracy, method) of each method's certified accuracy."""
    frames = [relaxation_curve(results, m).reset_index().assign(method=m) for m in methods
              if (results["method"] == m).any()]
    return pd.concat(frames, ignore_index=True)


def compare_bounds(net, dataset, indices, eps_grid, norm: str, first: str = "ibp", second: str = "dual") -> pd.DataFrame:
    """Per ε, over every (example, target ≠ label) pair of the examples `indices`: the share where the
    margin bound of `first` is higher than that of `second`, the share where it is lower, and the
    median difference first − second (each method with its own default intermediate bounds)."""
    example_shape = tuple(dataset[indices[0]][0].shape)
    certifier = Certifier(net, example_shape)
    rows = {}
    for eps in eps_grid:
        differences = []
        for idx in indices:
            x, label = dataset[idx]
            a = certifier.margin_lower_bounds(x, int(label), eps, norm, first)
            b = certifier.margin_lower_bounds(x, int(label), eps, norm, second)
            keep = np.arange(len(a)) != int(label)
            differences.append(a[keep] - b[keep])
        differences = np.concatenate(differences)
        rows[float(eps)] = {f"{first} higher": float(np.mean(differences > 1e-9)),
                            f"{second} higher": float(np.mean(differences < -1e-9)),
                            f"median {first} − {second}": float(np.median(differences))}
    table = pd.DataFrame(rows).T
    table.index.name = "ε"
    return table


def margin_table(net, dataset, indices, eps_grid, norm: str, methods=METHODS,
                 time_limit: float | None = None) -> pd.DataFrame:
    """Every method's margin lower bound on every (example, target ≠ label, ε) of the examples `indices`:
    a long frame (idx, target, eps, method, margin). methods: names of METHODS (each on its default
    intermediate bounds) or (name, method, bounds kind) triples, e.g. SLIDES_LP. The MILP runs for ℓ∞
    only; a solve that fails or reaches time_limit leaves NaN."""
    example_shape = tuple(dataset[indices[0]][0].shape)
    certifier = Certifier(net, example_shape)
    specs = [(m, m, DEFAULT_BOUNDS[m]) if isinstance(m, str) else tuple(m) for m in methods]
    rows = []
    for eps in eps_grid:
        for idx in indices:
            x, label = dataset[idx]
            targets = [t for t in range(certifier.num_classes) if t != int(label)]
            for name, method, kind in specs:
                if method == "milp" and norm != "linf":
                    continue
                values = np.full(certifier.num_classes, np.nan)
                for t in targets if method in ("lp", "milp") else [None]:
                    try:
                        found = certifier.margin_lower_bounds(x, int(label), eps, norm, method, kind,
                                                              targets=None if t is None else [t],
                                                              time_limit=time_limit)
                    except SolverError:
                        continue
                    values = np.where(np.isnan(values), found, values)
                rows += [{"idx": idx, "target": t, "eps": float(eps), "method": name, "margin": values[t]}
                         for t in targets]
    return pd.DataFrame(rows)


SLIDES_LP = ("lp (ibp bounds)", "lp", "ibp")
"""The slides' LP, the triangle relaxation on interval bounds, as a margin_table method triple."""
ORDER_PAIRS = (("ibp", "dual"), ("dual", "crown"), ("crown", "dual"), ("ibp", "alpha-crown"), ("dual", "alpha-crown"),
               ("crown", "alpha-crown"), ("alpha-crown", "lp"), ("lp", "milp"), (SLIDES_LP[0], "dual"),
               (SLIDES_LP[0], "lp"))
"""The pairs the chapter checks: the documented order (rsbook.relax.certify.GUARANTEED), the pairs that
are not ordered, and the slides' LP against the dual bound and against the LP on α-CROWN's bounds."""
ORDERED = (*GUARANTEED, (SLIDES_LP[0], "lp"))
"""GUARANTEED and the slides' LP ≤ the LP on α-CROWN's bounds (inside the interval bounds; the LP only
gains from tighter bounds)."""


def order_table(margins: pd.DataFrame, pairs=ORDER_PAIRS, guaranteed=ORDERED, tolerance: float = 1e-6) -> pd.DataFrame:
    """For each pair (a, b) of method names: whether a ≤ b is guaranteed (`guaranteed`, default ORDERED),
    over the (example, target, ε) where both have a bound the number compared, the share where
    a ≤ b + tolerance (the solvers' values are accurate to about 1e-7), and the largest a − b.
    margins: margin_table's frame (other columns than method and margin, e.g. a model, identify a row
    too); pairs naming a method it lacks are left out."""
    keys = [c for c in margins.columns if c not in ("method", "margin")]  # e.g. a model column too
    wide = margins.pivot_table(index=keys, columns="method", values="margin", aggfunc="first")
    rows = {}
    for a, b in (pair for pair in pairs if set(pair) <= set(wide.columns)):
        both = wide[[a, b]].dropna()
        difference = (both[a] - both[b]).to_numpy()
        rows[f"{a} ≤ {b}"] = {"guaranteed": "yes" if (a, b) in set(guaranteed) else "no", "compared": len(both),
                               "holds": float(np.mean(difference <= tolerance)) if len(both) else np.nan,
                               "largest excess": float(difference.max()) if len(both) else np.nan}
    table = pd.DataFrame(rows).T
    table.index.name = "order"
    return table.astype({"compared": int, "holds": float, "largest excess": float})


def compare_decisions(results: dict, reference: str = "milp", other: str = "bab") -> pd.DataFrame:
    """`other` against `reference` on the rows where `reference` was solved (not implied by another
    answer), per model of {model: certify_examples frame} and over all ('all'). Columns: rows and same
    (every row where the reference gave an answer, solved or implied, and how many of them other
    answered alike), solved (the rows where it was solved), answered (of those, where it gave YES, NO
    or MAYBE), agree (other gave the same answer there),
    errors (the reference's solver failures or time limits), other YES / other NO on errors (other's
    answers on those rows), reference seconds and other seconds (totals over the answered rows, each
    method's own time on the row) and ratio (other / reference)."""
    rows = {}
    for model, frame in results.items():
        mine = frame[frame["method"] == other].set_index(["idx", "eps"])
        given = frame[(frame["method"] == reference) & (frame["answer"] != "ERROR")]
        alike = mine.loc[list(zip(given["idx"], given["eps"]))]["answer"].to_numpy() == given["answer"].to_numpy()
        solved = frame[(frame["method"] == reference) & frame["solved"]]
        answered, errors = solved[solved["answer"] != "ERROR"], solved[solved["answer"] == "ERROR"]
        theirs = mine.loc[list(zip(answered["idx"], answered["eps"]))] if len(answered) else mine.iloc[:0]
        on_errors = (mine.loc[list(zip(errors["idx"], errors["eps"]))]["answer"] if len(errors)
                     else pd.Series([], dtype=object))
        rows[model] = {"rows": len(given), "same": int(alike.sum()), "solved": len(solved),
                       "answered": len(answered),
                       "agree": int((theirs["answer"].to_numpy() == answered["answer"].to_numpy()).sum()),
                       "errors": len(errors), f"{other} YES on errors": int((on_errors == "YES").sum()),
                       f"{other} NO on errors": int((on_errors == "NO").sum()),
                       f"{reference} seconds": float(answered["seconds"].sum()),
                       f"{other} seconds": float(theirs["seconds"].sum())}
    table = pd.DataFrame(rows).T
    table.loc["all"] = table.sum()
    table["ratio"] = table[f"{other} seconds"] / table[f"{reference} seconds"].where(table[f"{reference} seconds"] > 0)
    table.index.name = "model"
    counts = [c for c in table.columns if "seconds" not in c and c != "ratio"]
    return table.astype({c: int for c in counts})


def flatten_index(frame: pd.DataFrame, sep: str = " / ") -> pd.DataFrame:
    """The frame with a MultiIndex of rows joined into one label per row ('standard / lp'), e.g. to
    record several models' tables as one (rsbook.book.report.ChapterRun.record)."""
    labels = [sep.join(f"{level:g}" if isinstance(level, float) else str(level) for level in key)
              if isinstance(key, tuple) else str(key) for key in frame.index]
    return frame.set_axis(pd.Index(labels, name=sep.join(str(n) for n in frame.index.names)))
