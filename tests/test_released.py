"""rsbook.released (issue 18, part 1): the authors' released checkpoints in their own layout under $RSBOOK_MODELS,
checked by preflight before anything runs, used in place of training, and recorded with their SHA-256. The files
are written here in the exact layout of Cohen et al.'s archive (conftest.write_cohen_checkpoint)."""

import pytest
import torch

from conftest import write_cohen_checkpoint
from rsbook import released
from rsbook.book import disk, preflight
from rsbook.cohen import steps as cohen_steps
from rsbook.models import load_checkpoint
from rsbook.book.preflight import check
from rsbook.book.profiles import chapter_parameters
from rsbook.book.requirements import ModelRequirement, requirements


def _cifar(root, **kwargs):
    return write_cohen_checkpoint(root, "cifar10", "cifar_resnet110", 0.25, **kwargs)


def test_the_registry_is_cohen_et_al_s_archive_layout():
    assert [m.relative for m in released.RELEASED if m.dataset == "cifar10"] == [
        f"cifar10/resnet110/noise_{s}/checkpoint.pth.tar" for s in ("0.12", "0.25", "0.50", "1.00")]
    assert [m.relative for m in released.RELEASED if m.dataset == "imagenet"] == [
        f"imagenet/resnet50/noise_{s}/checkpoint.pth.tar" for s in ("0.25", "0.50", "1.00")]
    assert released.find("cifar10", "cifar_resnet110", 0.5).noise == 0.5
    assert released.find("cifar10", "cifar_resnet20", 0.5) is None and released.find("digits", "digits_cnn", 0.25) is None


@pytest.mark.parametrize("data_parallel, legacy", [(False, True), (True, False)])
def test_a_file_in_the_authors_layout_is_found_checked_and_loaded(tmp_path, monkeypatch, data_parallel, legacy):
    monkeypatch.setenv("RSBOOK_MODELS", str(tmp_path))
    file = _cifar(tmp_path, data_parallel=data_parallel, legacy=legacy)
    assert released.path("cifar10", "cifar_resnet110", 0.25) == file
    assert released.path("cifar10", "cifar_resnet110", 0.5) is None  # not there: trained
    assert released.problems(released.find("cifar10", "cifar_resnet110", 0.25), file) == []
    model, payload = load_checkpoint(file, 10, dataset="cifar10")
    assert payload["arch"] == "cifar_resnet110" and model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert "the authors' (cohen)" in released.describe("cifar10", "cifar_resnet110", 0.25)
    assert "trained here" in released.describe("cifar10", "cifar_resnet110", 1.0)


def test_preflight_lists_each_model_as_the_authors_or_trained_and_refuses_broken_files(tmp_path, monkeypatch):
    """Before anything runs: which models will be the authors' and which trained; a truncated file, another
    architecture or another number of classes is refused, naming the file, every problem at once."""
    monkeypatch.setenv("RSBOOK_MODELS", str(tmp_path))
    good = _cifar(tmp_path)
    truncated = write_cohen_checkpoint(tmp_path, "cifar10", "cifar_resnet110", 0.5)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    other_arch = write_cohen_checkpoint(tmp_path / "x", "cifar10", "cifar_resnet20", 0.12)
    target = tmp_path / released.find("cifar10", "cifar_resnet110", 0.12).relative
    target.parent.mkdir(parents=True)
    other_arch.rename(target)
    classes = write_cohen_checkpoint(tmp_path / "y", "cifar10", "cifar_resnet110", 1.0, classes=100)
    target = tmp_path / released.find("cifar10", "cifar_resnet110", 1.0).relative
    target.parent.mkdir(parents=True)
    classes.rename(target)
    reqs = [r for r in requirements(["cohen_rerun"], "full", runs=tmp_path / "runs") if isinstance(r, ModelRequirement)]
    assert len(reqs) == 7 and all(r.chapters == ("cohen_rerun",) for r in reqs)
    missing = {m.item: m for m in check(reqs)}
    assert set(missing) == {"cohen: cifar_resnet110 on cifar10, σ = 0.5", "cohen: cifar_resnet110 on cifar10, σ = 0.12",
                            "cohen: cifar_resnet110 on cifar10, σ = 1"}
    assert str(tmp_path / "cifar10/resnet110/noise_0.50/checkpoint.pth.tar") in missing[
        "cohen: cifar_resnet110 on cifar10, σ = 0.5"].problem
    assert "records arch 'cifar_resnet20'" in missing["cohen: cifar_resnet110 on cifar10, σ = 0.12"].problem
    assert "1.fc.weight (100, 64) (expected (10, 64))" in missing["cohen: cifar_resnet110 on cifar10, σ = 1"].problem
    assert all("$RSBOOK_MODELS/" in m.expected for m in missing.values())
    text = preflight.report(reqs, check(reqs))
    assert f"ok      model: cifar_resnet110 on cifar10, σ = 0.25: the authors' (cohen) {good}" in text
    assert "resnet50 on imagenet, σ = 0.25: trained here (RSBOOK_MODELS has no imagenet/resnet50/noise_0.25" in text
    monkeypatch.setenv("RSBOOK_MODELS", str(tmp_path / "nowhere"))
    assert all("is not a folder" in m.problem for m in check(reqs[:1]))


def test_a_released_model_replaces_its_training_step_and_the_disk_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("RSBOOK_MODELS", str(tmp_path))
    file = _cifar(tmp_path)
    p = chapter_parameters("cohen_rerun", "full")
    plan = cohen_steps.steps(p, tmp_path / "runs")
    kinds = {(s.kind, s.info.get("dataset"), s.info.get("sigma")) for s in plan if s.kind in ("train", "released")}
    assert ("released", "cifar10", 0.25) in kinds and ("train", "cifar10", 0.25) not in kinds
    assert ("train", "cifar10", 0.5) in kinds
    [use] = [s for s in plan if s.kind == "released"]
    assert use.output == file and use.info["origin"] == "released (cohen)" and len(use.info["sha256"]) == 64
    assert all(str(file) in s.argv for s in plan if s.kind == "certify_radius" and s.info["noise"] == 0.25
               and s.info["dataset"] == "cifar10")
    assert cohen_steps.checkpoints(plan)["cifar10"][0.25] == file
    from rsbook.book import plan as planner

    row = planner._estimate(use, p, planner.Meter())  # `make plan`: the file it will use, no training, no cost
    assert row["done"] and row["seconds"] == 0.0 and row["kind"] == "released" and str(file) in row["note"]
    parts = dict(disk.disk_estimate("cohen_rerun", p))
    assert any(what.startswith("3 x cifar_resnet110 on cifar10") for what in parts)
    off = cohen_steps.steps({**p, "released": False}, tmp_path / "runs")
    assert not [s for s in off if s.kind == "released"]
