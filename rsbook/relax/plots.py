"""Figures of the relaxation chapter. Each function returns (fig, ax) and never saves or shows."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Polygon, Rectangle

__all__ = ["plot_output_polytope", "plot_triangle", "plot_certified_vs_eps", "plot_smoothing_comparison",
           "plot_toy_answers", "ANSWER_COLORS"]

ANSWER_COLORS = {"YES": "#2a9d8f", "MAYBE": "#e9c46a", "NO": "#e76f51", "ERROR": "#6c757d"}


def _axes(ax, size=(6.4, 4.0)):
    if ax is None:
        return plt.subplots(figsize=size, layout="constrained")
    return ax.figure, ax


def plot_output_polytope(polytope: dict, title: str | None = None, ax=None):
    """The ball's image under the network (points) and its outer bounds — LP relaxation, dual bound,
    interval box — in the (margin, sum of logits) plane of rsbook.relax.geometry.output_polytope, with
    the decision boundary margin = 0. The view fits the image, the two polygons and the boundary; the
    interval box may extend beyond it."""
    fig, ax = _axes(ax, (6.0, 5.0))
    image = polytope["image"]
    ax.scatter(image[:, 0], image[:, 1], s=2, color="#264653", alpha=0.35, label="image of the ball (grid)",
               rasterized=True)
    ax.add_patch(Polygon(polytope["lp"], closed=True, fill=False, edgecolor="#e76f51", linewidth=2,
                         label="LP (triangle) relaxation"))
    ax.add_patch(Polygon(polytope["dual"], closed=True, fill=False, edgecolor="#2a9d8f", linewidth=1.5,
                         linestyle="--", label="dual bound (Wong & Kolter)"))
    (x0, x1), (y0, y1) = polytope["box"]
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#6c757d", linestyle=":",
                           linewidth=1.5, label="interval bounds"))
    points = np.vstack([polytope["lp"], polytope["dual"], image])
    low, high = points.min(0), points.max(0)
    low[0], high[0] = min(low[0], 0.0), max(high[0], 0.0)
    pad = 0.08 * (high - low)
    ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
    ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
    ax.axvline(0.0, color="black", linewidth=1.0, label="decision boundary (margin = 0)")
    ax.set_xlabel(f"margin z{polytope['label']} − z{1 - polytope['label']}")
    ax.set_ylabel("z0 + z1")
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize=8, frameon=True)
    return fig, ax


def plot_triangle(lower: float, upper: float, title: str | None = None, ax=None):
    """ReLU on [l, u] and its triangle relaxation y ≥ 0, y ≥ x̂, y ≤ u (x̂ − l) / (u − l)."""
    if not lower < 0 < upper:
        raise ValueError(f"the triangle needs an unstable ReLU, l < 0 < u; got l = {lower}, u = {upper}")
    fig, ax = _axes(ax, (5.0, 4.0))
    pad = 0.15 * (upper - lower)
    grid = np.linspace(lower - pad, upper + pad, 200)
    ax.fill([lower, 0.0, upper], [0.0, 0.0, upper], color="#e9c46a", alpha=0.5, label="triangle relaxation")
    ax.plot(grid, np.maximum(grid, 0), color="#264653", linewidth=2, label="y = ReLU(x̂)")
    ax.plot([lower, upper], [0.0, upper], color="#e76f51", linestyle="--", label="y ≤ u (x̂ − l) / (u − l)")
    for value, name in ((lower, "l"), (upper, "u")):
        ax.axvline(value, color="gray", linewidth=0.8, linestyle=":")
        ax.annotate(name, (value, 0), textcoords="offset points", xytext=(3, -12))
    ax.set_xlabel("pre-activation x̂")
    ax.set_ylabel("post-activation y")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return fig, ax


def plot_certified_vs_eps(frame: pd.DataFrame, title: str | None = None, xlabel: str = "ε", ax=None):
    """Certified accuracy against ε, one colour per method and one dash per model.
    frame: long, with columns eps, certified_accuracy, method, model."""
    missing = [c for c in ("eps", "certified_accuracy", "method", "model") if c not in frame]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}")
    fig, ax = _axes(ax)
    with sns.axes_style("whitegrid"):
        sns.lineplot(data=frame, x="eps", y="certified_accuracy", hue="method", style="model", markers=True,
                     ax=ax, palette="deep", errorbar=None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    sns.move_legend(ax, "upper right", frameon=True, fontsize=8)
    return fig, ax


def plot_smoothing_comparison(smoothing: pd.DataFrame, relaxation: pd.DataFrame, title: str | None = None, ax=None):
    """ℓ₂ certified accuracy against radius: randomized smoothing as step curves (smoothing: columns
    radius, certified_accuracy, model) and the relaxation methods at their grid radii as lines with
    markers (relaxation: columns eps, certified_accuracy, method)."""
    fig, ax = _axes(ax)
    palette = sns.color_palette("deep")
    for k, (name, part) in enumerate(smoothing.groupby("model", sort=False)):
        ax.step(part["radius"], part["certified_accuracy"], where="post", linewidth=2, color=palette[k % 10],
                label=name)
    offset = smoothing["model"].nunique()
    markers = ["o", "s", "^", "D", "v"]
    for k, (name, part) in enumerate(relaxation.groupby("method", sort=False)):
        ax.plot(part["eps"], part["certified_accuracy"], marker=markers[k % len(markers)], linestyle="--",
                markersize=8 - 1.5 * k, color=palette[(offset + k) % 10], label=name)
    ax.set_xlabel("ℓ₂ radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8, frameon=True)
    return fig, ax


def plot_toy_answers(grid: dict, points: np.ndarray, answers, eps: float, norm: str = "linf", title=None, ax=None):
    """The 2-D data in input space: the network's decision regions (grid: {"x", "y", "prediction"}
    from rsbook.relax.geometry.decision_grid), each test point with its ε-ball coloured by its answer."""
    fig, ax = _axes(ax, (6.0, 5.0))
    ax.contourf(grid["x"], grid["y"], grid["prediction"], levels=[-0.5, 0.5, 1.5], colors=["#dbe9f6", "#fde2cf"])
    ax.contour(grid["x"], grid["y"], grid["prediction"], levels=[0.5], colors="black", linewidths=0.8)
    for (px, py), answer in zip(np.asarray(points), answers):
        color = ANSWER_COLORS.get(answer, "black")
        if norm == "linf":
            ax.add_patch(Rectangle((px - eps, py - eps), 2 * eps, 2 * eps, fill=False, edgecolor=color, linewidth=1))
        else:
            ax.add_patch(plt.Circle((px, py), eps, fill=False, edgecolor=color, linewidth=1))
        ax.plot(px, py, "o", color=color, markersize=3)
    handles = [plt.Line2D([], [], marker="s", linestyle="", color=c, label=a) for a, c in ANSWER_COLORS.items()
               if a in set(answers)]
    ax.legend(handles=handles, loc="upper right", fontsize=8, frameon=True)
    ax.set_aspect("equal")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    if title:
        ax.set_title(title)
    return fig, ax
