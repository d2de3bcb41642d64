"""Issue 20, sec. 4: `rsbook analyze` prints the papers' tables from anyone's certify logs (rsbook.log_tables).

On the authors' released logs the cells it prints are the cells the cohen_logs chapter computes (the same
rsbook.analysis calls on the same logs: Cohen et al. Tables 1-3), and every cell the chapter finds
'reproduced exactly' prints as the paper printed it. A sequential log has no cells above its radius. Bad
input (a missing file, a log in neither layout, a predict log, a radius < 0, an unknown sigma, a plot in an
unknown format) is refused naming it, and no plot is left behind."""

import io
import json
import shutil

import pandas as pd
import pytest

from rsbook import analysis, log_tables, published
from rsbook.cli import main
from rsbook.logs import write_log


def _matched(dataset):
    """{sigma: path} of the released logs certified at their training noise (the chapter's *_matched), and
    the chapter's own {sigma: log} of them."""
    rows = published.artifacts(kind="certify_log", dataset=dataset, split="test")
    rows = rows[rows["noise"].astype(float) == rows["sigma"].astype(float)]
    paths = {float(r.sigma): published.fetch(r.name) for r in rows.itertuples()}
    logs = {s: log for (noise, s), log in published.released_certify_logs(dataset).items() if noise == s}
    return paths, logs


def _run(capsys, *argv):
    assert main(["analyze", *map(str, argv)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_the_csv_cells_are_the_chapters_tables_1_and_2(runs, capsys):
    paths, logs = _matched("imagenet")
    radii2 = list(published.table("cohen", "Table 2").columns)
    radii1 = list(published.table("cohen", "Table 1").index)
    radii = sorted(set(radii1) | set(radii2))
    out = pd.read_csv(io.StringIO(_run(capsys, *paths.values(), "--radii", *radii, "--format", "csv")))
    cells = out[(out["table"] == "logs") & (out["quantity"] == "certified_accuracy")]
    ours = cells.pivot(index="sigma", columns="radius", values="value")
    expected = analysis.certified_accuracy_table(logs, radii2)  # the chapter's Table 2 cells, exactly
    pd.testing.assert_frame_equal(ours[radii2], expected, check_names=False, check_exact=True)
    best = out[out["table"] == "envelope"].pivot(index="radius", columns="quantity", values="value").loc[radii1]
    table1 = analysis.best_sigma_table(logs, radii1)  # the chapter's Table 1 cells
    assert (best["certified_accuracy"].to_numpy() == table1["certified_accuracy"].to_numpy()).all()
    assert (best["standard_accuracy"].to_numpy() == table1["standard_accuracy"].to_numpy()).all()
    envelope = out[(out["table"] == "envelope") & (out["quantity"] == "certified_accuracy")].set_index("radius")
    assert envelope.loc[radii1, "sigma"].tolist() == table1["best_sigma"].tolist()
    per_log = out[out["table"] == "logs"].set_index(["sigma", "quantity"])["value"]
    for sigma, log in logs.items():
        assert per_log[(sigma, "acr")] == analysis.average_certified_radius(log)
        assert per_log[(sigma, "abstain")] == float((log["predict"] == -1).mean())
        assert per_log[(sigma, "examples")] == len(log)


def test_the_markdown_cells_print_as_the_paper_where_the_chapter_reproduces_it(runs, capsys):
    paths, logs = _matched("cifar10")
    paper = published.table("cohen", "Table 3")
    text = _run(capsys, *paths.values(), "--radii", *paper.columns)
    lines = [line for line in text.splitlines() if line.startswith("| sigma_")]
    assert len(lines) == len(logs)
    printed = {float(line.split("|")[2]): [c.strip().strip("*") for c in line.split("|")[4:4 + paper.shape[1]]]
               for line in lines}
    ours = analysis.certified_accuracy_table(logs, paper.columns)
    comparison = analysis.compare(ours, paper, decimals=published.decimals("cohen", "Table 3"),
                                  n_examples=min(len(log) for log in logs.values()))
    numbers = published.numbers("cohen", "Table 3")
    text_of = {(float(r.row), float(r.column)): r.printed for r in numbers.itertuples()}
    exact = comparison[comparison["status"] == "reproduced exactly"]
    assert len(exact) >= len(comparison) // 2
    for sigma, row in ours.iterrows():
        assert printed[sigma] == [f"{analysis.round_half_up(v, 2):.2f}" for v in row]
    for cell in exact.itertuples():
        assert printed[cell.row][list(paper.columns).index(cell.column)] == text_of[(cell.row, cell.column)]
    assert "Best σ per radius" in text


def test_latex_and_the_plot(runs, capsys, tmp_path):
    paths, _ = _matched("imagenet")
    figure = tmp_path / "figures" / "curves.pdf"
    text = _run(capsys, *paths.values(), "--radii", 0, 0.5, "--format", "latex", "--plot", figure)
    assert text.count(r"\begin{tabular}") == 2 and r"\toprule" in text and r"sigma\_0.25" in text
    assert r"\textbf{0.67}" in text  # the best certified accuracy at r = 0 (Table 2), in bold as analyze.py
    assert figure.read_bytes().startswith(b"%PDF")


def test_a_sequential_log_says_nothing_above_its_radius(runs, capsys, tmp_path):
    paths, _ = _matched("imagenet")
    rows = pd.DataFrame({"idx": [0, 1, 2, 3], "label": [1, 2, 3, 4], "predict": [1, -1, 3, -1],
                         "radius": [0.5, 0.0, 0.5, 0.0], "correct": [1, 0, 1, 0], "time": [0.1] * 4,
                         "samples": [200, 100000, 300, 90]})
    log = write_log(tmp_path / "robust_at_0.5.tsv", rows, "sequential")
    text = _run(capsys, paths[0.25], log, "--sigma", 0.25, 0.25, "--radii", 0, 0.5, 1, "--format", "csv")
    out = pd.read_csv(io.StringIO(text))
    cells = out[(out["table"] == "logs") & (out["log"] == "robust_at_0.5.tsv")]
    accuracy = cells[cells["quantity"] == "certified_accuracy"].set_index("radius")["value"]
    other = cells[cells["quantity"] != "certified_accuracy"].set_index("quantity")["value"]
    assert accuracy[0.0] == accuracy[0.5] == 0.5 and pd.isna(accuracy[1.0])
    assert pd.isna(other["acr"]) and other["abstain"] == 0.5 and other["mean_samples"] == rows["samples"].mean()
    assert set(out.loc[out["table"] == "envelope", "log"]) == {"sigma_0.25"}  # CERTIFY logs only
    markdown = _run(capsys, paths[0.25], log, "--sigma", 0.25, 0.25, "--radii", 0, 0.5, 1)
    assert "| robust_at_0.5.tsv | 0.25 | 4 | 0.50 | **0.50** | – | – | 0.50 | 25147.50 |" in markdown


def test_sigma_comes_from_the_flag_then_the_manifest_then_the_path(runs, tmp_path):
    paths, _ = _matched("imagenet")
    log = tmp_path / "sigma_0.50" / "log.tsv"
    log.parent.mkdir()
    shutil.copy(paths[0.5], log)
    assert log_tables.log_sigma(log) == (0.5, "path")
    (tmp_path / "sigma_0.50" / "log.tsv.manifest.json").write_text(json.dumps({"parameters": {"sigma": 0.25}}))
    assert log_tables.log_sigma(log) == (0.25, "manifest")
    assert log_tables.log_sigma(log, 1.0) == (1.0, "given")
    assert log_tables.log_sigma(tmp_path / "x" / "sigma_1.00.tsv") == (1.0, "path")


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("neither", "is neither a certify log"),
    ("predict", "is a predict log; analyze reads certify logs"),
    ("empty", "holds no rows"),
    ("no sigma", "the sigma of log {log} is unknown: give it"),
    ("negative radius", "--radii must be a finite number >= 0, got -0.5"),
    ("sigma count", "--sigma must give one value per log: 1 logs, 2 values"),
    ("jpg plot", "--plot must be a file ending in .png or .pdf or .svg"),
])
def test_bad_input_is_refused_naming_it(runs, capsys, tmp_path, case, message):
    paths, _ = _matched("imagenet")
    log = tmp_path / "mylog.tsv"
    if case == "neither":
        log.write_text("idx\tlabel\tprediction\tradius\n0\t1\t1\t0.5\n")
    elif case == "predict":
        shutil.copy(published.fetch("locuslab/smoothing/data/predict/imagenet/resnet50/noise_0.25/test/N_100"), log)
    elif case == "empty":
        log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
    elif case != "missing":
        shutil.copy(paths[0.25], log)
    argv = ["analyze", str(log), "--radii", "0", "0.5", "--plot", str(tmp_path / "out.png")]
    argv += {"negative radius": ["--radii", "-0.5"], "sigma count": ["--sigma", "0.25", "0.5"],
             "jpg plot": ["--sigma", "0.25", "--plot", str(tmp_path / "out.jpg")]}.get(case, [])
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsbook analyze: error: ")
    assert message.format(log=log) in lines[0]
    if not case.startswith(("negative", "sigma", "jpg")):
        assert str(log) in lines[0]
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "out.jpg").exists()
