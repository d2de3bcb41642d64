"""Shared fixtures: a throw-away runs folder, the authors' artifacts from a local mirror, a small
trained digits model, and the book built at the smoke profile (once per session)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_MIRROR = ROOT.parent / "shared" / "mirror"


def mirror_path() -> Path:
    """The local mirror of the authors' artifacts: $RSBOOK_MIRROR, else ../shared/mirror."""
    path = Path(os.environ.get("RSBOOK_MIRROR") or SHARED_MIRROR)
    if not path.is_dir():
        pytest.fail(f"the tests need a local mirror of the authors' artifacts; set RSBOOK_MIRROR (tried {path})")
    return path


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """RSBOOK_RUNS pointed at a fresh folder, RSBOOK_MIRROR at the local mirror."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("RSBOOK_RUNS", str(folder))
    monkeypatch.setenv("RSBOOK_MIRROR", str(mirror_path()))
    return folder


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory):
    """A DigitsCNN trained for a few hundred steps with Gaussian noise (sigma 0.25), saved as a
    checkpoint in the project's format."""
    from rsbook.data import load_dataset
    from rsbook.models import build, save_checkpoint

    torch.manual_seed(0)
    train = load_dataset("digits", "train")
    model = build("digits_cnn", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = train.x, train.labels
    for _ in range(300):
        batch = torch.randint(0, len(y), (64,))
        noisy = x[batch] + 0.25 * torch.randn_like(x[batch])
        loss = torch.nn.functional.cross_entropy(model(noisy), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("digits") / "checkpoint.pt"
    save_checkpoint(path, model, "digits_cnn", "digits", noise_sd=0.25, epoch=1, optimizer=optimizer)
    return path


BOOK_TEST_DIR = ROOT / "runs" / "tests" / "book-smoke"


@pytest.fixture(scope="session")
def smoke_book():
    """`make book PROFILE=smoke` into runs/tests/book-smoke/ (kept after the session for
    inspection: the executed chapters, the HTML and the browser screenshot). Returns (runs, html)."""
    shutil.rmtree(BOOK_TEST_DIR, ignore_errors=True)
    runs_dir, out = BOOK_TEST_DIR / "runs", BOOK_TEST_DIR / "out"
    env = {**os.environ, "RSBOOK_MIRROR": str(mirror_path())}
    result = subprocess.run(
        ["make", "-C", str(ROOT), "book", "PROFILE=smoke", f"RUNS={runs_dir}", f"OUT={out}",
         f"VENV={Path(sys.executable).parents[1]}"],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, f"make book failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return runs_dir, out / "_build" / "html"
