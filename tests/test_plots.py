"""Figures return (fig, ax), draw one line per group, and never save or show."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from rsbook import plots  # noqa: E402
from rsbook.analysis import bound_curves  # noqa: E402


def test_certified_accuracy_plot_one_line_per_group():
    curves = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "radius": [0, 0.5, 1] * 2,
                           "certified_accuracy": [0.8, 0.5, 0.1, 0.6, 0.5, 0.4]})
    fig, ax = plots.plot_certified_accuracy(curves, hue="model", title="t")
    assert len(ax.get_lines()) >= 2 and ax.get_title() == "t" and ax.get_ylim() == (0, 1)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    plt.close(fig)


def test_bound_and_high_probability_plots():
    fig, ax = plots.plot_bound_curves(bound_curves(1.0, [0.6, 0.9, 0.99]))
    assert len(ax.get_legend().get_texts()) == 3
    plt.close(fig)
    frame = pd.DataFrame({"radius": [0, 0.5], "approximate": [0.6, 0.4], "high_probability": [0.55, 0.35]})
    fig, ax = plots.plot_high_probability(frame)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"approximate", "high_probability"}
    plt.close(fig)


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="radius"):
        plots.plot_certified_accuracy(pd.DataFrame({"certified_accuracy": [1.0], "model": ["a"]}))
