"""Figures return (fig, ax), draw one line per group, and never save or show."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from rsbook import plots  # noqa: E402
from rsbook.analysis import bound_curves, high_probability_curve  # noqa: E402


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
    frame = pd.DataFrame({"radius": [0, 0.5], "approximate": [0.6, 0.4], "bernstein": [0.5, 0.3],
                          "exact": [0.55, 0.35]})
    fig, ax = plots.plot_high_probability(frame)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"approximate", "Bernstein", "exact binomial"}
    plt.close(fig)


def test_high_probability_plot_per_alpha(tmp_path, monkeypatch):
    # Cohen et al. App. D, Fig. 14: approximate accuracy + (Bernstein, exact) x (one curve set per alpha).
    monkeypatch.chdir(tmp_path)
    log = pd.DataFrame({"radius": [0.1, 0.3, 0.6, 0.9] * 50, "correct": [1, 1, 0, 1] * 50})
    curves = {f"α = {a:g}": high_probability_curve(log, [0.0, 0.25, 0.5, 0.75, 1.0], alpha=a, rho=0.001)
              for a in (0.01, 0.001)}
    before = set(plt.get_fignums())
    fig, ax = plots.plot_high_probability(curves, title="Fig. 14")
    assert set(plt.get_fignums()) - before == {fig.number} and ax.figure is fig and ax.get_title() == "Fig. 14"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["approximate", "exact binomial, α = 0.01", "Bernstein, α = 0.01",
                      "exact binomial, α = 0.001", "Bernstein, α = 0.001"]
    assert len(ax.get_lines()) == 5 and ax.get_ylim() == (0, 1)
    dashed = [line.get_label() for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert dashed == ["Bernstein, α = 0.01", "Bernstein, α = 0.001"]
    assert list(tmp_path.iterdir()) == []  # nothing saved
    plt.close(fig)
    with pytest.raises(ValueError, match="exact"):
        plots.plot_high_probability({"a": curves["α = 0.01"].drop(columns="exact")})
    with pytest.raises(ValueError, match="same log"):
        plots.plot_high_probability({"a": curves["α = 0.01"], "b": curves["α = 0.01"].assign(approximate=0.0)})


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="radius"):
        plots.plot_certified_accuracy(pd.DataFrame({"certified_accuracy": [1.0], "model": ["a"]}))
