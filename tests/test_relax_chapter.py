"""The relaxation chapter (book/chapters/relax.md) at the smoke profile: it executes, follows the
chapter rules (one parameters cell, no def / class / lambda, numbers in prose only through glue),
records its results for the scoreboard as computed, and a parameter reaches it."""

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "chapters" / "relax.md"
sys.path.insert(0, str(ROOT / "tools"))
from conftest import chapter_source, glued_values  # noqa: E402

import book  # noqa: E402  (tools/book.py, the build script)


def test_chapter_source_follows_the_rules():
    source = chapter_source(CHAPTER)
    for cell in source["notebook"].cells:
        if cell.cell_type == "code" and cell is not source["parameters"]:
            assert "hide-input" in cell.metadata.get("tags", [])
    glued, defined = source["glued"], source["defined"]
    literal = {name for name in glued if name in defined}
    patterns = [re.compile("^" + re.sub(r"\{[^}]*\}", "[A-Za-z_0-9]+", d) + "$") for d in defined if "{" in d]
    missing = {name for name in glued - literal if not any(p.match(name) for p in patterns)}
    assert not missing, f"prose references values that are never glued: {missing}"


@pytest.mark.slow
def test_chapter_executes_at_smoke_and_records_computed_results(smoke_book, runs):
    notebook = smoke_book[0] / "relax" / "smoke" / "relax.ipynb"  # executed by the smoke book
    glued = glued_values(notebook)
    for name in ("fig_polytope", "fig_triangle", "fig_linf", "fig_l2", "fig_smoothing", "t_speedup", "toy_margin_milp",
                 "t_alpha", "bab_time", "order_slides_dual"):
        assert name in glued
    margin = {name: float(glued[f"toy_margin_{name}"]) for name in ("ibp", "dual", "crown", "alpha_crown", "lp", "milp")}
    for low, high in (("ibp", "lp"), ("dual", "alpha_crown"), ("crown", "alpha_crown"), ("alpha_crown", "lp"),
                      ("lp", "milp")):  # the documented order (rsbook.relax.certify.GUARANTEED)
        assert margin[low] <= margin[high] + 1e-6, (low, high, margin)
    assert float(glued["order_guaranteed_min"]) == 1.0  # every guaranteed pair held on every target
    comparisons = pd.read_csv(notebook.parent / "comparisons.csv")
    assert set(comparisons["document"]) == {"lp"}
    assert (comparisons["status"] == "computed (nothing published to compare)").all()
    assert {"Seconds per certificate", "Smoothing vs relaxation, ℓ2 certified accuracy", "Certified accuracy, ℓ∞",
            "Per-target order of the bounds, ℓ∞", "Branch and bound against the MILP"} <= set(comparisons["table"])
    exact = comparisons[comparisons["table"] == "Exact vs relaxed, ℓ∞ subset"]
    assert {"crown", "alpha-crown", "bab", "milp"} <= {row.split(" / ")[-1] for row in exact["row"]}
    manifest = json.loads((notebook.parent / "manifest.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["end_time"]
    changed = book.execute("chapters/relax", "smoke", runs, overrides={"eps_l2": [0.5]}, force=True)
    assert json.loads((changed.parent / "manifest.json").read_text())["parameters"]["eps_l2"] == [0.5]
    l2 = pd.read_csv(changed.parent / "comparisons.csv")
    assert set(l2.loc[l2["table"] == "Certified accuracy, ℓ2", "column"].astype(float)) == {0.5}


@pytest.mark.slow
def test_full_profile_code_path_on_a_miniature_cifar(runs, cifar):
    # The full profile's code path (dataset cifar10 from RSBOOK_DATA, 3×32×32 inputs) with its sizes shrunk;
    # conv_small itself is covered by the library tests (a dense LP over its convolutions takes minutes).
    shrink = {"arch": "mlp", "hidden": [8, 8], "device": "cpu", "skip": 1,
              "models": {"standard": {"mode": "standard", "epochs": 1},
                         "dual_linf": {"mode": "dual", "norm": "linf", "eps": 0.01, "epochs": 1, "ramp_epochs": 1},
                         "dual_l2": {"mode": "dual", "norm": "l2", "eps": 0.1, "epochs": 1, "ramp_epochs": 1},
                         "ibp_linf": {"mode": "ibp", "norm": "linf", "eps": 0.01, "epochs": 1, "ramp_epochs": 1},
                         "crown_ibp_linf": {"mode": "crown-ibp", "norm": "linf", "eps": 0.01, "epochs": 1,
                                            "ramp_epochs": 1}},
              "lp_scope": {}, "milp": {"examples": 1, "eps": [0.002], "time_limit": 20}, "bab": {"node_limit": 200},
              "order": {"examples": 1, "eps": [0.002]},
              "eps_linf": [0.002, 0.01], "eps_l2": [0.05, 0.2], "attack": {"steps": 5, "restarts": 1},
              "smoothing": {"sigmas": [0.25], "epochs": 1, "n0": 20, "n": 100, "alpha": 0.01, "batch": 100},
              "toy": {"hidden": [8, 8], "epochs": 5, "eps_train": 0.2, "batch_size": 50, "lr": 0.01, "eps": 0.25,
                      "candidates": 4, "points": 6, "directions": 12, "grid": 11}}
    notebook = book.execute("chapters/relax", "full", runs, overrides=shrink, force=True)
    manifest = json.loads((notebook.parent / "manifest.json").read_text())
    assert manifest["parameters"]["dataset"] == "cifar10" and manifest["profile"] == "full"
    glued = glued_values(notebook)
    assert glued["n_examples"] == "5" and glued["input_dim"] == "3072"
