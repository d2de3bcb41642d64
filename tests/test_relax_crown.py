"""rsbook.relax.crown and the order of the bounds (issue 19, sections 1 and 2).

CROWN against a closed form derived here on one-hidden-layer networks (Zhang et al. 2018, Sec. 3.2);
every method's bound below the exact MILP margin and below the margin PGD reaches, on random and on
trained networks, ℓ∞ and ℓ₂; the documented order (rsbook.relax.certify.GUARANTEED) on every target,
and the pairs that are not ordered found both ways; α-CROWN ≥ CROWN, its value the bound at its own
(projected) slopes whatever the optimiser does; the α-CROWN intermediate bounds inside every cheaper
kind and valid over the ball.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from test_relax import ball_samples, point, prediction, random_net, train_model_quick

from rsbook.attacks import pgd
from rsbook.relax import certify, margin_lower_bounds
from rsbook.relax.certify import CHEAP, GUARANTEED, METHODS, Certifier
from rsbook.relax.crown import KINDS, crown_margins, layer_bounds, optimise_bound
from rsbook.relax.dual import dual_margins
from rsbook.relax.evaluate import margin_table, order_table
from rsbook.relax.network import affine_network
from rsbook.relax.toy import two_moons

pytestmark = pytest.mark.usefixtures("one_thread")


def crown_closed_form(net, x, eps: float, norm: str, label: int, target: int) -> float:
    """CROWN's bound on f_label − f_target of a one-hidden-layer network W2 ReLU(W1 x + b1) + b2, written
    out neuron by neuron: exact first-layer bounds l, u; λ_j = (e_label − e_target) · W2[:, j]; an
    unstable neuron with λ_j ≥ 0 keeps λ_j a_j x̂_j with a_j = 1 if u_j > −l_j else 0, one with λ_j < 0
    gets λ_j s_j (x̂_j − l_j) with s_j = u_j / (u_j − l_j) (the triangle's top edge); then the minimum of
    the resulting affine function of x̃ over the ball (dual norm of its coefficients)."""
    first, second = net[0], net[2]
    w1, b1 = first.weight.detach().numpy(), first.bias.detach().numpy()
    w2, b2 = second.weight.detach().numpy(), second.bias.detach().numpy()
    x = x.numpy()

    def dual_norm(row):
        return np.abs(row).sum() if norm == "linf" else np.sqrt((row ** 2).sum())

    centre = w1 @ x + b1
    lower = np.array([centre[j] - eps * dual_norm(w1[j]) for j in range(len(b1))])
    upper = np.array([centre[j] + eps * dual_norm(w1[j]) for j in range(len(b1))])
    lam = w2[label] - w2[target]
    coefficient, constant = np.zeros(len(x)), b2[label] - b2[target]
    for j in range(len(b1)):
        if upper[j] <= 0:
            continue
        if lower[j] >= 0:
            slope, offset = lam[j], 0.0
        elif lam[j] >= 0:
            slope, offset = lam[j] * (1.0 if upper[j] > -lower[j] else 0.0), 0.0
        else:
            s = upper[j] / (upper[j] - lower[j])
            slope, offset = lam[j] * s, -lam[j] * s * lower[j]
        coefficient += slope * w1[j]
        constant += slope * b1[j] + offset
    return float(constant + coefficient @ x - eps * dual_norm(coefficient))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_crown_equals_its_closed_form_on_one_hidden_layer(norm):
    checked = 0
    for seed in range(6):
        net = random_net(seed, (3, 12, 4), scale=2.0)
        x = point(seed, 3)
        label = prediction(net, x)
        for eps in (0.1, 0.5):
            crown = margin_lower_bounds(net, x, label, eps, norm, "crown")
            for target in (t for t in range(4) if t != label):
                assert crown[target] == pytest.approx(crown_closed_form(net, x, eps, norm, label, target), abs=1e-12)
                checked += 1
    assert checked == 6 * 2 * 3


def pgd_margins(net, x, label: int, eps: float, norm: str, classes: int, seed: int) -> np.ndarray:
    """min over x and PGD's points (8 random starts) of f_label − f_t: an upper bound on the exact margin."""
    batch = x[None].expand(8, *x.shape).contiguous()
    labels = torch.full((8,), label)
    found = pgd(net, batch, labels, eps, norm=norm, steps=30, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = net(torch.cat([x[None], found]))
    return (logits[:, label:label + 1] - logits).min(0).values.numpy()


def networks():
    """Random MLPs and a trained two-moons MLP (float64), each with an input."""
    out = [(random_net(seed, (3, 10, 10, 4), scale=1.5), point(seed, 3)) for seed in range(3)]
    torch.manual_seed(0)
    trained = train_model_quick(two_moons(200, seed=1)).double()
    out.append((trained, two_moons(8, seed=5).x[3].double()))
    return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_bound_is_below_the_exact_margin_and_the_attacks_margin(norm):
    # Issue 19, sec. 1: each method's bound ≤ the exact MILP margin and ≤ a PGD margin, random and trained nets.
    methods = METHODS if norm == "linf" else tuple(m for m in METHODS if m != "milp")
    for k, (net, x) in enumerate(networks()):
        label = prediction(net, x)
        cert = Certifier(net, tuple(x.shape))
        classes = cert.num_classes
        for eps in (0.1, 0.3) if k == 0 else (0.3,):
            attacked = pgd_margins(net, x, label, eps, norm, classes, k)
            values = {m: cert.margin_lower_bounds(x, label, eps, norm, m) for m in methods}
            others = np.arange(classes) != label
            for method, value in values.items():
                assert np.all(value[others] <= attacked[others] + 1e-9), (method, value, attacked)
                if norm == "linf":
                    assert np.all(value[others] <= values["milp"][others] + 1e-6), (method, value, values["milp"])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_documented_order_holds_on_every_target(norm):
    # rsbook.relax.certify: with every method on its default bounds, each GUARANTEED pair holds per target.
    pairs = [(a, b) for a, b in GUARANTEED if norm == "linf" or b != "milp"]
    for net, x in networks():
        data = [(x, prediction(net, x))]
        margins = margin_table(net, data, [0], [0.1, 0.4], norm, METHODS)
        table = order_table(margins, pairs)
        assert (table["holds"] == 1.0).all(), table
        assert (table["compared"] > 0).all()


def test_pairs_outside_the_order_are_found_both_ways():
    # Not provable, and not true: dual against crown (neither slope is better for every neuron for every
    # specification), ibp against dual (either can win).
    pairs = [("dual", "crown"), ("crown", "dual"), ("ibp", "dual"), ("dual", "ibp")]
    frames = []
    for seed in range(6):
        net = random_net(seed, (2, 12, 12, 3), scale=2.0)
        frames.append(margin_table(net, [(point(seed), prediction(net, point(seed)))], [0], [0.2, 0.5], "linf",
                                   CHEAP).assign(idx=seed))
    torch.manual_seed(0)
    trained = train_model_quick(two_moons(200, seed=1)).double()
    test = two_moons(12, seed=5)
    frames.append(margin_table(trained, [(test.x[i].double(), int(test.labels[i])) for i in range(12)], range(12),
                               [0.3], "linf", CHEAP).assign(idx=lambda f: f["idx"] + 100))
    table = order_table(pd.concat(frames), pairs)
    assert (table["holds"] < 1.0).all(), table
    assert (table["guaranteed"] == "no").all()


def margin_problem(seed: int, widths):
    """A random float64 MLP with 3 inputs, its affine form, a batch of one input, its predicted class and the
    margin specification e_label − e_t (all targets)."""
    net = random_net(seed, widths, scale=2.0)
    x = point(seed, 3)[None]
    label = prediction(net, x[0])
    classes = widths[-1]
    spec = torch.eye(classes, dtype=torch.float64)[label] - torch.eye(classes, dtype=torch.float64)
    return net, affine_network(net, (3,)), x, label, spec


def test_alpha_crown_is_at_least_crown_and_its_value_is_the_bound_at_its_projected_slopes():
    # Xu et al. 2021: any slopes in [0, 1] give a sound bound; the value reported is the one at the final
    # (projected) slopes, never at an unprojected iterate — here with a step size that overshoots [0, 1].
    improved = 0
    for seed in range(3):
        net, network, x, label, spec = margin_problem(seed, (3, 16, 16, 4))
        exact = Certifier(net, (3,)).margin_lower_bounds(x[0], label, 0.3, "linf", "milp")
        bounds = layer_bounds(network, x, 0.3, "linf", "crown")
        crown = crown_margins(network, x, 0.3, "linf", spec, bounds)
        dual = dual_margins(network, x, 0.3, "linf", spec, bounds)
        for lr in (0.1, 50.0):
            found = optimise_bound(network, x, 0.3, "linf", spec, bounds, lr=lr)
            assert torch.all(found.value >= torch.maximum(crown, dual))
            assert all(float(s.min()) >= 0.0 and float(s.max()) <= 1.0 for s in found.slopes)
            again = dual_margins(network, x, 0.3, "linf", spec, bounds, lower_slopes=found.slopes)
            assert torch.equal(again, found.value)  # the reported value is the bound at the kept slopes
            others = np.arange(4) != label
            assert np.all(found.value[0].numpy()[others] <= exact[others] + 1e-6)
        improved += int((found.value > torch.maximum(crown, dual) + 1e-6).sum())
    assert improved > 0  # the optimisation does tighten


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_crown_and_alpha_crown_bounds_hold_over_the_ball_and_nest(norm):
    for seed in range(3):
        network = affine_network(random_net(seed, (3, 10, 10, 10, 3)), (3,))
        x = point(seed, 3)[None]
        kinds = {kind: layer_bounds(network, x, 0.4, norm, kind) for kind in KINDS}
        samples = ball_samples(x[0], 0.4, norm, seed=seed)
        for kind, bounds in kinds.items():
            for i, (lower, upper) in enumerate(bounds, start=1):
                values = network.forward(samples, upto=i)
                assert torch.all(values >= lower - 1e-12) and torch.all(values <= upper + 1e-12), kind
        for kind in ("ibp", "dual", "ibp+dual", "crown"):  # α-CROWN's lie inside every cheaper kind
            for (la, ua), (lk, uk) in zip(kinds["alpha-crown"], kinds[kind]):
                assert torch.all(la >= lk) and torch.all(ua <= uk)


def test_a_conv_network_is_bounded_by_every_method():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(48, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3)).double().eval()
    x = torch.rand(1, 8, 8, dtype=torch.float64)
    label = int(net(x[None]).argmax())
    cert = Certifier(net, (1, 8, 8))
    values = {m: cert.margin_lower_bounds(x, label, 0.05, "linf", m) for m in METHODS}
    others = np.arange(3) != label
    for a, b in GUARANTEED:
        assert np.all(values[a][others] <= values[b][others] + 1e-6), (a, b)
    assert certify(net, x, label, 0.0, "linf", "alpha-crown") == "YES"
