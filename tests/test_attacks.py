"""The empirical-tightness attack of Cohen et al. 2019 (Sec. 4, App. J.3): l2 PGD on the smoothed
classifier. For a linear base classifier the smoothed classifier equals the base classifier and
Theorem 1 is tight (App. B): the radius with exact probabilities is the distance d to the boundary,
so an attack must flip g beyond d and can never flip it inside."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import Linear2  # noqa: E402  (shared base classifiers)

from rsbook.attacks import pgd
from rsbook.cohen.attacks import (
    ATTACK_COLUMNS,
    attack_certified,
    attack_certify_log,
    smoothed_pgd,
)
from rsbook.data import ArrayDataset
from rsbook.smooth import ABSTAIN, Smooth


def _linear_setup(distance, dim=6, seed=0):
    """A unit normal w, a point x in [0, 1]^dim, and b such that x is at l2 distance `distance` on
    the class-1 side of the boundary."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=gen)
    w /= w.norm()
    x = torch.rand(dim, generator=gen)
    b = distance - float(w @ x)
    return Linear2(w, b).eval(), w, x


def _mlp(in_features, num_classes=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(in_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, num_classes)
    ).eval()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("objective", ["softmax", "loss"])
def test_linear_attack_flips_beyond_the_radius_and_never_inside(objective):
    # Cohen et al. Sec. 4: "When f is linear, there always exists a class-changing perturbation just
    # beyond the certified radius"; Theorem 1: none inside it. With exact probabilities R = d.
    sigma, d, trials = 0.5, 0.6, 25
    model, _, x = _linear_setup(d)
    smooth = Smooth(model, num_classes=2, sigma=sigma)
    outcomes = [attack_certified(smooth, model, x, 1, d, (0.5, 1.5, 2.0), n_predict=1000, alpha=0.001,
                                 batch_size=1000, steps=10, num_noise=16, objective=objective, generator=_gen(t))
                for t in range(trials)]
    rate = {m: np.mean([o[m] for o in outcomes]) for m in (0.5, 1.5, 2.0)}
    assert rate[1.5] >= 0.95 and rate[2.0] >= 0.95  # g(x + delta) = 0 with margin Phi(0.3 / 0.5) = 0.73
    assert rate[0.5] == 0.0  # soundness: nothing is found inside the certified radius


@pytest.mark.parametrize("objective", ["softmax", "loss"])
def test_linear_attack_moves_along_minus_w(objective):
    # For f(x) = 1[w.x + b > 0] every noisy copy's gradient is a positive multiple of -w, so the
    # steepest-ascent direction is exactly -w (App. B), whatever the noise.
    d = 0.4
    model, w, x = _linear_setup(d, dim=10, seed=3)
    for epsilon in (1.5 * d, 2 * d):
        delta = smoothed_pgd(model, x, 1, 0.25, epsilon, objective=objective, generator=_gen(0))
        assert F.cosine_similarity(delta, -w, dim=0) > 0.999
        assert float(delta.norm()) == pytest.approx(epsilon, rel=1e-5)  # 2.5 eps of travel saturates the ball
        assert float(w @ (x + delta)) + model.b < 0  # past the boundary: f (and so g) says 0
    # the step rule: unit-norm gradient times step_size, so 4 steps inside the ball travel 4 * step_size
    delta = smoothed_pgd(model, x, 1, 0.25, 1.0, steps=4, step_size=0.05, generator=_gen(0))
    assert float(delta.norm()) == pytest.approx(0.2, rel=1e-5)


def test_projection_keeps_the_ball_and_the_box():
    gen = _gen(7)
    x = torch.rand(3, 4, 4, generator=gen)
    x[0, 0] = 0.0
    x[1, 1] = 1.0  # on the faces of the box
    model = _mlp(48)
    for epsilon in (0.05, 0.5, 5.0):
        delta = smoothed_pgd(model, x, 2, 0.25, epsilon, steps=8, clip=(0.0, 1.0), generator=_gen(1))
        assert delta.shape == x.shape and delta.dtype == x.dtype
        assert float(delta.norm()) <= epsilon * (1 + 1e-6)
        assert float((x + delta).min()) >= -1e-6 and float((x + delta).max()) <= 1 + 1e-6
    # a linear attack that wants to leave the box along -w is held inside it (and is unbounded without clip)
    model, _, x = _linear_setup(0.5, dim=6, seed=1)
    boxed = smoothed_pgd(model, x, 1, 0.25, 3.0, clip=(0.0, 1.0), generator=_gen(0))
    free = smoothed_pgd(model, x, 1, 0.25, 3.0, generator=_gen(0))
    assert float((x + boxed).min()) >= -1e-6 and float((x + boxed).max()) <= 1 + 1e-6
    assert float((x + free).min()) < -0.1 and float(free.norm()) == pytest.approx(3.0, rel=1e-5)
    assert float(smoothed_pgd(model, x, 1, 0.25, 0.0, generator=_gen(0)).abs().max()) == 0.0


def test_same_generator_seed_gives_the_same_delta_and_chunking_does_not_matter():
    x = torch.rand(3, 4, 4, generator=_gen(2))
    model = _mlp(48)
    a = smoothed_pgd(model, x, 0, 0.25, 0.5, steps=5, num_noise=32, generator=_gen(11))
    b = smoothed_pgd(model, x, 0, 0.25, 0.5, steps=5, num_noise=32, generator=_gen(11))
    c = smoothed_pgd(model, x, 0, 0.25, 0.5, steps=5, num_noise=32, generator=_gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # evaluating the 32 copies in chunks of 8 combines the chunks' log-sum-exp exactly: the same
    # direction as one batch, when the chunks draw the same noise as one batch does
    whole = torch.randn((32, 3, 4, 4), generator=_gen(0))
    gen = _gen(0)
    parts = torch.cat([torch.randn((8, 3, 4, 4), generator=gen) for _ in range(4)])
    if not torch.equal(whole, parts):
        pytest.skip("this torch draws a different normal stream in chunks")
    for objective in ("softmax", "loss"):
        one = smoothed_pgd(model, x, 0, 0.25, 0.5, steps=5, num_noise=32, objective=objective, generator=_gen(11))
        chunked = smoothed_pgd(model, x, 0, 0.25, 0.5, steps=5, num_noise=32, batch_size=8, objective=objective,
                               generator=_gen(11))
        assert torch.allclose(one, chunked, atol=1e-5)


def test_nonlinear_model_runs_and_lowers_the_smoothed_probability():
    # A small MLP on 2-D points: the attack returns a valid delta that lowers G_y(x + delta), the
    # noise-averaged softmax of the label (the objective), estimated here on 20,000 fixed noise draws,
    # at least as much as the best of 16 random directions of the same length.
    model = _mlp(2, num_classes=3, seed=4)
    x, sigma, epsilon = torch.tensor([0.2, -0.3]), 0.25, 0.5
    label = int(model(x[None]).argmax())
    delta = smoothed_pgd(model, x, label, sigma, epsilon, steps=20, num_noise=32, generator=_gen(5))
    assert delta.shape == x.shape and bool(torch.isfinite(delta).all())
    assert float(delta.norm()) <= epsilon * (1 + 1e-6)
    noise = sigma * torch.randn((20000, 2), generator=_gen(6))
    random = torch.randn((16, 2), generator=_gen(9))
    random = epsilon * random / random.norm(dim=1, keepdim=True)
    with torch.no_grad():
        def soft(z):
            return float(F.softmax(model(z + noise), dim=1)[:, label].mean())

        before, after = soft(x), soft(x + delta)
        best_random = min(soft(x + r) for r in random)
    assert after < before - 0.02 and after <= best_random + 1e-3
    # model=None attacks the smoothed classifier's own base classifier
    result = attack_certified(Smooth(model, 3, sigma), None, x, label, 0.3, n_predict=200, alpha=0.01,
                              batch_size=200, steps=5, num_noise=8, generator=_gen(0))
    assert set(result) == {1.5, 2.0} and all(isinstance(v, bool) for v in result.values())


def test_bad_arguments_name_themselves():
    model, _, x = _linear_setup(0.5)
    smooth = Smooth(model, 2, 0.5)
    bad_pgd = [
        ("epsilon", dict(epsilon=-0.1)),
        ("epsilon", dict(epsilon=float("nan"))),
        ("sigma", dict(sigma=0.0)),
        ("steps", dict(steps=0)),
        ("num_noise", dict(num_noise=0)),
        ("step_size", dict(step_size=0.0)),
        ("batch_size", dict(batch_size=0)),
        ("clip", dict(clip=(1.0, 0.0))),
        ("clip", dict(clip=(0.0,))),
        ("objective", dict(objective="margin")),
        ("label", dict(label=-1)),
        ("label", dict(label=1.0)),
        ("label 5", dict(label=5)),
        ("x must lie inside the clip box", dict(x=x + 2.0, clip=(0.0, 1.0))),
        ("x must be finite", dict(x=torch.full((6,), float("inf")))),
    ]
    for message, change in bad_pgd:
        kwargs = dict(model=model, x=x, label=1, sigma=0.5, epsilon=0.5, steps=2, num_noise=4) | change
        with pytest.raises(ValueError, match=message):
            smoothed_pgd(**kwargs)
    with pytest.raises(ValueError, match="model must map"):
        smoothed_pgd(lambda batch: torch.zeros(batch.shape[0]), x, 0, 0.5, 0.5, steps=1, num_noise=2)
    common = dict(n_predict=100, alpha=0.01, batch_size=100, steps=2, num_noise=4)
    bad_certified = [
        ("radius", dict(radius=0.0)),
        ("radius", dict(radius=-1.0)),
        ("multipliers", dict(multipliers=())),
        ("multipliers", dict(multipliers=(1.5, -2.0))),
        ("multipliers", dict(multipliers=(2.0, 2.0))),
        ("n_predict", dict(n_predict=0)),
        ("alpha", dict(alpha=1.5)),
    ]
    for message, change in bad_certified:
        kwargs = dict(smooth=smooth, model=model, x=x, label=1, radius=0.5) | common | change
        with pytest.raises(ValueError, match=message):
            attack_certified(**kwargs)
    log = pd.DataFrame({"idx": [0], "label": [1], "predict": [1], "radius": [0.5], "correct": [1]})
    data = ArrayDataset(x[None], [1])
    for message, change in [("seed", dict(seed=-1)), ("max_examples", dict(max_examples=0)),
                            ("lacks columns", dict(log=log.drop(columns="radius")))]:
        kwargs = dict(smooth=smooth, model=model, dataset=data, log=log, progress=False) | common | change
        with pytest.raises(ValueError, match=message):
            attack_certify_log(**kwargs)
    with pytest.raises(ValueError, match="label"):
        attack_certify_log(smooth, model, ArrayDataset(x[None], [0]), log, progress=False, **common)


def test_attack_certify_log_attacks_only_correct_certified_rows():
    # A hand-made certify log over six linear toy points at known distances: rows that are wrong,
    # abstained, or certified at radius 0 are skipped; the rest are attacked at 1.5 R and 2 R with
    # R the exact radius, where the linear classifier always flips.
    model, w, x0 = _linear_setup(0.0, dim=4, seed=5)
    distances = [0.6, 0.8, -0.5, 0.7, 0.9, 1.0]  # signed: the third point lies on the class-0 side
    points = torch.stack([x0 + d * w for d in distances])
    labels = [1, 1, 0, 1, 1, 1]
    data = ArrayDataset(points, labels)
    log = pd.DataFrame({
        "idx":     [0, 1, 2, 3, 4, 5],
        "label":   labels,
        "predict": [1, 0, 0, ABSTAIN, 1, 1],
        "radius":  [0.6, 0.3, 0.5, 0.0, 0.0, 1.0],
        "correct": [1, 0, 1, 0, 1, 1],
        "time":    [0.0] * 6,
    })
    # row 1: wrong prediction; row 3: abstained; row 4: correct but radius 0 -> not attacked
    smooth = Smooth(model, 2, 0.5)
    kwargs = dict(n_predict=1000, alpha=0.001, batch_size=1000, steps=10, num_noise=16, seed=3, progress=False)
    frame = attack_certify_log(smooth, model, data, log, **kwargs)
    assert tuple(frame.columns) == ATTACK_COLUMNS
    assert frame["idx"].tolist() == [0, 0, 2, 2, 5, 5]
    assert frame["multiplier"].tolist() == [1.5, 2.0] * 3
    assert np.allclose(frame["epsilon"], frame["multiplier"] * frame["radius"])
    assert frame["success"].all() and (frame["adv_predict"] != frame["label"]).all()
    assert frame.groupby("multiplier")["success"].mean().tolist() == [1.0, 1.0]
    # reproducible, and each example's stream depends on (seed, idx) only
    again = attack_certify_log(smooth, model, data, log, **kwargs)
    pd.testing.assert_frame_equal(frame, again)
    first = attack_certify_log(smooth, model, data, log, max_examples=1, **kwargs)
    assert first["idx"].tolist() == [0, 0]
    pd.testing.assert_frame_equal(first, frame.iloc[:2])
    none = attack_certify_log(smooth, model, data, log[log["correct"] == 0], **kwargs)
    assert none.empty and tuple(none.columns) == ATTACK_COLUMNS


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_plain_pgd_on_a_linear_classifier(norm):
    # For f(x) = 1[w.x + b > 0] the exact robust radius is |w.x + b| / ||w||_dual: ||w||_1 for linf, ||w||_2 for l2.
    torch.manual_seed(0)
    w = torch.tensor([0.6, -0.8, 0.0])
    model = Linear2(w, 0.0).eval()
    x = torch.tensor([[0.3, -0.2, 0.5], [0.1, -0.3, 0.2]])  # both class 1
    labels = torch.tensor([1, 1])
    margin = (x.double() @ w.double())
    radius = margin / (w.abs().sum() if norm == "linf" else w.norm())
    gen = torch.Generator().manual_seed(0)
    inside = pgd(model, x, labels, float(radius.min()) * 0.9, norm=norm, steps=30, generator=gen)
    assert (model(inside).argmax(1) == labels).all()  # nothing inside the exact radius
    beyond = pgd(model, x, labels, float(radius.max()) * 1.2, norm=norm, steps=30, generator=gen)
    assert (model(beyond).argmax(1) != labels).all()
    size = (beyond - x).abs().amax(1) if norm == "linf" else (beyond - x).norm(dim=1)
    assert (size <= float(radius.max()) * 1.2 + 1e-6).all()
    boxed = pgd(model, x.abs(), labels, 5.0, norm=norm, steps=5, clip=(0.0, 1.0), generator=gen)
    assert ((boxed >= 0) & (boxed <= 1)).all()
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, labels, 0.1, norm="l1")
    with pytest.raises(ValueError, match="labels"):
        pgd(model, x, torch.tensor([1]), 0.1)
