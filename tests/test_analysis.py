"""From logs to the papers' tables: approximate certified accuracy (Cohen et al. 2019, Sec. 4), Tables 1-4,
the bounds of App. I applied to logged radii (Fig. 8 left), CERTIFY's radius cap (Sec. 3.2.2, Fig. 5 right),
and the ours-vs-paper comparison. Golden checks recompute Cohen et al. Table 2 from the authors' logs."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from rsbook import published
from rsbook.analysis import (
    PREDICT_OUTCOMES,
    STATUSES,
    audit_certify_logs,
    average_certified_radius,
    best_sigma_table,
    bound_radii,
    certified_accuracy,
    certified_accuracy_table,
    compare,
    consistent_alpha,
    implied_alpha,
    predict_breakdown,
    printed_resolution,
    radius_cap,
    significant_digits,
    table_status,
)
from rsbook.logs import CERTIFY_COLUMNS, PREDICT_COLUMNS

EXACT, WITHIN, DIFFERS, MISSING = STATUSES


def certify_log(rows):
    """rows: (idx, label, predict, radius, correct); time is irrelevant here."""
    frame = pd.DataFrame([(*r, 1.0) for r in rows], columns=list(CERTIFY_COLUMNS))
    return frame.astype({"idx": "int64", "label": "int64", "predict": "int64", "radius": float, "correct": "int64"})


def predict_log(rows):
    """rows: (idx, label, predict)."""
    return pd.DataFrame([(i, y, p, int(p == y), 1.0) for i, y, p in rows], columns=list(PREDICT_COLUMNS))


# correct at 0.5, correct at 1.0, an abstention, a wrong prediction with a large radius
FOUR = certify_log([(0, 1, 1, 0.5, 1), (1, 2, 2, 1.0, 1), (2, 3, -1, 0.0, 0), (3, 4, 5, 0.8, 0)])


# ----------------------------------------------------------------------------------------- certified accuracy


def test_certified_accuracy_hand_computed():
    # Sec. 4: fraction with a correct, non-abstained prediction and radius >= r (inclusive).
    acc = certified_accuracy(FOUR, [0.0, 0.25, 0.5, 0.50001, 0.8, 1.0, 1.5])
    assert acc.name == "certified_accuracy" and acc.index.name == "radius"
    assert acc.index.tolist() == [0.0, 0.25, 0.5, 0.50001, 0.8, 1.0, 1.5]
    assert acc.tolist() == [0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.0]


def test_certified_accuracy_scalar_radius():
    assert certified_accuracy(FOUR, 1.0).tolist() == [0.25]


def test_certified_accuracy_rejects_bad_logs():
    with pytest.raises(ValueError, match="radius"):
        certified_accuracy(FOUR.drop(columns="radius"), [0.0])
    with pytest.raises(ValueError, match="no rows"):
        certified_accuracy(FOUR.iloc[:0], [0.0])


LOW = certify_log([(0, 1, 1, 0.6, 1), (1, 1, 1, 0.2, 1), (2, 1, 1, 0.1, 1), (3, 1, 2, 0.0, 0)])  # acc0 0.75
HIGH = certify_log([(0, 1, 1, 1.2, 1), (1, 1, 1, 0.5, 1), (2, 1, -1, 0.0, 0), (3, 1, -1, 0.0, 0)])  # acc0 0.5


def test_certified_accuracy_table():
    # Tables 2-3 layout: rows sigma (sorted), columns radius.
    table = certified_accuracy_table({0.5: HIGH, 0.25: LOW}, [0.0, 0.5, 1.0])
    assert table.index.tolist() == [0.25, 0.5] and table.columns.tolist() == [0.0, 0.5, 1.0]
    assert table.index.name == "sigma" and table.columns.name == "radius"
    np.testing.assert_array_equal(table.to_numpy(), [[0.75, 0.25, 0.0], [0.5, 0.5, 0.25]])


def test_best_sigma_table_max_ties_and_standard_accuracy():
    # Table 1: the logs tie at r = 0.2 (0.5 each), r = 0.6 (0.25 each) and r = 2.0 (0 each): the smaller
    # sigma wins; at r = 1.0 only sigma 0.5 certifies. Standard accuracy is the chosen sigma's r = 0 value.
    best = best_sigma_table({0.5: HIGH, 0.25: LOW}, [0.2, 0.6, 1.0, 2.0])
    assert best.index.tolist() == [0.2, 0.6, 1.0, 2.0] and best.index.name == "radius"
    assert list(best.columns) == ["best_sigma", "certified_accuracy", "standard_accuracy"]
    assert best["best_sigma"].tolist() == [0.25, 0.25, 0.5, 0.25]
    assert best["certified_accuracy"].tolist() == [0.5, 0.25, 0.25, 0.0]
    assert best["standard_accuracy"].tolist() == [0.75, 0.75, 0.5, 0.75]


def test_best_sigma_tie_goes_to_smaller_sigma_whatever_the_order():
    tie = best_sigma_table({1.0: LOW, 0.12: LOW.copy()}, [0.1])
    assert tie["best_sigma"].tolist() == [0.12]


def test_average_certified_radius():
    assert average_certified_radius(FOUR) == pytest.approx((0.5 + 1.0) / 4, abs=1e-15)
    assert average_certified_radius(HIGH) == pytest.approx((1.2 + 0.5) / 4, abs=1e-15)


# ----------------------------------------------------------------------------------------- Table 4


def test_predict_breakdown_all_outcomes():
    # Table 4: correct/incorrect x accurate (agrees with the reference run) / inaccurate, and abstain.
    reference = predict_log([(0, 1, 1), (1, 2, 3), (2, 3, 4), (3, 5, 7), (4, 6, 6), (5, 0, 0), (6, 2, -1)])
    n100 = predict_log([
        (0, 1, 1),   # correct, accurate
        (1, 2, 2),   # correct, inaccurate (reference said 3)
        (2, 3, 4),   # incorrect, accurate
        (3, 5, 6),   # incorrect, inaccurate
        (4, 6, -1),  # abstain
    ])
    # both runs abstain on idx 6: an abstention, never "incorrect & accurate"
    n1000 = predict_log([(0, 1, 1), (4, 6, 6), (5, 0, -1), (3, 5, 9), (6, 2, -1)])
    out = predict_breakdown({1000: n1000, 100: n100}, reference)
    assert out.index.tolist() == [100, 1000] and list(out.columns) == list(PREDICT_OUTCOMES)
    np.testing.assert_allclose(out.loc[100], [0.2] * 5)
    np.testing.assert_allclose(out.loc[1000], [0.4, 0.0, 0.0, 0.2, 0.4])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_predict_breakdown_missing_reference_idx():
    reference = predict_log([(0, 1, 1), (1, 2, 2)])
    with pytest.raises(ValueError, match="idx"):
        predict_breakdown({100: predict_log([(0, 1, 1), (7, 2, 2)])}, reference)


# ----------------------------------------------------------------------------------------- bounds


def test_bound_radii_hand_made():
    # App. I: p_A = Phi(R / sigma), p_B = 1 - p_A; Cohen's bound gives back R; Lecuyer < Li < Cohen.
    log = certify_log([(0, 1, 1, 0.0, 1), (1, 1, 1, 0.05, 1), (2, 1, 1, 0.3, 1), (3, 1, 1, 0.6, 1),
                       (4, 1, -1, 0.0, 0)])
    out = bound_radii(log, 0.25)
    pd.testing.assert_frame_equal(out[list(CERTIFY_COLUMNS)], log)  # the log is kept
    np.testing.assert_allclose(out["cohen"], log["radius"], rtol=1e-9, atol=1e-12)
    positive = log["radius"] > 0
    assert (out.loc[positive, "li"] < out.loc[positive, "cohen"]).all()
    assert (out.loc[positive, "lecuyer"] < out.loc[positive, "li"]).all()
    assert (out.loc[positive, "lecuyer"] > 0).all()
    assert (out.loc[~positive, ["cohen", "lecuyer", "li"]] == 0).all().all()


def test_bound_radii_design_sanity_value():
    # DESIGN.md: sigma = 1, p_A = 0.99 -> Cohen 2.326, Lecuyer 0.555, Li 1.908.
    log = certify_log([(0, 1, 1, norm.ppf(0.99), 1)])
    out = bound_radii(log, 1.0).iloc[0]
    assert (out["cohen"], out["lecuyer"], out["li"]) == pytest.approx((2.326, 0.555, 1.908), abs=5e-4)


# ----------------------------------------------------------------------------------------- radius cap


def test_radius_cap_closed_form():
    # Sec. 3.2.2: with all n samples in c_A, p_A = alpha^(1/n) and R_max = sigma Phi^-1(alpha^(1/n)).
    assert radius_cap(0.25, 100000, 0.001) == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 100000)), rel=1e-9)
    assert radius_cap(0.25, 100000, 0.001) == pytest.approx(0.952864, abs=1e-6)
    assert radius_cap(1.0, 100, 0.001) == pytest.approx(norm.ppf(0.001 ** (1 / 100)), rel=1e-12)
    assert radius_cap(0.5, 100000, 0.001) == pytest.approx(2 * radius_cap(0.25, 100000, 0.001), rel=1e-12)
    assert radius_cap(0.25, 100000, 0.01) > radius_cap(0.25, 100000, 0.001)


@pytest.mark.parametrize("sigma, n, alpha", [(0.25, 100000, 0.001), (1.0, 100000, 0.01), (0.5, 1000, 0.05),
                                             (0.12, 100, 0.001)])
def test_implied_alpha_inverts_radius_cap(sigma, n, alpha):
    assert implied_alpha(radius_cap(sigma, n, alpha), sigma, n) == pytest.approx(alpha, rel=1e-6)


def test_implied_alpha_interval():
    r, sigma, n = 0.978, 0.25, 100000
    low, high = implied_alpha(r, sigma, n, printed_resolution(r))
    assert low == pytest.approx(implied_alpha(r - 5e-4, sigma, n), rel=1e-12)
    assert high == pytest.approx(implied_alpha(r + 5e-4, sigma, n), rel=1e-12)
    assert low < implied_alpha(r, sigma, n) < high


def test_printed_resolution():
    assert printed_resolution(0.978) == pytest.approx(5e-4, rel=1e-12)
    assert printed_resolution(1.96) == pytest.approx(5e-3, rel=1e-12)
    assert printed_resolution(0.0734) == pytest.approx(5e-5, rel=1e-12)
    assert printed_resolution(3.91, significant=2) == pytest.approx(5e-2, rel=1e-12)
    assert printed_resolution(0.0) == 0.0


# ----------------------------------------------------------------------------------------- compare


def _one_cell(value):
    return pd.DataFrame([[value]], index=pd.Index([0.25], name="sigma"), columns=pd.Index([0.5], name="radius"))


@pytest.mark.parametrize("ours, n_examples, status", [
    (0.494, None, EXACT),
    (0.486, None, EXACT),
    (0.49, None, EXACT),
    (0.496, None, DIFFERS),   # rounds to 0.50 and is beyond half a printed unit
    (0.505, None, DIFFERS),
    (0.505, 500, WITHIN),     # 2 binomial standard errors at n = 500 are 0.045
    (0.60, 500, DIFFERS),
    (np.nan, None, MISSING),
])
def test_compare_statuses(ours, n_examples, status):
    out = compare(_one_cell(ours), _one_cell(0.49), decimals=2, n_examples=n_examples)
    assert list(out.columns) == ["row", "column", "ours", "paper", "delta", "tolerance", "status"]
    assert out["status"].tolist() == [status]


def test_compare_tolerance_and_delta_values():
    out = compare(_one_cell(0.505), _one_cell(0.49), decimals=2, n_examples=500).iloc[0]
    assert (out["row"], out["column"], out["paper"]) == (0.25, 0.5, 0.49)
    assert out["delta"] == pytest.approx(0.015, abs=1e-12)
    assert out["tolerance"] == pytest.approx(0.005 + 2 * np.sqrt(0.505 * 0.495 / 500), rel=1e-12)
    out = compare(_one_cell(0.505), _one_cell(0.49), decimals=2, n_examples=500, z=0.3).iloc[0]
    assert out["status"] == DIFFERS


def test_compare_aligns_on_paper_and_marks_missing_cells():
    paper = pd.DataFrame([[0.67, 0.49], [0.57, 0.46]], index=[0.25, 0.5], columns=[0.0, 0.5])
    ours = pd.DataFrame([[0.572, 0.9], [0.667, 0.01]], index=[0.5, 1.0], columns=[0.0, 2.0])  # other layout
    out = compare(ours, paper, decimals=2)
    assert out[["row", "column"]].values.tolist() == [[0.25, 0.0], [0.25, 0.5], [0.5, 0.0], [0.5, 0.5]]
    assert out["status"].tolist() == [MISSING, MISSING, EXACT, MISSING]
    assert table_status(out) == MISSING


def test_compare_decimals_frame():
    paper = pd.DataFrame([[49.0, 0.49]], index=["r"], columns=["percent", "fraction"])
    digits = pd.DataFrame([[0, 2]], index=["r"], columns=["percent", "fraction"])
    out = compare(paper + 0.4, paper, decimals=digits)
    assert out["status"].tolist() == [EXACT, DIFFERS]
    assert out["tolerance"].tolist() == pytest.approx([0.5, 0.005])


def test_compare_relative_tolerance():
    # approximate claims such as wall-clock times get a relative tolerance
    paper = pd.DataFrame([[10.0, 0.5]], index=["row"], columns=["time", "acc"])
    ours = pd.DataFrame([[10.8, 0.58]], index=["row"], columns=["time", "acc"])
    assert compare(ours, paper, decimals=2)["status"].tolist() == [DIFFERS, DIFFERS]
    assert compare(ours, paper, decimals=2, rel_tolerance=0.1)["status"].tolist() == [WITHIN, DIFFERS]
    assert compare(ours, paper, decimals=2, rel_tolerance=0.2)["status"].tolist() == [WITHIN, WITHIN]
    out = compare(ours, paper, decimals=2, rel_tolerance={"time": 0.1})
    assert out["status"].tolist() == [WITHIN, DIFFERS]
    assert out["tolerance"].tolist() == pytest.approx([0.005 + 1.0, 0.005])
    assert compare(ours, paper, decimals=2, rel_tolerance={"acc": 0.2})["status"].tolist() == [DIFFERS, WITHIN]


@pytest.mark.parametrize("statuses, expected", [
    ([EXACT, EXACT], EXACT),
    ([EXACT, WITHIN], WITHIN),
    ([WITHIN, MISSING, EXACT], MISSING),
    ([MISSING, DIFFERS, WITHIN, EXACT], DIFFERS),
    ([DIFFERS], DIFFERS),
])
def test_table_status_precedence(statuses, expected):
    assert table_status(pd.DataFrame({"status": statuses})) == expected


# ----------------------------------------------------------------------------------------- golden: released logs

SHARED_MIRROR = Path("/work/shared/mirror")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSBOOK_MIRROR", str(SHARED_MIRROR))
        mp.setenv("RSBOOK_RUNS", str(tmp_path_factory.mktemp("runs")))
        yield published.released_logs("certify_log")


@pytest.fixture(scope="module")
def imagenet(released):
    """Cohen et al. Table 2's logs: ImageNet test, trained and certified at the same sigma."""
    rows = released[(released["dataset"] == "imagenet") & (released["split"] == "test")
                    & (released["noise"].astype(float) == released["sigma"].astype(float))]
    return {float(r.sigma): r.log for r in rows.itertuples()}


def test_golden_cohen_table_2(imagenet):
    paper = published.table("cohen", "Table 2")
    ours = certified_accuracy_table(imagenet, paper.columns.to_numpy(dtype=float))
    assert ours.index.tolist() == paper.index.tolist()
    np.testing.assert_allclose(np.round(ours.to_numpy(), 2), paper.to_numpy(), rtol=0, atol=1e-9)
    assert ours.loc[0.5, 1.0] == 0.372 and ours.loc[1.0, 2.0] == 0.194
    result = compare(ours, paper, decimals=published.decimals("cohen", "Table 2"))
    assert table_status(result) == EXACT


def test_golden_best_sigma_at_r2(imagenet):
    # Cohen Table 1's r = 2.0 row prints sigma 0.50; the logs (and Table 2) give sigma 1.00 with 19.4%.
    best = best_sigma_table(imagenet, [0.5, 1.0, 2.0, 3.0])
    assert best["best_sigma"].tolist() == [0.25, 0.5, 1.0, 1.0]
    assert best.loc[2.0, "certified_accuracy"] == pytest.approx(0.194, abs=1e-12)
    assert best.loc[2.0, "standard_accuracy"] == pytest.approx(0.436, abs=1e-12)
    assert best.loc[1.0, "standard_accuracy"] == pytest.approx(0.572, abs=1e-12)


def test_golden_bound_radii_on_released_log(imagenet):
    out = bound_radii(imagenet[0.5], 0.5)
    np.testing.assert_allclose(out["cohen"], out["radius"], rtol=1e-8, atol=1e-12)
    assert (out["li"] <= out["cohen"] + 1e-12).all() and (out["lecuyer"] <= out["li"] + 1e-12).all()
    assert (out.loc[out["radius"] == 0, ["cohen", "li", "lecuyer"]] == 0).all().all()


def test_golden_audit_radius_cap(released):
    audit = audit_certify_logs(released, alpha=0.001, n=100000)
    assert len(audit) == 13

    def row(dataset, noise, sigma, split="test"):
        match = audit[(audit["dataset"] == dataset) & (audit["noise"] == noise) & (audit["sigma"] == sigma)
                      & (audit["split"] == split)]
        assert len(match) == 1
        return match.iloc[0]

    cifar = row("cifar10", 0.12, 0.12)
    assert not cifar["exceeds_cap"] and cifar["max_radius"] == 0.457
    assert cifar["cap"] == pytest.approx(radius_cap(0.12, 100000, 0.001), rel=1e-12)
    inet = row("imagenet", 0.25, 0.25)
    assert inet["exceeds_cap"] and inet["max_radius"] == 0.978
    assert (inet["rows"], inet["released_rows"], inet["protocol_rows"]) == (427, 500, 500)
    assert inet["implied_alpha_low"] < 0.01 < inet["implied_alpha_high"]
    assert np.isnan(row("imagenet", 0.5, 0.5, "train")["protocol_rows"])


def test_golden_consistent_alpha(released):
    interval = consistent_alpha(audit_certify_logs(released, alpha=0.001, n=100000))
    assert interval is not None
    low, high = interval
    assert low <= 0.01 <= high
    assert 0.001 < low  # the stated alpha = 0.001 is not consistent with the released logs
    assert consistent_alpha(audit_certify_logs(released, alpha=0.05, n=100000)) is None


def test_significant_digits_of_printed_radii():
    # the authors' certify.py prints radii with "%.3g"; our logs keep full precision
    assert significant_digits([0.978, 1.96, 0.0734, 0.0, 0.4]) == 3
    assert significant_digits([0.1 + 0.2]) == 17
    assert significant_digits([]) == 0


def test_curves_summary_and_stride_helpers():
    from rsbook.analysis import (
        bound_curves,
        certified_accuracy_curves,
        high_probability_curve,
        index_stride,
        predict_summary,
    )

    log = pd.DataFrame({"idx": [0, 20, 40, 60, 100], "label": [1, 2, 3, 4, 5], "predict": [1, 2, -1, 0, 5],
                        "radius": [0.5, 0.25, 0.0, 0.75, 1.0], "correct": [1, 1, 0, 0, 1],
                        "time": [2.0, 4.0, 6.0, 8.0, 10.0]})
    curves = certified_accuracy_curves({"a": log}, name="model")
    # steps at every distinct radius, starting at the standard accuracy
    assert curves["radius"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curves["certified_accuracy"].tolist() == pytest.approx([0.6, 0.6, 0.4, 0.2, 0.2])
    assert index_stride(log) == 20
    with pytest.raises(ValueError, match="two rows"):
        index_stride(log.head(1))
    summary = predict_summary({100: log})
    assert summary.loc[100, "time_per_prediction"] == 6.0
    assert summary.loc[100, "top1_accuracy"] == pytest.approx(0.6)
    assert summary.loc[100, "abstain"] == pytest.approx(0.2)
    hp = high_probability_curve(log, [0.0, 0.5], alpha=0.001, rho=0.01)
    assert np.all(hp["bernstein"] < hp["approximate"]) and hp["approximate"].tolist() == [0.6, 0.4]
    bc = bound_curves(1.0, [0.9, 0.99])
    at = bc.set_index(["bound", "p_a"])["radius"]
    assert at[("Cohen et al.", 0.99)] == pytest.approx(2.326, abs=1e-3)
    assert at[("Lecuyer et al.", 0.99)] < at[("Li et al.", 0.99)] < at[("Cohen et al.", 0.99)]


def test_high_probability_curve_has_both_forms():
    # Cohen et al. 2019, App. D, Thm. 6 (Fig. 14): the approximate accuracy and, below it, the
    # Bernstein and exact binomial 1 - rho lower bounds for n = the log's rows.
    from scipy.stats import binom

    from rsbook.analysis import high_probability_curve

    n = 1000
    rng = np.random.default_rng(0)
    log = pd.DataFrame({"radius": rng.uniform(0, 1, n), "correct": (rng.uniform(size=n) < 0.8).astype(int)})
    radii = [0.0, 0.25, 0.5, 0.75]
    hp = high_probability_curve(log, radii, alpha=0.01, rho=0.001)
    assert list(hp.columns) == ["radius", "approximate", "bernstein", "exact"]
    assert hp["radius"].tolist() == radii
    assert hp["approximate"].to_numpy() == pytest.approx(certified_accuracy(log, radii).to_numpy())
    assert np.all(hp["bernstein"] <= hp["exact"]) and np.all(hp["exact"] < hp["approximate"])
    # the exact form sits q/n below, with q the smallest count that Bin(n, alpha) exceeds w.p. <= rho
    shift = (hp["approximate"] - hp["exact"]).to_numpy() * n
    assert np.allclose(shift, shift[0]) and binom.sf(round(shift[0]), n, 0.01) <= 0.001
    assert binom.sf(round(shift[0]) - 1, n, 0.01) > 0.001
    # a larger alpha lowers both bounds
    looser = high_probability_curve(log, radii, alpha=0.02, rho=0.001)
    assert np.all(looser["bernstein"] < hp["bernstein"]) and np.all(looser["exact"] < hp["exact"])


def test_compare_only_judges_cells_the_paper_printed():
    paper = pd.DataFrame({"a": [0.5, np.nan], "b": [np.nan, 0.25]}, index=[1, 2])
    ours = pd.DataFrame({"a": [0.5, 0.9], "b": [0.1, 0.25]}, index=[1, 2])
    result = compare(ours, paper, decimals=2)
    assert len(result) == 2 and set(result["status"]) == {"reproduced exactly"}


def test_compare_within_the_subsample_interval():
    """The paper-sample profile (issue 18, part 3): a cell is within tolerance when the paper's value lies in the
    two-sided 95% Clopper-Pearson interval of our k / n (Beta quantiles, scipy.stats), widened by half a
    printed unit; the tolerance column is the distance to the interval's end on the paper's side."""
    from scipy.stats import beta

    n, k = 100, 50
    lower, upper = beta.ppf(0.025, k, n - k + 1), beta.ppf(0.975, k + 1, n - k)
    ours = pd.DataFrame({0.5: [k / n, k / n, k / n]}, index=[1, 2, 3])
    paper = pd.DataFrame({0.5: [lower - 0.004, lower - 0.006, upper + 0.004]}, index=[1, 2, 3])
    result = compare(ours, paper, decimals=2, n_examples=n, interval=0.95)
    assert result["status"].tolist() == [STATUSES[1], STATUSES[2], STATUSES[1]]
    np.testing.assert_allclose(result["tolerance"], [0.005 + 0.5 - lower] * 2 + [0.005 + upper - 0.5])
    with pytest.raises(ValueError, match="interval"):
        compare(ours, paper, n_examples=None, interval=0.95)
