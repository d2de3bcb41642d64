"""The README's examples run as written (a reader copies them first): every Python block, and every
shell block (issue 13, item 3).

The rule for shell blocks: the set-up block (`make book`, `make test`) is what CI executes on a clean
clone, so it is checked against .ci/run, which must run exactly those make targets in that order (the
test suite cannot run `make test` inside itself). Every other ```bash block is executed as written,
unshrunk, one after the other in one empty working directory (the examples use relative `runs/...`
paths and each may use what the one before it wrote), with the virtualenv's `rsbook` and `torchrun`
first on PATH and RSBOOK_MIRROR at the local mirror. Other fence languages for commands (sh, shell,
console) are refused, so that no shell example escapes this test.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import mirror_path
from torch import nn

from rsbook.ancer.memory import MEMORY_STATUSES
from rsbook.logs import read_certify_log, read_log_manifest, read_manifest, read_predict_log

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_has_python_examples():
    assert len(_python_blocks()) >= 2


def test_every_python_example_runs(one_thread):
    torch.manual_seed(0)
    # The first example certifies a user's `model` at an input `x`: stand-ins of the digits' shape.
    namespace = {"model": nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "x": torch.rand(1, 8, 8)}
    for block in _python_blocks():
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert len(namespace["table"]) == 3 and namespace["table"]["status"].isin(MEMORY_STATUSES).all()
    assert namespace["prediction"].shape == (4,) and bool((namespace["radius"] >= 0).all())


def _fenced_blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)


def _commands(block: str) -> list[list[str]]:
    """The block's commands as words, comments and line continuations removed."""
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
            if shlex.split(line, comments=True)]


def _is_setup(block: str) -> bool:
    return all(words[0] == "make" for words in _commands(block))


def _shell_blocks() -> list[str]:
    return [block for language, block in _fenced_blocks() if language == "bash"]


def test_every_command_block_is_bash():
    languages = {language for language, _ in _fenced_blocks()}
    assert languages <= {"python", "bash", ""}, f"fence languages {languages}: write shell examples as ```bash"
    for language, block in _fenced_blocks():
        if language == "":  # the package tree, no commands
            assert not re.search(r"^\s*(rsbook|make|torchrun|python|pip)\s", block, re.M), block


def test_the_setup_block_is_what_ci_runs():
    setup = [block for block in _shell_blocks() if _is_setup(block)]
    assert len(setup) == 1, "exactly one shell block of make commands (the set-up)"
    readme_targets = [words[1:] for words in _commands(setup[0])]
    ci = [words for words in _commands((ROOT / ".ci" / "run").read_text()) if words[0] == "make"]
    # CI may add make variables (NAME=value) but runs the same targets in the same order
    ci_targets = [[word for word in words[1:] if "=" not in word] for words in ci]
    assert readme_targets == [["book"], ["test"]] and ci_targets == readme_targets


@pytest.mark.slow
def test_every_shell_example_runs_as_written(tmp_path):
    blocks = [block for block in _shell_blocks() if not _is_setup(block)]
    assert len(blocks) == 2
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RSBOOK_MIRROR": str(mirror_path()), "RSBOOK_RUNS": str(tmp_path / "runs")}
    for block in blocks:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"README block failed:\n{block}\n{result.stderr[-3000:]}"
        assert "\r" not in result.stderr  # progress in a pipe: plain lines
    folder = tmp_path / "runs" / "digits" / "0.25"
    assert float((folder / "train_log.tsv").read_text().splitlines()[-1].split("\t")[4]) >= 0.9
    assert read_manifest(folder)["parameters"]["batch_size"] == 2  # the digits default, recorded
    single, sharded = read_certify_log(folder / "certify.tsv"), read_certify_log(folder / "certify_torchrun.tsv")
    columns = ["idx", "label", "predict", "radius", "correct"]
    assert len(single) == 40 and single[columns].equals(sharded[columns])
    assert len(read_predict_log(folder / "predict.tsv")) == 40
    assert read_log_manifest(folder / "certify.tsv")["parameters"]["n"] == 1000
