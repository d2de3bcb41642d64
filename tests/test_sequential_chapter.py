"""The sequential-certification chapter (book/chapters/sequential.md): it follows the chapter rules (one
parameters cell, no def / class / lambda, numbers in prose only through glue), and at the smoke profile it
executes, records its results for the scoreboard as computed, and a parameter reaches it."""

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "chapters" / "sequential.md"
sys.path.insert(0, str(ROOT / "tools"))
from conftest import chapter_source, glued_values

import book


def test_chapter_source_follows_the_rules():
    source = chapter_source(CHAPTER)
    prose, glued, defined = source["prose"], source["glued"], source["defined"]
    assert glued <= defined, f"prose references values that are never glued: {glued - defined}"
    outside_math = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|\{glue:[a-z]+\}`[^`]*`|\{ref\}`[^`]*`|`[^`]*`|Section [0-9.]+",
                          "", prose, flags=re.DOTALL)
    typed = [number for number in re.findall(r"(?<![A-Za-z_\-])\d+\.\d+|\b\d{3,}\b", outside_math)
             if not re.fullmatch(r"(19|20)\d\d", number)]
    assert typed == [], f"numbers typed into the prose: {typed}"
    assert "chapters/sequential" in book.toc_documents()


@pytest.mark.slow
def test_chapter_executes_at_smoke(smoke_book, runs):
    notebook = smoke_book[0] / "sequential" / "smoke" / "sequential.ipynb"  # executed by the smoke book
    glued = glued_values(notebook)
    assert float(glued["h_samples"]) > 0 and float(glued["h_reduction"]) > 1
    # issue 20, sec. 2: power beside the savings, the looks, the exact peak, the seed spread
    assert float(glued["power_bet_p1"]) < float(glued["power_fix_p1"])
    assert float(glued["power_at_p0"]) <= float(glued["alpha"])
    assert float(glued["curve_peak_p"]) > float(glued["p0_h"]) and float(glued["curve_peak"]) > float(
        glued["curve_at_p0"])
    assert int(glued["first_look"]) + int(glued["n0"]) == float(glued["curve_at_one"])  # p_A = 1: first look + n0
    assert float(glued["rand_mean_gain_low"]) <= float(glued["rand_mean_gain"]) <= float(glued["rand_mean_gain_high"])
    assert "β = None" in glued["nofutility_reduction"]
    comparisons = pd.read_csv(notebook.parent / "comparisons.csv")
    assert (comparisons["chapter"] == "sequential").all() and (comparisons["status"].str.startswith("computed")).all()
    assert {"sequential-replay", "sequential-frontier", "sequential-digits", "sequential-cost",
            "sequential-randomized", "sequential-power"} <= set(comparisons["section"])
    again = book.execute("chapters/sequential", "smoke", runs, overrides={"alpha": 0.01}, force=True)
    assert json.loads((again.parent / "manifest.json").read_text())["parameters"]["alpha"] == 0.01
    assert glued_values(again)["alpha"] != glued["alpha"]
