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
def test_chapter_executes_at_smoke(runs):
    notebook = book.execute("chapters/sequential", "smoke", runs)
    glued = glued_values(notebook)
    assert float(glued["h_samples"]) > 0 and float(glued["h_reduction"]) > 1
    comparisons = pd.read_csv(notebook.parent / "comparisons.csv")
    assert (comparisons["chapter"] == "sequential").all() and (comparisons["status"].str.startswith("computed")).all()
    assert {"sequential-replay", "sequential-frontier", "sequential-digits", "sequential-cost",
            "sequential-randomized"} <= set(comparisons["section"])
    again = book.execute("chapters/sequential", "smoke", runs, overrides={"alpha": 0.01}, force=True)
    assert json.loads((again.parent / "manifest.json").read_text())["parameters"]["alpha"] == 0.01
    assert glued_values(again)["alpha"] != glued["alpha"]
