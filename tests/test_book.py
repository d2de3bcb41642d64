"""The book: chapters execute through papermill at the smoke profile, parameters reach them, the
smoke build renders the computed tables, and a real browser loads every figure."""

import html
import json
import os
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from conftest import glued_values  # noqa: E402

import book  # noqa: E402  (tools/book.py, the build script)

pytestmark = pytest.mark.slow


def test_every_chapter_has_one_parameters_cell_and_no_definitions():
    # DESIGN.md conventions 1: chapters are thin — one parameters cell, no def or class.
    import jupytext

    for doc in book.toc_documents():
        source = ROOT / "book" / f"{doc}.md"
        notebook = jupytext.read(source)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{source} has {len(tagged)} parameters cells"
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not any(line.lstrip().startswith(("def ", "class ")) for line in cell.source.splitlines()), \
                    f"{source}: chapters call into rsbook; no def or class"


def test_chapter_executes_at_smoke_and_a_parameter_changes_the_result(runs):
    first = book.execute("chapters/cohen_logs", "smoke", runs)
    glued = glued_values(first)
    comparisons = pd.read_csv(first.parent / "comparisons.csv")
    assert {"Table 1", "Table 2", "Table 3", "Table 4"} <= set(comparisons.loc[comparisons["document"] == "cohen",
                                                                               "table"])
    manifest = json.loads((first.parent / "manifest.json").read_text())
    assert manifest["parameters"]["max_rows"] == 200 and manifest["end_time"]
    second = book.execute("chapters/cohen_logs", "smoke", runs, overrides={"sigma": 0.5}, force=True)
    changed = glued_values(second)
    assert changed["sigma"] != glued["sigma"]
    assert changed["fig8_cohen"] != glued["fig8_cohen"]  # Figure 8 (left) recomputed on the sigma = 0.5 log
    assert json.loads((second.parent / "manifest.json").read_text())["parameters"]["sigma"] == 0.5


def test_a_failing_chapter_reports_the_error(runs):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="KeyError"):
        book.execute("chapters/cohen_logs", "smoke", runs, overrides={"sigma": 0.3}, force=True)
    assert (runs / "cohen_logs" / "smoke" / "cohen_logs.failed.ipynb").exists()
    assert not (runs / "cohen_logs" / "smoke" / "cohen_logs.ipynb").exists()


def test_smoke_book_renders_table_2_with_computed_values(smoke_book):
    runs_dir, html_dir = smoke_book
    page = (html_dir / "chapters" / "cohen_logs.html").read_text()
    cells = pd.read_csv(runs_dir / "cohen_logs" / "smoke" / "comparisons.csv")
    table2 = cells[(cells["document"] == "cohen") & (cells["table"] == "Table 2")]
    assert len(table2) == 21
    for value in table2["ours"]:
        assert f">{value:.3f}<" in page
    intro = (html_dir / "intro.html").read_text()
    assert "Scoreboard" in intro and "cohen_logs.html#cohen-logs-table-2" in intro


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("CI must install Debian's chromium (see .ci/run) for the browser check")
    pytest.skip("no chromium on this machine: `apt-get install chromium` to run the browser check")


_CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars"]

_CHECKER = """<!doctype html><html><body>
<iframe id="page" src="PAGE" width="1280" height="2000"></iframe>
<pre id="result">pending</pre>
<script>
const frame = document.getElementById("page");
frame.onload = () => {
  const doc = frame.contentDocument;
  const images = Array.from(doc.images);
  images.forEach(img => { img.loading = "eager"; });
  const report = () => {
    if (!images.every(img => img.complete)) { setTimeout(report, 50); return; }
    document.getElementById("result").textContent = JSON.stringify({
      images: images.map(img => ({src: img.getAttribute("src"), loaded: img.naturalWidth > 0})),
      text: doc.body.innerText});
  };
  report();
};
</script></body></html>"""


def _browser_report(chromium, base, page, html_dir, profile_dir, screenshot):
    """Open `page` in headless Chromium: the text it shows, its images and whether each loaded;
    and a screenshot of it."""
    checker = html_dir / f"_check_{Path(page).stem}.html"
    checker.write_text(_CHECKER.replace("PAGE", page))
    flags = _CHROMIUM_FLAGS + [f"--user-data-dir={profile_dir}"]
    dom = subprocess.run([chromium, *flags, "--virtual-time-budget=20000", "--dump-dom", f"{base}/{checker.name}"],
                         capture_output=True, text=True, timeout=120).stdout
    subprocess.run([chromium, *flags, "--window-size=1280,6000", f"--screenshot={screenshot}", f"{base}/{page}"],
                   capture_output=True, timeout=120)
    marker = '<pre id="result">'
    assert marker in dom, f"the browser did not run the page check on {page}"
    return json.loads(html.unescape(dom.split(marker, 1)[1].split("</pre>", 1)[0]))


@pytest.mark.parametrize("chapter, figures", [("cohen_logs", 7), ("cohen_rerun", 4), ("relax", 6), ("fars", 4), ("ancer", 3)])
def test_browser_loads_each_chapter_and_every_figure(smoke_book, tmp_path, chapter, figures):
    chromium = _chromium()
    runs_dir, html_dir = smoke_book
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(html_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    screenshot = runs_dir / chapter / "smoke" / "screenshot.png"
    try:
        report = _browser_report(chromium, f"http://127.0.0.1:{server.server_address[1]}",
                                 f"chapters/{chapter}.html", html_dir, tmp_path / "profile", screenshot)
    finally:
        server.shutdown()
    images = [img for img in report["images"] if "_images/" in img["src"]]
    assert len(images) >= figures, report["images"]
    assert all(img["loaded"] for img in report["images"]), [i for i in report["images"] if not i["loaded"]]
    if chapter == "cohen_logs":
        cells = pd.read_csv(runs_dir / chapter / "smoke" / "comparisons.csv")
        table2 = cells[(cells["document"] == "cohen") & (cells["table"] == "Table 2")]
        for value in table2["ours"]:
            assert f"{value:.3f}" in report["text"]
    assert screenshot.exists() and screenshot.stat().st_size > 50_000


def test_full_profile_path_on_tiny_on_disk_datasets(runs, cifar, tmp_path):
    """The paper-scale profile (CIFAR-10 ResNet-110 / ImageNet ResNet-50 on a GPU) runs the same code:
    here it executes on miniature CIFAR-10 batches and an ImageNet folder on the CPU, with sizes shrunk."""
    from conftest import write_image_folder

    write_image_folder(tmp_path / "imagenet", "train", seed=0)
    write_image_folder(tmp_path / "imagenet", "val", seed=1)
    shrink = {
        "experiments": {"cifar10": {"arch": "cifar_resnet20", "epochs": 1, "lr_step": 30, "batch": 4, "skip": 1,
                                    "certify_batch": 32},
                        "imagenet": {"arch": "resnet50", "epochs": 1, "lr_step": 30, "batch": 3, "skip": 1,
                                     "certify_batch": 8}},
        "sigmas": [0.25, 0.5], "cross_sigmas": [0.5], "n0": 4, "n": 16,
        "predict": {"dataset": "imagenet", "sigma": 0.25, "ns": [4, 8], "reference_n": 16, "skip": 2, "batch": 8},
        "attack": {"dataset": "imagenet", "sigma": 0.25, "multipliers": [1.5, 2.0], "max_examples": 1, "steps": 1,
                   "num_noise": 2, "n_predict": 8, "batch": 8},
        "topk": {"dataset": "imagenet", "sigma": 0.5, "ks": [1, 3, 5], "n": 16, "skip": 2, "batch": 8, "radius": 0.5},
        "n_grid": [10, 100], "alpha_grid": [0.01, 0.001], "device": "cpu",
        "perf": {"n0": 4, "n": 32, "batch": 16, "repeats": 1},
    }
    notebook = book.execute("chapters/cohen_rerun", "full", runs, overrides=shrink, force=True)
    cells = pd.read_csv(notebook.parent / "comparisons.csv")
    recorded = set(zip(cells["document"], cells["table"]))
    assert {("cohen", "Table 3"), ("cohen", "Table 2"), ("cohen", "Table 1"), ("cohen", "Table 4"),
            ("cohen", "Section 4 (tightness)"), ("notes", "Top-k predictions (text)")} <= recorded
    manifest = json.loads((notebook.parent / "manifest.json").read_text())
    assert manifest["parameters"]["experiments"]["imagenet"]["arch"] == "resnet50"
    assert list((runs / "cohen_rerun" / "full" / "train").glob("resnet50_imagenet_noise0.25-*/checkpoint.pt"))
