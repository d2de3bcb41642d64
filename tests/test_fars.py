"""rsbook.fars and rsbook.fars.pipeline: sparsemax (FaRS Sec. 2.2), the exact certificate of a linear
head against brute force, Proposition 1 end to end, the smoothed sparsemax head's certificate
(coverage), margin training, the resumable runs, and the FaRS tables' layout (Tables 1 and 2)."""

import json
import math

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from rsbook import published
from rsbook.fars import (
    FaRS,
    SparsemaxSmooth,
    build_head,
    carry_radius,
    empirical_bernstein_lower,
    hoeffding_lower,
    linear_certify,
    margin_logits,
    margin_radius,
    nearest_boundary_point,
    per_class_radius,
    sparsemax,
)
from rsbook.fars import pipeline as fx
from rsbook.fars.lipschitz import sll_backbone
from rsbook.smooth import ABSTAIN

pytestmark = pytest.mark.usefixtures("one_thread")


# -------------------------------------------------------------------------------------- sparsemax

def _projection_qp(z: np.ndarray, r: float) -> np.ndarray:
    p = cp.Variable(len(z))
    cp.Problem(cp.Minimize(cp.sum_squares(p - z)), [p >= 0, cp.sum(p) == r]).solve(solver=cp.CLARABEL)
    return p.value


@pytest.mark.parametrize("r", [0.3, 1.0, 4.0])
def test_sparsemax_is_the_euclidean_projection_onto_the_scaled_simplex(r):
    # FaRS Sec. 2.2: sparsemax(z) = argmin over {p >= 0, 1^T p = r} of ||p - z||_2, checked against a QP.
    g = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(12, 7, generator=g, dtype=torch.float64)
    p = sparsemax(z, r)
    for row, out in zip(z.numpy(), p.numpy()):
        assert np.allclose(out, _projection_qp(row, r), atol=1e-6)
    assert torch.allclose(p.sum(dim=1), torch.full((12,), r, dtype=torch.float64), atol=1e-12)
    assert bool((p >= 0).all())


def test_sparsemax_closed_forms_and_invariances():
    assert torch.equal(sparsemax(torch.tensor([5.0, 0.0, -1.0]), 1.0), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(sparsemax(torch.zeros(4), 2.0), torch.full((4,), 0.5))
    # two classes within r of each other: p = ((a - b + r) / 2, (b - a + r) / 2)
    assert torch.allclose(sparsemax(torch.tensor([0.3, 0.1]), 1.0), torch.tensor([0.6, 0.4]))
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(sparsemax(z, 3.0), 3.0 * sparsemax(z / 3.0, 1.0))  # scaling
    assert torch.allclose(sparsemax(z + 7.0, 1.0), sparsemax(z, 1.0))  # shift invariance
    assert torch.allclose(sparsemax(z.T, 1.0, dim=0), sparsemax(z, 1.0).T)  # any dim
    p = sparsemax(z, 1.0)
    order = torch.argsort(z, dim=1)  # order-preserving, hence the same argmax as z
    assert bool((p.gather(1, order).diff(dim=1) >= 0).all())
    assert torch.equal(p.argmax(dim=1), z.argmax(dim=1))


def test_sparsemax_gradient_matches_finite_differences():
    z = torch.tensor([[0.9, 0.5, 0.45, -1.0], [2.0, -3.0, 0.1, 0.2]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: sparsemax(v, 1.0), (z,))


def test_sparsemax_rejects_bad_input():
    with pytest.raises(ValueError, match="r must be"):
        sparsemax(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="finite"):
        sparsemax(torch.tensor([1.0, float("nan")]))


# ------------------------------------------------------------------------- linear head certificate

def _random_head(classes=5, features=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(classes, features, generator=g, dtype=torch.float64),
            torch.randn(classes, generator=g, dtype=torch.float64))


def test_margin_radius_equals_the_distance_to_the_decision_boundary_by_qp():
    # The certificate is exact: min over j of the QP min ||delta|| s.t. l_j(z + delta) >= l_c(z + delta).
    weight, bias = _random_head()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(10, 4, generator=g, dtype=torch.float64)
    prediction, radius = linear_certify(z, weight, bias)
    w, b = weight.numpy(), bias.numpy()
    for zi, c, r in zip(z.numpy(), prediction.tolist(), radius.tolist()):
        distances = []
        for j in range(len(b)):
            if j == c:
                continue
            delta = cp.Variable(4)
            cp.Problem(cp.Minimize(cp.sum_squares(delta)),
                       [(w[c] - w[j]) @ (zi + delta) + b[c] - b[j] <= 0]).solve(solver=cp.CLARABEL)
            distances.append(math.sqrt(max(float(cp.sum_squares(delta).value), 0.0)))
        assert r == pytest.approx(min(distances), rel=1e-5, abs=1e-7)


def test_nothing_inside_the_radius_changes_the_prediction_and_the_boundary_point_does():
    weight, bias = _random_head(classes=6, features=5, seed=2)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(40, 5, generator=g, dtype=torch.float64)
    prediction, radius = linear_certify(z, weight, bias)
    for _ in range(20):  # random directions at 0.999 R
        direction = torch.randn(40, 5, generator=g, dtype=torch.float64)
        inside = z + 0.999 * radius[:, None] * direction / direction.norm(dim=1, keepdim=True)
        assert torch.equal((inside @ weight.T + bias).argmax(dim=1), prediction)
    beyond = nearest_boundary_point(z, weight, bias)
    assert torch.allclose((beyond - z).norm(dim=1), radius + 1e-6)
    assert bool(((beyond @ weight.T + bias).argmax(dim=1) != prediction).all())


def test_binary_case_is_the_seed_formula_and_the_per_class_formula_overclaims_twice():
    # Two classes with logits (w^T z + b, -(w^T z + b)): the boundary is w^T z + b = 0, at distance
    # |w^T z + b| / ||w|| (the seed's binary formula). The per-class scores are +-(w^T z + b) / ||w||, whose
    # difference claims twice that distance.
    w = torch.tensor([3.0, -4.0], dtype=torch.float64)
    weight, bias = torch.stack([w, -w]), torch.tensor([0.5, -0.5], dtype=torch.float64)
    z = torch.tensor([1.0, 0.2], dtype=torch.float64)
    exact = abs(float(w @ z) + 0.5) / 5.0
    assert float(margin_radius(z, weight, bias)) == pytest.approx(exact, rel=1e-12)
    assert float(per_class_radius(z, weight, bias)[1]) == pytest.approx(2 * exact, rel=1e-12)


def test_per_class_overclaims_have_counterexamples_inside_the_claimed_ball():
    weight, bias = _random_head(classes=10, features=8, seed=4)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(300, 8, generator=g, dtype=torch.float64)
    model = FaRS(torch.nn.Identity(), torch.nn.Linear(8, 10).double())
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
    claims = fx.per_class_overclaims(model, z, list(range(300)))
    assert claims["overclaim"].sum() > 0
    assert (claims["witness"] == claims["overclaim"]).all()  # every over-claim is refuted by a point
    assert (claims.loc[~claims["overclaim"], "per_class"] <= claims.loc[~claims["overclaim"], "exact"] + 1e-6).all()


def test_linear_certificate_edge_cases():
    weight = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # class 1 has class 0's weights and a lower bias: it can never overtake; only class 2 limits the radius
    bias = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    z = torch.tensor([1.0, 0.0], dtype=torch.float64)
    prediction, radius = linear_certify(z, weight, bias)
    assert int(prediction) == 0 and float(radius) == pytest.approx(2.0 / math.sqrt(2.0))
    assert float(margin_radius(z, weight, torch.tensor([1.0, 1.0, 0.0]))) == 0.0  # a tie at the top
    assert float(margin_radius(z, weight[:2], bias[:2])) == math.inf  # no competitor can ever win
    with pytest.raises(ValueError, match="z must have shape"):
        margin_radius(torch.zeros(3), weight, bias)
    with pytest.raises(ValueError, match="bias must have shape"):
        margin_radius(z, weight, torch.zeros(2))


def test_proposition_1_end_to_end_no_attack_inside_the_input_radius():
    # A random SLL backbone + linear head: PGD with budget 0.99 R in input space never changes f's
    # prediction, and radii carried through an L-Lipschitz map shrink by L.
    torch.manual_seed(0)
    backbone = sll_backbone((1, 8, 8), widths=[4, 8], depths=[1, 1], linear_inner=16, embedding_dim=8).double()
    model = FaRS(backbone, build_head(8, 10)).double().eval()
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=g, dtype=torch.float64)
    prediction, radius = model.certify_linear(x)
    assert bool((radius > 0).all())
    from rsbook.attacks import pgd

    for k in range(len(x)):
        adversarial = pgd(model, x[k:k + 1], prediction[k:k + 1], 0.99 * float(radius[k]), norm="l2", steps=30,
                          random_start=True, generator=g)
        assert int(model(adversarial).argmax(1)) == int(prediction[k])
    assert carry_radius(torch.tensor([2.0]), 4.0).item() == 0.5
    with pytest.raises(ValueError, match="lipschitz"):
        carry_radius(1.0, 0.0)


def test_margin_logits():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    labels = torch.tensor([1])
    assert torch.equal(margin_logits(logits, labels, 0.5), torch.tensor([[1.5, 2.0, 0.5]]))
    weight = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    shifted = margin_logits(logits, labels, 0.5, weight)
    assert torch.allclose(shifted, torch.tensor([[1.0 + 2.5, 2.0, 0.0 + 0.5 * math.sqrt(9 + 9)]]))
    # pairwise form: a correct prediction on the shifted logits certifies a radius above the margin
    head_w, head_b = _random_head(classes=4, features=3, seed=7)
    g = torch.Generator().manual_seed(8)
    z = torch.randn(500, 3, generator=g, dtype=torch.float64)
    logits = z @ head_w.T + head_b
    labels = logits.argmax(dim=1)
    ok = margin_logits(logits, labels, 0.3, head_w).argmax(dim=1) == labels
    assert bool(ok.any()) and bool((margin_radius(z[ok], head_w, head_b) > 0.3).all())
    with pytest.raises(ValueError, match="margin"):
        margin_logits(logits, labels, -1.0)


# ------------------------------------------------------------------ confidence bounds and smoothing

@pytest.mark.parametrize("bound", ["hoeffding", "bernstein"])
def test_lower_bounds_cover_the_mean(bound):
    # Coverage: over 2000 trials of n = 50 draws of a [0, 1] variable, the (1 - alpha) lower bound
    # exceeds the true mean at most alpha of the time (plus 3 binomial standard errors).
    rng = np.random.default_rng(0)
    alpha, trials, n = 0.1, 2000, 50
    a, b = 5.0, 1.0  # Beta(5, 1): mean 5/6, skewed towards 1
    samples = rng.beta(a, b, size=(trials, n))
    truth = a / (a + b)
    if bound == "hoeffding":
        lows = np.array([hoeffding_lower(s.mean(), n, alpha) for s in samples])
    else:
        lows = np.array([empirical_bernstein_lower(s.mean(), s.var(ddof=1), n, alpha) for s in samples])
    failures = float(np.mean(lows > truth))
    assert failures <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_bernstein_is_tighter_than_hoeffding_at_low_variance():
    assert empirical_bernstein_lower(0.99, 0.0, 10000, 0.001) > hoeffding_lower(0.99, 10000, 0.001)
    assert empirical_bernstein_lower(1.0, 0.0, 10000, 0.001) == pytest.approx(1 - 7 * math.log(2000) / (3 * 9999))
    with pytest.raises(ValueError, match="n must be >= 2"):
        empirical_bernstein_lower(0.5, 0.1, 1, 0.01)


def _two_class_head(u, c):
    """logits (0, u^T z + c): sparsemax(., r) / r gives class 1 the probability clip((d + r) / (2r), 0, 1)."""
    head = torch.nn.Linear(len(u), 2).double()
    with torch.no_grad():
        head.weight.copy_(torch.stack([torch.zeros_like(u), u]))
        head.bias.copy_(torch.tensor([0.0, c], dtype=torch.float64))
    return head.eval()


def _smoothed_class1(d, spread, r, grid=4001):
    """H_1 = E[clip((d + s N + r) / (2r), 0, 1)], N ~ N(0, 1), by quadrature."""
    t = np.linspace(-8, 8, grid)
    values = np.clip((d + spread * t + r) / (2 * r), 0, 1)
    weights = norm.pdf(t)
    return float(np.sum(values * weights) / np.sum(weights))


def test_smoothed_sparsemax_certificate_is_valid_with_probability_one_minus_alpha():
    # Two classes: the smoothed soft classifier's boundary is u^T z + c = 0 (symmetry), so the true robust
    # radius at z is |u^T z + c| / ||u||, and sigma Phi^-1(H_A(z)) (Salman et al.'s bound, H_A by quadrature)
    # lies below it. Each certificate's p_A = Phi(radius / sigma) must be a lower bound of the true H_A
    # except with probability alpha; the Monte Carlo mean itself (no bound) fails about half the time.
    u = torch.tensor([0.6, -0.8], dtype=torch.float64)  # ||u|| = 1
    sigma, r, alpha, trials, n = 0.5, 1.0, 0.05, 200, 400
    smooth = SparsemaxSmooth(_two_class_head(u, 0.0), 2, sigma, r)
    z = 0.4 * u  # u^T z = 0.4: class 1, true radius 0.4
    truth = _smoothed_class1(0.4, sigma, r)
    assert sigma * norm.ppf(truth) <= 0.4
    failures = naive_failures = certified = 0
    for trial in range(trials):
        generator = torch.Generator().manual_seed(trial)
        prediction, radius = smooth.certify(z, 20, n, alpha, n, generator=generator)
        assert prediction in (1, ABSTAIN) and radius <= 0.4
        certified += prediction == 1
        failures += prediction == 1 and norm.cdf(radius / sigma) > truth
        naive_failures += float(smooth.moments(z, n, n, generator)[0][1]) > truth
    assert certified > 0.9 * trials  # not vacuous: almost every trial certifies a radius
    assert failures / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert naive_failures / trials > 0.3  # the check has power: an unbounded estimate fails it
    mean, _ = smooth.moments(z, 20000, 5000, generator=torch.Generator().manual_seed(999))
    assert float(mean[1]) == pytest.approx(truth, abs=0.01)  # the Monte Carlo estimate targets H


def test_smoothed_sparsemax_abstains_and_is_reproducible():
    head = _two_class_head(torch.tensor([1.0, 0.0], dtype=torch.float64), 0.0)
    smooth = SparsemaxSmooth(head, 2, 0.5, 1.0)
    on_boundary = torch.zeros(2, dtype=torch.float64)  # H = (1/2, 1/2)
    assert smooth.certify(on_boundary, 50, 500, 0.01, 100, generator=torch.Generator().manual_seed(0)) == (ABSTAIN, 0.0)
    far = torch.tensor([5.0, 0.0], dtype=torch.float64)
    first = smooth.certify(far, 50, 500, 0.01, 128, generator=torch.Generator().manual_seed(3))
    second = smooth.certify(far, 50, 500, 0.01, 128, generator=torch.Generator().manual_seed(3))
    assert first == second and first[0] == 1 and first[1] > 0
    with pytest.raises(ValueError, match="bound"):
        smooth.certify(far, 5, 50, 0.01, 10, bound="chernoff")
    with pytest.raises(ValueError, match="one embedding"):
        smooth.certify(torch.zeros(2, 2), 5, 50, 0.01, 10)


# ---------------------------------------------------------------------------- runs and tables

def test_accuracy_tables_are_keyed_like_the_published_tables():
    log = pd.DataFrame({"idx": [0, 1, 2, 3], "label": [0, 1, 2, 3], "predict": [0, 1, 2, 0],
                        "radius": [0.5, 0.15, 0.0, 0.4], "correct": [1, 1, 1, 0], "time": 0.0})
    epsilons = [0.05, 0.1, 0.2, 0.3]
    table1 = fx.accuracy_table({"original": log, "sparsemax": log}, epsilons, "certified")
    paper = published.table("fars", "Table 1")
    assert list(table1.index) == list(paper.index) and list(table1.columns) == list(paper.columns)
    assert table1.index.name == paper.index.name and table1.columns.name == paper.columns.name
    assert table1.loc["original"].tolist() == [0.75, 0.5, 0.5, 0.25, 0.25]
    attacked = pd.DataFrame({"idx": [0, 1, 2, 3], "label": 0, "clean": [1, 1, 1, 0], "pgd_0.05": [1, 1, 0, 0],
                             "pgd_0.1": [1, 1, 0, 0], "pgd_0.2": [1, 0, 0, 0], "pgd_0.3": [1, 0, 0, 0]})
    table2 = fx.accuracy_table({"original": attacked, "sparsemax": attacked}, epsilons, "empirical")
    assert list(table2.columns) == list(published.table("fars", "Table 2").columns)
    assert (fx.sanity_check(table1, table2) >= 0).all().all()
    broken = attacked.assign(**{"pgd_0.1": [1, 0, 0, 0]})  # idx 1 is certified at 0.15 >= 0.1: a violation
    assert fx.certificate_violations(log, broken, epsilons).tolist() == [0, 1, 0, 0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A FaRS model trained for 2 epochs on digits (tiny backbone), and a deep head on its features."""
    root = tmp_path_factory.mktemp("fars")
    backbone = {"widths": [4, 8], "depths": [1, 1], "linear_inner": 16, "embedding_dim": 8}
    torch.set_num_threads(1)
    checkpoint = fx.train_fars("digits", root / "e2e", backbone=backbone, epochs=2, batch_size=128, lr=0.02,
                               margin=0.1, seed=0)
    deep = fx.train_fars("digits", root / "deep", hidden=[16], epochs=1, batch_size=128, lr=0.01,
                         embedding_noise=0.25, seed=0, backbone_checkpoint=checkpoint, train_backbone=False)
    return root, checkpoint, deep


def test_training_resumes_to_the_same_weights(tiny_run, tmp_path, monkeypatch):
    root, checkpoint, _ = tiny_run
    backbone = {"widths": [4, 8], "depths": [1, 1], "linear_inner": 16, "embedding_dim": 8}
    calls = {"n": 0}
    real = fx._clean_accuracy

    def crash_on_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash during epoch 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(fx, "_clean_accuracy", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fx.train_fars("digits", tmp_path / "run", backbone=backbone, epochs=2, batch_size=128, lr=0.02, margin=0.1,
                      seed=0)
    monkeypatch.setattr(fx, "_clean_accuracy", real)
    resumed = fx.train_fars("digits", tmp_path / "run", backbone=backbone, epochs=2, batch_size=128, lr=0.02,
                            margin=0.1, seed=0)
    a, _ = fx.load_fars(checkpoint)
    b, _ = fx.load_fars(resumed)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    log = pd.read_csv(tmp_path / "run" / "train_log.tsv", sep="\t")
    assert log["epoch"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="different parameters"):
        fx.train_fars("digits", tmp_path / "run", backbone=backbone, epochs=2, batch_size=128, lr=0.05, seed=0)


def test_frozen_backbone_and_deep_head(tiny_run):
    _, checkpoint, deep = tiny_run
    model, _ = fx.load_fars(checkpoint)
    deep_model, payload = fx.load_fars(deep)
    assert payload["hidden"] == [16] and not deep_model.is_linear
    for p, q in zip(model.backbone.state_dict().values(), deep_model.backbone.state_dict().values()):
        assert torch.equal(p, q)  # the backbone stayed frozen
    with pytest.raises(ValueError, match="pairwise"):
        fx.train_fars("digits", "unused", hidden=[4], epochs=1, margin=0.1)


@pytest.mark.slow
def test_two_process_training_and_a_frozen_backbone_head(tiny_run, tmp_path):
    """`torchrun --nproc_per_node=2 -m rsbook.fars.pipeline -- train` (gloo, DDP, the global batch 128 split 64 + 64)
    with tiny_run's settings: a checkpoint load_fars reads, as accurate as the one-process model; then a
    deep head on its frozen backbone, trained on 2 processes (nothing of the backbone is synchronised)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "-m",
                "rsbook.fars.pipeline", "--", "train", "--dataset", "digits", "--seed", "0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    backbone = {"widths": [4, 8], "depths": [1, 1], "linear_inner": 16, "embedding_dim": 8}
    e2e, deep = tmp_path / "e2e", tmp_path / "deep"
    result = subprocess.run(torchrun + ["--backbone", json.dumps(backbone), "--epochs", "2", "--batch-size", "128",
                                        "--lr", "0.02", "--margin", "0.1", "--out", str(e2e)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(e2e / "checkpoint.pt")
    model, payload = fx.load_fars(e2e / "checkpoint.pt")
    single, _ = fx.load_fars(tiny_run[1])
    assert list(payload["state_dict"]) == list(single.state_dict()) and payload["epoch"] == 2
    assert payload["backbone"] == single.backbone.config
    accuracy = pd.read_csv(e2e / "train_log.tsv", sep="\t")["test_accuracy"].tolist()
    one = pd.read_csv(tiny_run[1].parent / "train_log.tsv", sep="\t")["test_accuracy"].iloc[-1]
    assert len(accuracy) == 2 and abs(accuracy[-1] - one) <= 0.05, (accuracy, one)
    # the logged test accuracy, summed over the ranks' shares, is the one-process number for these weights
    assert accuracy[-1] == fx._clean_accuracy(model, fx.load_dataset("digits", "test"), 256, "cpu", 0)
    result = subprocess.run(torchrun + ["--backbone-checkpoint", str(e2e / "checkpoint.pt"), "--no-train-backbone",
                                        "--hidden", "16", "--embedding-noise", "0.25", "--epochs", "1",
                                        "--batch-size", "128", "--out", str(deep)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    head, payload = fx.load_fars(deep / "checkpoint.pt")
    assert payload["hidden"] == [16] and not head.is_linear
    assert all(torch.equal(p, q) for p, q in zip(model.backbone.state_dict().values(),
                                                 head.backbone.state_dict().values()))
    manifest = json.loads((deep / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["parameters"]["train_backbone"] is False


def test_the_command_line_trains_and_refuses_a_bad_backbone_option(tmp_path, capsys):
    """`python -m rsbook.fars.pipeline train ...` (one process here) is train_fars with the same names."""
    backbone = '{"widths": [4, 8], "depths": [1, 1], "linear_inner": 16, "embedding_dim": 8}'
    out = tmp_path / "run"
    assert fx.main(["train", "--dataset", "digits", "--backbone", backbone, "--epochs", "1", "--batch-size", "256",
                    "--margin", "0.1", "--margin-mode", "constant", "--no-evaluate", "--no-progress",
                    "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "checkpoint.pt")
    model, payload = fx.load_fars(out / "checkpoint.pt")
    assert payload["epoch"] == 1 and model.backbone.config["widths"] == [4, 8]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["margin_mode"] == "constant" and manifest["parameters"]["batch_size"] == 256
    assert manifest["world_size"] == 1
    assert fx.main(["train", "--dataset", "digits", "--backbone", "[4, 8]", "--epochs", "1",
                    "--out", str(tmp_path / "bad")]) == 2
    refusal = "rsbook.fars train: error: --backbone must be a JSON object of sll_backbone options"
    assert refusal in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_certificates_attacks_and_timings_on_a_trained_model(tiny_run):
    root, checkpoint, deep = tiny_run
    from rsbook.data import load_dataset

    model, _ = fx.load_fars(checkpoint)
    deep_model, _ = fx.load_fars(deep)
    data = load_dataset("digits", "test")
    indices = fx.select(data, skip=20, max_examples=12)
    assert indices == list(range(0, 240, 20))
    z, labels = fx.embed(model, data, indices, batch_size=5)
    exact = fx.linear_certificates(model, z, labels, indices)
    assert list(exact.columns) == list(fx.CERTIFY_COLUMNS)
    x = torch.stack([data[i][0] for i in indices])
    prediction, radius = model.certify_linear(x)
    # embedding in batches of 5 or 12 changes float32 rounding only
    assert np.allclose(exact["radius"], radius.numpy(), rtol=1e-4, atol=1e-5)
    assert (exact["predict"] == prediction.numpy()).all()
    assert fx.sparsemax_agreement(model, z, 1.0) == 1.0

    kwargs = dict(num_classes=10, sigma=0.25, n0=20, n=200, alpha=0.01, batch_size=100, seed=0,
                  parameters={"checkpoint": str(checkpoint)})
    soft = fx.sparsemax_certificates(root, "sparse", model.head, z, labels, indices, r=1.0, **kwargs)
    results = root / "certify_sparsemax"
    path = next(results.glob("sparse-*/results.tsv"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5]) + "\n")  # an interrupted run: 4 of 12 rows on disk
    resumed = fx.sparsemax_certificates(root, "sparse", model.head, z, labels, indices, r=1.0, **kwargs)
    pd.testing.assert_frame_equal(soft.drop(columns="time"), resumed.drop(columns="time"))
    hard = fx.smoothing_certificates(root, "mlp", deep_model.head, z, labels, indices, **kwargs)
    assert hard["idx"].tolist() == indices and set(hard["predict"]) <= set(range(10)) | {ABSTAIN}

    attacked = fx.pgd_robustness(root, "orig", model, data, indices, [0.1, 0.3], steps=5, batch_size=5)
    assert attacked["clean"].tolist() == exact["correct"].tolist()
    assert fx.certificate_violations(exact, attacked, [0.1, 0.3]).sum() == 0  # an exact certificate never breaks
    assert (attacked["pgd_0.3"] <= attacked["clean"]).all()
    smoothed = fx.smoothed_pgd_robustness(root, "soft", model, data, indices, [0.1], num_classes=10, sigma=0.25,
                                          r=1.0, num_noise=4, n_predict=100, steps=3, batch_size=6, seed=1)
    assert smoothed.columns.tolist() == ["idx", "label", "clean", "pgd_0.1"]

    times = fx.certification_times(model, x[:2], sigma_head=0.25, sigma_input=0.25, r=1.0, n0=10, n=100, alpha=0.01,
                                   batch_size=50, num_classes=10, deep_head=deep_model.head)
    assert len(times) == 5 and (times["seconds_per_example"] > 0).all()
    assert times.loc["Cohen et al., CERTIFY on the whole network", "speedup"] == 1.0
    check = fx.lipschitz_check(model.backbone, x[:2], iterations=5, steps=5)
    assert 0 < check["jacobian"] <= 1 + 1e-5 and check["pairs"] <= 1 + 1e-5


# ------------------------------------------------------------------------------------ the chapter

@pytest.mark.slow
def test_chapter_executes_at_smoke_and_records_its_tables(smoke_book):
    notebook = smoke_book[0] / "fars" / "smoke" / "fars.ipynb"  # executed by the smoke book
    cells = pd.read_csv(notebook.parent / "comparisons.csv")
    tables = set(cells.loc[cells["document"] == "fars", "table"])
    assert {"Table 1 (digits)", "Table 2 (digits)"} <= tables  # digits: recorded, not compared
    assert not {"Table 1", "Table 2"} & tables


@pytest.mark.slow
def test_chapter_full_profile_path_on_a_tiny_imagenette(runs, tmp_path, monkeypatch):
    """The paper-scale profile (Imagenette, a GPU) runs the same code: here on a miniature Imagenette
    folder on the CPU with every size shrunk; Tables 1 and 2 are then compared with the paper's."""
    import sys
    from pathlib import Path

    from conftest import write_image_folder

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import book

    write_image_folder(tmp_path / "imagenette", "train", seed=0)
    write_image_folder(tmp_path / "imagenette", "val", seed=1)
    monkeypatch.setenv("RSBOOK_DATA", str(tmp_path))
    shrink = {
        "backbone": {"stem_unshuffle": 8, "stem": "aol", "widths": [8], "depths": [1], "downsample": "pool",
                     "linear_depth": 1, "linear_inner": 8, "embedding_dim": 8},
        "train": {"epochs": 1, "batch": 3, "lr": 0.01, "margin": 0.1, "logit_scale": 1.0},
        "probe": {"epochs": 1, "batch": 3, "lr": 0.01, "margin": 0.1, "logit_scale": 1.0},
        "deep_head": {"hidden": [8], "epochs": 1, "batch": 3, "lr": 0.01},
        "n0": 10, "n": 50, "mc_batch": 50, "attack": {"steps": 2, "batch": 3, "num_noise": 2, "n_predict": 20},
        "speed": {"examples": 1, "sigma_input": 0.25, "batch": 30},
        "lipschitz": {"examples": 1, "iterations": 2, "steps": 2}, "device": "cpu", "workers": 0, "threads": 1,
        "launch": False,  # the steps in this process; launched through torchrun: tests/test_fars.py's two-process tests
    }
    notebook = book.execute("chapters/fars", "full", runs, overrides=shrink, force=True)
    cells = pd.read_csv(notebook.parent / "comparisons.csv")
    compared = cells[(cells["document"] == "fars") & cells["table"].isin(["Table 1", "Table 2"])]
    assert len(compared) == 20 and compared["paper"].notna().all()  # 2 tables x 2 variants x 5 columns
    sizes = cells[cells["table"] == "Section 3 (text)"].set_index("row")["ours"]
    assert sizes.to_dict() == {"train": 6.0, "val": 6.0}  # the miniature folder's split sizes
    assert list((runs / "fars" / "full" / "train").glob("probe-*/checkpoint.pt"))
