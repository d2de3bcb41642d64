"""rsbook.relax.bab: branch and bound on ReLU splits (issue 19, section 2).

It gives the MILP's answers on small random networks, including where α-CROWN alone cannot decide; a
NO carries a verified witness; its node and time limits give MAYBE; the split constraints' β-terms
keep the bound sound on the domain (Wang et al. 2021, β-CROWN); bad limits are refused by name.
"""

import numpy as np
import pytest
import torch
from test_relax import assert_verified_witness, ball_samples, point, prediction, random_net
from test_relax_crown import margin_problem

from rsbook.relax import certify
from rsbook.relax.certify import Certifier
from rsbook.relax.crown import layer_bounds
from rsbook.relax.dual import dual_margins

pytestmark = pytest.mark.usefixtures("one_thread")

BRANCHING = (7, 0.5)  # (seed, ε): α-CROWN leaves a target open, the exact margin is positive


def small_net(seed: int):
    return random_net(seed, (3, 16, 16, 3), scale=2.0).float(), point(seed, 3).float()


def test_bab_gives_the_milps_answers_on_small_random_networks():
    answers = {"YES": 0, "NO": 0}
    branched = 0
    for seed in range(6):
        net, x = small_net(seed)
        cert = Certifier(net, (3,))
        label = prediction(net, x)
        for eps in (0.3, 0.55):
            exact = cert.decide(x, label, eps, "linf", "milp")[0]
            cert.forget()
            assert cert.decide(x, label, eps, "linf", "bab")[0] == exact, (seed, eps)
            answers[exact] += 1
            if exact == "YES" and cert.decide(x, label, eps, "linf", "alpha-crown")[0] != "YES":
                branched += 1
    assert answers["YES"] and answers["NO"] and branched  # both answers, and a YES only splitting could give


def test_a_no_from_bab_carries_a_verified_witness():
    refuted = 0
    for seed in range(4):
        net, x = small_net(seed)
        cert = Certifier(net, (3,))
        label = prediction(net, x)
        answer, witness = cert.certify(x, label, 0.55, "linf", "bab", attack_steps=0, return_witness=True)
        if answer == "NO":
            assert_verified_witness(cert, witness, x, label, 0.55, "linf")
            refuted += 1
        else:
            assert witness is None
    assert refuted  # found by the search itself (certify's own attack is off)
    wrong_label = (prediction(net, x) + 1) % 3  # x itself misclassified: NO with x as the witness
    answer, witness = certify(net, x, wrong_label, 0.1, "linf", "bab", attack_steps=0, return_witness=True)
    assert answer == "NO"
    assert_verified_witness(cert, witness, x, wrong_label, 0.1, "linf")


def test_node_and_time_limits_give_maybe():
    seed, eps = BRANCHING
    net, x = small_net(seed)
    cert = Certifier(net, (3,))
    label = prediction(net, x)
    assert cert.decide(x, label, eps, "linf", "alpha-crown")[0] == "MAYBE"
    assert cert.decide(x, label, eps, "linf", "bab")[0] == "YES"
    assert cert.decide(x, label, eps, "linf", "bab", node_limit=1)[0] == "MAYBE"
    assert cert.certify(x, label, eps, "linf", "bab", time_limit=1e-6, attack_steps=0) == "MAYBE"
    with pytest.raises(ValueError, match="node_limit"):
        cert.decide(x, label, eps, "linf", "bab", node_limit=0)
    with pytest.raises(ValueError, match="time_limit"):
        cert.decide(x, label, eps, "linf", "bab", time_limit=-1.0)


def test_bab_in_l2_is_never_contradicted():
    for seed in range(3):
        net, x = small_net(seed)
        cert = Certifier(net, (3,))
        label = prediction(net, x)
        for eps in (0.4, 0.9):
            answer, witness = cert.certify(x, label, eps, "l2", "bab", attack_steps=0, return_witness=True)
            if answer == "YES":
                samples = ball_samples(x.double(), eps, "l2", 3000, seed).float()
                assert not bool(cert.misclassified(samples, label).any())
                assert not cert.attack(x, label, eps, "l2", steps=40, restarts=8,
                                       generator=torch.Generator().manual_seed(seed))
            elif answer == "NO":
                assert_verified_witness(cert, witness, x, label, eps, "l2")


@pytest.mark.parametrize("sign", [1, -1])
def test_split_terms_keep_the_bound_sound_on_the_domain(sign):
    # β-CROWN (Wang et al. 2021): with x̂_j clipped to the domain's sign and −β σ x̂_j in the objective, the
    # backward pass bounds the margin over {x̃ in the ball : σ x̂_j ≥ 0} for any β ≥ 0 and slopes in [0, 1].
    generator = torch.Generator().manual_seed(sign + 5)
    for seed in range(3):
        net, network, x, label, spec = margin_problem(seed, (3, 12, 12, 3))
        bounds = layer_bounds(network, x, 0.5, "linf", "crown")
        lower, upper = bounds[0]
        j = int(torch.nonzero((lower[0] < 0) & (upper[0] > 0))[0])
        clipped = [(lower.clone(), upper.clone()), bounds[1]]
        (clipped[0][0 if sign > 0 else 1])[0, j] = 0.0
        splits = [torch.zeros(1, 12, dtype=torch.int8), torch.zeros(1, 12, dtype=torch.int8)]
        splits[0][0, j] = sign
        samples = ball_samples(x[0], 0.5, "linf", 4000, seed)
        inside = samples[sign * network.forward(samples, upto=1)[:, j] >= 0]
        true = (network.forward(inside) @ spec.T).min(0).values.numpy()
        for _ in range(5):
            betas = [torch.rand(1, 3, 12, generator=generator, dtype=torch.float64) * 3 for _ in range(2)]
            slopes = [torch.rand(1, 3, 12, generator=generator, dtype=torch.float64) for _ in range(2)]
            value = dual_margins(network, x, 0.5, "linf", spec, clipped, lower_slopes=slopes, splits=splits,
                                 betas=betas)[0].numpy()
            others = np.arange(3) != label
            assert np.all(value[others] <= true[others] + 1e-9)
