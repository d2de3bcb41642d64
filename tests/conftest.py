"""Shared fixtures: a throw-away runs folder, the authors' artifacts from a local mirror, a small
trained digits model, and the book built at the smoke profile (once per session)."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_MIRROR = ROOT.parent / "shared" / "mirror"


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is several times faster than two on a loaded box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def glued_values(notebook_path: Path) -> dict:
    """name -> text/plain of every value an executed notebook glued (myst_nb.glue)."""
    values = {}
    for cell in nbformat.read(notebook_path, as_version=4).cells:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook")
            if record:
                values[record["name"]] = output["data"].get(record.get("mime_prefix", "") + "text/plain")
    return values


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
def smoke_book(testrun_uid):
    """`make book PROFILE=smoke` into runs/tests/book-smoke/ (kept after the session for
    inspection: the executed chapters, the HTML and the browser screenshot). Returns (runs, html).
    Under pytest-xdist (`make test` runs two workers) the first worker to need it builds it while
    holding a lock, and the others wait for it and reuse it: the folder is stamped with this test
    run's id (pytest-xdist's testrun_uid, shared by the workers)."""
    from filelock import FileLock

    runs_dir, out = BOOK_TEST_DIR / "runs", BOOK_TEST_DIR / "out"
    stamp = BOOK_TEST_DIR / "testrun"
    BOOK_TEST_DIR.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(BOOK_TEST_DIR.parent / "book-smoke.lock")):
        if not (stamp.is_file() and stamp.read_text() == testrun_uid):
            shutil.rmtree(BOOK_TEST_DIR, ignore_errors=True)
            env = {**os.environ, "RSBOOK_MIRROR": str(mirror_path())}
            result = subprocess.run(
                ["make", "-C", str(ROOT), "book", "PROFILE=smoke", f"RUNS={runs_dir}", f"OUT={out}",
                 f"VENV={Path(sys.executable).parents[1]}"],
                env=env, capture_output=True, text=True,
            )
            assert result.returncode == 0, f"make book failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            stamp.write_text(testrun_uid)
    return runs_dir, out / "_build" / "html"


# ------------------------------------------------------------- a miniature CIFAR-10 in its real format

TRAIN_SIZES = (3, 2, 4, 2, 3)  # images in data_batch_1..5
TEST_SIZE = 5


def write_cifar_batch(path, data, labels, name=b"batch"):
    """A batch as the CIFAR-10 python version stores it: a protocol-2 pickle of a dict with bytes keys,
    b'data' uint8 (N, 3072) (R, G, B planes, each 32x32 row-major) and b'labels' a list of ints."""
    batch = {b"batch_label": name, b"labels": [int(v) for v in labels], b"data": data,
             b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    with open(path, "wb") as out:
        pickle.dump(batch, out, protocol=2)


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """A miniature cifar-10-batches-py under a fresh RSBOOK_DATA. Returns (folder, train data, train
    labels, test data, test labels) with data uint8 (N, 3072)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_data, train_labels = [], []
    for index, size in enumerate(TRAIN_SIZES, start=1):
        data = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size)
        write_cifar_batch(folder / f"data_batch_{index}", data, labels, b"training batch %d of 5" % index)
        train_data.append(data)
        train_labels.append(labels)
    test_data, test_labels = rng.integers(0, 256, (TEST_SIZE, 3072), dtype=np.uint8), rng.integers(0, 10, TEST_SIZE)
    write_cifar_batch(folder / "test_batch", test_data, test_labels, b"testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as out:
        pickle.dump({b"label_names": [b"class%d" % i for i in range(10)], b"num_vis": 3072,
                     b"num_cases_per_batch": 10000}, out, protocol=2)
    monkeypatch.setenv("RSBOOK_DATA", str(tmp_path))
    return folder, np.concatenate(train_data), np.concatenate(train_labels), test_data, test_labels


# ------------------------------------------------------------- a miniature ImageFolder (ImageNet layout)

CLASSES = ("zebra", "apple", "mango")  # written out of order: labels follow the sorted names


def write_image_folder(root, split, classes=CLASSES, per_class=2, seed=0):
    """`per_class` random-colour 300x260 JPEGs in root/split/<class>/."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / split / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (26, 30, 3), dtype=np.uint8)  # coarse blocks of colour
            image = Image.fromarray(pixels).resize((300, 260), Image.NEAREST)
            image.save(root / split / name / f"{name}_{i}.JPEG", quality=95)


# ------------------------------------------------------------- base classifiers with known probabilities


class Linear2(torch.nn.Module):
    """Two-class linear base classifier f(x) = 1[w.x + b > 0] (Cohen et al. App. B): under
    N(0, sigma^2 I) noise it returns class 1 with probability Phi((w.x + b) / (sigma ||w||))."""

    def __init__(self, w, b):
        super().__init__()
        self.w = torch.as_tensor(w, dtype=torch.float64)
        self.b = float(b)

    def forward(self, batch):
        score = batch.reshape(batch.shape[0], -1).to(torch.float64) @ self.w + self.b
        return torch.stack([-score, score], dim=1)


class Constant(torch.nn.Module):
    """A base classifier that answers `label` of `classes` whatever the input."""

    def __init__(self, label: int = 2, classes: int = 4):
        super().__init__()
        self.label, self.classes = label, classes

    def forward(self, batch):
        out = torch.zeros(batch.shape[0], self.classes)
        out[:, self.label] = 1.0
        return out


def chapter_source(path: Path) -> dict:
    """A chapter's jupytext notebook split for the source rules (DESIGN.md, conventions 1-2): `notebook`,
    `parameters` (the cells tagged so), `code` and `prose` (joined sources), `glued` (names the prose shows
    with {glue:...}) and `defined` (names the code glues, f-string patterns kept with their braces). Asserts
    the rules every chapter shares: one parameters cell; no def, class or lambda."""
    import re

    import jupytext

    notebook = jupytext.read(path)
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, f"{path}: expected one parameters cell, found {len(parameters)}"
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert not re.search(r"^\s*(def|class)\s", code, re.MULTILINE) and "lambda" not in code
    prose = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    glued = set(re.findall(r"\{glue:(?:text|figure)\}`?([A-Za-z_0-9]+)", prose))
    glued |= set(re.findall(r"```\{glue:figure\} ([A-Za-z_0-9]+)", prose))
    defined = set(re.findall(r'glue\(f?"([A-Za-z_0-9{}]+)"', code))
    return {"notebook": notebook, "parameters": parameters[0], "code": code, "prose": prose, "glued": glued,
            "defined": defined}


# ------------------------------------------------------------- the authors' released checkpoints, in their layout


def write_cohen_checkpoint(root, dataset: str, arch: str, noise: float, *, data_parallel: bool = False,
                           legacy: bool = True, classes: int | None = None, seed: int = 0):
    """A checkpoint in the exact layout of Cohen et al.'s released models ($RSBOOK_MODELS/<dataset>/<their arch
    folder>/noise_<σ:.2f>/checkpoint.pth.tar, rsbook.released): {epoch, arch, state_dict, optimizer} of
    Sequential(NormalizeLayer, net) (keys '1.<name>', or '1.module.<name>' inside nn.DataParallel), written by
    torch.save in the legacy (pre-1.6, non-zip) format their 2019 code wrote unless legacy=False. Random weights
    (seeded). Returns its path."""
    from rsbook import data
    from rsbook.models import build
    from rsbook.released import find

    torch.manual_seed(seed)
    model = build(arch, classes or data.num_classes(dataset), dataset)
    state = model.state_dict()
    if data_parallel:
        state = {key.replace("1.", "1.module.", 1): value for key, value in state.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    relative = find(dataset, arch, noise).relative if find(dataset, arch, noise) else \
        f"{dataset}/{arch}/noise_{noise:.2f}/checkpoint.pth.tar"
    path = Path(root) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 90, "arch": arch, "state_dict": state, "optimizer": optimizer.state_dict()}, path,
               _use_new_zipfile_serialization=not legacy)
    return path
