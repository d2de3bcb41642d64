"""Throughput of the sampling engine: noisy samples per second through the base classifier alone
(the limit) and through Smooth.certify, measured in one process on the same model and batch size.

Used by `make bench` (benchmarks/bench_certify.py, which adds the authors' reference loop) and by the
performance section of the book. Rates are medians over interleaved repeats, so drift in the
machine's speed affects both engines alike.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import torch

from rsbook import streams
from rsbook._checks import check_positive_int
from rsbook.smooth import Smooth
from rsbook.timing import timed

__all__ = ["raw_forward_rate", "certify_rate", "measure_rates", "engine_rates",
           "decision_rates", "random_batch_rate", "describe_device", "load_results"]


def raw_forward_rate(smooth: Smooth, batch: torch.Tensor, batches: int) -> float:
    """Samples per second of `batches` top-1 evaluations of the base classifier on the fixed
    `batch` (no noise drawn, nothing counted), in `smooth`'s precision: the most any sampling
    engine built on this model and batch size can reach."""
    batch = batch.to(smooth.device)

    def run():
        with torch.inference_mode():
            for _ in range(batches):
                smooth.classify(batch)

    return batches * batch.shape[0] / timed(run, smooth.device)


def random_batch_rate(smooth: Smooth, shape, batch_size: int, batches: int, seed: int = 0) -> float:
    """raw_forward_rate on a uniform random batch of `batch_size` inputs of `shape` (from the 'probe' stream),
    after one untimed warm-up batch (lazy initialisation would otherwise count as forward time)."""
    batch_size = check_positive_int(batch_size, "batch_size")
    generator = streams.generator(seed, "probe", "random_batch_rate")
    batch = torch.rand((batch_size, *shape), generator=generator)
    raw_forward_rate(smooth, batch, 1)
    return raw_forward_rate(smooth, batch, check_positive_int(batches, "batches"))


def describe_device(device) -> str:
    """The device in words: the GPU's name and CUDA version, or the CPU and its torch thread count."""
    import platform

    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def certify_rate(smooth: Smooth, x: torch.Tensor, n0: int, n: int, batch_size: int, seed: int = 0) -> float:
    """Noisy samples per second (n0 + n per call) of one Smooth.certify call on x."""
    generator = streams.generator(seed, "probe", "certify_rate", device=smooth.device)
    seconds = timed(lambda: smooth.certify(x, n0, n, 0.001, batch_size, generator=generator), smooth.device)
    return (n0 + n) / seconds


def measure_rates(engines: dict, repeats: int = 5) -> dict:
    """Run each engine (name -> zero-argument callable returning a rate) `repeats` times,
    interleaved, after one warm-up call each; return name -> median rate."""
    repeats = check_positive_int(repeats, "repeats")
    for engine in engines.values():
        engine()
    samples = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            samples[name].append(engine())
    return {name: statistics.median(values) for name, values in samples.items()}


def engine_rates(smooth: Smooth, x: torch.Tensor, *, n0: int, n: int, batch_size: int, repeats: int = 3,
                 extra_engines: dict | None = None) -> dict:
    """Median samples per second of the raw base classifier ('raw': as many full batches as
    certify evaluates, on a fixed random batch) and of Smooth.certify ('certify', n0 + n samples)
    on the same model, input and batch size, plus any `extra_engines` (name -> callable returning a
    rate), interleaved (measure_rates)."""
    batches = -(-n0 // batch_size) + -(-n // batch_size)
    fixed = torch.rand((batch_size, *x.shape), device=smooth.device)
    engines = {"raw": lambda: raw_forward_rate(smooth, fixed, batches),
               "certify": lambda: certify_rate(smooth, x, n0, n, batch_size),
               **(extra_engines or {})}
    return measure_rates(engines, repeats)


def decision_rates(smooth: Smooth, x: torch.Tensor, *, radius: float, n0: int, n_max: int, alpha: float,
                   batch_size: int, decisions: int = 5, method: str = "betting", seed: int = 0) -> dict:
    """Samples per decision and decisions per second of "robust at `radius`?" on x: Smooth.certify_radius
    (sequential, `decisions` calls on fresh 'probe' streams) against Smooth.certify with n = n_max (fixed n,
    one call answers it). Keys: sequential_samples_per_decision, sequential_decisions_per_s,
    fixed_samples_per_decision, fixed_decisions_per_s, certified_fraction."""
    decisions = check_positive_int(decisions, "decisions")
    samples, certified = [], []

    def sequential():
        for i in range(decisions):
            generator = streams.generator(seed, "probe", "decision_rates", i, device=smooth.device)
            _, ok, drawn = smooth.certify_radius(x, radius, n0, n_max, alpha, batch_size, generator, method=method)
            samples.append(drawn)
            certified.append(ok)

    generator = streams.generator(seed, "probe", "decision_rates", "fixed", device=smooth.device)
    fixed_seconds = timed(lambda: smooth.certify(x, n0, n_max, alpha, batch_size, generator=generator), smooth.device)
    sequential_seconds = timed(sequential, smooth.device)
    return {"sequential_samples_per_decision": statistics.fmean(samples),
            "sequential_decisions_per_s": decisions / sequential_seconds,
            "fixed_samples_per_decision": float(n0 + n_max), "fixed_decisions_per_s": 1.0 / fixed_seconds,
            "certified_fraction": statistics.fmean(certified)}


def load_results(path: str | os.PathLike | None = None) -> dict | None:
    """The results `make bench` wrote ($RSBOOK_BENCH, or the given path), or None if there are none."""
    path = path or os.environ.get("RSBOOK_BENCH")
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())
