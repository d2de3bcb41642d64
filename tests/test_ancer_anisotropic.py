"""rsbook.ancer.anisotropic: the anisotropic certificate (thesis eq. 3.12, 3.14, 4.4) checked analytically on
a linear classifier, its coverage, and the DDS / ANCER / RANCER optimisers (eq. 3.7, 3.15, 4.8)."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Constant, Linear2
from scipy.stats import norm

from rsbook.ancer.anisotropic import (
    ABSTAIN,
    certify,
    optimize_ancer,
    optimize_isotropic,
    optimize_rancer,
    proxy_gap,
    sample_noise,
    smoothed_probabilities,
    volume_objective,
)
from rsbook.ancer.curvature import Rotation
from rsbook.ancer.metrics import (
    accuracy_table,
    acr_table,
    average_certified_radius,
    average_radius_improvement,
    certified_accuracy,
)
from rsbook.ancer.toy import make_toy, train_toy_classifier
from rsbook.smooth import Smooth


def _rotation(d, seed):
    gen = torch.Generator().manual_seed(seed)
    return Rotation.from_basis(torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0])


def _linear_setup():
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    sigma = torch.tensor([0.3, 0.8, 0.5], dtype=torch.float64)
    rotation = _rotation(3, 0)
    scale = torch.linalg.norm(sigma * (rotation.dense().T @ w))  # ||diag(sigma) U^T w||
    bias = -0.2
    x = torch.tensor([0.4, -0.3, 0.2], dtype=torch.float64)
    x = x + w / w.norm() * (1.0 * scale - (w @ x + bias)) / w.norm()  # place x so that the exact gap is 1
    return Linear2(w, bias), x, sigma, rotation, float(scale), float(w @ x + bias)


def test_linear_classifier_certificate_is_the_exact_region():
    # For f(x) = 1[w.x + b > 0] and noise U diag(sigma) eps, w.noise ~ N(0, ||diag(sigma) U^T w||^2), so
    # p_A = Phi(m / s) with m = w.x + b, s = ||diag(sigma) U^T w|| and the exact gap is m / s. The
    # certified ellipsoid {delta : ||diag(sigma)^-1 U^T delta|| <= gap} reaches at most gap * s towards
    # the boundary: it stays on the correct side iff gap <= m / s, i.e. it is exact when p_A is.
    model, x, sigma, rotation, scale, margin = _linear_setup()
    exact_gap = margin / scale
    assert exact_gap == pytest.approx(1.0)
    result = certify(model, x, sigma, rotation, num_classes=2, n0=100, n=40000, alpha=0.001, batch_size=10000,
                     generator=torch.Generator().manual_seed(0))
    assert result.prediction == 1
    assert result.gap <= exact_gap and result.gap >= exact_gap - 0.05
    assert result.gap == pytest.approx(norm.ppf(result.p_a_lower))
    assert result.radius == pytest.approx(float(sigma.min()) * result.gap)
    assert result.proxy_radius == pytest.approx(float(torch.exp(torch.log(sigma).mean())) * result.gap)
    # the farthest point of the certified ellipsoid towards the boundary: delta = -gap * U S^2 U^T w / s
    u = rotation.dense()
    delta = -result.gap * (u @ (sigma**2 * (u.T @ model.w))) / scale
    assert float(torch.linalg.norm((u.T @ delta) / sigma)) == pytest.approx(result.gap)
    assert float(model.w @ (x + delta) + model.b) == pytest.approx(margin - result.gap * scale)
    assert float(model.w @ (x + delta) + model.b) > 0


def test_certificate_coverage_on_a_linear_classifier():
    # Statistical: the certified ellipsoid crosses the decision boundary (gap > exact gap) with
    # probability at most alpha over CERTIFY's sampling (Clopper-Pearson, Cohen et al. Prop. 2).
    model, x, sigma, rotation, scale, margin = _linear_setup()
    alpha, trials = 0.05, 300
    generator = torch.Generator().manual_seed(1)
    failures = 0
    for _ in range(trials):
        result = certify(model, x, sigma, rotation, num_classes=2, n0=10, n=200, alpha=alpha, batch_size=200,
                         generator=generator)
        failures += result.prediction == 1 and result.gap > margin / scale
    assert failures / trials <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


def test_isotropic_certify_is_cohens():
    # A number sigma gives Cohen et al.'s CERTIFY: the same counts as rsbook.smooth.Smooth.certify.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval()
    x = torch.tensor([0.1, -0.2])
    for sigma in (0.1, 0.5, 1.0):
        prediction, radius = Smooth(model, 3, sigma).certify(x, 100, 1000, 0.001, 300,
                                                              generator=torch.Generator().manual_seed(1))
        ours = certify(model, x, sigma, num_classes=3, n0=100, n=1000, alpha=0.001, batch_size=300,
                       generator=torch.Generator().manual_seed(1))
        assert ours.prediction == prediction
        assert ours.radius == pytest.approx(radius, rel=1e-6) and ours.proxy_radius == pytest.approx(radius, rel=1e-6)


def test_radius_and_proxy_radius_of_a_constant_classifier():
    # All n draws agree: p_A = alpha^(1/n) (one-sided Clopper-Pearson at k = n), gap = Phi^-1(p_A),
    # radius = min(sigma) gap (eq. 3.13), proxy radius = (prod sigma)^(1/d) gap (eq. 3.14).
    sigma = torch.tensor([[0.2, 0.5], [1.0, 0.4]])
    result = certify(Constant(1, 3), torch.zeros(2, 2), sigma, num_classes=3, n0=10, n=500, alpha=0.01,
                     batch_size=100)
    gap = norm.ppf(0.01 ** (1 / 500))
    assert result.prediction == 1 and result.gap == pytest.approx(gap)
    assert result.radius == pytest.approx(0.2 * gap)
    assert result.proxy_radius == pytest.approx((0.2 * 0.5 * 1.0 * 0.4) ** 0.25 * gap)


def test_abstains_when_no_class_has_half():
    result = certify(Linear2(torch.tensor([1.0, 0.0]), 0.0), torch.zeros(2), 1.0, num_classes=2, n0=10, n=100,
                     alpha=0.001, batch_size=100, generator=torch.Generator().manual_seed(0))
    assert (result.prediction, result.gap, result.radius, result.proxy_radius) == (ABSTAIN, 0.0, 0.0, 0.0)
    assert result.p_a_lower < 0.5


@pytest.fixture(scope="module")
def toy():
    points, labels = make_toy("blobs", 600, 3, seed=0)
    model = train_toy_classifier(points, labels, 3, epochs=400, seed=0)
    x = torch.as_tensor(points[:12])
    return model, x


def _objective(model, x, sigma, rotation=None, kappa=0.0, isotropic=False):
    """The optimised objective at sigma on common random numbers (many draws, a fixed seed)."""
    eps = torch.randn((len(x), 4000, *x.shape[1:]), generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        gap = proxy_gap(smoothed_probabilities(model, x, sample_noise(eps, sigma, rotation)))
        if isotropic:
            return (sigma * gap).numpy()
        return volume_objective(gap, sigma, kappa)["objective"].numpy()


def test_each_optimizer_increases_its_own_objective(toy):
    # DDS ascends sigma/2 (Phi^-1(E_A) - Phi^-1(E_B)) (eq. 3.7); ANCER and RANCER ascend the proxy
    # radius plus kappa min(sigma) gap (eq. 3.15), on a fixed seed, from a small sigma, for every input.
    model, x = toy
    sigma0 = torch.full((len(x),), 0.05)
    iso = optimize_isotropic(model, x, sigma0, iterations=30, learning_rate=0.05, num_samples=128,
                             generator=torch.Generator().manual_seed(0))
    assert np.all(_objective(model, x, iso.sigma, isotropic=True) > _objective(model, x, sigma0, isotropic=True))
    start_iso = torch.full((len(x),), 0.1)
    start = start_iso[:, None].expand(-1, 2)
    ancer = optimize_ancer(model, x, start_iso, iterations=30, learning_rate=0.05, num_samples=128, kappa=2.0,
                           generator=torch.Generator().manual_seed(1))
    assert np.all(_objective(model, x, ancer.sigma, kappa=2.0) > _objective(model, x, start, kappa=2.0))
    rancer = optimize_rancer(model, x, start_iso, iterations=30, learning_rate=0.05, num_samples=128, kappa=2.0,
                             clip_sigma=(0.0, float("inf")), generator=torch.Generator().manual_seed(2))
    assert np.all(_objective(model, x, rancer.sigma, rancer.rotation, kappa=2.0)
                  > _objective(model, x, start, rancer.rotation, kappa=2.0))
    assert iso.trace["objective"].shape == (30, len(x)) and rancer.eigenvalues.shape == (len(x), 2)


def test_ancer_is_rancer_with_the_identity_rotation(toy):
    # U = I (thesis Sec. 4.1: DDS and ANCER are special cases) with clipping [sigma_iso, inf) is ANCER.
    model, x = toy
    iso = torch.linspace(0.2, 0.6, len(x))
    ancer = optimize_ancer(model, x, iso, iterations=10, learning_rate=0.1, num_samples=32,
                           generator=torch.Generator().manual_seed(5))
    identity = Rotation.identity(2, batch=(len(x),), dtype=torch.float64)
    rancer = optimize_rancer(model, x, iso, iterations=10, learning_rate=0.1, num_samples=32,
                             clip_sigma=(0.0, float("inf")), rotation=identity,
                             generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(rancer.sigma, ancer.sigma, rtol=1e-5, atol=1e-6)
    assert bool((ancer.sigma >= iso[:, None] - 1e-7).all())  # the projection theta >= theta_iso


def test_rancer_clipping_bounds_every_iterate(toy):
    # Eq. 4.8 applied in place to the optimiser's parameter after every step: every iterate the
    # objective is evaluated at (the trace) stays in [sigma_iso (1 - l1), sigma_iso (1 + l2)].
    model, x = toy
    iso = torch.full((len(x),), 0.3)
    lambda_1, lambda_2 = 0.1, 0.05
    result = optimize_rancer(model, x, iso, iterations=40, learning_rate=0.4, num_samples=32,
                             clip_sigma=(lambda_1, lambda_2), generator=torch.Generator().manual_seed(3))
    assert bool((result.sigma <= 0.3 * (1 + lambda_2) + 1e-6).all()) and bool((result.sigma >= 0.3 * (1 - lambda_1)
                                                                                - 1e-6).all())
    assert float(result.trace["min_sigma"].min()) >= 0.3 * (1 - lambda_1) - 1e-6
    assert float(result.trace["log_volume"].max()) <= 2 * np.log(0.3 * (1 + lambda_2)) + 1e-6
    assert float(result.sigma.max()) == pytest.approx(0.3 * (1 + lambda_2), rel=1e-5)  # the bound is reached
    frozen = optimize_rancer(model, x, iso, iterations=5, learning_rate=0.4, num_samples=8, clip_sigma=(0.0, 0.0),
                             rotation=result.rotation, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(frozen.sigma, iso[:, None].expand(-1, 2))


def test_metrics_of_section_5_2():
    frame = pd.DataFrame({"idx": [0, 1, 2, 3], "correct": [1, 1, 0, 1], "radius": [0.2, 0.6, 0.9, 0.0],
                          "proxy_radius": [0.3, 0.8, 1.0, 0.0]})
    reference = frame.assign(radius=[0.1, 0.7, 0.9, 0.0], proxy_radius=[0.1, 0.4, 1.0, 0.0], correct=[1, 1, 1, 0])
    # row 3 is correct with radius 0: no certificate, so it does not count even at r = 0 (certified_hits)
    np.testing.assert_allclose(certified_accuracy(frame, [0.0, 0.2, 0.5, 1.0]), [0.5, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(certified_accuracy(frame, [0.3], by="proxy_radius"), [0.5])
    assert average_certified_radius(frame) == pytest.approx(0.8 / 4)
    assert average_certified_radius(frame, "proxy_radius") == pytest.approx(1.1 / 4)
    # ARI over the examples both predict correctly (idx 0 and 1): ((0.2-0.1) + (0.6-0.7)) / 2
    assert average_radius_improvement(frame, reference) == pytest.approx(0.0)
    assert average_radius_improvement(frame, reference, "proxy_radius") == pytest.approx((0.2 + 0.4) / 2)
    table = accuracy_table({"A": frame, "B": reference}, [0.1, 0.5])
    assert list(table.index) == ["A", "B"] and table.loc["B", 0.5] == pytest.approx(0.5)
    assert list(acr_table({"A": frame}).columns) == ["ACR", "ACR_proxy"]


def test_bad_input_names_the_argument(toy):
    model, x = toy
    with pytest.raises(ValueError, match="sigma0 must be a number > 0"):
        optimize_isotropic(model, x, -1.0, iterations=1, learning_rate=0.1, num_samples=2)
    with pytest.raises(ValueError, match="clip_sigma"):
        optimize_rancer(model, x, 0.2, iterations=1, learning_rate=0.1, num_samples=2, clip_sigma=(1.5, 0.1))
    with pytest.raises(ValueError, match="rotation must be a batch of"):
        optimize_rancer(model, x, 0.2, iterations=1, learning_rate=0.1, num_samples=2,
                        rotation=Rotation.identity(2, batch=(1,)))
    with pytest.raises(ValueError, match="sigma must be a number > 0 or a tensor of shape"):
        certify(model, x[0], torch.ones(3), num_classes=3, n0=1, n=1, alpha=0.1, batch_size=1)
    with pytest.raises(ValueError, match="eval mode"):
        optimize_ancer(torch.nn.Linear(2, 3).train(), x, 0.2, iterations=1, learning_rate=0.1, num_samples=2)
    with pytest.raises(ValueError, match="by must be"):
        certified_accuracy(pd.DataFrame({"correct": [1], "radius": [0.1]}), [0.1], by="volume")
