"""Throughput measurement (rsbook.book.throughput) and `make bench` (benchmarks/bench_certify.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsbook.models import build
from rsbook.smooth import Smooth
from rsbook.book.throughput import engine_rates, load_results, measure_rates

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_certify  # noqa: E402


def test_engine_rates_measure_both_engines():
    torch.manual_seed(0)
    smooth = Smooth(build("digits_cnn", 10).eval(), 10, 0.25)
    rates = engine_rates(smooth, torch.rand(1, 8, 8), n0=100, n=2000, batch_size=500, repeats=1,
                         extra_engines={"constant": lambda: 7.0})
    assert set(rates) == {"raw", "certify", "constant"} and rates["constant"] == 7.0
    assert rates["raw"] > 0 and rates["certify"] > 0
    calls = []
    assert measure_rates({"a": lambda: calls.append(1) or len(calls)}, repeats=3)["a"] == 3  # warm-up + 3, median
    with pytest.raises(ValueError, match="repeats"):
        measure_rates({"a": lambda: 1.0}, repeats=0)


def test_reference_loop_counts_like_smooth():
    # the benchmark's baseline must compute the same statistics as Smooth, only slower
    torch.manual_seed(0)
    model = build("digits_cnn", 10).eval()
    x = torch.rand(1, 8, 8)
    torch.manual_seed(1)
    counts = bench_certify.reference_counts(model, x, 3000, 700, 0.25, 10)
    ours = Smooth(model, 10, 0.25).sample_counts(x, 3000, 700, generator=torch.Generator().manual_seed(2)).numpy()
    assert counts.sum() == 3000 and np.argmax(counts) == np.argmax(ours)
    assert np.abs(counts / 3000 - ours / 3000).max() < 0.05


def test_load_results(tmp_path, monkeypatch):
    monkeypatch.delenv("RSBOOK_BENCH", raising=False)
    assert load_results() is None
    path = tmp_path / "latest.json"
    path.write_text(json.dumps({"certify_over_raw": 1.0}))
    monkeypatch.setenv("RSBOOK_BENCH", str(path))
    assert load_results()["certify_over_raw"] == 1.0


@pytest.mark.slow
def test_make_bench_quick_writes_the_ratios(tmp_path):
    out = tmp_path / "latest.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_certify.py"), "--quick", "--out",
                             str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert {"certify_over_raw", "certify_over_reference", "device", "cases"} <= set(payload)
    assert payload["certify_over_raw"] > 0 and payload["certify_over_reference"] > 0
    assert "certify/raw" in result.stdout
