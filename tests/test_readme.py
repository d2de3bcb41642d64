"""The README's Python examples run as written (a reader copies them first)."""

import re
from pathlib import Path

import torch
from torch import nn

from rsbook.ancer.memory import MEMORY_STATUSES

README = Path(__file__).resolve().parents[1] / "README.md"


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
