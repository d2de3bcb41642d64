"""rsbook.ancer.pipeline: the thesis's four-method experiment as a resumable run (Tables 5.1-5.6), the
ResNet-18 of Sec. 5.3.1, and the chapter's paper-scale path on a miniature CIFAR-10."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from rsbook import published
from rsbook.ancer import pipeline as ar
from rsbook.ancer.memory import MEMORY_STATUSES
from rsbook.models import cifar_resnet18

ROOT = Path(__file__).resolve().parents[1]

TINY = {"fixed_sigma": 0.3, "sigma0": 0.3, "iso": {"iterations": 4, "learning_rate": 0.1, "num_samples": 16},
        "ancer": {"iterations": 4, "learning_rate": 0.1, "num_samples": 16, "kappa": 2.0},
        "rancer": {"iterations": 4, "learning_rate": 0.1, "num_samples": 16, "kappa": 2.0, "clip_sigma": [0.15, 0.15]},
        "n0": 20, "n": 300, "alpha": 0.01, "batch_size": 300}


@pytest.fixture(scope="module")
def toy():
    return ar.toy_experiment("rotated_linear", 90, 3, epochs=300, seed=1)


def test_a_run_resumes_to_the_same_rows(toy, tmp_path):
    # Runs are resumable: a torn results file and a lost parameter file are recomputed to the same rows.
    points, labels = toy["test"]
    first = ar.run_methods(tmp_path / "a", "toy", toy["model"], points, labels, num_classes=3, chunk_size=7, seed=2,
                           num_threads=1, **TINY)
    expected = {m: first.results(m) for m in ar.METHODS}
    folder = first.folder
    table = folder / "RANCER.tsv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:4]) + "\n" + lines[4][:5])  # three rows and a torn fourth
    (folder / "parameters" / "RANCER-000007.pt").unlink()
    ancer = folder / "ANCER.tsv"
    ancer.write_text(ancer.read_text().splitlines()[0] + "\n")  # only the header: every row to recompute
    again = ar.run_methods(tmp_path / "a", "toy", toy["model"], points, labels, num_classes=3, chunk_size=7, seed=2,
                           num_threads=1, **TINY)
    assert again.folder == folder
    for method in ar.METHODS:
        columns = [c for c in ar.RESULT_COLUMNS if not c.endswith("seconds")]
        pd.testing.assert_frame_equal(again.results(method)[columns], expected[method][columns])
    other = ar.run_methods(tmp_path / "a", "toy", toy["model"], points, labels, num_classes=3, chunk_size=7, seed=3,
                           **TINY)
    assert other.folder != folder  # another seed is another run, never an overwrite
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["end_time"] and manifest["resumed"]


def test_tables_are_keyed_like_the_published_ones_and_memory_is_sound(toy, tmp_path):
    points, labels = toy["test"]
    run = ar.run_methods(tmp_path, "toy", toy["model"], points, labels, num_classes=3, chunk_size=10, seed=0,
                         num_threads=1, **TINY)
    radii = list(published.table("rancer", "Table 5.1").columns)
    tables = run.tables(radii, memory=True)
    for name, key in (("Table 5.1", "radius"), ("Table 5.2", "proxy")):
        paper = published.table("rancer", name)
        assert list(tables[key].index) == list(paper.index) and list(tables[key].columns) == list(paper.columns)
        assert ((tables[key] >= 0) & (tables[key] <= 1)).all().all()
    assert list(run.tables(radii, rename={"Isotropic": "DDS"})["acr"].index) == list(
        published.table("rancer", "Table 5.5").index)
    soundness = ar.soundness_table(run)
    assert (soundness["conflicts after memory"] == 0).all()
    assert (soundness[list(MEMORY_STATUSES)].sum(axis=1) == len(labels)).all()
    timing = run.timing()
    assert list(timing.index) == list(ar.METHODS) and (timing["total"] > 0).all()
    assert timing.loc["ANCER", "optimize"] >= timing.loc["Isotropic", "optimize"]  # includes the DDS step
    improvement = run.improvement()
    assert set(improvement) == {"ARI", "ARI_proxy"}
    positions = ar.pick_examples(run, 3)
    assert len(positions) <= 3 and all(run.results("RANCER").loc[p, "correct"] == 1 for p in positions)
    trace = run.trace("RANCER", positions)
    assert set(trace["position"]) == set(positions) and trace["iteration"].max() == TINY["rancer"]["iterations"] - 1
    order = ar.processing_order(len(labels), 5)
    assert sorted(order) == list(range(len(labels))) and ar.processing_order(len(labels), None) is None
    frame, final, _ = run.with_memory("ANCER", order)
    assert len(final) == len(frame) == len(labels)


def test_thesis_settings_follow_the_authors_config(runs):
    config = ar.thesis_config()
    assert config["iso_iterations"] == 900 and config["rancer_regularization_weight"] == 2
    settings = ar.thesis_settings(config, {"N": 1000})
    assert settings["n"] == 1000 and settings["n0"] == config["N0"] and settings["alpha"] == config["alpha"]
    assert settings["iso"] == {"iterations": 900, "learning_rate": 0.1, "num_samples": 10000}
    assert settings["rancer"]["kappa"] == 2.0 and settings["fixed_sigma"] == config["initial_theta"]
    with pytest.raises(ValueError, match="overrides may only name"):
        ar.thesis_settings(config, {"n": 1000})


def test_released_toy_is_the_thesis_pipeline(runs):
    released = ar.released_toy(skip=2)
    points, labels = released["test"]
    assert points.shape == (118, 2) and list(released["indices"][:3]) == [0, 2, 4]
    accuracy = (released["model"](torch.as_tensor(points)).argmax(1).numpy() == labels).mean()
    assert accuracy > 0.95


def test_cifar_resnet18_keeps_32x32_resolution():
    # Sec. 5.3.1: ResNet-18 on 32x32 inputs; the CIFAR stem keeps the first stage at 32x32.
    net = cifar_resnet18(10).eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert net.conv1.stride == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    from rsbook.models import build

    model = build("cifar_resnet18", 10, dataset="cifar10")  # with CIFAR-10's normalisation in front
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.slow
def test_full_profile_path_on_a_miniature_cifar(runs, cifar):
    """The paper-scale profile (CIFAR-10, ResNet-18, Lanczos rotations, compared with Tables 5.3-5.5)
    runs the same code: executed here on miniature CIFAR-10 batches on the CPU with sizes shrunk."""
    sys.path.insert(0, str(ROOT / "tools"))
    import book

    tiny = {key: value for key, value in TINY.items() if key not in ("n0", "n", "alpha", "batch_size")}
    shrink = {
        "toy": {"kind": "blobs", "n_points": 60, "n_classes": 3, "test_fraction": 0.2, "epochs": 100},
        "toy_overrides": {"iso_iterations": 3, "iso_num_samples": 8, "rancer_iterations": 3, "rancer_num_samples": 8,
                          "N": 200},
        "released_skip": 20,
        "image": {"dataset": "cifar10", "arch": "cifar_resnet18", "train_sigma": 0.12, "epochs": 1, "lr_step": 30,
                  "batch": 4, "num_examples": 3},
        "image_settings": {**tiny, "rancer": {**tiny["rancer"], "rank": 2, "lanczos_steps": 4},
                           "n0": 4, "n": 16, "alpha": 0.001, "batch_size": 16},
        "image_chunk": 2, "device": "cpu", "cpu_threads": 1, "figure_examples": 1,
        "launch": False,  # the steps in this process; launched through torchrun: tests/test_ancer_distributed.py
    }
    notebook = book.execute("chapters/ancer", "full", runs, overrides=shrink, force=True)
    cells = pd.read_csv(notebook.parent / "comparisons.csv")
    compared = cells[cells["status"] != "computed (nothing published to compare)"]
    assert {"Table 5.1", "Table 5.2", "Table 5.3", "Table 5.4", "Table 5.5", "Section 5.6 (ARI)"} <= set(
        compared["table"])
    assert "Table 5.6" in set(cells["table"])
    folder = runs / "ancer" / "full" / "anisotropic"
    parameters = torch.load(next(folder.glob("cifar10-*/parameters/RANCER-000000.pt")), weights_only=False)
    assert parameters["rotation"]["reflectors"].shape == (2, 3072, 2)  # Lanczos rank 2, never 3072 x 3072
