"""From certify/predict logs to the papers' tables: certified accuracy, the best-sigma envelope,
average certified radius, the PREDICT breakdown, radii under other bounds, and ours-vs-paper comparison.

Logs are DataFrames as returned by `rsbook.logs.read_log`. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
from scipy.stats import norm

from rsbook.bounds import cohen_radius, lecuyer_radius, li_radius
from rsbook.stats import HIGH_PROBABILITY_METHODS, high_probability_accuracy

__all__ = [
    "certified_hits",
    "certified_accuracy",
    "certified_accuracy_table",
    "certified_accuracy_curves",
    "best_sigma_table",
    "average_certified_radius",
    "predict_breakdown",
    "PREDICT_OUTCOMES",
    "predict_summary",
    "index_stride",
    "bound_radii",
    "bound_curves",
    "high_probability_curve",
    "radius_cap",
    "implied_alpha",
    "printed_resolution",
    "significant_digits",
    "audit_certify_logs",
    "consistent_alpha",
    "counts_from_radius",
    "resampled_certified_accuracy",
    "compare",
    "round_half_up",
    "table_status",
    "STATUSES",
    "DIFFERENT_DATA",
]


def _check_log(log: pd.DataFrame, columns=("correct", "radius")):
    missing = [c for c in columns if c not in log]
    if missing:
        raise ValueError(f"log lacks column(s) {missing}; expected a certify log from rsbook.logs.read_log")
    if len(log) == 0:
        raise ValueError("log has no rows")


def certified_hits(correct, radius, radii, certified=None) -> np.ndarray:
    """The library's one rule for "certified at r": a correct prediction with a certificate, and radius >= r.
    A certificate is a radius > 0 (a radius of 0 certifies nothing; rsbook.bounds.certified_gap), or, where
    `certified` is given, that flag: a sequential log's row certifies its radius — possibly 0, g(x) itself —
    exactly when it does not abstain (rsbook.dataset_runs.certify_grid_dataset).

    correct: (n,) bools or 0/1; radius: (n,) radii >= 0; radii: (k,) radii r; certified: (n,) bools or None.
    Returns (k, n) bools. Used by certified accuracy (Cohen et al. 2019, Sec. 4), its anisotropic and top-k
    versions.
    """
    correct = np.asarray(correct) == 1
    radius = np.asarray(radius, dtype=float)
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    certificate = radius > 0 if certified is None else np.asarray(certified, dtype=bool)
    return (correct & certificate)[None, :] & (radius[None, :] >= radii[:, None])


def certified_accuracy(log: pd.DataFrame, radii) -> pd.Series:
    """Approximate certified accuracy (Cohen et al. 2019, Sec. 4): for each r in radii, the fraction
    of rows with correct == 1 and a certified radius >= r (`certified_hits`: radius > 0 as well, so
    r = 0 counts certificates, not bare predictions; in a sequential log — one with a `samples` column,
    rsbook.logs — a row that does not abstain is certified at its radius, 0 included, so its values at the
    radii of its grid are the sequential decisions). Index: the radii; name: 'certified_accuracy'."""
    _check_log(log)
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    certified = (log["predict"].to_numpy() != -1) if "samples" in log and "predict" in log else None
    hits = certified_hits(log["correct"].to_numpy(), log["radius"].to_numpy(dtype=float), radii, certified)
    return pd.Series(hits.mean(axis=1), index=pd.Index(radii, name="radius"), name="certified_accuracy")


def certified_accuracy_table(logs_by_sigma: Mapping[float, pd.DataFrame], radii) -> pd.DataFrame:
    """Tables 2 and 3 of Cohen et al.: rows sigma, columns radius, certified accuracy."""
    rows = {sigma: certified_accuracy(log, radii) for sigma, log in sorted(logs_by_sigma.items())}
    table = pd.DataFrame(rows).T
    table.index.name, table.columns.name = "sigma", "radius"
    return table


def certified_accuracy_curves(logs: Mapping[str, pd.DataFrame], radii=None, name: str = "model") -> pd.DataFrame:
    """Long frame (name, radius, certified_accuracy) of step curves for plotting (Figure 6 style).
    radii defaults to every distinct radius in the logs plus 0, so steps are exact."""
    if radii is None:
        radii = np.unique(np.concatenate([[0.0], *[log["radius"].to_numpy() for log in logs.values()]]))
    parts = [
        certified_accuracy(log, radii).reset_index().assign(**{name: label})
        for label, log in logs.items()
    ]
    return pd.concat(parts, ignore_index=True)[[name, "radius", "certified_accuracy"]]


def best_sigma_table(logs_by_sigma: Mapping[float, pd.DataFrame], radii) -> pd.DataFrame:
    """Table 1 of Cohen et al.: for each radius, the sigma whose smoothed classifier has the highest
    certified accuracy there (ties go to the smaller sigma), that accuracy, and the same
    classifier's standard accuracy (its certified accuracy at r = 0).
    Index: radius; columns: best_sigma, certified_accuracy, standard_accuracy."""
    table = certified_accuracy_table(logs_by_sigma, np.concatenate([[0.0], np.atleast_1d(radii)]))
    at_zero, rest = table.iloc[:, 0], table.iloc[:, 1:]
    best = rest.idxmax(axis=0)
    out = pd.DataFrame(
        {
            "best_sigma": best.to_numpy(dtype=float),
            "certified_accuracy": [rest.loc[s, r] for r, s in best.items()],
            "standard_accuracy": at_zero.loc[best.to_numpy()].to_numpy(),
        },
        index=pd.Index(rest.columns.to_numpy(dtype=float), name="radius"),
    )
    out.columns.name = "quantity"
    return out


def average_certified_radius(log: pd.DataFrame) -> float:
    """ACR: the mean over examples of the certified radius if correct, else 0 (abstentions count 0)."""
    _check_log(log)
    return float(np.mean(np.where(log["correct"].to_numpy() == 1, log["radius"].to_numpy(dtype=float), 0.0)))


def predict_summary(logs_by_n: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """PREDICT per number of samples n: mean time per prediction (seconds, from the log's time
    column), top-1 accuracy (abstentions count as wrong) and abstention rate.
    Index: n; columns: time_per_prediction, top1_accuracy, abstain."""
    rows = {
        n: {
            "time_per_prediction": float(log["time"].mean()),
            "top1_accuracy": float((log["correct"] == 1).mean()),
            "abstain": float((log["predict"] == -1).mean()),
        }
        for n, log in sorted(logs_by_n.items())
    }
    out = pd.DataFrame(rows).T
    out.index.name, out.columns.name = "n", "quantity"
    return out


def index_stride(log: pd.DataFrame) -> int:
    """The most common gap between consecutive example indices of a log (20 for every 20th image)."""
    gaps = np.diff(np.sort(log["idx"].to_numpy()))
    if len(gaps) == 0:
        raise ValueError("a stride needs at least two rows")
    values, counts = np.unique(gaps, return_counts=True)
    return int(values[np.argmax(counts)])


PREDICT_OUTCOMES = ("correct_accurate", "correct_inaccurate", "incorrect_accurate", "incorrect_inaccurate", "abstain")


def predict_breakdown(logs_by_n: Mapping[int, pd.DataFrame], reference: pd.DataFrame) -> pd.DataFrame:
    """Table 4 of Cohen et al.: PREDICT's outcomes per number of samples n.

    'correct' means the prediction equals the label; 'accurate' means it equals g(x), taken as the
    prediction of the `reference` run (the authors use n = 100,000) on the same example. Rows:
    n; columns: PREDICT_OUTCOMES as fractions of the examples (each row sums to 1).
    """
    ref = reference.set_index("idx")["predict"]
    rows = {}
    for n, log in sorted(logs_by_n.items()):
        _check_log(log, ("idx", "predict", "label"))
        missing = sorted(set(log["idx"]) - set(ref.index))
        if missing:
            raise ValueError(f"reference log lacks example idx {missing[:5]} present in the n={n} log")
        predict = log["predict"].to_numpy()
        answered = predict != -1
        correct = predict == log["label"].to_numpy()
        accurate = predict == ref.loc[log["idx"]].to_numpy()
        rows[n] = {
            "correct_accurate": np.mean(answered & correct & accurate),
            "correct_inaccurate": np.mean(answered & correct & ~accurate),
            "incorrect_accurate": np.mean(answered & ~correct & accurate),
            "incorrect_inaccurate": np.mean(answered & ~correct & ~accurate),
            "abstain": np.mean(~answered),
        }
    out = pd.DataFrame(rows).T[list(PREDICT_OUTCOMES)]
    out.index.name, out.columns.name = "n", "outcome"
    return out


def bound_radii(log: pd.DataFrame, sigma: float) -> pd.DataFrame:
    """The log's radii under each bound (Cohen et al. Fig. 8 left, App. I).

    Each certified radius R is turned back into p_A = Phi(R / sigma) with p_B = 1 - p_A (exact for
    the radius CERTIFY reports), then fed to Cohen's, Lecuyer's and Li's bounds. Returns the log with
    columns cohen, lecuyer, li added (abstentions and R = 0 give 0 under every bound).
    """
    _check_log(log)
    p_a = norm.cdf(log["radius"].to_numpy(dtype=float) / sigma)
    p_b = 1.0 - p_a
    return log.assign(
        cohen=cohen_radius(p_a, p_b, sigma),
        lecuyer=lecuyer_radius(p_a, p_b, sigma),
        li=li_radius(p_a, p_b, sigma),
    )


def high_probability_curve(log: pd.DataFrame, radii, alpha: float, rho: float) -> pd.DataFrame:
    """Approximate certified accuracy beside its 1 - rho high-probability lower bounds (Cohen et al.
    2019, App. D, Thm. 6; Fig. 14), for CERTIFY run with failure rate alpha on each of the log's rows.

    Columns: radius, approximate (certified_accuracy), bernstein (Theorem 6's bound, from Bernstein's
    inequality) and exact (approximate - q / n with q the (1 - rho)-quantile of Bin(n, alpha)); see
    rsbook.stats.high_probability_accuracy. One row per radius; accuracies are fractions in [0, 1].
    """
    approx = certified_accuracy(log, radii).to_numpy()
    bounds = {method: high_probability_accuracy(approx, len(log), alpha, rho, method=method)
              for method in HIGH_PROBABILITY_METHODS}
    return pd.DataFrame({"radius": np.atleast_1d(np.asarray(radii, dtype=float)), "approximate": approx, **bounds})


def radius_cap(sigma, n, alpha):
    """The largest radius CERTIFY can return: all n samples in class c_A give the Clopper-Pearson
    bound p_A = alpha^(1/n), so R_max = sigma * Phi^-1(alpha^(1/n)) (Cohen et al. Sec. 3.2.2, Fig. 5 right)."""
    return sigma * norm.isf(-np.expm1(np.log(alpha) / n))


def implied_alpha(max_radius, sigma, n, resolution: float = 0.0):
    """The smallest alpha at which CERTIFY with n samples can return `max_radius`: radius_cap is
    increasing in alpha, so a log whose largest radius is R was run with alpha >= Phi(R/sigma)^n.
    With `resolution` (half a unit of the last printed digit) it returns the interval (low, high)
    of that bound over the values consistent with the printed R."""
    def alpha_of(r):
        return float(np.exp(n * norm.logcdf(r / sigma)))

    if resolution == 0:
        return alpha_of(max_radius)
    return alpha_of(max_radius - resolution), alpha_of(max_radius + resolution)


def printed_resolution(value: float, significant: int = 3) -> float:
    """Half a unit in the last place of `value` printed with `significant` digits (the authors'
    logs print radii with 3 significant digits: 0.978 -> 5e-4, 1.96 -> 5e-3)."""
    if value == 0:
        return 0.0
    return 0.5 * 10.0 ** (np.floor(np.log10(abs(value))) - significant + 1)


def significant_digits(values) -> int:
    """The most significant digits any of `values` is written with (shortest round-trip form):
    the authors' logs give 3 (0.978, 1.96, 0.0734); full-precision logs give up to 17."""
    most = 0
    for value in np.asarray(values, dtype=float).ravel():
        if value == 0 or not np.isfinite(value):
            continue
        mantissa = repr(abs(float(value))).split("e")[0].replace(".", "").lstrip("0").rstrip("0")
        most = max(most, len(mantissa))
    return most


def audit_certify_logs(entries: pd.DataFrame, alpha: float, n: int) -> pd.DataFrame:
    """What a released log says about the protocol that produced it.

    entries: one row per log with columns dataset, noise, sigma, split, split_size, stride,
    protocol_rows and log (a certify-log DataFrame), as from rsbook.published.released_logs().
    Per log: rows held, rows expected from the release's stride (ceil(split_size / stride)) and
    from the paper's protocol, the largest radius, CERTIFY's cap at the stated alpha and n
    (radius_cap), and the smallest alpha consistent with the largest radius (implied_alpha, as
    an interval over the rounding of the printed radius: its significant_digits). exceeds_cap
    marks logs that cannot have been produced with the stated alpha and n.
    """
    records = []
    for row in entries.itertuples():
        sigma = float(row.sigma)
        r_max = float(row.log["radius"].max())
        resolution = printed_resolution(r_max, significant_digits(row.log["radius"]))
        low, high = implied_alpha(r_max, sigma, n, resolution)
        cap = float(radius_cap(sigma, n, alpha))
        records.append(
            {
                "dataset": row.dataset,
                "noise": float(row.noise),
                "sigma": sigma,
                "split": row.split,
                "rows": len(row.log),
                "released_rows": int(np.ceil(int(row.split_size) / int(row.stride))),
                "protocol_rows": int(row.protocol_rows) if str(row.protocol_rows) else np.nan,
                "max_radius": r_max,
                "cap": cap,
                "implied_alpha_low": low,
                "implied_alpha_high": high,
                "exceeds_cap": r_max - resolution > cap,
            }
        )
    return pd.DataFrame.from_records(records)


STATUSES = ("reproduced exactly", "within tolerance", "differs", "not yet reproduced")
DIFFERENT_DATA = "different data"
"""The status of a cell computed on other data than the paper's (a stand-in set): shown beside the
paper's number, never judged reproduced or differing."""


def round_half_up(values, decimals) -> np.ndarray:
    """values rounded to `decimals` places the way printed tables round: half up, on the shortest
    decimal form of each float (0.625 -> 0.63, 0.245 -> 0.25), not numpy's half-to-even on the
    binary value (np.round gives 0.62 and 0.24). NaN stays NaN. decimals broadcasts with values."""
    values, decimals = np.broadcast_arrays(np.asarray(values, dtype=float), np.asarray(decimals))

    def one(value, places):
        if not np.isfinite(value):
            return value
        quantum = Decimal(1).scaleb(-int(places))
        return float(Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP))

    return np.array([one(v, d) for v, d in zip(values.ravel(), decimals.ravel())], dtype=float).reshape(values.shape)


def compare(ours: pd.DataFrame, paper: pd.DataFrame, decimals=None, n_examples=None, z: float = 2.0,
            rel_tolerance: float | Mapping = 0.0, same_data: bool = True, interval: float | None = None) -> pd.DataFrame:
    """Ours | paper | delta, per cell, aligned on the paper's rows and columns.

    decimals: digits the paper printed (an int, or a frame like `paper`); a cell is 'reproduced
    exactly' when ours rounded half up to them (round_half_up, as tables are printed) equals the
    paper. n_examples: the number of examples behind
    our estimate; a cell is 'within tolerance' when |delta| <= half a printed unit + z binomial
    standard errors sqrt(p (1 - p) / n) (for accuracies; leave None for other quantities) +
    rel_tolerance * |paper| (for approximate claims such as wall-clock times; a mapping gives it per
    column). interval (a level such as 0.95, with n_examples): instead of z standard errors, the paper's
    value must lie within the two-sided Clopper-Pearson interval of our proportion k / n (k = ours * n,
    rounded) at that level, widened by half a printed unit: "within tolerance" then means "within the
    sampling error of our n examples"; the tolerance column holds the distance from ours to the interval's
    end on the paper's side. Else
    'differs'; a cell we have no value for is 'not yet reproduced'. Only cells the paper printed
    (non-missing in `paper`) are compared. same_data=False: ours come from other data than the
    paper's, and every cell we have a value for gets the status DIFFERENT_DATA instead of a verdict.
    Returns a long frame: row, column, ours, paper, delta, tolerance, status.
    """
    ours = ours.reindex(index=paper.index, columns=paper.columns)
    if decimals is None:
        decimals = 2
    decimals = (
        decimals.reindex(index=paper.index, columns=paper.columns)
        if isinstance(decimals, pd.DataFrame)
        else pd.DataFrame(decimals, index=paper.index, columns=paper.columns)
    )
    long = pd.DataFrame(
        {
            "row": np.repeat(paper.index.to_numpy(), paper.shape[1]),
            "column": np.tile(paper.columns.to_numpy(), paper.shape[0]),
            "ours": ours.to_numpy(dtype=float).ravel(),
            "paper": paper.to_numpy(dtype=float).ravel(),
            "decimals": decimals.to_numpy(dtype=float).ravel(),
        }
    )
    long = long[long["paper"].notna()].reset_index(drop=True)  # cells the paper did not print
    long["delta"] = long["ours"] - long["paper"]
    half_unit = 0.5 * 10.0 ** (-long["decimals"])
    if interval is not None:
        if n_examples is None or not 0 < float(interval) < 1:
            raise ValueError(f"interval must be a level in (0, 1) and needs n_examples, got {interval!r}, "
                             f"n_examples={n_examples!r}")
        spread = _interval_spread(long["ours"].to_numpy(), long["delta"].to_numpy(), int(n_examples), float(interval))
    else:
        spread = 0.0 if n_examples is None else z * np.sqrt(long["ours"] * (1 - long["ours"]) / n_examples)
    relative = (long["column"].map(lambda c: rel_tolerance.get(c, 0.0)) if isinstance(rel_tolerance, Mapping)
                else rel_tolerance)
    long["tolerance"] = half_unit + spread + relative * long["paper"].abs()
    rounded = round_half_up(long["ours"].to_numpy(), long["decimals"].to_numpy())
    exact = np.isclose(rounded, long["paper"], rtol=0, atol=1e-9)
    within = long["delta"].abs() <= long["tolerance"] + 1e-12
    long["status"] = np.select(
        [long["ours"].isna(), np.full(len(long), not same_data), exact, within],
        [STATUSES[3], DIFFERENT_DATA, STATUSES[0], STATUSES[1]], default=STATUSES[2]
    )
    long.index.name = None
    return long.drop(columns="decimals")


def _interval_spread(ours: np.ndarray, delta: np.ndarray, n: int, level: float) -> np.ndarray:
    """Per cell, the distance from ours = k / n to the end of the two-sided Clopper-Pearson interval (level) of k on
    the paper's side (paper = ours - delta): k / n - lower when the paper lies below, upper - k / n otherwise."""
    from rsbook.stats import clopper_pearson_interval

    k = np.round(np.nan_to_num(ours, nan=0.0) * n).astype(np.int64)
    lower, upper = clopper_pearson_interval(k, n, 1 - level)
    return np.where(np.nan_to_num(delta) > 0, ours - lower, upper - ours)


def table_status(comparison: pd.DataFrame) -> str:
    """A table's status from its cells' (see compare): 'differs' if any cell differs, else 'not yet
    reproduced' if any cell is missing (or there are none), else 'within tolerance' if any cell is
    only within tolerance, else 'reproduced exactly'."""
    statuses = set(comparison["status"])
    if not statuses:
        return STATUSES[3]
    if not statuses & set(STATUSES):
        return statuses.pop()  # results with nothing published (rsbook.book.report.COMPUTED)
    for status in (STATUSES[2], STATUSES[3], STATUSES[1]):
        if status in statuses:
            return status
    return STATUSES[0]


def bound_curves(sigma: float, p_a=None) -> pd.DataFrame:
    """Radius against p_A for Cohen's, Lecuyer's and Li's bounds with p_B = 1 - p_A (Fig. 5 left).
    Long frame: bound, p_a, radius. p_a defaults to 400 points in (0.5, 0.9999]."""
    p_a = np.linspace(0.5005, 0.9999, 400) if p_a is None else np.asarray(p_a, dtype=float)
    p_b = 1.0 - p_a
    radii = {"Cohen et al.": cohen_radius(p_a, p_b, sigma), "Li et al.": li_radius(p_a, p_b, sigma),
             "Lecuyer et al.": lecuyer_radius(p_a, p_b, sigma)}
    return pd.concat(
        [pd.DataFrame({"bound": name, "p_a": p_a, "radius": r}) for name, r in radii.items()], ignore_index=True
    )


def consistent_alpha(audit: pd.DataFrame):
    """The interval of alphas consistent with every log that exceeds the stated cap (the
    intersection of their implied-alpha intervals, see audit_certify_logs), or None if no log
    exceeds it or the intervals do not intersect."""
    over = audit[audit["exceeds_cap"]]
    if over.empty:
        return None
    low, high = float(over["implied_alpha_low"].max()), float(over["implied_alpha_high"].min())
    return (low, high) if low <= high else None


def counts_from_radius(radius, sigma: float, n: int, alpha: float) -> np.ndarray:
    """The top-class count n_A behind each certified radius: the k in [0, n] whose one-sided
    Clopper-Pearson bound sigma * Phi^-1(CP(k, n, alpha)) is closest to the radius (exact for
    full-precision radii, since CP is increasing in k). Rows with radius 0 (abstentions) give -1:
    their count is not recoverable from the log."""
    from rsbook.stats import clopper_pearson_lower

    target = norm.cdf(np.asarray(radius, dtype=float) / sigma)
    low = np.zeros(target.shape, dtype=np.int64)
    high = np.full(target.shape, n, dtype=np.int64)
    while np.any(low < high):  # smallest k with CP(k) >= target, by vectorised bisection
        mid = (low + high) // 2
        below = clopper_pearson_lower(mid, n, alpha) < target - 1e-12
        low = np.where(below & (low < high), mid + 1, low)
        high = np.where(~below & (low < high), mid, high)
    neighbours = np.stack([np.maximum(low - 1, 0), low])
    errors = np.abs(clopper_pearson_lower(neighbours, n, alpha) - target)
    counts = np.take_along_axis(neighbours, errors.argmin(axis=0)[None], axis=0)[0]
    return np.where(np.asarray(radius) > 0, counts, -1)


def resampled_certified_accuracy(log: pd.DataFrame, sigma: float, n: int, alpha: float, radii,
                                 n_new: int | None = None, alpha_new: float | None = None) -> pd.Series:
    """Certified accuracy had CERTIFY fed Clopper-Pearson n_new samples with the same proportion
    n_A / n, and/or used alpha_new (Cohen et al. Fig. 8 middle and right, App. J.2: the simulated
    count is not changed, only what the confidence bound is given). Counts are recovered from the
    radii (counts_from_radius); abstained rows stay abstained."""
    from rsbook.stats import clopper_pearson_lower

    _check_log(log)
    n_new = n if n_new is None else int(n_new)
    alpha_new = alpha if alpha_new is None else alpha_new
    counts = counts_from_radius(log["radius"].to_numpy(dtype=float), sigma, n, alpha)
    answered = counts >= 0
    scaled = np.clip(np.round(np.where(answered, counts, 0) / n * n_new), 0, n_new).astype(np.int64)
    p_a = clopper_pearson_lower(scaled, n_new, alpha_new)
    radius = np.where(answered & (p_a >= 0.5), sigma * norm.ppf(np.clip(p_a, 0.5, 1.0)), 0.0)
    correct = (log["correct"].to_numpy() == 1) & answered & (p_a >= 0.5)
    return certified_accuracy(log.assign(radius=radius, correct=correct.astype(int)), radii)
