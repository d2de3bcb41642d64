"""rsbook.sequential_grid: a table's radii decided from one stream with one guarantee for all of them.

Statistical: the simultaneous false-certification rate over the grid stays below alpha just below every
threshold (simulated, many runs). Structural: nested boundaries, certified radii always a prefix of the grid, a
grid of one radius is the single-radius test. End to end: Smooth.certify_grid on a linear classifier (Theorem 1
exact), the dataset log read back by rsbook.analysis.certified_accuracy (radius 0 included), stop_if_wrong, and
`rsbook certify --radii`.
"""

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from rsbook.analysis import certified_accuracy
from rsbook.cli import main
from rsbook.dataset_runs import certify_grid_dataset
from rsbook.logs import read_log, read_log_manifest
from rsbook.sequential import certify_radius, plan
from rsbook.sequential_grid import certify_grid, check_radii, grid_plan, simulate_grid
from rsbook.smooth import ABSTAIN, Smooth

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def test_boundaries_are_nested_and_certified_radii_are_a_prefix():
    test = grid_plan(RADII, 0.5, 0.01, 20_000)
    assert np.all(np.diff(test.certify_at, axis=0) >= 0)  # c_i[j] non-decreasing in i
    assert np.all(np.diff(test.futile_at, axis=0) >= 0)
    certified, samples = simulate_grid(test, np.linspace(0.4, 0.9999, 60), np.random.default_rng(0), reps=3)
    assert certified.min() >= 0 and certified.max() <= len(RADII) and samples.max() <= 20_000
    p = np.linspace(0.4, 0.9999, 60)
    assert np.all(np.diff(certified.mean(0)[np.argsort(p)]) >= -1.0)  # roughly more radii for larger p


@pytest.mark.parametrize("method", ["betting", "union"])
def test_no_radius_above_the_truth_is_certified_more_often_than_alpha(method):
    """Simultaneous guarantee over the grid: for p just below the threshold of radius i, certifying radius i
    or any larger one happens with probability <= alpha (here 0.05), checked over 4,000 runs at each threshold
    with a one-sided binomial margin (the rate is exactly bounded; the margin absorbs simulation noise)."""
    alpha, sigma, runs = 0.05, 0.5, 4000
    test = grid_plan(RADII, sigma, alpha, 4000, method, batch_size=200)
    limit = binom.ppf(1 - 1e-4, runs, alpha) / runs
    for i, p0 in enumerate(test.p0):
        p = max(p0 - 0.003, 0.0)
        certified, _ = simulate_grid(test, np.array([p]), np.random.default_rng(100 + i), reps=runs)
        rate = float((certified[:, 0] > i).mean())  # radius i (or a larger one) certified although p < p0_i
        assert rate <= limit, (i, p0, rate)


def test_a_grid_of_one_radius_is_the_single_radius_test():
    for p in (0.55, 0.8, 0.97, 0.995):
        draws_a, draws_b = np.random.default_rng(7), np.random.default_rng(7)
        one = certify_radius(lambda k: int(draws_a.binomial(k, p)), 0.5, 0.25, 0.001, 50_000)
        grid = certify_grid(lambda k: int(draws_b.binomial(k, p)), [0.5], 0.25, 0.001, 50_000)
        assert (one.certified, one.samples, one.hits) == (grid.certified[0], grid.samples, grid.hits)
    assert plan(0.9, 0.001, 1000).looks.tolist() == grid_plan([0.25], 0.25 / norm.ppf(0.9), 0.001, 1000).looks.tolist()


@pytest.mark.parametrize("radii", [[], [-0.1], [float("nan")], ["a"], [True]])
def test_bad_radii_are_refused(radii):
    with pytest.raises(ValueError, match="radii"):
        check_radii(radii)


def linear_model(margin: float):
    """f(x) = class 1 iff x_0 > -margin (2-D inputs), as logits; at x = 0, P(f(x + eps) = 1) = Phi(margin / sigma)
    and g's true robust radius is exactly `margin` (Theorem 1 is tight for a linear classifier)."""
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        layer.bias.copy_(torch.tensor([-margin, margin]))
    return layer.eval()


def test_certify_grid_on_a_linear_classifier_never_exceeds_the_true_radius():
    sigma, margin = 0.5, 0.6
    smooth = Smooth(linear_model(margin), 2, sigma)
    radii = [0.0, 0.2, 0.4, 0.59, 0.61, 0.8]
    found = []
    for seed in range(12):
        prediction, radius, samples = smooth.certify_grid(torch.zeros(2), radii, 50, 20_000, 0.01, 5000,
                                                          torch.Generator().manual_seed(seed))
        assert prediction == 1 and radius <= margin and 50 < samples <= 20_050
        found.append(radius)
    assert max(found) == 0.4 or max(found) == 0.59  # the radii well below the truth get certified
    prediction, radius, samples = smooth.certify_grid(torch.zeros(2), radii, 50, 20_000, 0.01, 5000,
                                                      torch.Generator().manual_seed(0), label=0)
    assert (prediction, radius, samples) == (ABSTAIN, 0.0, 50)  # c_A = 1 is not the label: stopped after n0


class Points(torch.utils.data.Dataset):
    def __init__(self, xs, labels):
        self.xs, self.labels = xs, labels

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return self.xs[i], self.labels[i]


def test_dataset_log_gives_the_grid_decisions_as_certified_accuracy(tmp_path):
    sigma = 0.5
    smooth = Smooth(linear_model(0.0), 2, sigma)
    xs = torch.tensor([[0.05, 0.0], [0.4, 0.0], [1.5, 0.0], [-1.0, 0.0], [0.9, 0.0]])
    data = Points(xs, [1, 1, 1, 1, 0])
    radii = [0.0, 0.25, 0.5, 1.0]
    log_path = certify_grid_dataset(smooth, data, tmp_path / "grid.tsv", radii=radii, n0=50, n_max=20_000,
                                    alpha=0.01, batch_size=5000, progress=False)
    log = read_log(log_path)
    assert log["samples"].gt(0).all() and read_log_manifest(log_path)["parameters"]["radii"] == radii
    expected = []
    for row in log.itertuples():
        assert row.predict == ABSTAIN or row.radius in radii
        expected.append([row.correct == 1 and row.predict != ABSTAIN and row.radius >= r for r in radii])
    np.testing.assert_allclose(certified_accuracy(log, radii).to_numpy(), np.mean(expected, axis=0))
    # a row certified at radius 0 only (x_0 = 0.05: p = Phi(0.1)... certified at 0 after enough draws) counts at 0
    zero_only = log[(log["predict"] != ABSTAIN) & (log["radius"] == 0.0) & (log["correct"] == 1)]
    assert len(zero_only) and float(certified_accuracy(log, [0.0]).iloc[0]) >= len(zero_only) / len(log)
    stopped = certify_grid_dataset(smooth, data, tmp_path / "stopped.tsv", radii=radii, n0=50, n_max=20_000,
                                   alpha=0.01, batch_size=5000, stop_if_wrong=True, progress=False)
    stopped = read_log(stopped)
    wrong = stopped["label"] == 0  # x_0 = 0.9 is class 1, labelled 0
    assert (stopped.loc[wrong, "samples"] == 50).all() and (stopped.loc[wrong, "predict"] == ABSTAIN).all()
    np.testing.assert_allclose(certified_accuracy(stopped, radii), certified_accuracy(log, radii))


def test_the_command_line_certifies_a_grid(tmp_path, digits_checkpoint, capsys):
    log = tmp_path / "grid.tsv"
    arguments = ["certify", "--dataset", "digits", "--checkpoint", str(digits_checkpoint), "--sigma", "0.25",
                 "--radii", "0", "0.25", "0.5", "--n-max", "2000", "--alpha", "0.001", "--batch", "1000",
                 "--max", "12", "--skip", "3", "--stop-if-wrong", "--out", str(log), "--no-progress"]
    assert main(arguments) == 0
    frame = read_log(log)
    assert len(frame) == 4 and frame["radius"].isin([0.0, 0.25, 0.5]).all()
    assert read_log_manifest(log)["parameters"]["stop_if_wrong"] is True
    from rsbook.log_tables import read_logs, summary

    table = summary(read_logs([log]), [0, 0.25, 0.5, 0.75]).iloc[0]  # `rsbook analyze`: cells up to the grid's top
    np.testing.assert_allclose(table[[0.0, 0.25, 0.5]].to_numpy(dtype=float),
                               certified_accuracy(frame, [0, 0.25, 0.5]).to_numpy())
    assert np.isnan(table[0.75])
    both = [*arguments[:arguments.index("--out")], "--radius", "0.5", "--out", str(tmp_path / "both.tsv")]
    assert main(both) == 2
    assert "--radius or --radii, not both" in capsys.readouterr().err
    assert not (tmp_path / "both.tsv").exists()
