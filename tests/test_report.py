"""Chapter plumbing (DESIGN.md conventions 2, 3 and 6): a chapter's run folder with its manifest, its
ours-vs-paper records, the provenance table, and the book's scoreboard of every published table.
Uses Cohen et al. 2019 Tables 2 and 3 as the recorded tables."""

import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from rsbook import published
from rsbook.analysis import DIFFERENT_DATA, STATUSES
from rsbook.book.report import (
    ADDED,
    COMPARISONS,
    COMPUTED,
    PUBLISHED,
    TABLE_CLASS,
    ChapterRun,
    additions_markdown,
    comparisons,
    documents_without_tables,
    scoreboard,
    scoreboard_markdown,
    scoreboard_summary,
    styled,
)

EXACT, WITHIN, DIFFERS, MISSING = STATUSES
PARAMS = {"seed": 0, "sigmas": [0.25, 0.5, 1.0], "max_rows": 50}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("RSBOOK_RUNS", str(root))
    return root


def _ours_table_2():
    """Cohen Table 2 off by +0.0013 everywhere (reproduced exactly) except sigma 1.0, r 3.0 (differs)."""
    ours = published.table("cohen", "Table 2") + 0.0013
    ours.loc[1.0, 3.0] = 0.2
    return ours


def test_chapter_run_writes_manifest(runs):
    run = ChapterRun("cohen", "smoke", PARAMS)
    assert run.dir == runs / "cohen" / "smoke"
    manifest = json.loads((runs / "cohen" / "smoke" / "manifest.json").read_text())
    assert manifest["parameters"] == PARAMS and manifest["seed"] == 0
    assert (manifest["chapter"], manifest["profile"]) == ("cohen", "smoke")
    assert manifest["end_time"] is None and "git_commit" in manifest
    assert os.listdir(run.dir) == ["manifest.json"]


def test_chapter_run_explicit_runs_folder(runs, tmp_path):
    run = ChapterRun("fars", "default", {}, runs=tmp_path / "other")
    assert run.dir == tmp_path / "other" / "fars" / "default" and (run.dir / "manifest.json").is_file()
    assert not runs.exists()


@pytest.mark.parametrize("profile", ["paper", "Smoke", ""])
def test_chapter_run_rejects_unknown_profile(runs, profile):
    with pytest.raises(ValueError, match=f"profile.*{profile!r}"):
        ChapterRun("cohen", profile, PARAMS)
    assert not runs.exists()


def test_compare_records_and_styles(runs):
    run = ChapterRun("cohen", "smoke", PARAMS)
    result, styled = run.compare("cohen", "Table 2", _ours_table_2(), "cohen-table-2")
    assert len(result) == 21
    assert (result["status"] == EXACT).sum() == 20
    assert result.loc[(result["row"] == 1.0) & (result["column"] == 3.0), "status"].tolist() == [DIFFERS]

    saved = pd.read_csv(run.dir / COMPARISONS)
    assert len(saved) == 21
    assert {"document", "table", "section", "chapter", "row", "column", "ours", "paper", "delta", "status"} <= set(saved)
    assert set(saved["document"]) == {"cohen"} and set(saved["table"]) == {"Table 2"}
    assert set(saved["section"]) == {"cohen-table-2"} and set(saved["chapter"]) == {"cohen"}
    np.testing.assert_allclose(saved["ours"], result["ours"])
    assert saved["status"].tolist() == result["status"].tolist()

    html = styled.to_html()
    assert "0.671" in html and "0.371" in html and "0.200" in html  # ours, formatted {:.3f}
    assert "+0.080" in html  # the differing cell's delta
    assert "#ffd6d6" in html  # and its colour


def test_compare_tolerance_passes_through(runs):
    run = ChapterRun("cohen", "smoke", PARAMS)
    ours = published.table("cohen", "Table 2") + 0.012
    assert run.compare("cohen", "Table 2", ours, "t2")[0]["status"].eq(DIFFERS).all()
    result, _ = run.compare("cohen", "Table 2", ours, "t2", n_examples=500)
    assert set(result["status"]) == {WITHIN}
    assert run.status("cohen", "Table 2") == DIFFERS  # both records count; the worst wins


def test_status_and_differences(runs):
    run = ChapterRun("cohen", "smoke", PARAMS)
    run.compare("cohen", "Table 2", _ours_table_2(), "cohen-table-2")
    run.compare("cohen", "Table 3", published.table("cohen", "Table 3") - 0.003, "cohen-table-3")
    assert run.status("cohen", "Table 2") == DIFFERS
    assert run.status("cohen", "Table 3") == EXACT
    diff = run.differences()
    assert list(diff.columns) == ["document", "table", "row", "column", "paper", "ours", "delta"]
    assert diff.drop(columns=["ours", "delta"]).values.tolist() == [["cohen", "Table 2", 1.0, 3.0, 0.12]]
    assert diff["delta"].iloc[0] == pytest.approx(0.08, abs=1e-12)
    assert len(pd.read_csv(run.dir / COMPARISONS)) == 21 + 28


def test_new_run_starts_fresh_comparisons(runs):
    ChapterRun("cohen", "smoke", PARAMS).compare("cohen", "Table 2", _ours_table_2(), "t2")
    run = ChapterRun("cohen", "smoke", PARAMS)
    assert not (run.dir / COMPARISONS).exists()


def test_finish_stamps_end_time(runs):
    run = ChapterRun("cohen", "smoke", PARAMS)
    run.compare("cohen", "Table 2", _ours_table_2(), "t2")
    manifest = run.finish()
    assert manifest["end_time"] is not None
    on_disk = json.loads((run.dir / "manifest.json").read_text())
    assert on_disk["end_time"] == manifest["end_time"] and on_disk["parameters"] == PARAMS
    assert pd.Timestamp(on_disk["end_time"]) >= pd.Timestamp(on_disk["start_time"])
    assert sorted(os.listdir(run.dir)) == [COMPARISONS, "manifest.json"]  # no temp files


def test_provenance(runs):
    name = "locuslab/smoothing/data/certify/imagenet/resnet50/noise_1.00/test/sigma_1.00"
    sha = published.artifacts().set_index("name").loc[name, "sha256"]
    run = ChapterRun("cohen", "smoke", PARAMS)
    prov = run.provenance(artifacts=[name])
    assert list(prov.columns) == ["item", "value"]
    prov = prov.set_index("item")
    assert prov.loc["run folder", "value"] == str(runs / "cohen" / "smoke")
    assert prov.loc["profile", "value"] == "smoke"
    assert json.loads(prov.loc["parameters", "value"]) == PARAMS
    assert "git commit" in prov.index and prov.loc["git commit", "value"]
    path = name.removeprefix("locuslab/smoothing/")
    assert prov.loc[f"artifact: {path}", "value"].startswith("locuslab/smoothing@78a4d949e4, sha256 ")
    assert sha.startswith(prov.loc[f"artifact: {path}", "value"].split("sha256 ")[1].rstrip("…"))
    assert "version: numpy" in prov.index and "version: torch" in prov.index
    assert not any(i.startswith("artifact:") for i in run.provenance()["item"])


# ----------------------------------------------------------------------------------------- scoreboard


def test_scoreboard_with_nothing_recorded(runs):
    board = scoreboard("smoke")
    listed = published.tables()
    assert len(board) == len(listed)
    assert set(zip(board["document"], board["table"])) == set(zip(listed["document"], listed["table"]))
    assert (board["status"] == MISSING).all()
    assert (board["cells"] == 0).all()
    assert list(board["document"].unique()) == ["notes", "cohen", "fars", "rancer"]  # DOCUMENTS order


def test_scoreboard_after_recording(runs):
    run = ChapterRun("cohen", "smoke", PARAMS)
    run.compare("cohen", "Table 2", _ours_table_2(), "cohen-table-2")
    run.compare("cohen", "Table 3", published.table("cohen", "Table 3"), "cohen-table-3")
    board = scoreboard("smoke").set_index(["document", "table"])
    t2 = board.loc[("cohen", "Table 2")]
    assert (t2["status"], t2["cells"], t2["differing_cells"]) == (DIFFERS, 21, 1)
    assert (t2["chapter"], t2["section"]) == ("cohen", "cohen-table-2")
    assert board.loc[("cohen", "Table 3"), "status"] == EXACT
    assert board.loc[("notes", "Table 1"), "status"] == MISSING  # same table name, other document
    assert board.loc[("cohen", "Table 1"), "status"] == MISSING
    assert (board["status"] != MISSING).sum() == 2
    # another profile sees none of it
    assert (scoreboard("full")["status"] == MISSING).all()


def test_scoreboard_explicit_runs_folder(runs, tmp_path):
    run = ChapterRun("cohen", "default", PARAMS, runs=tmp_path / "elsewhere")
    run.compare("cohen", "Table 2", _ours_table_2(), "cohen-table-2")
    assert (scoreboard("default")["status"] == MISSING).all()
    board = scoreboard("default", runs=tmp_path / "elsewhere")
    assert (board["status"] != MISSING).sum() == 1


def test_scoreboard_markdown(runs):
    ChapterRun("cohen", "smoke", PARAMS).compare("cohen", "Table 2", _ours_table_2(), "cohen-table-2")
    text = scoreboard_markdown(scoreboard("smoke"))
    lines = text.splitlines()
    assert lines[0].startswith("| document | table | status")
    assert len(lines) == 2 + len(published.tables())
    row = [line for line in lines if line.startswith("| cohen | Table 2 |")]
    assert row == ["| cohen | Table 2 | differs | 21 (1) | {ref}`cohen <cohen-table-2>` |"]
    assert text.count("{ref}") == 1  # tables not yet reproduced get no link


def test_scoreboard_splits_published_results_from_what_the_book_adds(runs):
    """Issue 20, sec. 3: the documents' published results first, each with its status, then the results no
    document prints (status COMPUTED) as a part of their own, each part with its own counts; nothing is dropped."""
    logs = ChapterRun("logs", "smoke", {})
    logs.compare("cohen", "Table 2", _ours_table_2(), "logs-table-2")
    logs.record("cohen", "replay (ours)", pd.DataFrame({"x": {0.5: 1.0, 1.0: 2.0}}), "logs-replay")
    ChapterRun("relax", "smoke", {}).record("lp", "LP vs MILP (ours)", pd.DataFrame({"lp": {0.01: 0.9}}), "relax-t")
    ChapterRun("toy", "smoke", {}).compare("rancer", "Table 5.1", published.table("rancer", "Table 5.1"), "toy-5-1",
                                           same_data=False)
    board = scoreboard("smoke")
    parts = board["part"].astype(str).tolist()
    assert parts == sorted(parts, key=[PUBLISHED, ADDED].index)  # published first, then the additions
    shown, extra = board[board["part"] == PUBLISHED], board[board["part"] == ADDED]
    assert len(shown) == len(published.tables()) and (shown["status"] != COMPUTED).all()
    assert list(zip(extra["document"], extra["table"])) == [("cohen", "replay (ours)"), ("lp", "LP vs MILP (ours)")]
    summary = scoreboard_summary(board)
    assert summary["published"]["rows"] == len(published.tables())
    assert summary["published"]["tables"] == len(published.tables())
    assert summary["published"]["statuses"] == {EXACT: 0, WITHIN: 0, DIFFERS: 1, MISSING: len(published.tables()) - 2,
                                                DIFFERENT_DATA: 1}
    assert summary["published"]["cells"] == 21 + 12
    assert summary["added"] == {"rows": 2, "cells": 3, "chapters": {"logs": 1, "relax": 1}}
    assert summary["published"]["cells"] + summary["added"]["cells"] == len(comparisons("smoke"))  # CSV: every cell
    first, second = scoreboard_markdown(board).splitlines(), additions_markdown(board).splitlines()
    assert len(first) == 2 + len(published.tables()) and not any("(ours)" in line for line in first)
    assert second[:2] == ["| extends | result | cells | where |", "|---|---|---:|---|"]  # the counts right-aligned
    assert second[2:] == ["| cohen | replay (ours) | 2 | {ref}`logs <logs-replay>` |",
                          "| lp | LP vs MILP (ours) | 1 | {ref}`relax <relax-t>` |"]


def test_documents_without_tables():
    assert documents_without_tables() == ["lp"]


def test_status_before_anything_is_recorded(runs):
    run = ChapterRun("empty", "smoke", {})
    assert run.status("cohen", "Table 2") == "not yet reproduced"
    assert run.differences().empty


def test_scoreboard_one_row_per_chapter(runs):
    first, second = ChapterRun("logs", "smoke", {}), ChapterRun("rerun", "smoke", {})
    paper = published.table("cohen", "Table 2")
    first.compare("cohen", "Table 2", paper, "logs-table-2")
    second.compare("cohen", "Table 2", paper + 0.2, "rerun-table-2")
    board = scoreboard("smoke")
    rows = board[(board["document"] == "cohen") & (board["table"] == "Table 2")]
    assert dict(zip(rows["chapter"], rows["status"])) == {"logs": EXACT, "rerun": DIFFERS}
    assert len(board) == len(published.tables()) + 1


def test_results_without_a_published_number_are_listed(runs):
    from rsbook.book.report import COMPUTED

    run = ChapterRun("relax", "smoke", {})
    ours = pd.DataFrame({"lp": {0.01: 0.9, 0.02: 0.7}, "milp": {0.01: 0.92, 0.02: 0.75}})
    run.record("lp", "certified accuracy (ours)", ours, "relax-accuracy")
    board = scoreboard("smoke")
    row = board[(board["document"] == "lp") & (board["table"] == "certified accuracy (ours)")]
    assert len(row) == 1 and row["status"].iloc[0] == COMPUTED and row["cells"].iloc[0] == 4
    assert run.status("lp", "certified accuracy (ours)") == COMPUTED and run.differences().empty


# ------------------------------------------------------------------------- the book's one table style


def _rules(html: str) -> dict[str, str]:
    """selector (without the table's #T_ id) -> its declarations, from a Styler's <style> block."""
    css = html.split("<style", 1)[1].split("</style>", 1)[0]
    rules = {}
    for selector, body in re.findall(r"#T_\w+([^{]*)\{([^}]*)\}", css):
        rules[selector.strip()] = rules.get(selector.strip(), "") + body
    return rules


def test_comparison_table_is_captioned_padded_and_right_aligned(runs):
    # Cohen et al. 2019, Table 2: seven radius columns of numbers, each a right-aligned, padded column.
    run = ChapterRun("cohen", "smoke", PARAMS)
    _, view = run.compare("cohen", "Table 2", _ours_table_2(), "cohen-table-2")
    html = view.to_html()
    assert f'class="{TABLE_CLASS}"' in html
    caption = re.search(r"<caption>(.*?)</caption>", html, re.S).group(1)
    assert caption.startswith("cohen, Table 2: Approximate certified top-1 accuracy on ImageNet")
    assert "Δ = ours − paper" in caption and "red: differs" in caption
    rules = _rules(html)
    assert "padding: 0.25em 0.5em" in rules["td"] and "padding: 0.25em 0.5em" in rules["th"]
    for column in range(7):
        assert "text-align: right" in rules[f"td.col{column}"], column
        assert "text-align: right" in rules[f"th.col_heading.col{column}"], column
    assert "td.col7" not in rules
    assert "color: #1a1a1a" in html  # shaded cells keep dark text in the dark theme too


def test_styled_aligns_numbers_right_and_text_left():
    frame = pd.DataFrame({"name": ["a", "b"], "count": [1, 2], "share": [0.5, np.nan], "flag": [True, False],
                          "mixed": [0.5, "all"], "boxed": pd.Series([0.25, 1.0], dtype=object)})
    view = styled(frame, {"name": "{}", "count": "{:d}", "share": "{:.2f}", "flag": "{}", "mixed": "{}",
                          "boxed": "{:g}"}, caption="what the cells are")
    html = view.to_html()
    assert "<caption>what the cells are</caption>" in html
    right = {int(s[len("td.col"):]) for s, body in _rules(html).items()
             if s.startswith("td.col") and "text-align: right" in body}
    assert right == {1, 2, 5}  # count, share, and an object column holding only numbers
    assert "text-align: left" in _rules(html)["td"]  # everything else reads as text
    assert "<caption>" not in styled(frame, "{}").to_html()  # a caption is the caller's to give


def test_record_has_a_default_caption(runs):
    run = ChapterRun("relax", "smoke", {})
    view = run.record("lp", "certified accuracy (ours)", pd.DataFrame({"lp": {0.01: 0.9}}), "relax-accuracy")
    assert "<caption>lp, certified accuracy (ours): computed here" in view.to_html()
    view = run.record("lp", "t", pd.DataFrame({"lp": {0.01: 0.9}}), "s", caption="Share of YES")
    assert "<caption>Share of YES</caption>" in view.to_html()


def test_comparisons_gathers_every_chapter_of_one_profile(runs):
    ChapterRun("logs", "smoke", {}).compare("cohen", "Table 2", _ours_table_2(), "logs-table-2")
    ChapterRun("rerun", "smoke", {}).compare("cohen", "Table 3", published.table("cohen", "Table 3"), "rerun-t3")
    ChapterRun("relax", "smoke", {}).record("lp", "t", pd.DataFrame({"lp": {0.01: 0.9, 0.02: 0.7}}), "relax-t")
    ChapterRun("logs", "default", {}).compare("cohen", "Table 2", _ours_table_2(), "logs-table-2")
    cells = comparisons("smoke")
    assert list(cells.columns[:3]) == ["profile", "chapter", "section"]
    assert set(cells["profile"]) == {"smoke"} and len(cells) == 21 + 28 + 2
    assert cells.groupby("chapter").size().to_dict() == {"logs": 21, "relax": 2, "rerun": 28}
    assert cells.loc[cells["chapter"] == "relax", "paper"].isna().all()
    assert len(comparisons("default")) == 21 and comparisons("full").empty
    assert scoreboard("smoke")["cells"].sum() == len(cells)  # the scoreboard counts the same cells
