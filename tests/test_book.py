"""The book: chapters execute through papermill at the smoke profile, parameters reach them, the
smoke build renders the computed tables (one parameters cell per chapter, naming the profile; every
table captioned; the scoreboard's links and its CSV of every recorded cell), nothing is loaded from the
network, and a real browser typesets the math, loads every figure, keeps adjacent numbers in a table
apart and keeps tables and figures readable in the dark theme."""

import html
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from conftest import glued_values  # noqa: E402

import book  # noqa: E402  (tools/book.py, the build script)
from rsbook.logs import read_log  # noqa: E402
from rsbook.published import file_sha256  # noqa: E402

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


def test_chapter_executes_at_smoke_and_a_parameter_changes_the_result(smoke_book, runs):
    first = smoke_book[0] / "cohen_logs" / "smoke" / "cohen_logs.ipynb"  # executed by the smoke book
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


CHAPTERS = tuple(Path(doc).name for doc in book.toc_documents()[1:])  # every chapter the book shows


def _page(html_dir, name) -> BeautifulSoup:
    return BeautifulSoup((html_dir / name).read_text(), "html.parser")


def test_parameters_source_puts_the_injected_values_in_place():
    own = ('profile = "default"  # which parameter set\n'
           'sigma = 0.25  # noise level\n'
           '# a comment line stays\n'
           'grid = {"a": 1,\n        "b": 2}  # a dict over two lines\n'
           'label = "σ, ρ, α"  # non-ASCII before the comment\n'
           'seed = 0\n')
    injected = ('# Parameters\nsigma = 0.5\ngrid = {"a": 3}\nlabel = "σ = 1"\nextra = [1, 2]\n'
                'profile = "smoke"\n')
    lines = book.parameters_source(own, injected).splitlines()
    assert lines[0] == "# profile: smoke — parameters of this build"
    assert lines[1] == "# set for this build: sigma, grid, label, extra; the others are the chapter's defaults"
    assert lines[2:] == ['profile = "smoke"  # which parameter set', "sigma = 0.5  # noise level",
                         "# a comment line stays", 'grid = {"a": 3}  # a dict over two lines',
                         'label = "σ = 1"  # non-ASCII before the comment', "seed = 0", "extra = [1, 2]"]
    namespace = {}
    exec("\n".join(lines), namespace)  # what the reader sees is what ran
    assert (namespace["sigma"], namespace["grid"], namespace["extra"], namespace["seed"]) == (0.5, {"a": 3}, [1, 2], 0)


def test_rendered_chapters_show_one_parameters_cell_naming_the_profile(smoke_book):
    runs_dir, html_dir = smoke_book
    for chapter in CHAPTERS:
        page = _page(html_dir, f"chapters/{chapter}.html")
        cells = page.select("div.cell.tag_parameters")
        assert len(cells) == 1 and not page.select("div.cell.tag_injected-parameters"), chapter
        source = cells[0].select_one("pre").get_text()
        assert source.startswith("# profile: smoke — parameters of this build\n"), source[:200]
        assert source.count("# Parameters") == 0 and 'profile = "smoke"' in source
        # presentation only: the executed notebook still holds both cells as they ran
        executed = nbformat.read(runs_dir / chapter / "smoke" / f"{chapter}.ipynb", as_version=4)
        tags = [t for cell in executed.cells for t in cell.metadata.get("tags", [])]
        assert tags.count("parameters") == 1 and tags.count("injected-parameters") == 1, chapter
    smoke = book.parameters_for("cohen_logs", "smoke", {})
    shown = _page(html_dir, "chapters/cohen_logs.html").select_one("div.cell.tag_parameters pre").get_text()
    for name, value in smoke.items():  # the profile's values are the ones shown
        assert re.search(rf"^{name} = {re.escape(json.dumps(value))}(  #|$)", shown, re.M), (name, value)


_REMOTE_LOAD = re.compile(r"<(script|link|img|iframe|source|embed|object)\b[^>]*\b(src|href|data)=[\"']?(https?:)?//",
                          re.I)


def test_no_page_loads_anything_from_the_network(smoke_book):
    _, html_dir = smoke_book
    pages = sorted(html_dir.rglob("*.html"))
    assert len(pages) >= 6
    remote = {str(p.relative_to(html_dir)): _REMOTE_LOAD.findall(p.read_text()) for p in pages}
    assert not any(remote.values()), {k: v for k, v in remote.items() if v}
    styles = [p for p in html_dir.rglob("*.css") if re.search(r"(@import|url\()\s*['\"]?(https?:)?//", p.read_text())]
    assert not styles, styles
    for chapter in ("intro", *(f"chapters/{c}" for c in CHAPTERS)):  # MathJax is served from the book itself
        page = (html_dir / f"{chapter}.html").read_text()
        assert re.search(r'<script[^>]+src="(\.\./)?_static/mathjax/tex-chtml\.js(\?[^"]*)?"', page), chapter
    assert (html_dir / "_static" / "mathjax" / "tex-chtml.js").is_file()


def test_every_displayed_table_has_a_caption_and_the_house_style(smoke_book):
    _, html_dir = smoke_book
    for chapter in CHAPTERS:
        tables = _page(html_dir, f"chapters/{chapter}.html").select(".cell_output table")
        assert tables, chapter
        for table in tables:
            caption = table.find("caption")
            assert caption is not None and len(caption.get_text(strip=True)) > 10, (chapter, str(table)[:300])
            assert "rsbook-table" in table.get("class", []), (chapter, caption.get_text()[:80])


def test_scoreboard_links_reach_their_tables_and_the_results_csv(smoke_book):
    runs_dir, html_dir = smoke_book
    intro = _page(html_dir, "intro.html")
    tables = intro.select(".cell_output table")
    board = next(t for t in tables if "status" in t.get_text())  # the documents' published results first
    added = next(t for t in tables if "extends" in t.get_text())  # then what the book adds beyond them
    assert tables.index(board) < tables.index(added)
    assert "computed" not in board.get_text() and "status" not in added.get_text()
    links = [a["href"] for table in (board, added) for a in table.select("a.reference.internal")]
    recorded = book_comparisons(runs_dir)
    assert len(links) == len(recorded[["chapter", "document", "table"]].drop_duplicates())
    for href in links:
        page, anchor = href.split("#")
        target = _page(html_dir, page).find(id=anchor)
        assert target is not None, f"{href}: no such id"
        section = target if target.name == "section" else target.parent  # a label is a span opening its section
        assert section.name == "section" and section.find(re.compile("^h[1-6]$")) is not None, href
        tables = [t for t in section.select(".cell_output table") if t.find_parent("section") is section]
        assert tables, f"{href}: the section a scoreboard row links to shows no table"
    download = intro.select_one("a.reference.download[href$='.csv']")
    assert download is not None, "the scoreboard links no CSV"
    cells = pd.read_csv(html_dir / download["href"], dtype={"row": str, "column": str})
    assert len(cells) == len(recorded) and set(cells["profile"]) == {"smoke"}
    assert set(cells["chapter"]) == set(recorded["chapter"]) >= {"cohen_logs", "relax", "fars", "ancer"}
    pd.testing.assert_frame_equal(cells.drop(columns="profile").reset_index(drop=True),
                                  recorded[cells.columns.drop("profile")].reset_index(drop=True), check_dtype=False)
    summary = intro.select_one("section#scoreboard > p")  # the counts come first, above the table
    text = summary.get_text(" ", strip=True)
    assert text.startswith("Profile smoke") and download in summary.find_all("a"), text
    board_rows = board.select("tbody tr")
    assert f"in {len(board_rows)} rows" in text and summary.find_next("table") is board
    second = added.find_parent("section").select_one("p")  # the additions have a summary line of their own
    added_rows = added.select("tbody tr")
    assert second.get_text(" ", strip=True).startswith(f"{len(added_rows)} results in"), second.get_text()
    assert second.find_next("table") is added


def book_comparisons(runs_dir) -> pd.DataFrame:
    """Every comparisons.csv the smoke build wrote, concatenated in chapter-folder order."""
    return pd.concat([pd.read_csv(p, dtype={"row": str, "column": str})
                      for p in sorted(Path(runs_dir).glob("*/smoke/comparisons.csv"))], ignore_index=True)


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

_CHECKER = r"""<!doctype html><html><body>
<iframe id="page" src="PAGE" width="1280" height="2000"></iframe>
<pre id="result">pending</pre>
<script>
// Opens the page in a frame and measures it: the text it shows, its images, MathJax's output, every
// resource it requested, and, for each table in a cell output, the gap between the ink of adjacent
// numeric cells, their alignment and padding, and the contrast of text and caption; then switches the
// page to the dark theme and measures the figures' backgrounds and the tables' contrast again.
const frame = document.getElementById("page");
const numeric = /^[+\-\u2212]?(\d[\d,]*\.?\d*|\.\d+)(e[+\-]?\d+)?%?$/i;
function rgba(text) {
  const v = (text.match(/[\d.]+/g) || []).map(Number);
  return v.length >= 3 ? [v[0], v[1], v[2], v.length > 3 ? v[3] : 1] : [0, 0, 0, 0];
}
function luminance(c) {
  const f = x => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
}
function background(win, el) {  // the first opaque background behind el
  for (let e = el; e; e = e.parentElement) {
    const c = rgba(win.getComputedStyle(e).backgroundColor);
    if (c[3] > 0.5) return c;
  }
  return [255, 255, 255, 1];
}
function contrast(win, el) {
  const a = luminance(rgba(win.getComputedStyle(el).color)), b = luminance(background(win, el));
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}
function inkRect(doc, el) {
  const range = doc.createRange();
  range.selectNodeContents(el);
  return range.getBoundingClientRect();
}
function tables(doc, win) {
  return Array.from(doc.querySelectorAll(".cell_output table")).map(table => {
    let minGap = Infinity, minPadding = Infinity, pairs = 0, touching = [], cells = 0;
    let minContrast = Infinity;
    const columns = {};  // cell index -> {numeric: every cell numeric, right: every cell right-aligned}
    table.querySelectorAll("th, td").forEach(cell => {
      if (cell.textContent.trim()) minContrast = Math.min(minContrast, contrast(win, cell));
    });
    table.querySelectorAll("tr").forEach(row => {
      const tds = Array.from(row.children).filter(c => c.tagName === "TD");
      tds.forEach(td => {
        const column = columns[td.cellIndex] || (columns[td.cellIndex] = {numeric: true, right: true});
        const text = td.textContent.trim();
        if (!text) return;
        if (!numeric.test(text)) { column.numeric = false; return; }
        cells += 1;
        if (win.getComputedStyle(td).textAlign !== "right") column.right = false;
      });
      for (let i = 0; i + 1 < tds.length; i++) {
        const a = tds[i], b = tds[i + 1];
        if (!numeric.test(a.textContent.trim()) || !numeric.test(b.textContent.trim())) continue;
        const gap = inkRect(doc, b).left - inkRect(doc, a).right;
        pairs += 1;
        minGap = Math.min(minGap, gap);
        minPadding = Math.min(minPadding, parseFloat(win.getComputedStyle(a).paddingRight)
                                          + parseFloat(win.getComputedStyle(b).paddingLeft));
        if (gap < 1) touching.push(a.textContent.trim() + "|" + b.textContent.trim());
      }
    });
    const caption = table.querySelector("caption");
    const misaligned = Object.values(columns).filter(c => c.numeric && !c.right).length;  // columns of numbers
    return {caption: caption ? caption.textContent.trim().slice(0, 80) : null, pairs, cells, misaligned,
            minGap: pairs ? minGap : null, minPadding: pairs ? minPadding : null, touching: touching.slice(0, 5),
            minContrast: minContrast < Infinity ? minContrast : null,
            captionContrast: caption ? contrast(win, caption) : null};
  });
}
function rawTex(doc) {  // TeX left as text outside code: MathJax did not typeset it
  const walker = doc.createTreeWalker(doc.querySelector("main") || doc.body, NodeFilter.SHOW_TEXT);
  const found = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement.closest("pre, code, script, style, mjx-container, .MathJax")) continue;
    const m = n.textContent.match(/\\\(|\\\)|\\\[|\\\]|\$\$|\\[a-zA-Z]{2,}/);
    if (m) found.push(n.textContent.trim().slice(0, 80));
  }
  return found.slice(0, 10);
}
function figures(doc, win) {
  return Array.from(doc.images).filter(img => img.getAttribute("src").includes("_images/")).map(img => {
    const canvas = doc.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const corner = Array.from(ctx.getImageData(1, 1, 1, 1).data);
    return {src: img.getAttribute("src"), background: rgba(win.getComputedStyle(img).backgroundColor),
            corner: corner};
  });
}
frame.onload = () => {
  const doc = frame.contentDocument, win = frame.contentWindow;
  const images = Array.from(doc.images);
  images.forEach(img => { img.loading = "eager"; });
  const math = win.MathJax && win.MathJax.startup ? win.MathJax.startup.promise : Promise.resolve();
  const report = () => {
    if (!images.every(img => img.complete)) { setTimeout(report, 50); return; }
    math.then(() => {
      const light = {tables: tables(doc, win), figures: figures(doc, win)};
      doc.documentElement.dataset.theme = "dark";
      doc.documentElement.dataset.mode = "dark";
      const dark = {tables: tables(doc, win), figures: figures(doc, win)};
      const loads = Array.from(doc.querySelectorAll("script[src], link[href], img[src], iframe[src]"))
        .map(e => e.src || e.href);
      const requested = win.performance.getEntriesByType("resource").map(e => e.name);
      document.getElementById("result").textContent = JSON.stringify({
        images: images.map(img => ({src: img.getAttribute("src"), loaded: img.naturalWidth > 0})),
        text: doc.body.innerText, mathjax: Boolean(win.MathJax && win.MathJax.version),
        mjx: doc.querySelectorAll("mjx-container").length, merror: doc.querySelectorAll("mjx-merror").length,
        rawTex: rawTex(doc), origin: win.location.origin,
        overflowing: Array.from(doc.querySelectorAll("mjx-container[display='true']")).filter(m => {
          // a displayed equation must fit its column, left of its number
          const math = m.querySelector("mjx-math").getBoundingClientRect();
          const box = (m.closest("div.math") || m.parentElement).getBoundingClientRect();
          const number = m.closest("div.math") && m.closest("div.math").querySelector(".eqno");
          const right = number ? number.getBoundingClientRect().left : box.right;
          return math.left < box.left - 1 || math.right > right + 1;
        }).map(m => m.closest("div.math") ? m.closest("div.math").id || m.textContent.slice(0, 40) : "?"),
        remote: loads.concat(requested).filter(u => u && !u.startsWith(win.location.origin) && !u.startsWith("data:")),
        light, dark});
    });
  };
  report();
};
</script></body></html>"""


def _browser_report(chromium, base, page, html_dir, profile_dir, screenshot):
    """Open `page` in headless Chromium and measure it (see _CHECKER); and take a screenshot of it."""
    checker = html_dir / f"_check_{Path(page).stem}.html"
    checker.write_text(_CHECKER.replace("PAGE", page))
    flags = _CHROMIUM_FLAGS + [f"--user-data-dir={profile_dir}"]
    dom = subprocess.run([chromium, *flags, "--virtual-time-budget=30000", "--dump-dom", f"{base}/{checker.name}"],
                         capture_output=True, text=True, timeout=180).stdout
    subprocess.run([chromium, *flags, "--window-size=1280,6000", f"--screenshot={screenshot}", f"{base}/{page}"],
                   capture_output=True, timeout=120)
    marker = '<pre id="result">'
    assert marker in dom, f"the browser did not run the page check on {page}"
    text = dom.split(marker, 1)[1].split("</pre>", 1)[0]
    assert text != "pending", f"the page check on {page} did not finish (MathJax or an image never loaded)"
    return json.loads(html.unescape(text))


MIN_GAP_PX = 8  # adjacent numbers in a table row: at least this much blank between their ink
MIN_CONTRAST = 4.5  # WCAG AA for body text


FIGURES = {"cohen_logs": 7, "cohen_rerun": 4, "relax": 6, "fars": 4, "ancer": 3}  # at least, at the smoke profile


@pytest.mark.parametrize("chapter, figures", [(doc, FIGURES.get(Path(doc).name, 0)) for doc in book.toc_documents()])
def test_browser_loads_each_chapter_and_every_figure(smoke_book, tmp_path, chapter, figures):
    chromium = _chromium()
    runs_dir, html_dir = smoke_book
    name = Path(chapter).name
    screenshot = (runs_dir / name / "smoke" if name != "intro" else runs_dir) / f"screenshot-{name}.png"
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(html_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        report = _browser_report(chromium, f"http://127.0.0.1:{server.server_address[1]}",
                                 f"{chapter}.html", html_dir, tmp_path / "profile", screenshot)
    finally:
        server.shutdown()
    measured = {"mjx": report["mjx"], "remote": report["remote"],
                "min_gap_px": min((t["minGap"] for t in report["light"]["tables"] if t["pairs"]), default=None),
                "min_padding_px": min((t["minPadding"] for t in report["light"]["tables"] if t["pairs"]),
                                      default=None),
                "min_contrast": {theme: min((t["minContrast"] for t in report[theme]["tables"] if t["minContrast"]),
                                            default=None) for theme in ("light", "dark")},
                "min_caption_contrast": {theme: min((t["captionContrast"] for t in report[theme]["tables"]
                                                     if t["captionContrast"]), default=None)
                                         for theme in ("light", "dark")}}
    (screenshot.parent / f"browser-{name}.json").write_text(json.dumps(measured, indent=1))
    # nothing from the network: every script, stylesheet, font and image comes from the book's own server
    assert report["remote"] == [], report["remote"]
    # math is typeset offline, without TeX errors and without raw TeX left in the text
    assert report["mathjax"] and report["mjx"] > 0, f"{chapter}: no MathJax output"
    assert report["merror"] == 0 and report["rawTex"] == [], (report["merror"], report["rawTex"])
    assert report["overflowing"] == [], f"displayed equations wider than the text: {report['overflowing']}"
    # figures
    images = [img for img in report["images"] if "_images/" in img["src"]]
    assert len(images) >= figures, report["images"]
    assert all(img["loaded"] for img in report["images"]), [i for i in report["images"] if not i["loaded"]]
    for theme in ("light", "dark"):  # an opaque light background under black text, in both themes
        for figure in report[theme]["figures"]:
            assert figure["corner"][3] == 255 and min(figure["corner"][:3]) >= 230, (theme, figure)
    for figure in report["dark"]["figures"]:
        assert figure["background"][3] == 1 and min(figure["background"][:3]) >= 230, figure
    # tables: captioned, numbers right-aligned and apart, readable in both themes
    for theme in ("light", "dark"):
        for table in report[theme]["tables"]:
            if name != "intro":
                assert table["caption"], table
            assert table["misaligned"] == 0 and table["touching"] == [], (theme, table)
            if table["pairs"]:
                assert table["minGap"] >= MIN_GAP_PX, (theme, table)
            if table["minContrast"] is not None:  # every header and cell
                assert table["minContrast"] >= MIN_CONTRAST, (theme, table)
            if table["captionContrast"] is not None:
                assert table["captionContrast"] >= MIN_CONTRAST, (theme, table)
    if chapter == "chapters/cohen_logs":
        cells = pd.read_csv(runs_dir / name / "smoke" / "comparisons.csv")
        table2 = cells[(cells["document"] == "cohen") & (cells["table"] == "Table 2")]
        assert sum(t["pairs"] for t in report["light"]["tables"]) > 2 * len(table2)
        for value in table2["ours"]:
            assert f"{value:.3f}" in report["text"]
    assert screenshot.exists() and screenshot.stat().st_size > 50_000


def test_full_profile_path_on_tiny_on_disk_datasets(runs, cifar, tmp_path, monkeypatch):
    """The paper-scale profile (CIFAR-10 ResNet-110 / ImageNet ResNet-50 on a GPU) runs the same code:
    here it executes on miniature CIFAR-10 batches and an ImageNet folder on the CPU, with sizes shrunk.
    The authors' released ImageNet ResNet-50s (written here in their archive's layout, with nn.DataParallel's
    keys, under RSBOOK_MODELS) stand in for their training, the CIFAR-10 models are trained here; the tables are
    certified sequentially (the profile's `certify: sequential`), the figures' logs with fixed n."""
    from conftest import write_cohen_checkpoint, write_image_folder

    write_image_folder(tmp_path / "imagenet", "train", seed=0)
    write_image_folder(tmp_path / "imagenet", "val", seed=1)
    monkeypatch.setenv("RSBOOK_MODELS", str(tmp_path / "models"))
    authors = write_cohen_checkpoint(tmp_path / "models", "imagenet", "resnet50", 0.25, data_parallel=True)
    write_cohen_checkpoint(tmp_path / "models", "imagenet", "resnet50", 0.5, data_parallel=True, legacy=False)
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
        "launch": False,  # the steps in this process; launched through torchrun: tests/test_rehearse.py
    }
    notebook = book.execute("chapters/cohen_rerun", "full", runs, overrides=shrink, force=True)
    cells = pd.read_csv(notebook.parent / "comparisons.csv")
    recorded = set(zip(cells["document"], cells["table"]))
    assert {("cohen", "Table 3"), ("cohen", "Table 2"), ("cohen", "Table 1"), ("cohen", "Table 4"),
            ("cohen", "Section 4 (tightness)"), ("notes", "Top-k predictions (text)")} <= recorded
    manifest = json.loads((notebook.parent / "manifest.json").read_text())
    assert manifest["parameters"]["experiments"]["imagenet"]["arch"] == "resnet50"
    assert manifest["parameters"]["certify"] == "sequential"
    models = {(m["dataset"], m["sigma"]): m for m in manifest["models"]}
    assert models["imagenet", 0.25]["origin"] == "released (cohen)" and models["imagenet", 0.25]["checkpoint"] == str(
        authors)
    assert models["imagenet", 0.25]["sha256"] == file_sha256(authors)
    assert models["cifar10", 0.5]["origin"] == "trained here" and len(models["cifar10", 0.5]["sha256"]) == 64
    folder = runs / "cohen_rerun" / "full"
    assert not list((folder / "train").glob("resnet50_imagenet_*"))  # the authors' models: not trained
    assert len(list((folder / "train").glob("cifar_resnet20_cifar10_noise*/checkpoint.pt"))) == 2
    sequential = list((folder / "sequential").glob("*/certify.tsv"))
    assert len(sequential) == 6 and all("samples" in read_log(log) for log in sequential)
    glued = glued_values(notebook)
    assert "released (cohen)" in glued["models_origin"] and "sequential" in glued["certify_method"]
