"""Conventions decided once for the whole library (soundness review, item 6).

- Ties: a radius of 0 certifies nothing, so every CERTIFY abstains unless p_A > 1/2
  (rsbook.bounds.certified_gap; Cohen et al. 2019, Theorem 1 with p_B = 1 - p_A gives R = 0 at p_A = 1/2).
- Certified accuracy at r counts correct predictions with a certificate (radius > 0) and radius >= r,
  for balls, ellipsoids and top-k alike (rsbook.analysis.certified_hits).
- Comparisons round ours the way the papers print: half up (rsbook.analysis.round_half_up).
"""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Constant

from rsbook import analysis, smooth
from rsbook.ancer import anisotropic
from rsbook.ancer import metrics as ancer_metrics
from rsbook.bounds import certified_gap
from rsbook.cohen.topk import certified_topk_accuracy
from rsbook.fars import certify as fars
from rsbook.smooth import ABSTAIN, Smooth


def test_certified_gap_is_positive_or_abstains():
    assert certified_gap(0.5) is None and certified_gap(0.3) is None and certified_gap(0.0) is None
    assert certified_gap(0.5 + 1e-9) > 0
    assert certified_gap(0.975) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError, match="p_a_lower"):
        certified_gap(1.5)


@pytest.mark.parametrize("p_a, certified", [(0.5, False), (0.5 + 1e-6, True), (0.4, False)])
def test_every_certify_applies_the_same_rule_at_the_tie(monkeypatch, p_a, certified):
    """Before the review Smooth and anisotropic.certify returned (c_A, radius 0) at p_A = 1/2 while FaRS
    abstained; now all three abstain exactly when p_A <= 1/2."""
    model = Constant(label=1, classes=3).eval()
    x = torch.zeros(2)
    monkeypatch.setattr(smooth, "clopper_pearson_lower", lambda k, n, alpha: p_a)
    monkeypatch.setattr(anisotropic, "clopper_pearson_lower", lambda k, n, alpha: p_a)
    monkeypatch.setattr(fars, "empirical_bernstein_lower", lambda mean, variance, n, alpha: p_a)
    answers = {
        "smooth": Smooth(model, 3, 0.5).certify(x, 10, 20, 0.01, 10)[0],
        "anisotropic": anisotropic.certify(model, x, 0.5, num_classes=3, n0=10, n=20, alpha=0.01,
                                           batch_size=10).prediction,
        "fars": fars.SparsemaxSmooth(torch.nn.Identity(), 3, 0.5).certify(torch.tensor([0.0, 5.0, 0.0]), 10, 20,
                                                                           0.01, 10)[0],
    }
    for name, prediction in answers.items():
        assert (prediction != ABSTAIN) == certified, name
        assert prediction in (ABSTAIN, 1), name


def test_certified_accuracy_at_zero_counts_certificates_not_bare_predictions():
    """A row with correct == 1 but radius 0 (no certificate) used to count at r = 0 in certified accuracy
    while top-k counted only radius > 0; all three now use certified_hits."""
    frame = pd.DataFrame({"idx": [0, 1, 2, 3], "correct": [1, 1, 0, 1], "radius": [0.0, 0.3, 0.5, 1.2],
                          "proxy_radius": [0.0, 0.4, 0.6, 1.5]})
    expected = [0.5, 0.5, 0.25]
    radii = [0.0, 0.3, 0.5]
    assert analysis.certified_accuracy(frame, radii).tolist() == expected
    assert ancer_metrics.certified_accuracy(frame, radii).tolist() == expected
    assert ancer_metrics.certified_accuracy(frame, radii, by="proxy_radius").tolist() == [0.5, 0.5, 0.25]
    topk_radii = np.where(frame["correct"] == 1, frame["radius"], 0.0)
    assert certified_topk_accuracy(topk_radii, np.array(radii)).tolist() == expected


@pytest.mark.parametrize("value, decimals, printed", [(0.625, 2, 0.63), (0.245, 2, 0.25), (0.125, 2, 0.13),
                                                      (0.0625, 3, 0.063), (0.6249, 2, 0.62), (2.5, 0, 3.0),
                                                      (49 / 200, 2, 0.25), (213 / 427, 3, 0.499)])
def test_round_half_up_rounds_as_tables_are_printed(value, decimals, printed):
    assert analysis.round_half_up(value, decimals) == printed


def test_compare_calls_a_half_way_value_reproduced_exactly():
    """ours = 5/8 printed with 2 decimals is 0.63 in a paper; np.round (half to even) gave 0.62."""
    paper = pd.DataFrame({"a": [0.63, 0.25]}, index=["x", "y"])
    ours = pd.DataFrame({"a": [0.625, 0.245]}, index=["x", "y"])
    result = analysis.compare(ours, paper, decimals=2)
    assert result["status"].tolist() == ["reproduced exactly"] * 2


def test_results_on_different_data_get_no_verdict():
    """Thesis Tables 5.1/5.2 were compared cell by cell with a seeded stand-in set; such cells now carry the
    status 'different data' (never reproduced / within tolerance / differs), also in the table status."""
    paper = pd.DataFrame({"a": [0.5, 0.2]}, index=["x", "y"])
    ours = pd.DataFrame({"a": [0.5, 0.9]}, index=["x", "y"])
    result = analysis.compare(ours, paper, decimals=2, same_data=False)
    assert result["status"].tolist() == [analysis.DIFFERENT_DATA] * 2
    assert result["delta"].tolist() == pytest.approx([0.0, 0.7])
    assert analysis.table_status(result) == analysis.DIFFERENT_DATA
