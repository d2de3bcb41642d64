"""The metrics of Rumezhak 2022, Sec. 5.2, on certificate frames (one row per input, columns correct,
radius, proxy_radius, as rsbook.ancer.pipeline writes them): certified accuracy by l2 radius or by
proxy radius, ACR and proxy ACR (eq. 5.1), and the average radius improvement ARI.

The proxy radius is the radius of the ball with the certified region's volume (eq. 3.14): a size,
not an l2 certificate; every table and figure labels it so.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from rsbook.analysis import certified_hits

__all__ = ["certified_accuracy", "average_certified_radius", "average_radius_improvement", "accuracy_table",
           "acr_table"]



def _column(frame: pd.DataFrame, by: str) -> np.ndarray:
    if by not in ("radius", "proxy_radius"):
        raise ValueError(f"by must be 'radius' or 'proxy_radius', got {by!r}")
    missing = [c for c in ("correct", by) if c not in frame]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; it has {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError("frame has no rows")
    return frame[by].to_numpy(dtype=float)


def certified_accuracy(frame: pd.DataFrame, radii, by: str = "radius") -> pd.Series:
    """Fraction of rows with correct == 1 and a certified `by` (radius or proxy_radius) >= r, for each r
    (Sec. 5.2; rsbook.analysis.certified_hits: a radius of 0 certifies nothing). The proxy radius is
    a size, not an l2 certificate: label it so wherever it is shown."""
    values = _column(frame, by)
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    hits = certified_hits(frame["correct"].to_numpy(), values, radii)
    return pd.Series(hits.mean(axis=1), index=pd.Index(radii, name=by), name="certified_accuracy")


def average_certified_radius(frame: pd.DataFrame, by: str = "radius") -> float:
    """ACR (or, by='proxy_radius', the proxy ACR): E[R_x 1(g(x) = y)] over the rows (eq. 5.1)."""
    values = _column(frame, by)
    return float(np.mean(np.where(frame["correct"].to_numpy() == 1, values, 0.0)))


def average_radius_improvement(frame: pd.DataFrame, reference: pd.DataFrame, by: str = "radius") -> float:
    """ARI (or proxy ARI): mean of frame's `by` minus reference's over the examples (matched on idx)
    that both predict correctly (Sec. 5.2: computed on correctly predicted samples only); NaN if none."""
    ours, theirs = _column(frame, by), _column(reference, by)
    merged = pd.DataFrame({"idx": frame["idx"], "ours": ours, "ok": frame["correct"] == 1}).merge(
        pd.DataFrame({"idx": reference["idx"], "theirs": theirs, "ok_ref": reference["correct"] == 1}), on="idx")
    both = merged[merged["ok"] & merged["ok_ref"]]
    return float((both["ours"] - both["theirs"]).mean()) if len(both) else float("nan")


def accuracy_table(results: Mapping[str, pd.DataFrame], radii, by: str = "radius") -> pd.DataFrame:
    """Certified accuracy at each radius (columns, named 'radius') for each method (rows, 'method'),
    by radius or by proxy radius (thesis Tables 5.1-5.4)."""
    table = pd.DataFrame({method: certified_accuracy(frame, radii, by).to_numpy() for method, frame in results.items()},
                         index=pd.Index(np.atleast_1d(np.asarray(radii, dtype=float)), name="radius")).T
    table.index.name = "method"
    return table


def acr_table(results: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """ACR and proxy ACR per method (thesis Table 5.5): rows 'method', columns 'metric' (ACR, ACR_proxy)."""
    table = pd.DataFrame({method: {"ACR": average_certified_radius(frame, "radius"),
                                   "ACR_proxy": average_certified_radius(frame, "proxy_radius")}
                          for method, frame in results.items()}).T
    table.index.name, table.columns.name = "method", "metric"
    return table
