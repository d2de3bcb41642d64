"""The FaRS chapter's figures: certified against attacked accuracy (the sanity check of FaRS Sec. 3)
and seconds per certified example. Each returns (fig, ax); nothing is saved or shown.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import NullFormatter

__all__ = ["plot_robustness", "plot_times"]


def plot_robustness(certified: pd.DataFrame, empirical: pd.DataFrame, title: str | None = None, ax=None):
    """Certified (solid) and l2-PGD (dashed) accuracy against epsilon, one colour per variant: the
    sanity check of FaRS Sec. 3 as a figure. Inputs: accuracy_table outputs. Returns (fig, ax)."""
    radii = [c for c in certified.columns if c != "natural"]
    long = pd.concat([
        table[radii].rename_axis(index="variant", columns="epsilon").stack().rename("accuracy").reset_index()
        .assign(kind=kind) for table, kind in ((certified, "certified"), (empirical, "l2-PGD"))], ignore_index=True)
    long["epsilon"] = long["epsilon"].astype(float)
    with sns.axes_style("whitegrid"):
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
        else:
            fig = ax.figure
        sns.lineplot(data=long, x="epsilon", y="accuracy", hue="variant", style="kind", markers=True, ax=ax,
                     palette="deep", errorbar=None)
    ax.set_xlabel("$\\ell_2$ radius $\\epsilon$")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title)
    return fig, ax


def plot_times(times: pd.DataFrame, title: str | None = None, ax=None):
    """Seconds per certified example for each method of certification_times, log scale. Returns (fig, ax)."""
    frame = times.reset_index()
    with sns.axes_style("whitegrid"):
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 3.2), layout="constrained")
        else:
            fig = ax.figure
        sns.barplot(data=frame, y="method", x="seconds_per_example", ax=ax, color="#4c72b0")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones overlap on short ranges
    ax.set_xlabel("seconds per certified example (log scale)")
    ax.set_ylabel("")
    if title:
        ax.set_title(title)
    return fig, ax
