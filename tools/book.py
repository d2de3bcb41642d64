"""Build the book: execute each chapter with papermill at a profile, then render the executed
notebooks with Jupyter Book 1.

    python tools/book.py build   --profile default [--runs runs] [--out book] [--chapter NAME -p KEY VALUE ...]
    python tools/book.py execute --profile smoke --chapter NAME [-p KEY VALUE ...]
    python tools/book.py clean

Chapters are jupytext MyST notebooks under book/. Each executes into <runs>/<name>/<profile>/<name>.ipynb
with the profile's parameters (book/profiles/<name>.yml) and any -p overrides injected into its one
`parameters` cell. An executed chapter is reused while its source, its parameters and the library
(rsbook/) are unchanged; the root page (the scoreboard) is always executed last. The rendered
HTML lands in <out>/_build/html.

The executed notebooks keep what ran (the chapter's parameters cell and papermill's injected cell);
the rendered book shows one parameters cell per chapter, the values this build used under a first
line naming the profile (`presented`). Every cell the chapters recorded (ChapterRun.compare and
.record) is written, for the profile built, to one CSV that the scoreboard links (RESULTS_CSV).
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rsbook.book.profiles import PAPER_SCALE, PROFILES

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
RESULTS_CSV = Path("results") / "comparisons.csv"
"""Where, relative to the staged book, the build writes every recorded cell of the profile it renders;
book/intro.md links it with {download}."""
PARAMETERS_HEADER = "# profile: {profile} — parameters of this build"


def toc_documents(book: Path = BOOK) -> list[str]:
    """Documents of _toc.yml in reading order, root first, as paths relative to book/ without suffix."""
    from rsbook.book.profiles import toc_documents as documents

    return documents(book)


def is_notebook(path: Path) -> bool:
    """A MyST markdown file is a notebook when its front matter declares a kernel."""
    text = path.read_text()
    return text.startswith("---") and "kernelspec:" in text.split("---", 2)[1]


def parameters_for(name: str, profile: str, overrides: dict) -> dict:
    """The chapter's parameters at `profile` (book/profiles/<name>.yml, rsbook.book.profiles.profile_parameters),
    then the overrides."""
    from rsbook.book.profiles import profile_parameters

    if profile not in PROFILES:
        raise SystemExit(f"profile must be one of {PROFILES}, got {profile!r}")
    return {**profile_parameters(name, profile, book=BOOK), **overrides, "profile": profile}


def library_fingerprint() -> str:
    """What executed chapters depend on besides their source and parameters: the library, its
    data files, and the benchmark results a chapter may read ($RSBOOK_BENCH)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "rsbook").rglob("*")):
        if path.suffix in (".py", ".csv") and "__pycache__" not in path.parts:
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    bench = os.environ.get("RSBOOK_BENCH")
    if bench and Path(bench).is_file():
        digest.update(Path(bench).read_bytes())
    return digest.hexdigest()


def execute(doc: str, profile: str, runs: Path, overrides: dict | None = None, force: bool = False) -> Path:
    """Execute one chapter at `profile` into its run folder; reuse a fresh result unless forced."""
    import jupytext
    import papermill

    source = BOOK / f"{doc}.md"
    name = Path(doc).name
    params = parameters_for(name, profile, overrides or {})
    run_dir = runs / name / profile
    run_dir.mkdir(parents=True, exist_ok=True)
    output, stamp = run_dir / f"{name}.ipynb", run_dir / "build.json"
    key = hashlib.sha256(
        (source.read_text() + json.dumps(params, sort_keys=True) + library_fingerprint()).encode()
    ).hexdigest()
    if not force and output.exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        print(f"[book] {doc}: up to date at profile {profile} ({output})")
        return output
    notebook = jupytext.read(source)
    tagged = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise SystemExit(f"{source}: expected exactly one cell tagged 'parameters', found {len(tagged)}")
    partial = run_dir / f".{name}.partial.ipynb"
    print(f"[book] {doc}: executing at profile {profile} with {params}")
    started = time.perf_counter()
    env_runs = os.environ.get("RSBOOK_RUNS")
    os.environ["RSBOOK_RUNS"] = str(runs.resolve())
    try:
        papermill.execute_notebook(
            notebook, str(partial), parameters=params, kernel_name="python3", cwd=str(run_dir),
            progress_bar=False, log_output=False,
        )
    except Exception:
        failed = run_dir / f"{name}.failed.ipynb"
        if partial.exists():
            os.replace(partial, failed)
        print(f"[book] {doc}: execution failed; the notebook with the error is {failed}", file=sys.stderr)
        raise
    finally:
        if env_runs is None:
            os.environ.pop("RSBOOK_RUNS", None)
        else:
            os.environ["RSBOOK_RUNS"] = env_runs
    os.replace(partial, output)
    (run_dir / f"{name}.failed.ipynb").unlink(missing_ok=True)
    stamp.write_text(json.dumps({"key": key, "parameters": params, "seconds": time.perf_counter() - started}))
    print(f"[book] {doc}: done in {time.perf_counter() - started:.1f} s")
    return output


def _assignments(source: str) -> dict[str, tuple[int, int, int, str]]:
    """name -> (first line, last line, end column in UTF-8 bytes, statement text) for every top-level
    `name = value` of a cell."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = (node.lineno, node.end_lineno, node.end_col_offset,
                                         ast.get_source_segment(source, node))
    return found


def parameters_source(own: str, injected: str) -> str:
    """The parameters a build used, as one cell's source: the chapter's parameters cell `own` with each
    statement papermill `injected` in place of the default it overrides (the comment after the default
    kept), statements for names the chapter's cell lacks appended, under two comment lines: the profile
    (from the injected `profile`), and which names this build set."""
    defaults, values = _assignments(own), _assignments(injected)
    lines = own.splitlines()
    for name, (first, last, end, _) in sorted(defaults.items(), key=lambda item: -item[1][0]):
        if name in values:
            comment = lines[last - 1].encode()[end:].decode().strip()
            lines[first - 1:last] = (values[name][3] + (f"  {comment}" if comment.startswith("#") else "")).splitlines()
    profile = ast.literal_eval(values["profile"][3].split("=", 1)[1].strip()) if "profile" in values else "?"
    changed = [name for name in values if name != "profile"]
    note = (f"# set for this build: {', '.join(changed)}; the others are the chapter's defaults" if changed
            else "# every value is the chapter's default")
    return "\n".join([PARAMETERS_HEADER.format(profile=profile), note, *lines,
                      *(values[name][3] for name in values if name not in defaults)])


def presented(notebook):
    """The executed notebook as the book shows it: the chapter's `parameters` cell and papermill's
    `injected-parameters` cell become one cell, in the place and with the tags (e.g. remove-cell) of
    the chapter's cell, holding the values this build used (parameters_source). Returns a copy; the
    executed notebook keeps both cells as they ran."""
    shown = copy.deepcopy(notebook)
    tagged = {tag: [i for i, c in enumerate(shown.cells) if tag in c.metadata.get("tags", [])]
              for tag in ("parameters", "injected-parameters")}
    if len(tagged["parameters"]) != 1 or len(tagged["injected-parameters"]) > 1:
        raise ValueError(f"expected one parameters cell and at most one injected-parameters cell, found {tagged}")
    if tagged["injected-parameters"]:
        index = tagged["injected-parameters"][0]
        own = shown.cells[tagged["parameters"][0]]
        own.source = parameters_source(own.source, shown.cells[index].source)
        del shown.cells[index]
    return shown


def write_results(profile: str, runs: Path, path: Path) -> Path:
    """Every cell every chapter recorded at `profile` (rsbook.book.report.comparisons) as one CSV at `path`."""
    from rsbook.book.report import comparisons

    path.parent.mkdir(parents=True, exist_ok=True)
    comparisons(profile, runs).to_csv(path, index=False)
    return path


def render(profile: str, runs: Path, out: Path, executed: dict[str, Path]) -> Path:
    """Stage book/ with the executed notebooks (as `presented`) in place of their sources, write the
    profile's recorded cells to RESULTS_CSV, and render HTML."""
    import nbformat

    stage = out / "_build" / ".stage" / profile
    shutil.rmtree(stage, ignore_errors=True)
    for path in BOOK.rglob("*"):
        rel = path.relative_to(BOOK)
        if rel.parts[0] in ("_build", "profiles") or path.is_dir():
            continue
        if path.suffix == ".md" and rel.with_suffix("").as_posix() in executed:
            continue
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, stage / rel)
    for doc, notebook in executed.items():
        (stage / doc).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(presented(nbformat.read(notebook, as_version=4)), stage / f"{doc}.ipynb")
    write_results(profile, runs, stage / RESULTS_CSV)
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(stage), "--path-output", str(out),
               "--builder", "html", "--all", "-W", "--keep-going"]
    print(f"[book] rendering: {' '.join(command)}")
    subprocess.run(command, check=True)
    html = out / "_build" / "html"
    print(f"[book] HTML book at {html / 'index.html'}")
    return html


def preflight(profile: str, runs: Path, chapters: list[str], overrides: dict | None = None):
    """Check every requirement of `chapters` at `profile` before anything executes (rsbook.book.preflight:
    datasets under RSBOOK_DATA with their counts, CUDA devices, free disk, the authors' artifacts); exit
    with status 2 listing every missing item at once. The smoke and default builds download artifacts
    that are not cached yet themselves, so without RSBOOK_MIRROR they are not required up front."""
    from rsbook.book.preflight import check, report
    from rsbook.book.requirements import ArtifactRequirement, requirements

    reqs = requirements(chapters, profile, book=BOOK, runs=runs, overrides=overrides)
    if profile not in PAPER_SCALE and not os.environ.get("RSBOOK_MIRROR"):
        reqs = [r for r in reqs if not isinstance(r, ArtifactRequirement)]
    missing = check(reqs)
    print(report(reqs, missing), file=sys.stderr if missing else sys.stdout)
    if missing:
        print(f"[book] preflight: {len(missing)} item(s) missing at profile {profile}; nothing was executed",
              file=sys.stderr)
        raise SystemExit(2)


def build(profile: str, runs: Path, out: Path, chapter: str | None = None, overrides: dict | None = None) -> Path:
    docs = toc_documents()
    if chapter is not None and chapter not in [Path(d).name for d in docs]:
        raise SystemExit(f"no chapter {chapter!r} in book/_toc.yml; chapters: {[Path(d).name for d in docs]}")
    preflight(profile, runs, [Path(d).name for d in docs if is_notebook(BOOK / f"{d}.md")],
              {chapter: overrides} if chapter and overrides else None)
    executed = {}
    for doc in docs[1:]:
        if is_notebook(BOOK / f"{doc}.md"):
            named = Path(doc).name == chapter
            executed[doc] = execute(doc, profile, runs, overrides if named else None, force=named)
    root = docs[0]
    if is_notebook(BOOK / f"{root}.md"):
        executed[root] = execute(root, profile, runs, force=True)
    return render(profile, runs, out, executed)


def clean(runs: Path, out: Path):
    """Remove the rendered book and the executed chapters; keep artifacts and other run folders."""
    shutil.rmtree(out / "_build", ignore_errors=True)
    for doc in toc_documents():
        shutil.rmtree(runs / Path(doc).name, ignore_errors=True)


def _parse_value(text: str):
    return yaml.safe_load(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "execute", "clean"])
    parser.add_argument("--profile", default="default", choices=PROFILES)
    parser.add_argument("--runs", type=Path, default=Path(os.environ.get("RSBOOK_RUNS") or ROOT / "runs"))
    parser.add_argument("--out", type=Path, default=BOOK, help="the HTML goes to OUT/_build/html")
    parser.add_argument("--chapter", help="chapter name (file name without .md) to (re-)execute")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a chapter parameter (YAML value), e.g. -p sigma 0.5")
    args = parser.parse_args(argv)
    overrides = {name: _parse_value(value) for name, value in args.param}
    if overrides and not args.chapter:
        parser.error("-p overrides need --chapter (they apply to one chapter)")
    runs, out = args.runs.resolve(), args.out.resolve()
    if args.command == "build":
        build(args.profile, runs, out, args.chapter, overrides)
    elif args.command == "execute":
        if not args.chapter:
            parser.error("execute needs --chapter")
        doc = next((d for d in toc_documents() if Path(d).name == args.chapter), None)
        if doc is None and (BOOK / "chapters" / f"{args.chapter}.md").exists():
            doc = f"chapters/{args.chapter}"  # a chapter not yet in the table of contents
        if doc is None:
            parser.error(f"no chapter {args.chapter!r} in book/_toc.yml or book/chapters/")
        preflight(args.profile, runs, [Path(doc).name], {Path(doc).name: overrides} if overrides else None)
        execute(doc, args.profile, runs, overrides, force=True)
    else:
        clean(runs, out)


if __name__ == "__main__":
    main()
