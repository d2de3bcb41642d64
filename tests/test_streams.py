"""rsbook.streams: every random stream has one purpose and never serves another.

CERTIFY's Clopper-Pearson bound (Cohen et al. 2019, Sec. 3.2.2, Prop. 2) holds only when the estimation
noise is independent of whatever chose the quantity it tests: the class c_A (selection noise) and, for
data-dependent smoothing, sigma (the optimisation noise; Rumezhak 2022, Sec. 5.5). These tests check the
streams themselves, that the library makes no seeded stream anywhere else, and that the pipelines draw
certification noise from streams other than the ones that optimised or attacked the same input.
"""

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from rsbook import streams
from rsbook.ancer import pipeline as ar
from rsbook.bounds import certified_gap
from rsbook.smooth import Smooth
from rsbook.stats import clopper_pearson_lower

LIBRARY = Path(__file__).resolve().parents[1] / "rsbook"


def test_no_two_purposes_or_keys_share_a_stream():
    keys = [(), (0,), (1,), (7,), (0, 0), (0, 1), (1, 0), ("Fixed", 0), ("ANCER", 0), ("RANCER", 0), ("ANCER", 7),
            ("topk", 0, 1), ("fars", 0)]
    seen = {}
    for seed, purpose, key in itertools.product(range(4), streams.PURPOSES, keys):
        value = streams.stream_seed(seed, purpose, *key)
        assert value not in seen, f"{(seed, purpose, key)} and {seen.get(value)} give the same stream"
        seen[value] = (seed, purpose, key)
        assert 0 <= value < 2**63


def test_a_stream_depends_on_its_arguments_only():
    a = torch.randn(5, generator=streams.generator(3, "estimate", 11))
    b = torch.randn(5, generator=streams.generator(3, "estimate", 11))
    c = torch.randn(5, generator=streams.generator(3, "select", 11))
    assert torch.equal(a, b) and not torch.equal(a, c)
    select, estimate = streams.certify_generators(3, 11)
    assert select.initial_seed() == streams.stream_seed(3, "select", 11)
    assert estimate.initial_seed() == streams.stream_seed(3, "estimate", 11)
    assert np.array_equal(streams.numpy_generator(1, "data", "toy").random(4),
                          streams.numpy_generator(1, "data", "toy").random(4))


def test_seeded_global_restores_the_global_generator():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with streams.seeded_global(0, "init"):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with streams.seeded_global(0, "init"):
        assert torch.equal(torch.rand(3), inside)


@pytest.mark.parametrize("args, match", [((-1, "select"), "seed"), ((0, "noise"), "purpose"),
                                         ((0, "select", -2), "key"), ((0, "select", 1.5), "key"),
                                         ((True, "select"), "seed")])
def test_bad_stream_arguments_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        streams.stream_seed(*args)


def test_the_library_seeds_nothing_outside_rsbook_streams():
    """A seeded stream made anywhere else could share a seed with another purpose; only rsbook.streams
    may call manual_seed, default_rng, SeedSequence, RandomState or np.random.seed."""
    forbidden = {"manual_seed", "default_rng", "SeedSequence", "RandomState", "seed"}
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if path.name == "streams.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in forbidden:
                if node.func.attr == "seed" and not (isinstance(node.func.value, ast.Attribute)
                                                     and node.func.value.attr == "random"):
                    continue
                offenders.append(f"{path.relative_to(LIBRARY.parent)}:{node.lineno} .{node.func.attr}(")
    assert offenders == []


class _Recorder:
    """Wraps a function and records the initial seeds of the generators it is called with."""

    def __init__(self, function, *names):
        self.function, self.names, self.seeds = function, names, []

    def __call__(self, *args, **kwargs):
        self.seeds.append({name: kwargs[name].initial_seed() for name in self.names if kwargs.get(name) is not None})
        return self.function(*args, **kwargs)


def test_anisotropic_certification_never_reuses_the_optimisation_noise(monkeypatch, tmp_path):
    """The defect this guards against: sigma was optimised with the stream (seed, method, chunk start) and
    input idx certified with (seed, method, idx), the same stream whenever idx was a chunk start (idx 0 for
    every method), so the selection and estimation draws replayed the noise that chose sigma."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval()
    points = torch.randn(4, 2)
    labels = model(points).argmax(1).numpy()
    optimised = {name: _Recorder(getattr(ar, name), "generator")
                 for name in ("optimize_isotropic", "optimize_ancer", "optimize_rancer")}
    for name, recorder in optimised.items():
        monkeypatch.setattr(ar, name, recorder)
    certified = _Recorder(ar.certify, "generator", "estimate_generator")
    monkeypatch.setattr(ar, "certify", certified)
    settings = {"fixed_sigma": 0.3, "sigma0": 0.3, "iso": {"iterations": 2, "learning_rate": 0.1, "num_samples": 8},
                "ancer": {"iterations": 2, "learning_rate": 0.1, "num_samples": 8, "kappa": 2.0},
                "rancer": {"iterations": 2, "learning_rate": 0.1, "num_samples": 8, "kappa": 2.0,
                           "clip_sigma": [0.15, 0.15]},
                "n0": 10, "n": 50, "alpha": 0.01, "batch_size": 50}
    ar.run_methods(tmp_path, "streams", model, points, labels, num_classes=3, chunk_size=2, seed=0, num_threads=1,
                   **settings)
    optimisation = {s["generator"] for r in optimised.values() for s in r.seeds}
    selection = [s["generator"] for s in certified.seeds]
    estimation = [s.get("estimate_generator") for s in certified.seeds]
    assert optimisation and len(selection) == 4 * len(ar.METHODS)
    assert None not in estimation, "certification must draw its estimation noise from its own stream"
    assert optimisation.isdisjoint(selection) and optimisation.isdisjoint(estimation)
    assert set(selection).isdisjoint(estimation)
    assert len(set(selection)) == len(selection) and len(set(estimation)) == len(estimation)


def test_certify_draws_selection_and_estimation_from_their_own_streams():
    """Smooth.certify with two generators: c_A from the selection stream's n0 draws, the count from the
    estimation stream's n draws (Cohen et al. 2019, Sec. 3.2.2: 'draw n fresh samples')."""

    def model(batch):
        return torch.stack([batch[:, 0], -batch[:, 0]], dim=1)

    smooth = Smooth(model, num_classes=2, sigma=1.0)
    x = torch.tensor([0.3])
    select, estimate = streams.certify_generators(0, 5)
    prediction, radius = smooth.certify(x, 20, 400, 0.01, 64, generator=select, estimate_generator=estimate)
    select, estimate = streams.certify_generators(0, 5)
    c_hat = int(smooth.sample_counts(x, 20, 64, generator=select).argmax())
    n_a = int(smooth.sample_counts(x, 400, 64, generator=estimate)[c_hat])
    gap = certified_gap(clopper_pearson_lower(n_a, 400, 0.01))
    assert gap is not None
    assert (prediction, radius) == (c_hat, gap)
