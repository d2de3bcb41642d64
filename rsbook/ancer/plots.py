"""Figures of the DDS / ANCER / RANCER chapter (Rumezhak 2022, Figures 1.1, 5.7 and 5.8). Each
function returns (fig, ax) — ax an array of axes where there are several — and never saves or shows."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Ellipse

from rsbook.ancer.metrics import certified_accuracy
from rsbook.ancer.toy import decision_grid

__all__ = ["METHOD_COLORS", "accuracy_curves", "plot_accuracy_grid", "plot_regions_2d", "plot_traces"]

PROXY_LABEL = "proxy radius (not an ℓ₂ certificate)"
"""How every figure names the proxy radius: the radius of the ball with the certified region's volume
(Rumezhak 2022, eq. 3.14), a size, not a radius within which the prediction is certified."""

METHOD_COLORS = {"Fixed": "#7f7f7f", "Isotropic": "#ff7f0e", "DDS": "#ff7f0e", "ANCER": "#1f77b4",
                 "RANCER": "#e377c2"}
_CLASS_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b"]


def accuracy_curves(results: dict, by: str = "radius", radii=None) -> pd.DataFrame:
    """Certified accuracy against radius (or proxy radius) for each method: a long frame with columns
    method, radius, certified_accuracy, on `radii` (default 200 points up to the largest value)."""
    if radii is None:
        top = max(float(frame[by].max()) for frame in results.values())
        radii = np.linspace(0.0, max(top, 1e-3) * 1.05, 200)
    frames = [certified_accuracy(frame, radii, by).rename_axis("radius").reset_index().assign(method=method)
              for method, frame in results.items()]
    return pd.concat(frames, ignore_index=True)


def plot_accuracy_grid(panels: dict, title: str | None = None):
    """A grid of certified-accuracy curves (thesis Figure 5.7): panels maps (row title, column title)
    -> long frame from `accuracy_curves`. Returns (fig, 2-D array of axes)."""
    rows = list(dict.fromkeys(key[0] for key in panels))
    columns = list(dict.fromkeys(key[1] for key in panels))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(rows), len(columns), figsize=(5.2 * len(columns), 3.6 * len(rows)),
                                 squeeze=False, layout="constrained", sharey=True)
    for (row, column), frame in panels.items():
        ax = axes[rows.index(row), columns.index(column)]
        for method, group in frame.groupby("method", sort=False):
            ax.step(group["radius"], group["certified_accuracy"], where="post", label=method,
                    color=METHOD_COLORS.get(method))
        ax.set_title(f"{row}, {column}", fontsize=10)
        ax.set_xlabel(PROXY_LABEL if "proxy" in column else "ℓ₂ radius")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(left=0)
    axes[0, 0].set_ylabel("certified accuracy")
    axes[-1, 0].set_ylabel("certified accuracy")
    axes[0, -1].legend(loc="upper right", frameon=True)
    if title:
        fig.suptitle(title)
    return fig, axes


def _draw_region(ax, region, color, label):
    """The region's boundary as a matplotlib ellipse (2-D only)."""
    semi = region.semi_axes
    angle = 0.0
    if region.rotation is not None:
        u = region.rotation.dense(torch.float64).numpy()
        angle = float(np.degrees(np.arctan2(u[1, 0], u[0, 0])))
    ax.add_patch(Ellipse(region.center, 2 * semi[0], 2 * semi[1], angle=angle, fill=False, lw=1.8, color=color,
                         label=label))


def plot_regions_2d(model, points, labels, regions: dict, positions, bounds=(-2.5, 2.5, -2.5, 2.5),
                    resolution: int = 250, title: str | None = None):
    """Certified regions over the base classifier's decision regions (thesis Figure 1.1).

    points, labels: the 2-D data drawn as dots; regions: method -> list of rsbook.ancer.memory.Region (None
    where abstained), aligned with points; positions: which points' regions to draw. Returns (fig, ax)."""
    xx, yy, grid = decision_grid(model, bounds, resolution)
    points, labels = np.asarray(points), np.asarray(labels)
    classes = int(max(grid.max(), labels.max())) + 1
    with sns.axes_style("white"):
        fig, ax = plt.subplots(figsize=(6.4, 6.0), layout="constrained")
    ax.contourf(xx, yy, grid, levels=np.arange(classes + 1) - 0.5, cmap=ListedColormap(_CLASS_COLORS[:classes]),
                alpha=0.15)
    ax.scatter(points[:, 0], points[:, 1], c=[_CLASS_COLORS[k] for k in labels], s=7, alpha=0.6, linewidths=0)
    for method, method_regions in regions.items():
        first = True
        for position in positions:
            region = method_regions[position]
            if region is None:
                continue
            _draw_region(ax, region, METHOD_COLORS.get(method, "k"), method if first else None)
            first = False
    chosen = points[list(positions)]
    ax.scatter(chosen[:, 0], chosen[:, 1], marker="x", c="k", s=30, label="certified input")
    ax.set_xlim(bounds[0], bounds[1])
    ax.set_ylim(bounds[2], bounds[3])
    ax.set_aspect("equal")
    ax.legend(loc="upper right", frameon=True, fontsize=8)
    if title:
        ax.set_title(title)
    return fig, ax


def plot_traces(traces: pd.DataFrame, title: str | None = None):
    """Optimisation traces (thesis Figure 5.8): rows gap, sigma volume (product of the sigmas) and
    proxy radius; one column per input (`position`), one line per `method`. traces: the long frames of
    AnisotropicRun.trace with a method column. Returns (fig, 2-D array of axes)."""
    traces = traces.assign(sigma_volume=np.exp(traces["log_volume"]))
    quantities = [("gap", "gap"), ("sigma_volume", "σ volume (∏ σᵢ)"), ("proxy_radius", PROXY_LABEL)]
    positions = list(dict.fromkeys(traces["position"]))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(quantities), len(positions), figsize=(3.2 * len(positions), 7.2), squeeze=False,
                                 layout="constrained", sharex=True)
    for j, position in enumerate(positions):
        for (method, group) in traces[traces["position"] == position].groupby("method", sort=False):
            for i, (column, _) in enumerate(quantities):
                axes[i, j].plot(group["iteration"], group[column], color=METHOD_COLORS.get(method), label=method,
                                lw=1.2)
        axes[0, j].set_title(f"input {position}", fontsize=10)
        axes[-1, j].set_xlabel("iteration")
    for i, (_, name) in enumerate(quantities):
        axes[i, 0].set_ylabel(name)
    axes[0, -1].legend(loc="best", frameon=True, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig, axes
