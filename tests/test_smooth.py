"""PREDICT and CERTIFY of Cohen et al. 2019 (Sec. 3.2): guarantees tested statistically and analytically."""

import numpy as np
import pytest
import torch
from conftest import Constant, Linear2  # noqa: E402  (shared base classifiers)
from scipy.stats import norm

from rsbook.smooth import ABSTAIN, Smooth


def _linear_setup(distance):
    w = torch.tensor([0.6, -0.8])  # unit norm
    x = torch.tensor([0.3, 0.1])
    b = distance - float(w @ x)  # w.x + b = distance > 0: the true class is 1, at this l2 distance
    return Linear2(w, b).eval(), x


def test_certify_is_sound_and_not_trivial():
    # Theorem 1 is tight for a linear f (App. B): the true robust radius is the distance to the
    # boundary, p_A = Phi(distance / sigma). Proposition 2: the certified radius exceeds it with
    # probability at most alpha. Checked over 2,000 independent CERTIFY calls.
    sigma, distance, alpha, trials = 0.5, 0.6, 0.01, 2000
    model, x = _linear_setup(distance)
    smooth = Smooth(model, num_classes=2, sigma=sigma)
    gen = torch.Generator().manual_seed(0)
    preds, radii = zip(*(smooth.certify(x, n0=32, n=1000, alpha=alpha, batch_size=1000, generator=gen)
                         for _ in range(trials)))
    preds, radii = np.array(preds), np.array(radii)
    assert set(preds) <= {1, ABSTAIN}
    too_large = np.mean((preds == 1) & (radii > distance))
    assert too_large <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)
    # and the certificate is informative: on average close to the true radius (the CP lower bound
    # with n = 1000 costs a few percent), so an always-abstaining certify fails here
    assert np.mean(preds == 1) > 0.99
    assert 0.85 * distance < radii.mean() < distance


def test_certify_radius_matches_clopper_pearson_of_counts():
    # With a constant base classifier every sample hits the class: p_A = alpha^(1/n), R = sigma Phi^-1(p_A).
    smooth = Smooth(Constant().eval(), num_classes=4, sigma=0.25)
    pred, radius = smooth.certify(torch.zeros(3, 5, 5), n0=10, n=100000, alpha=0.001, batch_size=4096)
    assert pred == 2
    assert radius == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 100000)), rel=1e-9)


def test_certify_abstains_on_a_coin_flip():
    class Coin(torch.nn.Module):
        def forward(self, batch):
            return torch.stack([batch[:, 0], -batch[:, 0]], dim=1)  # class by the sign of the noise

    smooth = Smooth(Coin().eval(), num_classes=2, sigma=1.0)
    gen = torch.Generator().manual_seed(1)
    outcomes = [smooth.certify(torch.zeros(1), 100, 1000, 0.001, 500, generator=gen) for _ in range(50)]
    assert all(o == (ABSTAIN, 0.0) for o in outcomes)


def test_predict_guarantee_and_abstention():
    # Proposition 1: PREDICT returns a class other than g(x) with probability <= alpha.
    model, x = _linear_setup(0.05)  # p_A = Phi(0.1) = 0.54: close call
    smooth = Smooth(model, num_classes=2, sigma=0.5)
    gen = torch.Generator().manual_seed(2)
    out = np.array([smooth.predict(x, n=200, alpha=0.05, batch_size=200, generator=gen) for _ in range(1000)])
    assert np.mean(out == 0) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 1000)
    assert np.mean(out == ABSTAIN) > 0.5  # a close call is mostly declined at n = 200
    far, x_far = _linear_setup(2.0)
    assert Smooth(far, 2, 0.5).predict(x_far, n=100, alpha=0.001, batch_size=64, generator=gen) == 1


def test_same_generator_seed_same_answer_and_batching_invariance():
    model, x = _linear_setup(0.3)
    smooth = Smooth(model, num_classes=2, sigma=0.5)
    a = smooth.certify(x, 50, 2000, 0.001, 256, generator=torch.Generator().manual_seed(5))
    b = smooth.certify(x, 50, 2000, 0.001, 256, generator=torch.Generator().manual_seed(5))
    assert a == b
    counts = smooth.sample_counts(x, 1000, 1000, generator=torch.Generator().manual_seed(3))
    assert counts.dtype == torch.long and counts.shape == (2,) and int(counts.sum()) == 1000


def test_bad_input_names_the_argument():
    model, x = _linear_setup(0.3)
    with pytest.raises(ValueError, match="sigma"):
        Smooth(model, 2, -0.5)
    with pytest.raises(ValueError, match="sigma"):
        Smooth(model, 2, 0.0)
    with pytest.raises(ValueError, match="num_classes"):
        Smooth(model, 1, 0.5)
    smooth = Smooth(model, 2, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        smooth.certify(x, 10, 100, 1.0, 10)
    with pytest.raises(ValueError, match="alpha"):
        smooth.predict(x, 100, 0.0, 10)
    with pytest.raises(ValueError, match="n0"):
        smooth.certify(x, 0, 100, 0.01, 10)
    with pytest.raises(ValueError, match="n must"):
        smooth.certify(x, 10, 0, 0.01, 10)
    with pytest.raises(ValueError, match="batch_size"):
        smooth.certify(x, 10, 100, 0.01, 0)
    with pytest.raises(ValueError, match="x must be finite"):
        smooth.certify(torch.tensor([float("nan"), 0.0]), 10, 100, 0.01, 10)
    with pytest.raises(ValueError, match="x must be finite"):
        smooth.predict(torch.tensor([float("inf"), 0.0]), 100, 0.01, 10)


def test_wrong_logit_shape_is_reported():
    wrong = Smooth(lambda batch: torch.zeros(batch.shape[0], 3), num_classes=2, sigma=0.5)
    with pytest.raises(ValueError, match="base_classifier must map"):
        wrong.certify(torch.zeros(2), 10, 100, 0.01, 10)
    flat = Smooth(lambda batch: torch.zeros(batch.shape[0]), num_classes=2, sigma=0.5)
    with pytest.raises(ValueError, match="base_classifier must map"):
        flat.predict(torch.zeros(2), 10, 0.01, 10)


def test_training_mode_model_is_flagged():
    model, _ = _linear_setup(0.3)
    with pytest.warns(UserWarning, match="training mode"):
        Smooth(model.train(), 2, 0.5)


def test_precision_and_layout_options():
    from rsbook.models import build
    from rsbook.smooth import autocast_agreement

    torch.manual_seed(0)
    model = build("digits_cnn", 10).eval()
    x = torch.rand(1, 8, 8)
    plain = Smooth(model, 10, 0.25).sample_counts(x, 2000, 500, generator=torch.Generator().manual_seed(1))
    nhwc = Smooth(model, 10, 0.25, channels_last=True)
    assert nhwc._noise_buffer(x, 4).is_contiguous(memory_format=torch.channels_last)
    counts = nhwc.sample_counts(x, 2000, 500, generator=torch.Generator().manual_seed(1))
    assert int(counts.sum()) == 2000 and (counts - plain).abs().sum() <= 4  # same noise; layout changes rounding only
    bf16 = Smooth(model, 10, 0.25, precision="bf16")
    agreement = autocast_agreement(bf16, x, 2000, 500, generator=torch.Generator().manual_seed(2))
    assert 0.9 < agreement <= 1.0
    assert autocast_agreement(Smooth(model, 10, 0.25), x, 500, 500) == 1.0
    prediction, radius = bf16.certify(x, 50, 500, 0.01, 250, generator=torch.Generator().manual_seed(3))
    assert prediction == ABSTAIN or radius >= 0
    with pytest.raises(ValueError, match="precision"):
        Smooth(model, 10, 0.25, precision="fp8")


def test_largest_batch_size_doubles_until_out_of_memory():
    from rsbook.smooth import largest_batch_size

    def limited(batch):
        if batch.shape[0] > 1000:
            raise torch.OutOfMemoryError("pretend the accelerator is full")
        return torch.zeros(batch.shape[0], 3, device=batch.device)

    # the meta device lets the search run without an accelerator
    assert largest_batch_size(Smooth(limited, 3, 0.5, device="meta"), (2, 4), start=128) == 512
    assert largest_batch_size(Smooth(limited, 3, 0.5, device="meta"), (2, 4), start=128, limit=256) == 256
    with pytest.raises(ValueError, match="runs out of memory"):
        largest_batch_size(Smooth(limited, 3, 0.5, device="meta"), (2, 4), start=2048)
    assert largest_batch_size(Smooth(limited, 3, 0.5), (2, 4), start=300) == 300  # CPU: no search
