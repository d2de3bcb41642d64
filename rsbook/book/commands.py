"""Steps that are `rsbook` commands (rsbook.cli), built as the chapters and the plan describe them: a training
run (`rsbook train`, into the folder rsbook.train.train_models uses), the authors' released model in its place
(rsbook.released), CERTIFY, sequential certification at a radius or a table's radii, and PREDICT over a dataset
split, each into a run folder named by what it computes (rsbook.logs.run_folder), with the Work the plan prices.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from rsbook import data
from rsbook.book.steps import Model, Step, Work
from rsbook.logs import run_folder

__all__ = ["TRAIN_SIZES", "dataset_size", "core_model", "selected_examples", "train_folder", "train_step",
           "released_step", "certify_step", "certify_radius_step", "certify_grid_step", "predict_step"]

TRAIN_SIZES = {"imagenet": 1_281_167}
"""Training examples of the datasets whose train split rsbook.data.FULL_SIZES leaves uncounted: the
ILSVRC-2012 training set (Russakovsky et al. 2015, Table 2)."""


def dataset_size(name: str, split: str) -> int:
    """Examples in a split, without reading an on-disk dataset: rsbook.data.FULL_SIZES (and TRAIN_SIZES)
    for CIFAR-10, ImageNet and Imagenette, which rsbook.book.preflight checks the data against before the
    book runs; the bundled datasets are loaded (instant)."""
    if name in data.FULL_SIZES:
        key = "test" if split in ("test", "val") else split
        size = data.FULL_SIZES[name].get(key)
        size = TRAIN_SIZES.get(name) if size is None and key == "train" else size
        if size is None:
            raise ValueError(f"the size of {name} {split} is not known")
        return int(size)
    return len(data.load_dataset(name, split))


def core_model(arch: str, dataset: str) -> Model:
    """The Model of rsbook.models.build(arch, classes, dataset) on `dataset`'s inputs."""
    from rsbook.models import build

    classes = data.num_classes(dataset)
    return Model(f"{arch} ({dataset})", partial(build, arch, classes, dataset), data.input_shape(dataset), classes)


_TRAIN_FLAGS = {"batch_size": "--batch", "lr": "--lr", "schedule": "--schedule", "lr_step": "--lr-step",
                "gamma": "--gamma", "momentum": "--momentum", "weight_decay": "--weight-decay"}


def _number(value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def train_folder(root, dataset: str, arch: str, noise_sd: float, *, epochs: int | None, seed: int = 0,
                 **hyper) -> Path:
    """The run folder rsbook.train.train_models trains `arch` on `dataset` at `noise_sd` into (root/train/
    <arch>_<dataset>_noise<sigma>-<digest of the hyperparameters used>), so that `rsbook train --out` it
    and a later train_models call find the same run."""
    from rsbook.train import training_defaults

    unknown = sorted(set(hyper) - set(_TRAIN_FLAGS))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; expected some of {sorted(_TRAIN_FLAGS)}")
    settings = training_defaults(dataset, **{**hyper, "epochs": epochs})
    identity = {k: v for k, v in settings.items() if k != "epochs" or settings["schedule"] == "linear"}
    parameters = {"dataset": dataset, "arch": arch, "noise_sd": float(noise_sd), "seed": seed, **identity}
    return run_folder(root, "train", f"{arch}_{dataset}_noise{float(noise_sd):g}", parameters)


def train_step(chapter: str, root, dataset: str, arch: str, noise_sd: float, *, epochs: int | None, seed: int = 0,
               device: str = "cpu", workers: int | None = None, name: str | None = None, **hyper) -> Step:
    """`rsbook train` of `arch` on `dataset` with Gaussian noise `noise_sd` (rsbook.train) into
    train_folder(...): output its checkpoint.pt, complete at the run's epochs. Work per epoch: a
    training step on every training example and a forward pass over the test split (the noisy test
    accuracy of every epoch)."""
    from rsbook.train import training_defaults

    settings = training_defaults(dataset, **{**hyper, "epochs": epochs})
    folder = train_folder(root, dataset, arch, noise_sd, epochs=epochs, seed=seed, **hyper)
    argv = ["train", "--dataset", dataset, "--arch", arch, "--noise-sd", _number(float(noise_sd)),
            "--epochs", settings["epochs"], "--seed", seed, "--device", device, "--out", folder]
    for key, value in hyper.items():
        if value is not None:
            argv += [_TRAIN_FLAGS[key], _number(value)]
    if workers:
        argv += ["--workers", workers]
    model = core_model(arch, dataset)
    train_size, test_size = dataset_size(dataset, "train"), dataset_size(dataset, "test")
    batch = settings["batch_size"]
    return Step(chapter, name or f"train {arch} on {dataset}, σ = {float(noise_sd):g}", "train", device,
                argv=tuple(argv), output=folder / "checkpoint.pt", epochs=settings["epochs"],
                work=(Work("train", model, settings["epochs"] * train_size, batch),
                      Work("forward", model, settings["epochs"] * test_size, batch)),
                note="data loading and augmentation not timed",
                info={"dataset": dataset, "arch": arch, "sigma": float(noise_sd), "folder": folder})


def released_step(chapter: str, dataset: str, arch: str, noise: float, file, name: str | None = None) -> Step:
    """The authors' released checkpoint `file` of `arch` trained at `noise` on `dataset` (rsbook.released), used in
    place of a `train_step`: nothing to run or estimate, done when the file is there; info holds its SHA-256 (read
    once here) and its origin, for the chapter's manifest."""
    from rsbook import released
    from rsbook.published import file_sha256

    model = released.find(dataset, arch, noise)
    if model is None:
        raise ValueError(f"no released model of {arch} on {dataset} at noise {noise:g} is registered (rsbook.released)")
    file = Path(file)
    return Step(chapter, name or f"use the authors' {arch} on {dataset}, σ = {float(noise):g}", "released", "cpu",
                output=file, note=f"{model.document}'s released model, {file}",
                info={"dataset": dataset, "arch": arch, "sigma": float(noise), "origin": f"released ({model.document})",
                      "sha256": file_sha256(file)})


def selected_examples(dataset: str, split: str, skip: int, max_index: int = -1) -> int:
    """How many examples rsbook.dataset_runs selects (every skip-th, below max_index) from a split of
    dataset_size(dataset, split) examples."""
    from rsbook.dataset_runs import selected_indices

    return len(selected_indices(dataset_size(dataset, split), skip, max_index))


def _smoothing_argv(command: str, dataset: str, checkpoint, sigma: float, alpha: float, batch: int, skip: int,
                    seed: int, device: str, out: Path, split: str) -> list:
    return [command, "--dataset", dataset, "--split", split, "--checkpoint", Path(checkpoint), "--sigma",
            _number(float(sigma)), "--alpha", _number(float(alpha)), "--batch", batch, "--skip", skip, "--seed", seed,
            "--device", device, "--out", out]


def certify_step(chapter: str, root, dataset: str, checkpoint, arch: str, sigma: float, *, n0: int, n: int,
                 alpha: float, batch: int, skip: int = 1, seed: int = 0, device: str = "cpu", split: str = "test",
                 trained_epochs: int | None = None, noise: float | None = None, name: str | None = None,
                 table: bool = False) -> Step:
    """`rsbook certify` (CERTIFY, Cohen et al. 2019) of every skip-th example of `dataset` `split` with
    the model at `checkpoint` smoothed at `sigma`, into root/certify/<dataset>_noise<noise>_sigma<sigma>-
    <digest>/certify.tsv. The digest covers the command, the checkpoint and its `trained_epochs`, so a
    model trained further is certified into a new log. Work: (n0 + n) forward passes per example.
    table: the log behind a published table (info['table'], for rsbook.book.plan's per-path costs)."""
    noise = float(sigma if noise is None else noise)
    identity = {"command": "rsbook certify", "dataset": dataset, "split": split, "checkpoint": str(checkpoint),
                "trained_epochs": trained_epochs, "n0": n0, "n": n, "alpha": alpha, "batch": batch, "skip": skip,
                "seed": seed}
    out = run_folder(root, "certify", f"{dataset}_noise{noise:g}_sigma{float(sigma):g}", identity) / "certify.tsv"
    argv = _smoothing_argv("certify", dataset, checkpoint, sigma, alpha, batch, skip, seed, device, out, split)
    argv += ["--n0", n0, "-n", n]
    examples = selected_examples(dataset, split, skip)
    return Step(chapter, name or f"certify {dataset}, noise {noise:g}, σ = {float(sigma):g}", "certify", device,
                argv=tuple(argv), output=out, examples=examples,
                work=(Work("forward", core_model(arch, dataset), examples * (n0 + n), batch),),
                info={"dataset": dataset, "noise": noise, "sigma": float(sigma), "table": bool(table)})


def certify_radius_step(chapter: str, root, dataset: str, checkpoint, arch: str, sigma: float, radius: float, *,
                        n0: int, n_max: int, alpha: float, batch: int, method: str = "betting", skip: int = 1,
                        seed: int = 0, device: str = "cpu", split: str = "test", trained_epochs: int | None = None,
                        samples_per_example: float | None = None, name: str | None = None) -> Step:
    """`rsbook certify --radius` (sequential certification at one radius, rsbook.sequential) into
    root/sequential/<dataset>_sigma<sigma>_r<radius>-<digest>/certify.tsv. Work per example: n0 plus
    `samples_per_example` draws (e.g. the mean a replay of the authors' logs measured,
    rsbook.replay) or, without it, n_max: an upper bound, said in the step's note."""
    identity = {"command": "rsbook certify --radius", "dataset": dataset, "split": split,
                "checkpoint": str(checkpoint), "trained_epochs": trained_epochs, "radius": float(radius), "n0": n0,
                "n_max": n_max, "alpha": alpha, "batch": batch, "method": method, "skip": skip, "seed": seed}
    label = f"{dataset}_sigma{float(sigma):g}_r{float(radius):g}"
    out = run_folder(root, "sequential", label, identity) / "certify.tsv"
    argv = _smoothing_argv("certify", dataset, checkpoint, sigma, alpha, batch, skip, seed, device, out, split)
    argv += ["--n0", n0, "--radius", _number(float(radius)), "--n-max", n_max, "--method", method]
    examples = selected_examples(dataset, split, skip)
    drawn = n_max if samples_per_example is None else float(samples_per_example)
    note = ("upper bound: n_max samples per example" if samples_per_example is None
            else "mean samples per example from a replay")
    return Step(chapter, name or f"certify {dataset} at r = {float(radius):g}, σ = {float(sigma):g}", "certify_radius",
                device, argv=tuple(argv), output=out, examples=examples,
                work=(Work("forward", core_model(arch, dataset), examples * (n0 + drawn), batch),), note=note,
                info={"dataset": dataset, "sigma": float(sigma), "radius": float(radius)})


def certify_grid_step(chapter: str, root, dataset: str, checkpoint, arch: str, sigma: float, radii, *, n0: int,
                      n_max: int, alpha: float, batch: int, method: str = "betting", futility: float = 0.001,
                      stop_if_wrong: bool = False, skip: int = 1, seed: int = 0, device: str = "cpu",
                      split: str = "test", trained_epochs: int | None = None, noise: float | None = None,
                      samples_per_example: float | None = None, name: str | None = None,
                      table: bool = False) -> Step:
    """`rsbook certify --radii` (a table's radii decided from one stream per example, rsbook.sequential_grid) into
    root/sequential/<dataset>_noise<noise>_sigma<sigma>-<digest>/certify.tsv. Work per example: n0 plus
    `samples_per_example` draws (e.g. rsbook.replay.grid_cost on the authors' released log) or, without it, n_max:
    an upper bound, said in the step's note."""
    from rsbook.sequential_grid import check_radii

    radii = list(check_radii(radii))
    noise = float(sigma if noise is None else noise)
    identity = {"command": "rsbook certify --radii", "dataset": dataset, "split": split,
                "checkpoint": str(checkpoint), "trained_epochs": trained_epochs, "radii": radii, "n0": n0,
                "n_max": n_max, "alpha": alpha, "batch": batch, "method": method, "futility": float(futility),
                "stop_if_wrong": stop_if_wrong, "skip": skip, "seed": seed}
    out = run_folder(root, "sequential", f"{dataset}_noise{noise:g}_sigma{float(sigma):g}", identity) / "certify.tsv"
    argv = _smoothing_argv("certify", dataset, checkpoint, sigma, alpha, batch, skip, seed, device, out, split)
    argv += ["--n0", n0, "--radii", *[_number(r) for r in radii], "--n-max", n_max, "--method", method,
             "--futility", _number(float(futility))]
    argv += ["--stop-if-wrong"] if stop_if_wrong else []
    examples = selected_examples(dataset, split, skip)
    drawn = n_max if samples_per_example is None else float(samples_per_example) - n0
    note = ("upper bound: n_max samples per example" if samples_per_example is None
            else "mean samples per example from a replay of the authors' released log")
    return Step(chapter, name or f"certify {dataset}, noise {noise:g}, σ = {float(sigma):g}, radii "
                + "/".join(f"{r:g}" for r in radii), "certify_radius", device, argv=tuple(argv), output=out,
                examples=examples, work=(Work("forward", core_model(arch, dataset), examples * (n0 + drawn), batch),),
                note=note, info={"dataset": dataset, "noise": noise, "sigma": float(sigma), "radii": radii,
                                 "table": bool(table)})


def predict_step(chapter: str, root, dataset: str, checkpoint, arch: str, sigma: float, *, n: int, alpha: float,
                 batch: int, skip: int = 1, seed: int = 0, device: str = "cpu", split: str = "test",
                 trained_epochs: int | None = None, name: str | None = None) -> Step:
    """`rsbook predict` (PREDICT, Cohen et al. 2019) with n samples per example into
    root/predict/<dataset>_sigma<sigma>_n<n>-<digest>/predict.tsv. Work: n forward passes per example."""
    identity = {"command": "rsbook predict", "dataset": dataset, "split": split, "checkpoint": str(checkpoint),
                "trained_epochs": trained_epochs, "sigma": float(sigma), "n": int(n), "alpha": alpha, "batch": batch,
                "skip": skip, "seed": seed}
    out = run_folder(root, "predict", f"{dataset}_sigma{float(sigma):g}_n{int(n)}", identity) / "predict.tsv"
    argv = _smoothing_argv("predict", dataset, checkpoint, sigma, alpha, batch, skip, seed, device, out, split)
    argv += ["-n", int(n)]
    examples = selected_examples(dataset, split, skip)
    return Step(chapter, name or f"predict {dataset}, σ = {float(sigma):g}, n = {int(n):,}", "predict", device,
                argv=tuple(argv), output=out, examples=examples,
                work=(Work("forward", core_model(arch, dataset), examples * int(n), batch),),
                info={"dataset": dataset, "sigma": float(sigma), "n": int(n)})
