"""Issue 20, sec. 5: DDS, ANCER and RANCER read the model's outputs as declared (rsbook.ancer.outputs).

The optimisers average softmax(f(x + noise)) (thesis eq. 3.6) and RANCER differentiates the cross-entropy of
f (eq. 4.7); a model that ends in a softmax, as the DDS/ANCER authors' released CIFAR-10 ResNet-18 does, was
smoothed through two softmaxes without a word. Now such a model runs with outputs="probabilities" and gives
the sigma its logit version gives with outputs="logits"; left at the default it is refused, naming the
argument; and a logit model declared as probabilities is refused too. CERTIFY counts argmax f, which the
final softmax does not change."""

import pytest
import torch
from torch import nn

from rsbook.ancer.anisotropic import (
    certify,
    check_options,
    optimize_ancer,
    optimize_isotropic,
    optimize_rancer,
)
from rsbook.ancer.curvature import safe_directions
from rsbook.ancer.outputs import are_probabilities, to_probabilities

SETTINGS = {"iterations": 3, "learning_rate": 0.05, "num_samples": 16}


def _models():
    """A small logit network, the same network ending in nn.Softmax, and in nn.LogSoftmax (eval mode)."""
    torch.manual_seed(0)
    logits = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    return logits, nn.Sequential(logits, nn.Softmax(dim=1)).eval(), nn.Sequential(logits, nn.LogSoftmax(dim=1)).eval()


X = torch.tensor([[0.3, -0.2], [-0.5, 0.4]])


def _optimise(method, model, **options):
    generator = torch.Generator().manual_seed(3)
    if method == "isotropic":
        return optimize_isotropic(model, X, 0.25, generator=generator, **SETTINGS, **options)
    if method == "ancer":
        return optimize_ancer(model, X, torch.tensor([0.25, 0.3]), generator=generator, **SETTINGS, **options)
    return optimize_rancer(model, X, torch.tensor([0.25, 0.3]), generator=generator, **SETTINGS, **options)


@pytest.mark.parametrize("method", ["isotropic", "ancer", "rancer"])
def test_a_softmax_model_declared_as_probabilities_gets_its_logit_versions_sigma(method):
    logits, softmax, log_softmax = _models()
    reference = _optimise(method, logits)
    torch.testing.assert_close(_optimise(method, softmax, outputs="probabilities").sigma, reference.sigma)
    torch.testing.assert_close(_optimise(method, log_softmax).sigma, reference.sigma)  # log-probabilities are logits


@pytest.mark.parametrize("method", ["isotropic", "ancer", "rancer"])
def test_a_softmax_model_read_as_logits_is_refused_not_smoothed_twice(method):
    logits, softmax, _ = _models()
    with pytest.raises(ValueError, match="already are probabilities.*pass outputs='probabilities'"):
        _optimise(method, softmax)
    with pytest.raises(ValueError, match="outputs='probabilities', but the model's outputs are not probabilities"):
        _optimise(method, logits, outputs="probabilities")
    with pytest.raises(ValueError, match="outputs must be 'logits'"):
        _optimise(method, logits, outputs="softmax")


def test_the_hessian_directions_read_the_outputs_as_declared():
    logits, softmax, _ = _models()
    rotation, values = safe_directions(logits, X)
    rotation_p, values_p = safe_directions(softmax, X, outputs="probabilities")
    torch.testing.assert_close(values_p, values)
    torch.testing.assert_close(rotation_p.dense(), rotation.dense())
    with pytest.raises(ValueError, match="pass outputs='probabilities'"):
        safe_directions(softmax, X)


def test_certify_counts_the_argmax_which_a_final_softmax_keeps():
    logits, softmax, _ = _models()
    runs = [certify(model, X[0], torch.tensor([0.2, 0.3]), num_classes=3, n0=50, n=500, alpha=0.01, batch_size=500,
                    generator=torch.Generator().manual_seed(0)) for model in (logits, softmax)]
    assert runs[0] == runs[1]


def test_the_check_tolerates_the_rounding_of_half_precision_softmax():
    scores = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0)) * 3
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert are_probabilities(torch.softmax(scores.to(dtype), dim=1))
        assert not are_probabilities(scores.to(dtype))
    assert not are_probabilities(torch.tensor([[0.5, 0.6]]))  # in [0, 1] but not summing to 1: logits
    assert torch.equal(to_probabilities(scores, "logits"), torch.softmax(scores, dim=1))


def test_check_options_checks_an_optimisers_settings_without_a_model():
    check_options("RANCER", {**SETTINGS, "kappa": 2.0, "clip_sigma": [0.15, 0.15], "rank": 2,
                             "outputs": "probabilities"})
    for method, options, message in [
        ("Isotropic", {**SETTINGS, "kappa": 1.0}, r"unknown \['kappa'\]"),
        ("ANCER", {"iterations": 3}, r"missing \['learning_rate', 'num_samples'\]"),
        ("ANCER", {**SETTINGS, "outputs": "probs"}, "outputs must be 'logits'"),
        ("RANCER", {**SETTINGS, "clip_sigma": 0.15}, "clip_sigma must be"),
        ("Isotropic", {**SETTINGS, "min_sigma": 0}, "min_sigma must be a finite number > 0"),
        ("Fixed", {}, "method must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_options(method, options)
