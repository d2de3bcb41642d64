"""rsbook.book.preflight (issue 12, part 3): before the book executes anything, every unmet requirement of the
chapters it will run is listed at once, each with the layout or setting expected. Datasets are checked in
the on-disk formats rsbook.data reads (miniatures written here, with counts passed in the requirement),
without decoding an image."""

import shutil

import pytest
import torch

from conftest import mirror_path, write_image_folder
from rsbook import data
from rsbook.book import disk, needs, preflight, profiles, requirements as gathered
from rsbook.book.disk import checkpoint_bytes, disk_estimate
from rsbook.book.preflight import check
from rsbook.book.profiles import chapter_parameters
from rsbook.book.requirements import (ArtifactRequirement, CudaRequirement, DatasetRequirement, DiskRequirement,
                                      requirements)

RELEASED = "locuslab/smoothing/data/predict/imagenet/resnet50/noise_0.25/test/N_100"
SPLITS = {"train": 14, "test": 5}  # the `cifar` fixture's miniature CIFAR-10


def _cuda(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def _miniature_image_folders(root):
    for name in ("imagenet", "imagenette"):
        write_image_folder(root / name, "train")
        write_image_folder(root / name, "val", seed=1)


def test_every_missing_item_is_listed_at_once_with_the_layout_expected(cifar, tmp_path, monkeypatch):
    folder = cifar[0]
    (folder / "data_batch_3").unlink()
    write_image_folder(tmp_path / "imagenet", "train")
    write_image_folder(tmp_path / "imagenet", "val", classes=("apple", "mango"))  # a class folder short
    (tmp_path / "imagenet" / "train" / "kiwi").mkdir()  # a class folder without images
    # no imagenette/ at all
    monkeypatch.delenv("RSBOOK_MIRROR", raising=False)
    _cuda(monkeypatch, 0)
    reqs = [DatasetRequirement("cifar10", {"train": 14, "test": 6}, chapters=("relax",)),
            DatasetRequirement("imagenet", {"train": None, "test": 6}, classes=3, chapters=("cohen_rerun",)),
            DatasetRequirement("imagenette", {"train": 6, "test": 6}, classes=3, chapters=("fars",)),
            CudaRequirement(1, ("fars",)), DiskRequirement(tmp_path / "runs", 10**18, (("checkpoints", 10**18),)),
            ArtifactRequirement(RELEASED, tmp_path / "runs" / "artifacts", ("cohen_logs",))]
    missing = check(reqs)
    assert sorted((m.kind, m.item) for m in missing) == sorted([
        ("dataset", "cifar10 train"), ("dataset", "cifar10 test"), ("dataset", "imagenet train"),
        ("dataset", "imagenet train"), ("dataset", "imagenet test"), ("dataset", "imagenet test"),
        ("dataset", "imagenet train/test"),
        ("dataset", "imagenette train/test"), ("cuda", "CUDA device"), ("disk", f"free disk under {tmp_path / 'runs'}"),
        ("artifact", RELEASED)])
    found = {}
    for m in missing:
        found[m.kind, m.item] = found.get((m.kind, m.item), m)
        if found[m.kind, m.item] is not m:
            found[m.kind, m.item] = gathered.Missing(m.kind, m.item, f"{found[m.kind, m.item].problem} | {m.problem}",
                                                      m.expected, m.chapters)
    assert "data_batch_3 does not exist" in found["dataset", "cifar10 train"].problem
    assert f"{folder} holds 5 examples, expected 6" in found["dataset", "cifar10 test"].problem
    assert "1 class folder(s) hold no image file" in found["dataset", "imagenet train"].problem
    assert "kiwi" in found["dataset", "imagenet train"].problem
    assert "has 4 class folders, expected 3" in found["dataset", "imagenet train"].problem
    assert "has 2 class folders, expected 3" in found["dataset", "imagenet test"].problem
    assert "val holds 4 examples, expected 6" in found["dataset", "imagenet test"].problem
    assert "only in train/: kiwi, zebra; only in val/: none" in found["dataset", "imagenet train/test"].problem
    assert f"folder {tmp_path / 'imagenette'} does not exist" in found["dataset", "imagenette train/test"].problem
    for item in missing:
        if item.kind == "dataset":
            name = item.item.split()[0]
            assert item.expected.startswith(data.layout(name).removeprefix("expected "))
    assert "14 train, 6 test examples" in found["dataset", "cifar10 test"].expected
    assert found["dataset", "cifar10 test"].chapters == ("relax",)
    assert "RSBOOK_MIRROR is not set" in found["artifact", RELEASED].problem
    assert "rsbook fetch" in found["artifact", RELEASED].expected
    lines = preflight.report(reqs, missing).split("\nmissing:\n")[0].splitlines()[1:]
    assert len(lines) == 6 and all(line.startswith("  MISSING") for line in lines)


def test_a_complete_miniature_meets_requirements_that_state_its_counts(cifar, tmp_path, runs, monkeypatch):
    _miniature_image_folders(tmp_path)
    _cuda(monkeypatch, 2)
    reqs = [DatasetRequirement("cifar10", SPLITS),
            DatasetRequirement("imagenet", {"train": None, "test": 6}, classes=3),
            DatasetRequirement("imagenette", {"train": 6, "test": 6}, classes=3),
            CudaRequirement(2), DiskRequirement(runs, 1 << 20), ArtifactRequirement(RELEASED, runs / "artifacts")]
    assert check(reqs) == []
    assert not runs.exists()  # nothing fetched or written
    # the real counts are for the real datasets
    missing = check([DatasetRequirement("cifar10", data.FULL_SIZES["cifar10"])])
    assert [m.problem.split(", expected")[1] for m in missing] == [" 50,000", " 10,000"]


def test_images_are_counted_by_name_not_decoded(tmp_path, monkeypatch):
    monkeypatch.setenv("RSBOOK_DATA", str(tmp_path))
    write_image_folder(tmp_path / "imagenette", "val")
    (tmp_path / "imagenette" / "val" / "apple" / "broken.jpg").write_bytes(b"not a JPEG")
    (tmp_path / "imagenette" / "val" / "apple" / "notes.txt").write_text("not an image")
    survey = data.survey("imagenette", "test")
    assert survey.ok and survey.examples == 7 and survey.classes == ("apple", "mango", "zebra")
    assert data.survey("imagenette", "test", count=False).examples is None
    with pytest.raises(ValueError, match="embedded and has nothing on disk"):
        data.survey("digits", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        data.survey("cifar10", "val")


def test_no_cuda_is_an_item_when_the_profile_runs_on_cuda(monkeypatch):
    _cuda(monkeypatch, 0)
    [item] = check([CudaRequirement(1, ("fars",))])
    assert "torch.cuda.is_available() is False" in item.problem and "CUDA_VISIBLE_DEVICES" in item.expected
    _cuda(monkeypatch, 1)
    [item] = check([CudaRequirement(4)])
    assert item.problem == "1 CUDA device(s) visible, 4 needed"
    assert check([CudaRequirement(1)]) == []


def test_an_artifact_counts_only_with_its_pinned_sha256(tmp_path, monkeypatch):
    released, mirror, cache = mirror_path() / RELEASED, tmp_path / "mirror", tmp_path / "runs" / "artifacts"
    (mirror / RELEASED).parent.mkdir(parents=True)
    (mirror / RELEASED).write_text("idx\tlabel\tpredict\tcorrect\ttime\n")  # not the released file
    monkeypatch.setenv("RSBOOK_MIRROR", str(mirror))
    [item] = check([ArtifactRequirement(RELEASED, cache)])
    assert "not the pinned one" in item.problem and "not in the cache" in item.problem
    # the verified file in the cache suffices, with no mirror at all
    from rsbook.published import artifacts

    row = artifacts(name=RELEASED).iloc[0]
    target = cache / row["repo"] / row["commit"] / row["path"]
    target.parent.mkdir(parents=True)
    shutil.copy(released, target)
    monkeypatch.delenv("RSBOOK_MIRROR")
    assert check([ArtifactRequirement(RELEASED, cache)]) == []


def test_disk_requirements_on_one_file_system_add_up(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    half = DiskRequirement(tmp_path / "a", free // 2 + 1, chapters=("fars",))
    assert check([half]) == []
    [item] = check([half, DiskRequirement(tmp_path / "b" / "c", free // 2 + 1, chapters=("relax",))])
    assert item.kind == "disk" and item.chapters == ("fars", "relax")


@pytest.mark.parametrize("bad, message", [
    (lambda: DatasetRequirement("digits", {"test": 1}), "on-disk datasets"),
    (lambda: DatasetRequirement("cifar10", {"val": 1}), "split must be one of"),
    (lambda: DatasetRequirement("cifar10", {"test": -1}), r"sizes\['test'\] must be an integer >= 0"),
    (lambda: CudaRequirement(0), "devices must be an integer >= 1"),
    (lambda: DiskRequirement("/tmp", -5), "bytes must be an integer >= 0"),
    (lambda: ArtifactRequirement("no/such", "/tmp"), "unknown artifact"),
    (lambda: check(["cifar10"]), "check takes DatasetRequirement"),
    (lambda: requirements(["relax"], "huge"), "profile must be one of"),
    (lambda: requirements("relax", "full"), "list of chapter names"),
])
def test_bad_input_is_refused_with_what_is_expected(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


# --------------------------------------------------------------------------- parameters, as the build injects them

CHAPTER = '''\
---
kernelspec: {name: python3, display_name: Python 3}
---
# A chapter

```{code-cell} ipython3
:tags: [parameters, remove-cell]

profile = "default"
dataset = "digits"  # a comment
device = "cpu"
image = {"dataset": "digits", "num_examples": 4}
```

```{code-cell} ipython3
print(dataset)
```
'''


def _book(tmp_path, chapter=CHAPTER, profiles="full:\n  dataset: cifar10\n  device: cuda\n"):
    book = tmp_path / "book"
    (book / "chapters").mkdir(parents=True)
    (book / "profiles").mkdir()
    (book / "chapters" / "mini.md").write_text(chapter)
    (book / "profiles" / "mini.yml").write_text(profiles)
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapters/mini\n")
    return book


def test_parameters_are_the_cell_defaults_replaced_by_the_profile_then_the_overrides(tmp_path):
    book = _book(tmp_path)
    assert chapter_parameters("mini", "smoke", book=book) == {
        "profile": "smoke", "dataset": "digits", "device": "cpu", "image": {"dataset": "digits", "num_examples": 4}}
    full = chapter_parameters("mini", "full", book=book, overrides={"device": "cuda:1"})
    assert full["dataset"] == "cifar10" and full["device"] == "cuda:1" and full["profile"] == "full"
    reqs = requirements(["mini"], "full", book=book, runs=tmp_path / "runs", overrides={"mini": {"devices": 3}})
    kinds = {type(r).__name__: r for r in reqs}
    assert kinds["DatasetRequirement"].dataset == "cifar10" and kinds["DatasetRequirement"].chapters == ("mini",)
    assert kinds["CudaRequirement"].devices == 3
    assert profiles.book_chapters(book) == ["intro", "mini"]


@pytest.mark.parametrize("cell, message", [
    ("seed = 1 + 1\n", "'seed' .* is not a literal"),
    ("import os\n", "may only assign literals"),
])
def test_a_parameters_cell_that_is_not_literal_assignments_is_refused(tmp_path, cell, message):
    book = _book(tmp_path, CHAPTER.replace('device = "cpu"\n', cell))
    with pytest.raises(ValueError, match=message):
        chapter_parameters("mini", "full", book=book)


def test_an_unknown_chapter_or_book_is_named(tmp_path):
    book = _book(tmp_path)
    with pytest.raises(FileNotFoundError, match="no chapter 'other'.*chapters: \\['mini'\\]"):
        chapter_parameters("other", "full", book=book)
    with pytest.raises(FileNotFoundError, match="book folder .* does not exist"):
        chapter_parameters("mini", "full", book=tmp_path / "nowhere")


def test_the_book_at_full_needs_its_datasets_a_gpu_and_the_artifacts(tmp_path):
    chapters = ["cohen_logs", "cohen_rerun", "relax", "fars", "ancer"]
    reqs = requirements(chapters, "full", runs=tmp_path)
    datasets = {r.dataset: r for r in reqs if isinstance(r, DatasetRequirement)}
    assert set(datasets) == {"cifar10", "imagenet", "imagenette"}
    assert set(datasets["cifar10"].chapters) == {"cohen_rerun", "relax", "ancer"}
    assert datasets["imagenette"].chapters == ("fars",) and datasets["imagenette"].classes == 10
    assert datasets["imagenet"].sizes == {"train": None, "test": 50_000} and datasets["imagenet"].classes == 1000
    assert datasets["cifar10"].sizes == {"train": 50_000, "test": 10_000}
    [cuda] = [r for r in reqs if isinstance(r, CudaRequirement)]
    assert set(cuda.chapters) == {"cohen_rerun", "relax", "fars", "ancer"}
    assert [r.chapters for r in reqs if isinstance(r, DiskRequirement)] == [(c,) for c in chapters]
    names = [r.name for r in reqs if isinstance(r, ArtifactRequirement)]
    assert len(names) == 21
    assert all(r.cache == tmp_path / "artifacts" for r in reqs if isinstance(r, ArtifactRequirement))
    # the embedded run needs no dataset and no GPU, only the artifacts
    default = requirements(chapters, "default", runs=tmp_path)
    assert not [r for r in default if isinstance(r, (DatasetRequirement, CudaRequirement))]


def test_only_the_parameters_that_name_data_to_load_make_a_dataset_requirement(tmp_path):
    reqs = gathered.requirements_for({
        "sequential": {"headline": {"dataset": "cifar10", "noise": 0.25}, "device": "cpu"},  # picks a released log
        "ancer": {"image": {"dataset": "imagenette"}, "toy": {"dataset": "imagenet"}},
        "newcomer": {"dataset": "cifar10", "other": {"dataset": "imagenet"}}}, runs=tmp_path)
    datasets = {r.dataset: r.chapters for r in reqs if isinstance(r, DatasetRequirement)}
    assert datasets == {"imagenette": ("ancer",), "cifar10": ("newcomer",)}
    released = {r.name for r in reqs if isinstance(r, ArtifactRequirement) and r.chapters == ("sequential",)}
    assert len(released) == 13 and all("/data/certify/" in name for name in released)


def test_the_command_line_exits_2_and_names_everything_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RSBOOK_DATA", raising=False)
    _cuda(monkeypatch, 0)
    assert preflight.main(["--profile", "full", "--chapter", "relax", "--chapter", "fars",
                           "--runs", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "RSBOOK_DATA is not set" in out and "$RSBOOK_DATA/imagenette/{train,val}/<class>/<image>" in out
    assert "$RSBOOK_DATA/cifar-10-batches-py/" in out and "no CUDA device is visible" in out
    assert "nothing was executed" in out
    assert preflight.main(["--profile", "default", "--chapter", "relax", "--runs", str(tmp_path)]) == 0
    assert "every requirement is met" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- disk estimate


def test_a_checkpoint_estimate_covers_a_real_checkpoint(tmp_path):
    from rsbook.models import build, save_checkpoint

    model = build("cifar_resnet20", 10, "cifar10")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "c.pt", model, "cifar_resnet20", "cifar10", 0.25, 1, optimizer)
    parameters = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    assert (tmp_path / "c.pt").stat().st_size <= checkpoint_bytes(parameters)


def test_the_estimate_counts_every_model_a_chapter_trains(tmp_path):
    p = chapter_parameters("cohen_rerun", "full")
    parts = dict(disk_estimate("cohen_rerun", p))
    resnet110 = disk.core_parameters("cifar_resnet110", 10)
    assert parts[f"4 x cifar_resnet110 on cifar10 checkpoint ({resnet110:,} parameters)"] == 4 * checkpoint_bytes(
        resnet110)
    assert any(what.startswith("3 x resnet50 on imagenet") for what in parts)
    assert dict(disk_estimate("intro", {})) == {"logs, tables, executed notebook and figures (allowance)":
                                                disk.OUTPUT_ALLOWANCE}


@pytest.mark.parametrize("profile", profiles.PROFILES)
def test_the_document_model_bounds_hold_at_every_profile(profile):
    """relax's and FaRS's models live in their document packages: their disk estimates count them at the
    packages' MODEL_PARAMETERS bounds, checked here against the models built."""
    from rsbook.fars import steps as fars_steps
    from rsbook.fars.certify import build_head
    from rsbook.fars.lipschitz import sll_backbone
    from rsbook.relax import steps as relax_steps
    from rsbook.relax.training import build_model

    def count(module):
        return sum(t.numel() for t in module.parameters()) + sum(t.numel() for t in module.buffers())

    relax = chapter_parameters("relax", profile)
    fars = chapter_parameters("fars", profile)
    with torch.device("meta"):
        net = build_model(relax["arch"], data.input_shape(relax["dataset"]), data.num_classes(relax["dataset"]),
                          relax["hidden"])
        backbone = sll_backbone(data.input_shape(fars["dataset"]), **fars["backbone"])
        head = build_head(backbone.config["embedding_dim"], data.num_classes(fars["dataset"]),
                          fars["deep_head"]["hidden"])
    assert count(net) <= relax_steps.MODEL_PARAMETERS
    assert count(backbone) + count(head) <= fars_steps.MODEL_PARAMETERS


def test_the_ancer_records_grow_with_the_inputs_and_the_rancer_rank():
    p = chapter_parameters("ancer", "full")
    small = {**p, "image": {**p["image"], "num_examples": 10}}
    records = {what.split(" (")[0]: b for what, b in disk_estimate("ancer", p) if what.startswith("ANCER")}
    fewer = {what.split(" (")[0]: b for what, b in disk_estimate("ancer", small) if what.startswith("ANCER")}
    assert records["ANCER records of 1,000 inputs"] == 100 * fewer["ANCER records of 10 inputs"]
    d = 3 * 32 * 32
    assert records["ANCER records of 1,000 inputs"] >= 1000 * d * 16 * 4  # RANCER's d x rank reflectors alone


# ------------------------------------------------------------------------------------------ requirements live with their documents

def test_the_core_names_no_chapter_each_document_declares_its_needs():
    """Issue 18, part 5: the requirement machinery (rsbook.book's profiles, needs, disk, requirements and
    preflight) knows no chapter by name; each document package declares what its chapters need beside its steps
    (needs.declare in <package>/steps.py)."""
    import inspect

    sources = "".join(inspect.getsource(module) for module in (profiles, needs, disk, gathered, preflight))
    for chapter in ("cohen_rerun", "cohen_logs", "relax", "fars", "ancer", "sequential"):
        assert f'"{chapter}"' not in sources and f"'{chapter}'" not in sources
        assert needs.needs(chapter) != needs.Needs()
    assert needs.needs("ancer").datasets == ("image.dataset",)
    assert needs.needs("nobody") == needs.Needs()
    with pytest.raises(ValueError, match="Needs value"):
        needs.declare("x", {"datasets": ()})
