"""rsbook.relax: certificates by convex relaxation (LP slides, document 003; Wong & Kolter 2018).

Invariants (issue 4, section 2) on random small networks over several seeds: ibp ≤ lp ≤ milp on
every target; dual ≤ lp with the same intermediate bounds; milp = the true minimum (dense grid over
the ℓ∞ box of 2-input networks); the LP's argmin lies in the ball; a YES is never contradicted by
PGD; no unstable ReLU ⇒ lp = milp. Plus: the network conversion, the validity of the intermediate
bounds, DPP and reuse of the compiled problems, solver failures as errors, the dual bound's
differentiability, training's resume, the pictures' containment, and the resumable evaluation.
"""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from rsbook.relax import SolverError, certify, margin_lower_bounds
from rsbook.relax.certify import Certifier, ball_distance, certifier
from rsbook.relax.dual import dual_margins, intermediate_bounds
from rsbook.relax.geometry import (
    ball_grid,
    halfplane_polygon,
    output_polytope,
    widest_unstable,
)
from rsbook.relax.lp import RelaxedProblem
from rsbook.relax.network import affine_network
from rsbook.relax.toy import two_moons
from rsbook.relax.training import (
    crown_ibp_beta,
    epsilon_schedule,
    load_model,
    mlp,
    robust_loss,
    train_model,
)

SEEDS = range(5)


pytestmark = pytest.mark.usefixtures("one_thread")


def random_net(seed: int, widths=(2, 8, 8, 3), scale: float = 1.0) -> nn.Sequential:
    """Linear/ReLU chain with N(0, scale²/fan_in) weights and N(0, 0.1²) biases, float64."""
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        linear = nn.Linear(n_in, n_out).double()
        with torch.no_grad():
            linear.weight.copy_(torch.randn(n_out, n_in, generator=generator, dtype=torch.float64)
                                * scale / math.sqrt(n_in))
            linear.bias.copy_(torch.randn(n_out, generator=generator, dtype=torch.float64) * 0.1)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def point(seed: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)


def prediction(net, x) -> int:
    with torch.no_grad():
        return int(net(x[None]).argmax())


def ball_samples(x, eps, norm, count=2000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    directions = torch.rand(count, x.numel(), generator=generator, dtype=torch.float64) * 2 - 1
    if norm == "l2":
        directions = directions / directions.norm(dim=1, keepdim=True) * torch.rand(count, 1, generator=generator,
                                                                                        dtype=torch.float64)
    return x.reshape(1, -1) + eps * directions


# ------------------------------------------------------------------ the network as an affine–ReLU chain

def test_conversion_matches_the_network_including_conv_merging_and_edge_relus():
    # rsbook.relax.network: Conv2d as its dense matrix, Flatten, merged consecutive affine maps.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2), nn.Flatten(),
                        nn.Linear(16, 7), nn.ReLU(), nn.Linear(7, 5), nn.Linear(5, 3)).double()
    network = affine_network(net, (2, 6, 6))
    assert network.dims == (72, 27, 7, 3) and network.hidden == 2  # conv2∘Linear and the last two Linear merged
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    assert torch.allclose(network.forward(x.reshape(4, -1)), net(x), atol=1e-12)
    relu_first = nn.Sequential(nn.ReLU(), nn.Linear(3, 2), nn.ReLU()).double()
    chain = affine_network(relu_first, (3,))
    assert chain.depth == 3 and chain.dims == (3, 3, 2, 2)
    z = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(chain.forward(z), relu_first(z))


def test_conversion_merges_affine_layers_without_relu_between():
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    network = affine_network(net, (4,))
    assert network.dims == (4, 5, 2)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(network.forward(x), net(x))


@pytest.mark.parametrize("net, shape, match", [
    (nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)), (2,), "Tanh"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)), (1, 8, 8), "MaxPool2d"),
    (nn.Sequential(nn.Linear(64, 3)), (1, 8, 8), "Flatten"),
    (nn.Linear(2, 3), (2,), "Sequential"),
    (nn.Sequential(nn.ReLU()), (2,), "no Linear"),
])
def test_unsupported_networks_are_rejected_with_a_clear_error(net, shape, match):
    with pytest.raises(ValueError, match=match):
        affine_network(net, shape)


# ------------------------------------------------------------------ intermediate bounds are valid

@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["ibp", "dual", "ibp+dual"])
def test_intermediate_bounds_contain_every_pre_activation_of_the_ball(norm, kind):
    # LP slides: [l, u] must bound the ReLU inputs over the whole ball, or the relaxation is invalid.
    for seed in SEEDS:
        net = random_net(seed, (3, 10, 10, 10, 3))
        network = affine_network(net, (3,))
        x = point(seed, 3)[None]
        bounds = intermediate_bounds(network, x, 0.4, norm, kind)
        samples = ball_samples(x[0], 0.4, norm, seed=seed)
        for i, (lower, upper) in enumerate(bounds, start=1):
            values = network.forward(samples, upto=i)
            assert torch.all(values >= lower - 1e-12) and torch.all(values <= upper + 1e-12)


def test_combined_bounds_lie_inside_both_and_first_layer_is_exact():
    network = affine_network(random_net(3, (2, 6, 6, 6, 2)), (2,))
    x = point(3)[None]
    ibp, dual, both = (intermediate_bounds(network, x, 0.3, "linf", k) for k in ("ibp", "dual", "ibp+dual"))
    for (li, ui), (ld, ud), (lb, ub) in zip(ibp, dual, both):
        assert torch.all(lb >= torch.maximum(li, ld) - 1e-15) and torch.all(ub <= torch.minimum(ui, ud) + 1e-15)
    # first layer: W x + b ± eps ||W_j||_1 is attained at a corner of the box
    corner = x + 0.3 * torch.sign(network.weights[0][0])[None]
    assert torch.isclose(network.forward(corner, upto=1)[0, 0], ibp[0][1][0, 0])


# ------------------------------------------------------------------ the ordering of the bounds

@pytest.mark.parametrize("seed", SEEDS)
def test_ibp_below_lp_below_milp_on_every_target(seed):
    # Issue 4, sec. 2: ibp ≤ lp ≤ milp; the LP uses bounds inside the interval ones.
    net = random_net(seed)
    x = point(seed)
    label = prediction(net, x)
    cert = Certifier(net, (2,))
    for eps in (0.05, 0.3):
        ibp = cert.margin_lower_bounds(x, label, eps, "linf", "ibp")
        milp = cert.margin_lower_bounds(x, label, eps, "linf", "milp")
        for kind in ("ibp", "ibp+dual", "lp"):
            lp = cert.margin_lower_bounds(x, label, eps, "linf", "lp", kind)
            others = np.arange(3) != label
            assert np.all(ibp[others] <= lp[others] + 1e-7), (kind, ibp, lp)
            assert np.all(lp[others] <= milp[others] + 1e-7), (kind, lp, milp)
            assert lp[label] == np.inf


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("seed", SEEDS)
def test_dual_below_lp_with_the_same_intermediate_bounds(norm, seed):
    # Weak duality: Wong & Kolter's closed form is the dual objective at a feasible point of the LP's dual.
    net = random_net(seed, (3, 8, 8, 4))
    x = point(seed, 3)
    label = prediction(net, x)
    cert = Certifier(net, (3,))
    for kind in ("ibp", "dual"):
        bounds = cert.bounds(x, 0.25, norm, kind)
        dual = cert.margin_lower_bounds(x, label, 0.25, norm, "dual", bounds)
        lp = cert.margin_lower_bounds(x, label, 0.25, norm, "lp", bounds)
        others = np.arange(4) != label
        assert np.all(dual[others] <= lp[others] + 1e-6)


def test_dual_and_ibp_are_not_ordered_each_wins_somewhere():
    # Issue 4, sec. 2: "dual and ibp are not ordered in general". Seeded search for both cases.
    ibp_wins = dual_wins = 0
    for seed in range(40):
        net = random_net(seed, (2, 8, 8, 3))
        x = point(seed)
        label = prediction(net, x)
        cert = Certifier(net, (2,))
        for eps in (0.2, 0.5):
            dual = np.delete(cert.margin_lower_bounds(x, label, eps, "linf", "dual"), label)
            difference = dual - np.delete(cert.margin_lower_bounds(x, label, eps, "linf", "ibp"), label)
            ibp_wins += int((difference < -1e-9).sum())
            dual_wins += int((difference > 1e-9).sum())
    assert ibp_wins > 0 and dual_wins > ibp_wins


# ------------------------------------------------------------------ exactness of the MILP

def _lipschitz_linf(network, spec) -> float:
    """A Lipschitz constant of x ↦ spec · f(x) for the ℓ∞ norm: ‖ |spec W_L| |W_{L-1}| … |W_1| ‖₁."""
    row = (spec @ network.weights[-1]).abs()
    for weight in reversed(network.weights[:-1]):
        row = row @ weight.abs()
    return float(row.sum())


@pytest.mark.parametrize("seed", SEEDS)
def test_milp_equals_the_true_minimum_on_a_dense_grid(seed):
    # "milp equals the true minimum, checked against a dense grid over the ℓ∞ box for 2-input networks".
    net = random_net(seed, (2, 10, 10, 3), scale=2.0)
    x, eps = point(seed), 0.4
    label = prediction(net, x)
    cert = Certifier(net, (2,))
    milp, argmins = cert.margin_lower_bounds(x, label, eps, "linf", "milp", return_argmin=True)
    points = 401
    grid = torch.as_tensor(ball_grid(x.numpy(), eps, "linf", points))
    logits = cert.network.forward(grid)
    spacing = 2 * eps / (points - 1)
    for target in range(3):
        if target == label:
            continue
        spec = torch.zeros(3, dtype=torch.float64)
        spec[label], spec[target] = 1.0, -1.0
        grid_min = float((logits @ spec).min())
        lipschitz = _lipschitz_linf(cert.network, spec)
        assert milp[target] <= grid_min + 1e-7  # a lower bound on every point of the grid
        assert grid_min - milp[target] <= lipschitz * spacing / 2 + 1e-7  # and no lower than the grid allows
        achieved = float(cert.network.forward(torch.as_tensor(argmins[target])[None])[0] @ spec)
        assert abs(achieved - milp[target]) <= 1e-5  # attained by its argmin (up to HiGHS's 1e-7 feasibility)


def test_linear_network_all_methods_are_exact():
    net = nn.Sequential(nn.Linear(3, 4)).double()
    x = point(0, 3)
    label = prediction(net, x)
    values = [margin_lower_bounds(net, x, label, 0.2, "linf", m) for m in ("ibp", "dual", "crown", "alpha-crown",
                                                                           "lp", "milp")]
    for other in values[1:]:
        np.testing.assert_allclose(other, values[0], atol=1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_no_unstable_relu_gives_lp_equal_milp(seed):
    # "a network with no unstable ReLU gives lp = milp" (and the slides' question 3: m* = m̲* then).
    net = random_net(seed, (2, 6, 6, 3))
    x = point(seed)
    label = prediction(net, x)
    cert = Certifier(net, (2,))
    eps = 1e-3
    bounds = cert.bounds(x, eps, "linf", "ibp")
    assert not any(np.any((lower < 0) & (upper > 0)) for lower, upper in bounds)
    lp = cert.margin_lower_bounds(x, label, eps, "linf", "lp", bounds)
    milp = cert.margin_lower_bounds(x, label, eps, "linf", "milp", bounds)
    np.testing.assert_allclose(lp, milp, atol=1e-7)


def test_relaxing_the_milp_binaries_gives_the_triangle_lp():
    # LP slides: "This relaxation is equivalent to relaxing the integer constraint a_i ∈ {0, 1} to [0, 1]".
    for seed in SEEDS:
        net = random_net(seed, (2, 8, 8, 3))
        x = point(seed)
        cert = Certifier(net, (2,))
        bounds = cert.bounds(x, 0.3, "linf", "ibp")
        direction = np.array([1.0, -1.0, 0.0])
        relaxed, _ = RelaxedProblem(cert.network, "linf", big_m=True).solve(x.numpy(), 0.3, bounds, direction)
        triangle, _ = RelaxedProblem(cert.network, "linf").solve(x.numpy(), 0.3, bounds, direction)
        exact, _ = RelaxedProblem(cert.network, "linf", integer=True).solve(x.numpy(), 0.3, bounds, direction)
        assert relaxed == pytest.approx(triangle, abs=1e-7)
        assert triangle <= exact + 1e-7


# ------------------------------------------------------------------ the LP's argmin and the answers

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_lp_argmin_lies_in_the_ball_and_attains_at_least_its_value(norm):
    for seed in SEEDS:
        net = random_net(seed, (4, 8, 8, 3))
        x, eps = point(seed, 4), 0.3
        label = prediction(net, x)
        cert = Certifier(net, (4,))
        values, argmins = cert.margin_lower_bounds(x, label, eps, norm, "lp", return_argmin=True)
        for target, argmin in argmins.items():
            distance = np.abs(argmin - x.numpy()).max() if norm == "linf" else np.linalg.norm(argmin - x.numpy())
            assert distance <= eps + 1e-6
            spec = torch.zeros(3, dtype=torch.float64)
            spec[label], spec[target] = 1.0, -1.0
            true_margin = float(cert.network.forward(torch.as_tensor(argmin)[None])[0] @ spec)
            assert true_margin >= values[target] - 1e-6  # the real network at x̃ is above the relaxation's minimum


def test_yes_is_never_contradicted_by_pgd_and_no_is_always_a_real_counterexample():
    # Slides: YES ⇔ no adversarial example in the ball is possible; NO needs a misclassified point.
    counts = {"YES": 0, "MAYBE": 0, "NO": 0}
    for seed in range(12):
        net = random_net(seed, (2, 12, 12, 3)).float()
        x = point(seed).float()
        label = prediction(net, x)
        cert = Certifier(net, (2,))
        for eps in (0.02, 0.1, 0.3):
            for method in ("ibp", "dual", "lp", "milp"):
                answer = cert.certify(x, label, eps, "linf", method, attack_steps=20,
                                      generator=torch.Generator().manual_seed(seed))
                counts[answer] += 1
                if answer == "YES":
                    samples = ball_samples(x.double(), eps, "linf", 3000, seed).float()
                    assert not bool(cert.misclassified(samples, label).any())
                    attacked = cert.attack(x, label, eps, "linf", steps=60, restarts=8,
                                           generator=torch.Generator().manual_seed(99))
                    assert not attacked
            if cert.certify(x, label, eps, "linf", "milp", attack_steps=0) == "NO":  # exact: a true counterexample
                milp, argmins = cert.margin_lower_bounds(x, label, eps, "linf", "milp", return_argmin=True)
                worst = int(np.nanargmin(milp))
                assert bool(cert.misclassified(torch.as_tensor(argmins[worst])[None], label)[0])
    assert counts["YES"] and counts["NO"]  # the trials exercise both answers


def test_certify_is_relative_to_the_label_and_misclassified_inputs_are_no():
    net = random_net(1)
    x = point(1)
    label = prediction(net, x)
    assert certify(net, x, (label + 1) % 3, 0.01, "linf", "lp") == "NO"
    assert certify(net, x, label, 0.0, "linf", "lp") == "YES"


def threshold_net(threshold: float, dtype=torch.float64) -> nn.Sequential:
    """Two classes on 2-D inputs, logits (0, x₁ − threshold): class 1 exactly where x₁ > threshold (at
    x₁ = threshold the logits tie and torch.argmax returns the first maximum, class 0)."""
    linear = nn.Linear(2, 2).to(dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        linear.bias.copy_(torch.tensor([0.0, -threshold]))
    return nn.Sequential(linear).eval()


def native_distance(point, x, norm: str, dtype=torch.float32) -> torch.Tensor:
    """‖point − x‖ computed in `dtype` (both rounded to it first)."""
    delta = torch.as_tensor(point).to(dtype).reshape(-1) - torch.as_tensor(x).to(dtype).reshape(-1)
    return delta.abs().max() if norm == "linf" else torch.linalg.vector_norm(delta)


def assert_verified_witness(cert, witness, x, label, eps, norm):
    """A NO's witness (slides, "Intermediate Summary"): inside the ball in float64 and in float32, exactly
    the float32 point the network sees, and misclassified by the network run on it."""
    assert witness is not None and witness.dtype == np.float64 and witness.shape == tuple(x.shape)
    native = torch.as_tensor(witness).float()
    assert np.array_equal(native.double().numpy(), witness)  # exactly representable in the network's dtype
    assert ball_distance(witness, x, norm) <= eps  # float64
    assert bool(native_distance(witness, x, norm) <= torch.tensor(eps, dtype=torch.float32))  # float32
    with torch.no_grad():
        assert int(cert.net(native[None]).argmax()) != label


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_an_argmin_misclassified_only_outside_the_ball_is_not_a_no(monkeypatch, norm):
    """Slides, "Intermediate Summary": a NO needs a point of the ball that the network misclassifies,
    and the LP argmin x̃ is only a candidate. The decision boundary x₁ = ε + 1e-8 lies just outside the
    ball around 0, so the bound (1e-8) is not above a tolerance of 1e-6 and x̃ gets checked; the solver's x̃
    is pushed out by a factor 1 + 1e-6 (Clarabel's ℓ₂ argmins lie outside by up to about 1e-9, HiGHS's
    by its feasibility tolerance), where the network does misclassify it. Projected back into the
    ball it is classified correctly: MAYBE, never NO (the unchecked x̃ used to give NO)."""
    eps = 0.1
    net, x = threshold_net(eps + 1e-8), torch.zeros(2, dtype=torch.float64)
    solve = RelaxedProblem.solve

    def outside(self, centre, radius, bounds, direction, time_limit=None):
        value, argmin = solve(self, centre, radius, bounds, direction, time_limit)
        return value, centre + (argmin - centre) * (1 + 1e-6)

    monkeypatch.setattr(RelaxedProblem, "solve", outside)
    cert = Certifier(net, (2,))
    _, argmins = cert.margin_lower_bounds(x, 0, eps, norm, "lp", return_argmin=True)
    assert ball_distance(argmins[1], x, norm) > eps  # the defect's setting: x̃ outside, misclassified there
    assert bool(cert.misclassified(torch.as_tensor(argmins[1])[None], 0)[0])
    assert cert.witness(argmins[1], x, 0, eps, norm) is None
    for method in ("lp", "milp") if norm == "linf" else ("lp",):
        answer, margin, _ = cert.decide(x, 0, eps, norm, method, tolerance=1e-6)
        assert answer == "MAYBE" and margin <= 1e-6
        assert cert.certify(x, 0, eps, norm, method, attack_steps=10, generator=torch.Generator().manual_seed(0),
                            tolerance=1e-6, return_witness=True) == ("MAYBE", None)


def test_a_float32_point_rounded_out_of_the_ball_is_not_a_no():
    """Slides, "Intermediate Summary": a NO needs a point of the ball that the network misclassifies.
    A float32 network, x = (1, 0), ℓ∞ radius 0.1: the float32 numbers nearest 1.1 are t < 1.1 <
    float32(1.1), and the boundary sits at t, so every float32 point the network misclassifies lies
    outside the ball. The LP's argmin (x₁ = 1.1) and PGD's x + float32(0.1) both round to float32(1.1)
    when the network runs on them, and used to answer NO; checked in float64 and float32 they are
    outside, and shrunk into the ball they are classified correctly: MAYBE."""
    eps, edge = 0.1, np.float32(1.1)
    threshold = float(np.nextafter(edge, np.float32(0)))
    assert threshold < 1.1 < float(edge)
    net, x = threshold_net(threshold, torch.float32), torch.tensor([1.0, 0.0])
    cert = Certifier(net, (2,))
    _, argmins = cert.margin_lower_bounds(x, 0, eps, "linf", "lp", return_argmin=True)
    seen = torch.as_tensor(argmins[1]).float()  # what the network runs on
    assert bool(cert.misclassified(seen[None], 0)[0]) and ball_distance(seen, x, "linf") > eps
    for method in ("lp", "milp"):
        for steps in (0, 10):
            assert cert.certify(x, 0, eps, "linf", method, attack_steps=steps, attack_restarts=4,
                                generator=torch.Generator().manual_seed(0)) == "MAYBE"
    assert not cert.attack(x, 0, eps, "linf", steps=10, restarts=4, generator=torch.Generator().manual_seed(0))
    # just beyond the boundary's float32 neighbour the ball does hold a misclassified float32 point
    wider = float(edge) - 1.0 + 1e-9
    answer, witness = cert.certify(x, 0, wider, "linf", "lp", attack_steps=0, return_witness=True)
    assert answer == "NO"
    assert_verified_witness(cert, witness, x, 0, wider, "linf")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_no_has_a_witness_inside_the_ball_that_the_network_misclassifies(norm):
    """Slides, "Intermediate Summary": a NO needs a point of the ball that the network misclassifies.
    On random float32 networks, every NO — from x itself (a wrong label), the LP / MILP argmin, or PGD —
    comes with a witness inside the ball in float64 and in float32 that the network misclassifies."""
    methods = ("ibp", "lp", "milp") if norm == "linf" else ("ibp", "lp")
    radii = (0.1, 0.3, 1.0) if norm == "linf" else (0.15, 0.45, 1.5)
    sources = {"x": 0, "relaxation": 0, "pgd": 0}
    for seed in range(6):
        net = random_net(seed, (2, 12, 12, 3)).float()
        x = point(seed).float()
        cert = Certifier(net, (2,))
        predicted = prediction(net, x)
        for label in (predicted, (predicted + 1) % 3):
            for eps in radii:
                for method in methods:
                    answers = {}
                    for steps in (0, 10):
                        answers[steps], witness = cert.certify(x, label, eps, norm, method, attack_steps=steps,
                                                               generator=torch.Generator().manual_seed(seed),
                                                               return_witness=True)
                        if answers[steps] == "NO":
                            assert_verified_witness(cert, witness, x, label, eps, norm)
                        else:
                            assert witness is None
                    if answers[0] == "NO":
                        sources["x" if label != predicted else "relaxation"] += 1
                    elif answers[10] == "NO":
                        sources["pgd"] += 1
                found = cert.attack_witness(x, label, eps, norm, steps=20, restarts=4,
                                            generator=torch.Generator().manual_seed(seed))
                if found is not None:
                    assert_verified_witness(cert, found, x, label, eps, norm)
    assert all(sources.values())  # each source of a NO is exercised


# ------------------------------------------------------------------ soundness of the values (issue 19, sec. 3)

@pytest.mark.parametrize("norm, big_m", [("linf", False), ("linf", True), ("l2", False)])
def test_lp_value_comes_from_the_dual_never_from_the_primal_objective(norm, big_m):
    """Issue 19, sec. 3: the LP's value is the Lagrangian dual function at the solver's multipliers,
    re-evaluated in float64, so it never exceeds the solver's primal objective (Clarabel's had exceeded
    its dual objective by up to 3.4e-7) and stays within the solvers' accuracy of it. By weak duality
    it is a lower bound for *any* multipliers: perturbed ones still give a value below the exact minimum
    (the MILP, checked against itself on the ℓ∞ ball and against the attained margin of the argmin)."""
    gaps = []
    for seed in range(4):
        net = random_net(seed, (3, 10, 10, 4), scale=2.0)
        x = point(seed, 3)
        label = prediction(net, x)
        cert = Certifier(net, (3,))
        bounds = cert.bounds(x, 0.3, norm, "ibp")
        exact = cert.margin_lower_bounds(x, label, 0.3, "linf", "milp", bounds) if norm == "linf" else None
        problem = RelaxedProblem(cert.network, norm, big_m=big_m)
        for target in (t for t in range(4) if t != label):
            direction = np.eye(4)[label] - np.eye(4)[target]
            value, argmin = problem.solve(x.numpy(), 0.3, bounds, direction)
            primal = problem.problem.value
            gaps.append(primal - value)
            assert value <= primal and primal - value <= 1e-6
            attained = float(cert.network.forward(torch.as_tensor(argmin)[None])[0] @ torch.as_tensor(direction))
            assert value <= attained + 1e-6
            if exact is not None:
                assert value <= exact[target]
            generator = np.random.default_rng(seed)
            for affine, above, tops in problem._dualized:
                for constraint in (affine, above, *tops):
                    constraint.save_dual_value(constraint.dual_value * generator.uniform(0.5, 1.5, constraint.shape))
            perturbed = problem.dual_value()
            assert perturbed <= value + 1e-12 and (exact is None or perturbed <= exact[target])
            assert perturbed <= attained
    assert max(gaps) > 0  # the primal objective did lie above the rigorous value somewhere


def test_milp_stays_exact_after_many_solves_on_one_certifier():
    """Issue 19, sec. 3: cvxpy's default warm start handed HiGHS the previous solution; on this network
    the 25th solve of a bisection on one Certifier returned −2.6e-7 where the exact margin is +5.9e-9.
    Every MILP is now solved cold: a bisection over the radius on one Certifier gives the values of a
    fresh one at every step."""
    net = random_net(0, (2, 10, 10, 3), scale=2.0)
    x = point(0)
    label = prediction(net, x)
    reused = Certifier(net, (2,))
    low, high = 0.0, 1.0
    for _ in range(25):
        eps = (low + high) / 2
        value = reused.margin_lower_bounds(x, label, eps, "linf", "milp", "ibp")
        fresh = Certifier(net, (2,)).margin_lower_bounds(x, label, eps, "linf", "milp", "ibp")
        np.testing.assert_allclose(value, fresh, rtol=0, atol=1e-9)
        low, high = (eps, high) if np.min(value) > 0 else (low, eps)


def float32_tie_net():
    """A float32 network whose float32 rounding breaks a certificate of its exact version: logits
    (0, 1024 − x₁ − x₂), class 1 (the label) where x₁ + x₂ < 1024. Over the ℓ∞ ball of radius 0.25 around
    (1023.25, c₂), c₂ = float32(0.25 − 2e-5), the exact margin is 0.25 − c₂ ≈ 2e-5 > 1e-6 (the old fixed
    tolerance), but the float32 point (1023.5, c₂ + 0.25 rounded down) in the ball has x₁ + x₂ within half a
    float32 spacing of 1024: the network computes the logits (0, 0) and argmax picks class 0."""
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0, 0.0], [-1.0, -1.0]]))
        linear.bias.copy_(torch.tensor([0.0, 1024.0]))
    c2 = np.float32(0.25 - 2e-5)
    witness = torch.tensor([[1023.5, np.nextafter(np.float32(c2 + np.float32(0.25)), np.float32(0))]])
    return nn.Sequential(linear).eval(), torch.tensor([1023.25, float(c2)]), 0.25, witness


def test_a_yes_holds_for_the_float32_network_not_only_its_exact_version():
    """Issue 19, sec. 3: a YES must leave no float32 counterexample in the ball. The exact margin of
    float32_tie_net is +2e-5 and every method's bound finds it, so a fixed tolerance of 1e-6 answers YES;
    the network as run misclassifies a float32 point of the ball. The default thresholds (the network's
    rounding bound, rsbook.relax.rounding) answer MAYBE or NO, never YES."""
    net, x, eps, witness = float32_tie_net()
    cert = Certifier(net, (2,))
    assert ball_distance(witness[0], x, "linf") <= eps and bool(cert.misclassified(witness, 1)[0])
    margins = cert.margin_lower_bounds(x, 1, eps, "linf", "lp")
    thresholds = cert.thresholds(x, 1, eps, "linf", "lp")
    assert 1e-6 < margins[0] < thresholds[0]
    for method in ("ibp", "dual", "lp", "milp"):
        assert cert.certify(x, 1, eps, "linf", method, attack_steps=0, tolerance=1e-6) == "YES"  # the old rule
        assert cert.certify(x, 1, eps, "linf", method, attack_steps=0) != "YES"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_rounding_bound_covers_the_float32_network_over_the_ball(norm):
    """rsbook.relax.rounding: |F_float32(x̃) − F(x̃)| ≤ e on every sampled float32 point of the ball, for
    MLPs and a conv net with large weights (F in float64 on the same weights: exact for these sizes up to
    float64's own error, far below e)."""
    from rsbook.relax.rounding import rounding_bound

    torch.manual_seed(0)
    nets = [(random_net(seed, (6, 40, 40, 5), scale=3.0).float(), (6,)) for seed in range(3)]
    nets.append((nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                               nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)).float(), (1, 8, 8)))
    for net, shape in nets:
        exact = copy.deepcopy(net).double()
        x = torch.randn(shape) * 3
        for eps in (0.01, 0.5):
            bound = rounding_bound(net, x, eps, norm)
            samples = ball_samples(x.double().reshape(-1), eps, norm, 500).float().reshape(-1, *shape)
            with torch.no_grad():
                gap = (net(samples).double() - exact(samples.double())).abs().amax(0).numpy()
            assert np.all(gap <= bound) and np.all(bound > 0)
            assert np.all(bound < 1e-2 * (1 + exact(samples.double()).abs().amax(0).detach().numpy()))


# ------------------------------------------------------------------ compiled once (DPP), re-solved

@pytest.mark.parametrize("norm, integer", [("linf", False), ("l2", False), ("linf", True)])
def test_problems_are_dpp_and_the_compiled_problem_is_reused(norm, integer):
    net = random_net(2, (3, 6, 6, 3))
    cert = Certifier(net, (3,))
    method = "milp" if integer else "lp"
    problem = cert.problem(norm, method)
    assert problem.is_dpp()
    x = point(2, 3)
    label = prediction(net, x)
    cert.margin_lower_bounds(x, label, 0.1, norm, method)
    compiled = problem.problem._cache.param_prog
    assert compiled is not None
    # new input, radius and bounds: the same compiled program, and the same values as a fresh problem
    for seed, eps in ((3, 0.2), (4, 0.05)):
        other = point(seed, 3)
        reused = cert.margin_lower_bounds(other, label, eps, norm, method)
        assert cert.problem(norm, method) is problem and problem.problem._cache.param_prog is compiled
        fresh = Certifier(net, (3,), cache=False).margin_lower_bounds(other, label, eps, norm, method)
        np.testing.assert_allclose(reused, fresh, atol=1e-6)
    assert problem.solves == 3 * 2


def test_module_level_cache_follows_weight_changes():
    net = random_net(5)
    x = point(5)
    first = certifier(net, (2,))
    assert certifier(net, (2,)) is first
    before = margin_lower_bounds(net, x, 0, 0.1, "linf", "lp")
    with torch.no_grad():
        net[0].weight.mul_(2.0)
    assert certifier(net, (2,)) is not first
    after = margin_lower_bounds(net, x, 0, 0.1, "linf", "lp")
    assert not np.allclose(before, after)


# ------------------------------------------------------------------ solver failures are errors

def test_infeasible_relaxation_raises_with_the_status_never_a_certificate():
    net = random_net(0)
    cert = Certifier(net, (2,))
    x = point(0)
    label = prediction(net, x)
    bounds = cert.bounds(x, 0.1, "linf", "ibp")
    wrong = [(lower + 100.0, upper + 100.0) for lower, upper in bounds]  # excludes every real pre-activation
    direction = np.eye(3)[label] - np.eye(3)[(label + 1) % 3]
    for integer in (False, True):
        with pytest.raises(SolverError) as caught:
            RelaxedProblem(cert.network, "linf", integer=integer).solve(x.numpy(), 0.1, wrong, direction)
        assert "infeasible" in caught.value.status
    for method in ("ibp", "dual", "lp", "milp"):  # bounds that exclude x itself are refused up front
        with pytest.raises(ValueError, match="bounds"):
            cert.certify(x, label, 0.1, "linf", method, wrong, attack_steps=0)


def test_time_limit_raises_with_the_solver_status():
    net = random_net(1, (2, 30, 30, 3), scale=3.0)
    cert = Certifier(net, (2,))
    x = point(1)
    with pytest.raises(SolverError) as caught:
        cert.margin_lower_bounds(x, prediction(net, x), 1.0, "linf", "milp", time_limit=1e-9)
    assert caught.value.status == "user_limit"


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": -0.1}, "eps"), ({"norm": "l1"}, "norm"), ({"method": "deeppoly"}, "method"), ({"method": "bab"}, "method"),
    ({"method": "milp", "norm": "l2"}, "ℓ∞"), ({"label": 3}, "label"), ({"bounds": "tight"}, "bounds"),
])
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    net = random_net(0)
    arguments = {"x": point(0), "label": 0, "eps": 0.1, "norm": "linf", "method": "lp", **kwargs}
    with pytest.raises(ValueError, match=match):
        margin_lower_bounds(net, **arguments)
    with pytest.raises(ValueError, match="shape"):
        margin_lower_bounds(net, torch.zeros(3), 0, 0.1)


# ------------------------------------------------------------------ robust training through the dual

def test_robust_loss_is_differentiable_and_matches_the_per_example_dual_bound():
    torch.manual_seed(0)
    net = mlp((2,), 2, hidden=(8, 8)).double()
    data = two_moons(32, seed=0)
    x, y = data.x.double(), data.labels
    value, not_certified = robust_loss(net, x, y, 0.05, "linf")
    value.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    cert = Certifier(net, (2,))
    per_example = [np.min(cert.margin_lower_bounds(x[i], int(y[i]), 0.05, "linf", "dual")) > 0 for i in range(32)]
    assert not_certified == pytest.approx(1 - np.mean(per_example))
    hinge, _ = robust_loss(net, x, y, 0.05, "linf", loss="hinge")  # the slides' margin loss
    with torch.no_grad():
        network = affine_network(net, (2,))
        spec = torch.nn.functional.one_hot(y, 2).double().unsqueeze(1) - torch.eye(2, dtype=torch.float64)
        margins = dual_margins(network, x, 0.05, "linf", spec, intermediate_bounds(network, x, 0.05, "linf", "dual"))
        expected = torch.relu(-margins).amax(1).mean()
    assert float(hinge.detach()) == pytest.approx(float(expected))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_crown_ibp_loss_bounds_the_margins_in_the_ball_at_every_beta(norm):
    # Zhang et al. 2020: β·CROWN-IBP + (1 − β)·IBP is a lower bound on every margin over the ball, so the
    # hinge loss of one example is at least the hinge of the margins at any point of the ball.
    net = random_net(5, (2, 12, 12, 3), scale=1.5)
    generator = torch.Generator().manual_seed(7)
    eps = 0.2
    for i in range(6):
        x = point(i)[None]
        label = torch.tensor([prediction(net, x[0])])
        noise = torch.randn(2000, 2, generator=generator, dtype=torch.float64)
        scale = torch.rand(2000, 1, generator=generator, dtype=torch.float64)
        inside = x + eps * (noise.sign() * scale if norm == "linf" else noise / noise.norm(dim=1, keepdim=True) * scale)
        with torch.no_grad():
            logits = net(inside)
        worst = torch.relu(logits.max(1).values - logits[:, label[0]]).max()
        losses = {}
        for beta in (0.0, 0.5, 1.0):
            value, not_certified = robust_loss(net, x, label, eps, norm, loss="hinge", method="crown-ibp", beta=beta)
            losses[beta] = float(value.detach())
            assert losses[beta] >= float(worst) - 1e-12
            if worst > 0:
                assert not_certified == 1.0
        ibp, _ = robust_loss(net, x, label, eps, norm, loss="hinge", method="ibp")
        assert losses[0.0] == pytest.approx(float(ibp.detach()))
    value, _ = robust_loss(net, point(0)[None], label, eps, norm, method="crown-ibp", beta=0.5)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError, match="beta"):
        robust_loss(net, point(0)[None], label, eps, norm, method="crown-ibp", beta=1.5)
    with pytest.raises(ValueError, match="method"):
        robust_loss(net, point(0)[None], label, eps, norm, method="crown")


def test_crown_ibp_beta_falls_from_one_to_zero_over_the_ramp():
    assert crown_ibp_beta(0, 10) == pytest.approx(0.9)
    assert crown_ibp_beta(4, 10) == pytest.approx(0.5)
    assert crown_ibp_beta(9, 10) == crown_ibp_beta(50, 10) == 0.0
    assert crown_ibp_beta(0, 0) == 0.0


def test_epsilon_ramp():
    assert epsilon_schedule(0, 10, 0.5) == pytest.approx(0.05)
    assert epsilon_schedule(4, 10, 0.5) == pytest.approx(0.25)
    assert epsilon_schedule(9, 10, 0.5) == epsilon_schedule(50, 10, 0.5) == 0.5
    assert epsilon_schedule(0, 0, 0.5) == 0.5


def test_robust_training_certifies_more_and_resumes_to_the_same_weights(tmp_path):
    data = two_moons(200, seed=1)
    kwargs = dict(arch="mlp", input_shape=(2,), num_classes=2, hidden=(16, 16), batch_size=50, lr=0.01, seed=0)
    robust = train_model(tmp_path / "dual", data, mode="dual", epochs=30, eps=0.25, ramp_epochs=10, **kwargs)
    standard = train_model(tmp_path / "standard", data, mode="standard", epochs=30, **kwargs)
    crown_ibp = train_model(tmp_path / "crown-ibp", data, mode="crown-ibp", epochs=30, eps=0.25, ramp_epochs=10,
                            **kwargs)
    test = two_moons(200, seed=2)
    fractions = {}
    for name, path, method in (("dual", robust, "dual"), ("standard", standard, "dual"),
                               ("crown-ibp", crown_ibp, "crown-ibp"), ("standard, crown-ibp", standard, "crown-ibp")):
        with torch.no_grad():
            fractions[name] = 1 - robust_loss(load_model(path), test.x, test.labels, 0.25, method=method)[1]
    assert fractions["dual"] > fractions["standard"] + 0.1
    assert fractions["crown-ibp"] > fractions["standard, crown-ibp"] + 0.1
    train_model(tmp_path / "resumed", data, mode="dual", epochs=13, eps=0.25, ramp_epochs=10, **kwargs)
    resumed = train_model(tmp_path / "resumed", data, mode="dual", epochs=30, eps=0.25, ramp_epochs=10, **kwargs)
    for a, b in zip(load_model(resumed).state_dict().values(), load_model(robust).state_dict().values()):
        assert torch.equal(a, b)


def test_two_moons_is_seeded_and_balanced():
    a, b = two_moons(101, seed=3), two_moons(101, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    assert int(a.labels.sum()) in (50, 51) and a.x.shape == (101, 2)
    assert not torch.equal(two_moons(101, seed=4).x, a.x)


# ------------------------------------------------------------------ the pictures

def test_halfplane_polygon_of_a_square():
    directions = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    polygon = halfplane_polygon(directions, np.array([-1.0, -2.0, -3.0, -4.0]))
    np.testing.assert_allclose(polygon[:4], [[-1, -2], [3, -2], [3, 4], [-1, 4]])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_output_polytope_contains_the_image_of_the_ball(norm):
    # Wong & Kolter 2018, Fig. 1: the convex outer bound contains the (non-convex) image of the ball.
    net = random_net(4, (2, 12, 12, 2), scale=2.0)
    polytope = output_polytope(net, point(4), 0.3, norm, directions=36, points=41)
    image = polytope["image"]
    for name in ("lp", "dual"):
        polygon = polytope[name][:-1]
        centre = polygon.mean(0)
        for k in range(len(polygon)):  # every image point on the inner side of every edge
            edge = polygon[(k + 1) % len(polygon)] - polygon[k]
            normal = np.array([-edge[1], edge[0]])
            sign = np.sign(normal @ (centre - polygon[k]))
            assert np.all(sign * ((image - polygon[k]) @ normal) >= -1e-7)
    (x0, x1), (y0, y1) = polytope["box"]
    assert np.all((image[:, 0] >= x0 - 1e-9) & (image[:, 0] <= x1 + 1e-9) & (image[:, 1] >= y0 - 1e-9)
                  & (image[:, 1] <= y1 + 1e-9))
    layer, neuron, lower, upper = widest_unstable(polytope["bounds"])
    assert lower < 0 < upper
    # the leftmost point of each polygon is that method's lower bound on the worst-case margin
    cert = Certifier(net, (2,))
    label = polytope["label"]
    margins = {m: cert.margin_lower_bounds(point(4), label, 0.3, norm, m, polytope["bounds"])[1 - label]
               for m in ("lp", "dual")}
    assert polytope["lp"][:, 0].min() == pytest.approx(margins["lp"], abs=1e-6)
    assert polytope["dual"][:, 0].min() == pytest.approx(margins["dual"], abs=1e-9)
    assert image[:, 0].min() >= margins["lp"] - 1e-9


# ------------------------------------------------------------------ evaluation over a test subsample

def test_certify_examples_is_resumable_and_its_shortcuts_agree_with_direct_answers(tmp_path):
    from rsbook.relax.evaluate import certified_accuracy_table, certify_examples, compare_decisions

    torch.manual_seed(0)
    net = train_model_quick(two_moons(200, seed=1))
    data = two_moons(24, seed=5)
    grid = [0.02, 0.1, 0.25]
    kwargs = dict(methods=("ibp", "dual", "crown", "alpha-crown", "lp", "milp", "bab"), attack_steps=20, seed=0)
    results = certify_examples(net, data, grid, "linf", out=tmp_path / "run", **kwargs)
    again = certify_examples(net, data, grid, "linf", out=tmp_path / "run", **kwargs)
    assert again.equals(results)  # nothing recomputed, same rows
    cert = Certifier(net, (2,))
    implied = results[results["method"].isin(["alpha-crown", "lp", "milp"]) & (results["answer"] == "YES")]
    assert (~implied["solved"]).any()  # the shortcuts were taken
    for row in implied.itertuples():  # and every implied YES is the method's own answer
        x, label = data[row.idx]
        assert cert.certify(x, label, row.eps, "linf", row.method, attack_steps=0) == "YES"
    for row in results[(results["method"] == "milp") & (results["answer"] != "YES")].itertuples():
        x, label = data[row.idx]
        assert cert.certify(x, label, row.eps, "linf", "milp", attack_steps=0) != "YES"  # no YES was missed
    solved = results[(results["method"] == "milp") & results["solved"]]
    assert len(solved) > 0  # the exact method decided something the shortcuts could not
    refuted = results[results["answer"] == "NO"]  # every NO row records its verified witness's distance
    assert len(refuted) and bool((refuted["witness_distance"] <= refuted["eps"]).all())
    assert results.loc[results["answer"] != "NO", "witness_distance"].isna().all()
    table = certified_accuracy_table(results, ("ibp", "dual", "crown", "alpha-crown", "lp", "milp", "bab"))
    for a, b in [("ibp", "lp"), ("dual", "alpha-crown"), ("crown", "alpha-crown"), ("alpha-crown", "lp"),
                 ("lp", "milp")]:
        assert np.all(table.loc[a] <= table.loc[b] + 1e-12), (a, b)
    assert table.loc["bab"].equals(table.loc["milp"])  # complete: the exact answers here
    decisions = compare_decisions({"moons": results})
    assert decisions.loc["all", "solved"] == len(solved) and decisions.loc["all", "errors"] == 0
    assert decisions.loc["all", "agree"] == decisions.loc["all", "answered"] == len(solved)
    assert decisions.loc["all", "milp seconds"] == pytest.approx(solved["seconds"].sum())
    assert np.all(table.loc["milp"] <= table.loc["PGD (upper bound)"] + 1e-12)


def train_model_quick(data):
    """A small two-moons network, trained in a fraction of a second."""
    net = mlp((2,), 2, hidden=(12, 12))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(net(data.x), data.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def test_flatten_index_joins_row_levels():
    import pandas as pd

    from rsbook.relax.evaluate import flatten_index

    frame = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.MultiIndex.from_tuples([("standard", 0.5), ("dual", 1.0)],
                                                                          names=["model", "ε"]))
    flat = flatten_index(frame)
    assert list(flat.index) == ["standard / 0.5", "dual / 1"] and flat.index.name == "model / ε"
    assert flat["a"].tolist() == [1.0, 2.0]


def test_instructive_point_always_has_a_triangle_to_draw():
    """The chapter draws the triangle relaxation of one unstable ReLU at the chosen point; a point whose
    ball leaves every ReLU stable has none (the smoke build once picked such a point and failed)."""
    from rsbook.relax.geometry import instructive_point

    net = train_model_quick(two_moons(200, seed=1))
    data = two_moons(24, seed=5)
    cert = Certifier(net, (2,))
    for eps in (0.05, 0.25):
        idx = instructive_point(net, data, eps, "linf", candidates=24)
        lower, upper = widest_unstable(cert.bounds(data[idx][0], eps, "linf", "ibp+dual"))[2:]
        assert lower < 0 < upper
    with pytest.raises(ValueError, match="unstable ReLU"):
        instructive_point(net, data, 1e-9, "linf", candidates=24)
