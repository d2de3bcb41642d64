"""`make bench`: how close Smooth.certify comes to the base classifier's raw forward throughput,
and how much faster it is than the authors' reference sampling loop, in one run on one machine.

Three engines on the same model, input shape and batch size, in noisy samples per second:
  raw        the base classifier's top-1 on a fixed batch, nothing else (the limit)
  certify    rsbook.smooth.Smooth.certify (noise in place, bincount on the device, one transfer)
  reference  the loop of the authors' core.py, written here for comparison: x.repeat per batch,
             randn_like, predictions copied to the host every batch and counted in a Python loop
On a GPU it also measures certify with bf16 autocast, channels_last and a batch size tuned to
memory, and the top-1 agreement of bf16 with fp32 over the noisy samples.
Per case it also measures "robust at r?" decisions (rsbook.book.throughput.decision_rates): samples per
decision and decisions per second of sequential certification (Smooth.certify_radius) against fixed-n
CERTIFY with n = n_max, on the case's input at radius 0.25.

Prints the ratios and writes them to benchmarks/results/latest.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from rsbook._io import atomic_write
from rsbook.models import build
from rsbook.smooth import ABSTAIN, Smooth, autocast_agreement, largest_batch_size
from rsbook.stats import clopper_pearson_lower
from rsbook.book.throughput import decision_rates, engine_rates
from rsbook.timing import timed

HEADLINE = "cifar_resnet110"


def reference_counts(model, x, num, batch_size, sigma, num_classes):
    """Class counts the way the authors' Smooth._sample_noise gathers them."""
    counts = np.zeros(num_classes, dtype=int)
    with torch.no_grad():
        for _ in range(math.ceil(num / batch_size)):
            this_batch = min(batch_size, num)
            num -= this_batch
            batch = x.repeat((this_batch,) + (1,) * x.dim())
            noise = torch.randn_like(batch) * sigma
            predictions = model(batch + noise).argmax(1)
            for label in predictions.cpu().numpy():  # one host copy and a Python loop per batch
                counts[label] += 1
    return counts


def reference_certify(model, x, n0, n, alpha, batch_size, sigma, num_classes):
    """CERTIFY with the reference sampler (same statistics as Smooth.certify)."""
    guess = int(reference_counts(model, x, n0, batch_size, sigma, num_classes).argmax())
    n_a = int(reference_counts(model, x, n, batch_size, sigma, num_classes)[guess])
    p_a = clopper_pearson_lower(n_a, n, alpha)
    return (ABSTAIN, 0.0) if p_a < 0.5 else (guess, sigma * norm.ppf(p_a))


def bench_case(arch, dataset, shape, classes, batch_size, n0, n, repeats, device, gpu_extras):
    torch.manual_seed(0)
    model = build(arch, classes, dataset=dataset).to(device).eval()
    x = torch.rand(shape, device=device)
    sigma = 0.25
    smooth = Smooth(model, classes, sigma, device=device)
    reference = {"reference": lambda: (n0 + n) / timed(
        lambda: reference_certify(model, x, n0, n, 0.001, batch_size, sigma, classes), device)}
    rates = engine_rates(smooth, x, n0=n0, n=n, batch_size=batch_size, repeats=repeats, extra_engines=reference)
    result = {"arch": arch, "input_shape": list(shape), "batch_size": batch_size, "n0": n0, "n": n,
              "repeats": repeats, "rates_samples_per_s": rates,
              "certify_over_raw": rates["certify"] / rates["raw"],
              "certify_over_reference": rates["certify"] / rates["reference"],
              "decisions": decision_rates(smooth, x, radius=0.25, n0=n0, n_max=n, alpha=0.001, batch_size=batch_size,
                                          decisions=max(1, repeats))}
    if gpu_extras:
        fast = Smooth(model, classes, sigma, device=device, precision="bf16", channels_last=x.dim() == 3)
        tuned = largest_batch_size(fast, shape, start=batch_size, limit=1 << 15)
        fast_rates = engine_rates(fast, x, n0=n0, n=n, batch_size=tuned, repeats=repeats)
        fast_rates = {"raw_bf16_tuned": fast_rates["raw"], "certify_bf16_tuned": fast_rates["certify"]}
        result.update({
            "tuned_batch_size": tuned,
            "rates_fast_samples_per_s": fast_rates,
            "fast_certify_over_reference": fast_rates["certify_bf16_tuned"] / rates["reference"],
            "fast_certify_over_raw_bf16": fast_rates["certify_bf16_tuned"] / fast_rates["raw_bf16_tuned"],
            "bf16_top1_agreement_with_fp32": autocast_agreement(fast, x, min(n, 20000), tuned,
                                                                generator=torch.Generator(device).manual_seed(1)),
        })
    return result


def describe(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latest.json")
    parser.add_argument("--quick", action="store_true", help="tiny sample counts and one repeat (for tests)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    cases = {
        "digits_cnn": dict(arch="digits_cnn", dataset="digits", shape=(1, 8, 8), classes=10, batch_size=1000, n0=100,
                           n=100_000 if gpu else 20_000),
        "cifar_resnet110": dict(arch="cifar_resnet110", dataset="cifar10", shape=(3, 32, 32), classes=10, batch_size=400 if gpu else 100,
                                n0=100, n=100_000 if gpu else 500),
    }
    if gpu:  # ImageNet's ResNet-50 at 224 x 224: too slow to measure on a CPU
        cases["resnet50"] = dict(arch="resnet50", dataset="imagenet", shape=(3, 224, 224), classes=1000, batch_size=400,
                                 n0=100, n=10_000)
    if args.quick:
        for case in cases.values():
            case.update(n0=case["batch_size"] // 10, n=2 * case["batch_size"])
        args.repeats = 1
    started = time.perf_counter()
    results = {}
    for name, case in cases.items():
        print(f"[bench] {name} on {describe(device)} ...", flush=True)
        results[name] = bench_case(**case, repeats=args.repeats, device=device, gpu_extras=gpu)
        r = results[name]
        print(f"[bench] {name}: certify/raw = {r['certify_over_raw']:.3f}, certify/reference = "
              f"{r['certify_over_reference']:.2f}x  ({r['rates_samples_per_s']['certify']:.0f} samples/s)", flush=True)
        d = r["decisions"]
        print(f"[bench] {name}: sequential {d['sequential_samples_per_decision']:.0f} samples/decision, "
              f"{d['sequential_decisions_per_s']:.2f} decisions/s; fixed n {d['fixed_samples_per_decision']:.0f} "
              f"samples/decision, {d['fixed_decisions_per_s']:.2f} decisions/s", flush=True)
    headline = results[HEADLINE]
    payload = {
        "device": describe(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "headline_case": HEADLINE,
        "certify_over_raw": headline["certify_over_raw"],
        "certify_over_reference": headline["certify_over_reference"],
        "cases": results,
        "seconds": time.perf_counter() - started,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_write(args.out) as out:
        out.write(json.dumps(payload, indent=2) + "\n")
    print(f"[bench] wrote {args.out}: certify_over_raw {payload['certify_over_raw']:.3f}, "
          f"certify_over_reference {payload['certify_over_reference']:.2f} ({HEADLINE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
