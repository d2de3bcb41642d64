"""The re-run pipelines (rsbook.cohen.pipeline): one folder per parameter set, resumable steps, the
training-noise x certification-noise matrix, and the counts behind Figure 8 (middle and right)."""

import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from rsbook.analysis import (
    certified_accuracy,
    counts_from_radius,
    resampled_certified_accuracy,
)
from rsbook.cohen import pipeline as ex
from rsbook.logs import run_folder
from rsbook.stats import clopper_pearson_lower
from rsbook.train import train_models


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun")
    checkpoints = train_models(root, "digits", "digits_cnn", [0.25, 0.5], epochs=4, batch_size=128, lr_step=2)
    grid = ex.certify_grid(root, "digits", checkpoints, [0.5], n0=50, n=400, alpha=0.01, batch_size=450, skip=20)
    return root, checkpoints, grid


def test_train_and_certify_grid(pipeline):
    root, checkpoints, grid = pipeline
    assert sorted(checkpoints) == [0.25, 0.5] and all(p.name == "checkpoint.pt" for p in checkpoints.values())
    assert sorted(zip(grid["noise"], grid["sigma"])) == [(0.25, 0.25), (0.25, 0.5), (0.5, 0.5)]
    assert all(len(log) == 27 for log in grid["log"])  # every 20th of the 540 test digits
    matrix = ex.cross_noise_matrix(grid, 0.0)
    assert matrix.shape == (2, 2) and np.isnan(matrix.loc[0.5, 0.25])
    assert matrix.loc[0.25, 0.25] == certified_accuracy(grid["log"].iloc[0], [0.0]).iloc[0]


def test_steps_resume_instead_of_recomputing(pipeline):
    root, checkpoints, grid = pipeline
    started = time.perf_counter()
    again = ex.certify_grid(root, "digits", checkpoints, [0.5], n0=50, n=400, alpha=0.01, batch_size=450, skip=20)
    assert time.perf_counter() - started < 5
    for a, b in zip(grid["log"], again["log"]):
        assert a.equals(b)
    other = ex.certify_grid(root, "digits", {0.25: checkpoints[0.25]}, n0=50, n=200, alpha=0.01, batch_size=250,
                            skip=20)
    assert other["path"].iloc[0].parent != grid["path"].iloc[0].parent  # new parameters, new folder


def test_predict_topk_and_attack_runs(pipeline):
    root, checkpoints, grid = pipeline
    logs = ex.predict_runs(root, "digits", checkpoints[0.25], 0.25, [100, 400], alpha=0.01, batch_size=400, skip=60)
    assert sorted(logs) == [100, 400] and all(len(log) == 9 for log in logs.values())
    topk = ex.topk_radii(root, "digits", checkpoints[0.5], 0.5, [1, 3], n=300, alpha=0.01, batch_size=300, skip=60)
    assert len(topk) == 18 and set(topk["k"]) == {1, 3}
    wide = topk.pivot(index="idx", columns="k", values="radius")
    assert (wide[3] >= wide[1] - 1e-12).all()  # same samples per example: the top-3 radius never shrinks
    again = ex.topk_radii(root, "digits", checkpoints[0.5], 0.5, [1, 3], n=300, alpha=0.01, batch_size=300, skip=60)
    assert again.equals(topk)
    log = grid["log"].iloc[0]
    attacked = ex.attack_runs(root, "digits", checkpoints[0.25], 0.25, log, (1.5, 2.0), n_predict=200, alpha=0.01,
                              batch_size=200, steps=3, num_noise=4, max_examples=3)
    certified = log[(log["correct"] == 1) & (log["radius"] > 0)]
    assert sorted(set(attacked["idx"])) == sorted(certified["idx"].head(3)) and len(attacked) == 6
    assert set(attacked["multiplier"]) == {1.5, 2.0}


def test_run_folder_names_parameters():
    a = run_folder("r", "certify", "x", {"n": 1})
    assert a.parent.name == "certify" and a.name.startswith("x-")
    assert a != run_folder("r", "certify", "x", {"n": 2}) and a == run_folder("r", "certify", "x", {"n": 1})


def test_counts_are_recovered_exactly_from_full_precision_radii():
    rng = np.random.default_rng(0)
    n, alpha, sigma = 100000, 0.001, 0.5
    k = rng.integers(50500, n + 1, size=200)
    radius = sigma * norm.ppf(clopper_pearson_lower(k, n, alpha))
    assert np.array_equal(counts_from_radius(radius, sigma, n, alpha), k)
    assert counts_from_radius(np.array([0.0]), sigma, n, alpha)[0] == -1


def test_resampling_figure8_middle_and_right():
    n, alpha, sigma = 1000, 0.001, 0.5
    k = np.array([990, 800, 700, 1000])
    radius = sigma * norm.ppf(clopper_pearson_lower(k, n, alpha))
    log = pd.DataFrame({"radius": radius, "correct": [1, 1, 0, 1], "predict": [1, 1, 2, 1], "label": [1, 1, 1, 1]})
    radii = [0.0, 0.5, 1.0, 1.2]
    same = resampled_certified_accuracy(log, sigma, n, alpha, radii)
    assert same.equals(certified_accuracy(log, radii))  # nothing changed, nothing moves
    more = resampled_certified_accuracy(log, sigma, n, alpha, radii, n_new=100000)
    fewer = resampled_certified_accuracy(log, sigma, n, alpha, radii, n_new=100)
    assert (more >= same).all() and (fewer <= same).all() and more.loc[1.0] > same.loc[1.0]
    looser = resampled_certified_accuracy(log, sigma, n, alpha, radii, alpha_new=0.1)
    assert (looser >= same).all()
    # p = 0.99 with 100,000 samples certifies 0.5 * Phi^-1(0.989...) = 1.15: past 1.0, short of 1.2
    assert more.loc[1.0] == 0.5 and more.loc[1.2] == 0.25 and fewer.loc[1.0] == 0.0
