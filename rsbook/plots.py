"""Seaborn figures for the book. Each function returns (fig, ax) and never saves or shows;
the backend is chosen by whoever renders (the book build sets it)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["plot_curves", "plot_certified_accuracy", "plot_bound_curves", "plot_high_probability"]


def plot_curves(frame: pd.DataFrame, x: str, y: str, hue: str | None = None, *, steps: bool = False,
                style: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
                title: str | None = None, ax=None, palette: str = "viridis"):
    """Line plot of `y` against `x`, one line per `hue` level (and dash per `style` level)."""
    missing = [c for c in (x, y, hue, style) if c is not None and c not in frame]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; it has {list(frame.columns)}")
    with sns.axes_style("whitegrid"):
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
        else:
            fig = ax.figure
        sns.lineplot(data=frame, x=x, y=y, hue=hue, style=style, ax=ax, palette=palette if hue else None,
                     drawstyle="steps-post" if steps else "default", errorbar=None)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    if hue and ax.get_legend() is not None:
        sns.move_legend(ax, "upper right", frameon=True)
    return fig, ax


def plot_certified_accuracy(curves: pd.DataFrame, hue: str = "model", title: str | None = None, ax=None, style=None):
    """Certified accuracy against l2 radius as step curves (Cohen et al. Fig. 6, 8, 14, 15 style).
    curves: long frame with columns radius, certified_accuracy and `hue`."""
    fig, ax = plot_curves(curves, "radius", "certified_accuracy", hue, steps=True, style=style,
                          xlabel="$\\ell_2$ radius", ylabel="certified accuracy", title=title, ax=ax)
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    return fig, ax


def plot_bound_curves(frame: pd.DataFrame, title: str | None = None, ax=None):
    """Certified radius against p_A for each bound (Cohen et al. Fig. 5 left).
    frame: long frame with columns p_a, radius, bound."""
    fig, ax = plot_curves(frame, "p_a", "radius", "bound", xlabel="$\\underline{p_A}$ (with $p_B = 1 - p_A$)",
                          ylabel="certified radius", title=title, ax=ax, palette="deep")
    ax.set_ylim(bottom=0)
    return fig, ax


_HIGH_PROBABILITY_FORMS = {"exact": ("exact binomial", "-"), "bernstein": ("Bernstein", "--")}


def plot_high_probability(curves, title: str | None = None, ax=None, palette: str = "deep"):
    """Approximate certified accuracy and its 1 - rho lower bounds (Cohen et al. 2019, App. D, Fig. 14).

    curves: a frame from analysis.high_probability_curve (columns radius, approximate, bernstein,
    exact), or a mapping label -> such frame (e.g. one per alpha) computed on the same log and radii.
    Draws the approximate accuracy once (black) and, per label, the exact (solid) and Bernstein
    (dashed) bounds in one colour, as step curves; legend entries read "approximate",
    "exact binomial, <label>", "Bernstein, <label>" (no ", <label>" for a single frame).
    Returns (fig, ax); never saves or shows.
    """
    frames = {"": curves} if isinstance(curves, pd.DataFrame) else dict(curves)
    if not frames:
        raise ValueError("curves is empty; expected a frame or a mapping label -> frame")
    columns = ["radius", "approximate", *_HIGH_PROBABILITY_FORMS]
    for label, frame in frames.items():
        missing = [c for c in columns if c not in frame]
        if missing:
            raise ValueError(f"curves[{label!r}] lacks column(s) {missing}; it has {list(frame.columns)}")
    first = next(iter(frames.values()))
    for label, frame in frames.items():
        if not (np.array_equal(frame["radius"], first["radius"])
                and np.allclose(frame["approximate"], first["approximate"])):
            raise ValueError(f"curves[{label!r}] is not on the same log and radii as the first frame")
    colors = sns.color_palette(palette, len(frames))
    with sns.axes_style("whitegrid"):
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
        else:
            fig = ax.figure
        ax.step(first["radius"], first["approximate"], where="post", color="black", label="approximate")
        for color, (label, frame) in zip(colors, frames.items()):
            for column, (name, linestyle) in _HIGH_PROBABILITY_FORMS.items():
                ax.step(frame["radius"], frame[column], where="post", color=color, linestyle=linestyle,
                        label=f"{name}, {label}" if label else name)
    ax.set_xlabel("$\\ell_2$ radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.legend(loc="upper right", frameon=True)
    if title:
        ax.set_title(title)
    return fig, ax
