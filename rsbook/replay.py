"""Sequential certification replayed on the authors' certify logs, at paper scale, without a GPU.

A certify log row holds the radius sigma Phi^-1(CP(n_A, n, alpha)) of CERTIFY (Cohen et al. 2019, Sec. 3.2.2),
so the top-class count n_A behind it is recovered exactly up to the printed rounding
(rsbook.analysis.counts_from_radius). Replaying a row means running a sequential test (rsbook.sequential.plan)
on fresh Binomial draws with success probability n_A / n, the proportion CERTIFY saw (the same plug-in as
Cohen et al.'s Appendix J.2 resampling), and counting the draws it needs. Abstained rows (predict = -1) have no
recoverable count: only CP(n_A, n, alpha) < 1/2 is known, and they are simulated at the largest such
proportion, the most expensive one for every radius r > 0 (an upper bound on their cost).

The draws come from their own stream (rsbook.streams purpose 'simulate'), one per (log, radius, variant), so
every number is reproducible and no two variants share noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from rsbook import published, streams
from rsbook._checks import check_alpha, check_positive_int, check_sigma
from rsbook.analysis import counts_from_radius
from rsbook.sequential import (
    METHODS,
    Plan,
    certify_threshold,
    operating_characteristic,
    plan,
    randomized_clopper_pearson_lower,
)
from rsbook.sequential_grid import check_radii, grid_plan, simulate_grid
from rsbook.stats import clopper_pearson_lower

__all__ = [
    "fixed_certified",
    "grid_cost",
    "replay_grid",
    "frontier",
    "log_proportions",
    "randomized_gains",
    "randomized_radii",
    "replay_log",
    "replay_released",
    "samples_curve",
    "sequential_cost",
    "simulate",
]


def simulate(test: Plan, p, rng: np.random.Generator, reps: int = 1):
    """Run the sequential test `test` on Bernoulli(p) draws, batched as its looks, for every p and `reps`
    repetitions. p: (rows,) probabilities. Returns (certified, samples), each (reps, rows): whether it
    certified and how many draws it made (0 when the plan cannot certify at all). Vectorised: one Binomial
    draw per look for all active runs."""
    reps = check_positive_int(reps, "reps")
    p = np.broadcast_to(np.asarray(p, dtype=float), (reps, np.size(p))).copy()
    certified = np.zeros(p.shape, dtype=bool)
    samples = np.zeros(p.shape, dtype=np.int64)
    if not test.possible:
        return certified, samples
    hits = np.zeros(p.shape, dtype=np.int64)
    active = np.ones(p.shape, dtype=bool)
    drawn = 0
    for j, look in enumerate(test.looks):
        where = np.nonzero(active)
        hits[where] += rng.binomial(int(look) - drawn, p[where])
        drawn = int(look)
        decision = test.decide(j, hits[where])
        done = decision != 0
        stopped = tuple(axis[done] for axis in where)
        certified[stopped] = decision[done] == 1
        samples[stopped] = drawn
        active[stopped] = False
        if not active.any():
            break
    return certified, samples


def log_proportions(log: pd.DataFrame, sigma: float, n: int, alpha_log: float) -> np.ndarray:
    """n_A / n behind every row of a certify log (counts_from_radius at the alpha the log was run with);
    abstained rows get the largest proportion k / n with CP(k, n, alpha_log) < 1/2 (see the module docstring)."""
    counts = counts_from_radius(log["radius"].to_numpy(dtype=float), sigma, n, alpha_log)
    lo, hi = 0, n  # largest k with CP(k, n, alpha) < 1/2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if clopper_pearson_lower(mid, n, alpha_log) < 0.5:
            lo = mid
        else:
            hi = mid - 1
    return np.where(counts >= 0, counts, lo) / n


def fixed_certified(proportions, correct, sigma, radius, n, alpha) -> np.ndarray:
    """Whether CERTIFY with n samples at failure rate alpha certifies each row correctly at `radius`, from the
    counts behind the log (rsbook.analysis.certified_hits' rule: correct, radius > 0 and radius >= r)."""
    counts = np.round(np.asarray(proportions) * n).astype(np.int64)
    p_lower = clopper_pearson_lower(counts, n, alpha)
    with np.errstate(divide="ignore"):
        radii = np.where(p_lower > 0.5, sigma * norm.ppf(p_lower), 0.0)
    return (np.asarray(correct) == 1) & (radii > 0) & (radii >= radius)


def replay_log(log: pd.DataFrame, sigma: float, radii, variants: dict, *, n: int, alpha_log: float, alpha: float,
               n0: int, batch_size: int, reps: int, seed: int, key: str) -> pd.DataFrame:
    """Replay every row of one certify log with each variant at each radius.

    variants: name -> keyword arguments of rsbook.sequential.plan (method, futility, prior, first, growth).
    The sequential test runs at failure rate `alpha` with n_max = n; the fixed-n reference is CERTIFY with n
    samples at the same alpha on the recovered counts (the log itself when alpha == alpha_log). Abstained and
    incorrect rows are replayed too (they cost samples) but never count as certified-correct.

    Returns one row per (radius, variant): mean_samples (n0 included; abstained rows at their most expensive
    proportion), mean_samples_answered (over the rows CERTIFY did not abstain on), reduction ((n0 + n) / mean_samples),
    accuracy_fixed, accuracy (mean over reps), delta (accuracy - accuracy_fixed) and delta_se (its standard
    error over the reps), rows, reps, and the variant's method and futility.
    """
    sigma = check_sigma(sigma)
    alpha = check_alpha(alpha)
    n0 = check_positive_int(n0, "n0")
    proportions = log_proportions(log, sigma, n, alpha_log)
    correct = log["correct"].to_numpy() == 1
    answered = log["predict"].to_numpy() != -1 if "predict" in log else np.ones(len(log), dtype=bool)
    records = []
    for radius in np.atleast_1d(np.asarray(radii, dtype=float)):
        p0 = max(certify_threshold(float(radius), sigma), 0.5)
        fixed = fixed_certified(proportions, correct, sigma, radius, n, alpha)
        for name, kwargs in variants.items():
            kwargs = dict(kwargs)
            method = kwargs.pop("method", "betting")
            rng = streams.numpy_generator(seed, "simulate", key, f"{radius:.6g}", name)
            if p0 >= 1.0:
                certified = np.zeros((reps, len(proportions)), dtype=bool)
                samples = np.zeros((reps, len(proportions)), dtype=np.int64)
            else:
                test = plan(p0, alpha, n, method, batch_size, **kwargs)
                certified, samples = simulate(test, proportions, rng, reps)
            accuracy = (certified & correct[None, :]).mean(axis=1)
            records.append({
                "radius": float(radius), "variant": name, "method": method,
                "futility": kwargs.get("futility", "default"),
                "mean_samples": n0 + float(samples.mean()),
                "mean_samples_answered": n0 + float(samples[:, answered].mean()) if answered.any() else np.nan,
                "reduction": (n0 + n) / (n0 + float(samples.mean())),
                "accuracy_fixed": float(fixed.mean()), "accuracy": float(accuracy.mean()),
                "delta": float(accuracy.mean() - fixed.mean()),
                "delta_se": float(accuracy.std(ddof=1) / np.sqrt(reps)) if reps > 1 else np.nan,
                "rows": len(proportions), "reps": reps,
            })
    return pd.DataFrame.from_records(records)


def replay_grid(log: pd.DataFrame, sigma: float, radii, variants: dict, *, n: int, alpha_log: float, alpha: float,
                n0: int, batch_size: int, reps: int, seed: int, key: str) -> pd.DataFrame:
    """Replay every row of one certify log with each variant of the grid test (rsbook.sequential_grid: one
    stream for every radius of `radii`, stopped when all are decided).

    variants: name -> keyword arguments of rsbook.sequential_grid.grid_plan (method, futility, prior, first,
    growth) plus optionally stop_if_wrong (rows CERTIFY answered with a wrong class stop after n0; abstained rows
    are replayed, their class being unknown). Fixed-n reference and abstained rows as in replay_log.

    Returns one row per (variant, radius): mean_samples (per example, n0 included: the whole grid's cost, the
    same on every row of a variant), reduction ((n0 + n) / mean_samples), accuracy_fixed, accuracy, delta and
    delta_se (over reps), rows, reps, method and futility."""
    sigma = check_sigma(sigma)
    alpha = check_alpha(alpha)
    n0 = check_positive_int(n0, "n0")
    radii = check_radii(radii)
    proportions = log_proportions(log, sigma, n, alpha_log)
    correct = log["correct"].to_numpy() == 1
    wrong = (log["predict"].to_numpy() != -1) & ~correct
    records = []
    for name, kwargs in variants.items():
        kwargs = dict(kwargs)
        stop_if_wrong = bool(kwargs.pop("stop_if_wrong", False))
        test = grid_plan(radii, sigma, alpha, n, batch_size=batch_size, **kwargs)
        rng = streams.numpy_generator(seed, "simulate", key, "grid", name)
        certified, samples = simulate_grid(test, proportions, rng, reps)
        drawn = np.where(stop_if_wrong & wrong[None, :], 0, samples)
        mean = n0 + float(drawn.mean())
        for i, radius in enumerate(radii):
            fixed = fixed_certified(proportions, correct, sigma, radius, n, alpha)
            accuracy = ((certified > i) & correct[None, :]).mean(axis=1)
            records.append({
                "variant": name, "radius": float(radius), "method": test.method, "futility": test.futility,
                "stop_if_wrong": stop_if_wrong, "mean_samples": mean, "reduction": (n0 + n) / mean,
                "accuracy_fixed": float(fixed.mean()), "accuracy": float(accuracy.mean()),
                "delta": float(accuracy.mean() - fixed.mean()),
                "delta_se": float(accuracy.std(ddof=1) / np.sqrt(reps)) if reps > 1 else np.nan,
                "rows": len(proportions), "reps": reps,
            })
    return pd.DataFrame.from_records(records)


def grid_cost(dataset: str, sigma: float, radii, *, n: int, alpha: float, n0: int, batch_size: int,
              noise: float | None = None, alpha_log: float = 0.001, reps: int = 4, seed: int = 0,
              **options) -> float | None:
    """Mean draws per example (n0 included) of the grid test at `radii` on `dataset` certified at `sigma`, replayed
    (replay_grid) on the authors' released certify log of that dataset whose model was trained at `noise` (default
    sigma) and certified at `sigma` (rsbook.published.released_logs, test split); None when they released none.
    options: grid_plan's keyword arguments and stop_if_wrong. Used by rsbook.book.plan to estimate sequential steps."""
    noise = float(sigma if noise is None else noise)
    if published.artifacts(kind="certify_log", dataset=dataset).empty:
        return None
    entries = published.released_logs("certify_log", None, dataset=dataset)
    match = [e for e in entries.itertuples() if (float(e.noise), float(e.sigma)) == (noise, float(sigma))
             and e.split == "test"]
    if not match:
        return None
    frame = replay_grid(match[0].log, float(sigma), radii, {"grid": options}, n=n, alpha_log=alpha_log, alpha=alpha,
                        n0=n0, batch_size=batch_size, reps=reps, seed=seed, key=match[0].name)
    return float(frame["mean_samples"].iloc[0])


def samples_curve(p_grid, radius: float, sigma: float, variants: dict, *, n: int, alpha: float, n0: int,
                  batch_size: int) -> pd.DataFrame:
    """Expected draws (n0 included) and certification probability of each variant for a grid of true p_A at one
    radius, exactly (rsbook.sequential.operating_characteristic: no simulation). A 'fixed' variant draws n0 + n
    whatever p_A. Long frame: variant, method, p_a, mean_samples, certified_rate."""
    p_grid = np.asarray(p_grid, dtype=float)
    p0 = max(certify_threshold(radius, sigma), 0.5)
    rows = []
    for name, kwargs in variants.items():
        kwargs = dict(kwargs)
        method = kwargs.pop("method", "betting")
        if method not in METHODS:
            raise ValueError(f"variant {name!r}: method must be one of {METHODS}, got {method!r}")
        test = plan(p0, alpha, n, method, batch_size, **kwargs)
        for p in p_grid:
            certified, samples = operating_characteristic(test, float(p))
            rows.append({"variant": name, "method": method, "p_a": float(p), "mean_samples": n0 + samples,
                         "certified_rate": certified})
    return pd.DataFrame.from_records(rows)


def replay_released(folder, radii: dict, variants: dict, *, n: int, alpha_log: float, alpha: float, n0: int,
                    batch_size: int, reps: int, seed: int, max_rows: int | None = None) -> pd.DataFrame:
    """replay_log on every released certify log of the datasets in `radii` ({dataset: radii}, e.g. the columns
    of Cohen et al.'s Tables 2 and 3), cached row by row in folder/replay.tsv (a ResultsTable: rerunning
    resumes; the folder should be named after the parameters, rsbook.logs.run_folder). Adds the columns
    dataset, noise, sigma, split and log (the artifact's name)."""
    from rsbook.logs import ResultsTable

    columns = ("key", "dataset", "noise", "sigma", "split", "log", "radius", "variant", "method", "futility",
               "mean_samples", "mean_samples_answered", "reduction", "accuracy_fixed", "accuracy", "delta",
               "delta_se", "rows", "reps")
    table = ResultsTable(Path(folder) / "replay.tsv", columns, key="key")
    for dataset, dataset_radii in radii.items():
        entries = published.released_logs("certify_log", max_rows, dataset=dataset)
        for entry in entries.itertuples():
            todo = {name: kwargs for name, kwargs in variants.items()
                    if any(f"{entry.name}|{float(r):g}|{name}" not in table.done for r in dataset_radii)}
            if not todo:
                continue
            frame = replay_log(entry.log, float(entry.sigma), dataset_radii, todo, n=n, alpha_log=alpha_log,
                               alpha=alpha, n0=n0, batch_size=batch_size, reps=reps, seed=seed, key=entry.name)
            frame = frame.assign(dataset=dataset, noise=float(entry.noise), sigma=float(entry.sigma),
                                 split=entry.split, log=entry.name, futility=frame["futility"].astype(str))
            frame["key"] = [f"{entry.name}|{r:g}|{v}" for r, v in zip(frame["radius"], frame["variant"])]
            table.append([row for row in frame.to_dict("records") if row["key"] not in table.done])
    out = table.read()
    wanted = {f"{entry}|{float(r):g}|{v}" for dataset, rs in radii.items()
              for entry in published.artifacts(kind="certify_log", dataset=dataset)["name"] for r in rs
              for v in variants}
    return out[out["key"].isin(wanted)].drop(columns="key").reset_index(drop=True)


def sequential_cost(replayed: pd.DataFrame, variant: str, n: int, n0: int) -> pd.DataFrame:
    """Draws per example to answer "robust at r?" at every replayed radius with `variant` (one n0 selection
    shared by the radii, plus each radius's sequential draws), against CERTIFY's n0 + n, which answers all radii
    at once. Per log: dataset, sigma, noise, split, log, radii, sequential (mean draws per example), fixed, and
    ratio (fixed / sequential)."""
    chosen = replayed[replayed["variant"] == variant]
    grouped = chosen.groupby(["dataset", "noise", "sigma", "split", "log"], sort=False).agg(
        radii=("radius", "size"), drawn=("mean_samples", lambda s: float((s - n0).sum())))
    grouped["sequential"] = n0 + grouped.pop("drawn")
    grouped["fixed"] = float(n0 + n)
    grouped["ratio"] = grouped["fixed"] / grouped["sequential"]
    return grouped.reset_index()


def frontier(replayed: pd.DataFrame) -> pd.DataFrame:
    """Per variant, mean samples against accuracy change, from replay_log's frame at one radius (or averaged
    over the radii given): variant, method, futility, mean_samples, reduction, delta, sorted by samples."""
    grouped = replayed.groupby("variant", sort=False).agg(
        method=("method", "first"), futility=("futility", "first"), mean_samples=("mean_samples", "mean"),
        delta=("delta", "mean"))
    base = replayed["mean_samples"] * replayed["reduction"]
    grouped["reduction"] = float(base.iloc[0]) / grouped["mean_samples"]
    return grouped.reset_index().sort_values("mean_samples", kind="stable").reset_index(drop=True)


def _radii_from_bounds(p_lower, answered, sigma):
    """sigma Phi^-1(p_lower) where the row was answered and p_lower > 1/2, else 0 (inf where p_lower = 1)."""
    with np.errstate(divide="ignore"):
        return np.where(answered & (p_lower > 0.5), sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)


def randomized_radii(log: pd.DataFrame, sigma: float, *, n: int, alpha_log: float, alpha: float,
                     rng: np.random.Generator) -> pd.DataFrame:
    """Each row's certified radius from its recovered count under Clopper-Pearson at alpha ('plain', CERTIFY) and
    under the randomized Clopper-Pearson bound with one uniform per row from `rng` ('randomized';
    rsbook.sequential.randomized_clopper_pearson_lower, Voracek 2024): both sigma Phi^-1(p_lower) when
    p_lower > 1/2, else 0. Abstained rows of the log stay 0 under both. Columns: idx, plain, randomized (inf where
    the randomized bound is 1, an event of probability <= alpha).

    The randomized bound's exact level P(L > p) = alpha holds for uniforms independent of the counts and fixed
    before looking at the result (one draw per row from a seed chosen in advance); re-drawing them until a larger
    radius appears makes the reported bound a maximum over draws, whose failure probability exceeds alpha."""
    sigma = check_sigma(sigma)
    counts = np.round(log_proportions(log, sigma, n, alpha_log) * n).astype(np.int64)
    answered = log["predict"].to_numpy() != -1
    uniforms = rng.random(len(counts))
    plain = _radii_from_bounds(clopper_pearson_lower(counts, n, alpha), answered, sigma)
    randomized = _radii_from_bounds(randomized_clopper_pearson_lower(counts, n, alpha, uniforms), answered, sigma)
    return pd.DataFrame({"idx": log["idx"].to_numpy(), "plain": plain, "randomized": randomized})


def randomized_gains(log: pd.DataFrame, sigma: float, *, n: int, alpha_log: float, alpha: float, seeds,
                     key: str) -> pd.DataFrame:
    """How much the randomized Clopper-Pearson bound adds to the certified radii of one log (randomized_radii),
    for each seed in `seeds`: the uniforms of seed s come from rsbook.streams.numpy_generator(s, 'randomize', key),
    so seed s gives exactly randomized_radii(..., rng=that generator). The spread over seeds shows how much of a
    gain is the luck of the draw; only a seed fixed in advance keeps the bound's level (randomized_radii).

    Over the rows CERTIFY certified (plain radius > 0): mean_gain (mean randomized - plain radius, over the finite
    ones), mean_relative_gain (mean gain / plain), largest_gain, and unbounded (rows whose randomized radius is
    infinite). One row per seed, indexed by seed."""
    sigma = check_sigma(sigma)
    counts = np.round(log_proportions(log, sigma, n, alpha_log) * n).astype(np.int64)
    answered = log["predict"].to_numpy() != -1
    plain = _radii_from_bounds(clopper_pearson_lower(counts, n, alpha), answered, sigma)
    certified = plain > 0
    seeds = [int(seed) for seed in seeds]
    uniforms = np.stack([streams.numpy_generator(seed, "randomize", key).random(len(counts)) for seed in seeds])
    bounds = randomized_clopper_pearson_lower(counts[None, :], n, alpha, uniforms)  # (seeds, rows): one bisection
    rows = {}
    for seed, bound in zip(seeds, bounds):
        gain = (_radii_from_bounds(bound, answered, sigma) - plain)[certified]
        finite = np.isfinite(gain)
        some = finite.any()
        rows[seed] = {"mean_gain": float(gain[finite].mean()) if some else np.nan,
                      "mean_relative_gain": float((gain / plain[certified])[finite].mean()) if some else np.nan,
                      "largest_gain": float(gain[finite].max()) if some else np.nan,
                      "unbounded": int((~finite).sum())}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("seed")
