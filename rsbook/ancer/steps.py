"""The heavy steps of the ANCER chapter, described once for the chapter and for the plan (rsbook.book.steps,
rsbook.book.plan).

    steps(parameters, root)  in the order the chapter runs them:
        the toy and the released 2-D runs of the four methods (run_methods on the CPU, in the chapter),
        `rsbook train` of the image experiment's base classifier (the folder rsbook.train.train_models
        uses, so rsbook.ancer.pipeline.image_experiment finds the finished run),
        the image run of the four methods (`python -m rsbook.ancer.pipeline certify-image`, image_argv).

run_methods optimises sigma per input, then CERTIFIES it, for Fixed / Isotropic / ANCER / RANCER. The
2-D runs are tiny and stay in the chapter's process. The image run is a command of the pipeline's own
command line (module 'rsbook.ancer.pipeline', sharded: under torchrun each process takes whole chunks
of inputs, rsbook.ancer.pipeline): rsbook.book.running.run runs it in the chapter's process (launch=False) or
through torchrun with one process per device (launch=True, profile full). It loads the checkpoint the
train step leaves, draws the chapter's test inputs and writes the run folder the chapter's own
run_methods call computes (rsbook.ancer.pipeline.image_run_folder), so that call finds every chunk
done and only reads back. The step's output is that run folder, complete once its manifest.json is
stamped finished with no per-process shard left (rsbook.book.running.progress). Its cost
per input: each optimiser's iterations x num_samples gradient evaluations (a batch of chunk x
num_samples noisy copies), RANCER's Lanczos Hessian-vector products (the custom operation 'hvp'), and
n0 + n forward passes per method for CERTIFY.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch

from rsbook import data
from rsbook.book import commands, disk, needs
from rsbook.book import steps as core

__all__ = ["CHAPTER", "MODULE", "RELEASED_WEIGHTS", "steps", "hvp", "toy_model_id", "image_argv"]

CHAPTER = "ancer"
MODULE = "rsbook.ancer.pipeline"
"""The module whose command line runs the image experiment (`python -m rsbook.ancer.pipeline certify-image`)."""
RELEASED_WEIGHTS = "tarasrumezhak/RANCER/pipeline_2D/weights/model_weights.pth"
"""The model_id of the released 2-D run (rsbook.ancer.pipeline.released_toy)."""


def hvp(module, inputs, labels):
    """One Hessian-vector product of the loss at inputs[0] (rsbook.ancer.curvature), RANCER's unit of
    Lanczos work; the operation 'hvp' of the ANCER models."""
    from rsbook.ancer.curvature import hessian_vector_product

    product = hessian_vector_product(module.eval(), inputs[0], int(labels[0]))
    return product(torch.randn(inputs[0].numel(), device=inputs.device))


def toy_model_id(toy: Mapping, seed: int) -> str:
    """The model_id rsbook.ancer.pipeline.toy_experiment gives the toy classifier."""
    return (f"toy2d:{toy['kind']}:{toy['n_points']}:{toy['n_classes']}:{toy.get('test_fraction', 0.2)}:"
            f"{toy.get('epochs', 1000)}:{seed}")


def _toy_model(classes: int) -> core.Model:
    from rsbook.ancer.toy import toy_classifier

    return core.Model(f"ANCER toy classifier ({classes} classes)", partial(toy_classifier, classes), (2,), classes,
                      {"hvp": hvp})


def _image_model(arch: str, dataset: str) -> core.Model:
    from rsbook.models import build

    classes = data.num_classes(dataset)
    return core.Model(f"{arch} ({dataset})", partial(build, arch, classes, dataset), data.input_shape(dataset), classes,
                      {"hvp": hvp})


def _lanczos_steps(rank, dim: int) -> int:
    """Hessian-vector products per input of rsbook.ancer.curvature.safe_directions: the Krylov dimension
    min(d, 2k + 20) for rank k, or d for the exact Hessian (d autograd rows)."""
    return dim if rank is None else min(dim, 2 * int(rank) + 20)


def _run_work(model: core.Model, inputs: int, settings: Mapping, chunk: int) -> tuple:
    """The Work of run_methods on `inputs` inputs with run_methods' keyword `settings`."""
    work = []
    for method in ("iso", "ancer", "rancer"):
        opt = settings[method]
        samples = int(opt["num_samples"])
        work.append(core.Work("gradient", model, inputs * int(opt["iterations"]) * samples,
                              max(1, min(chunk, inputs)) * samples))
    dim = math.prod(model.input_shape)
    work.append(core.Work("hvp", model, inputs * _lanczos_steps(settings["rancer"].get("rank"), dim), 1))
    work.append(core.Work("forward", model, 4 * inputs * (int(settings["n0"]) + int(settings["n"])),
                          int(settings["batch_size"])))
    return tuple(work)


def _match(model_id: str, settings: Mapping, chunk: int) -> dict:
    """Parameters run_methods records, minus the inputs' indices and labels (known once data is read)."""
    keep = ("fixed_sigma", "sigma0", "iso", "ancer", "rancer", "n0", "n", "alpha", "batch_size")
    found = {"model": model_id, "chunk_size": int(chunk), **{k: settings[k] for k in keep if k in settings}}
    if "rancer" in found and "clip_sigma" in found["rancer"]:
        found["rancer"] = {**found["rancer"], "clip_sigma": list(found["rancer"]["clip_sigma"])}
    return found


def image_argv(checkpoint, dataset: str, arch: str, num_examples: int, settings: Mapping, *, root, chunk_size: int,
               seed: int, device: str = "cpu", num_threads: int | None = None) -> list:
    """The argv of `python -m rsbook.ancer.pipeline certify-image` that does what the chapter's
    image_examples(checkpoint, dataset, arch, num_examples, seed=seed) and run_methods(root, dataset, ...,
    chunk_size=chunk_size, seed=seed, **settings) do (settings as JSON, which keeps ints and floats)."""
    argv = ["certify-image", "--checkpoint", Path(checkpoint), "--dataset", dataset, "--arch", arch,
            "--num-examples", int(num_examples), "--settings", json.dumps(dict(settings)), "--chunk-size",
            int(chunk_size), "--seed", int(seed), "--root", Path(root), "--device", device]
    return argv + ([] if num_threads is None else ["--num-threads", int(num_threads)])


@core.register(CHAPTER)
def steps(parameters: Mapping, root) -> list[core.Step]:
    """The chapter's steps at `parameters` (seed, toy, toy_overrides, released_skip, clip_sigma, toy_chunk,
    image, image_settings, image_chunk, device) with run folder `root`. The toy runs need the authors'
    config.json (a pinned artifact, rsbook.published.fetch); without it their work is left out and
    the step's note says so."""
    from rsbook.ancer.pipeline import thesis_config, thesis_settings
    from rsbook.ancer.toy import make_toy, train_test_split

    p, root = parameters, Path(root)
    seed, device = int(p.get("seed", 0)), p.get("device", "cpu")
    out: list[core.Step] = []
    toy, chunk = p["toy"], int(p["toy_chunk"])
    try:
        toy_settings = thesis_settings(thesis_config(), p.get("toy_overrides") or {}, clip_sigma=p["clip_sigma"])
        problem = ""
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        toy_settings, problem = None, f"not estimated: the authors' config.json could not be read ({err})"
    points, labels = make_toy(toy["kind"], toy["n_points"], toy["n_classes"], seed=seed)
    toy_count = len(train_test_split(points, labels, toy.get("test_fraction", 0.2), seed=seed)[1][1])
    try:
        released_count = len(range(0, len(data.load_dataset("rancer_toy", "test")), int(p["released_skip"])))
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        released_count, problem = 0, problem or f"not estimated: the released test points could not be read ({err})"
    for label, model_id, classes, count in (("toy", toy_model_id(toy, seed), int(toy["n_classes"]), toy_count),
                                            ("released", RELEASED_WEIGHTS, 2, released_count)):
        model = _toy_model(classes)
        record = core.RunRecord(root / "anisotropic", label, _match(model_id, toy_settings or {}, chunk))
        out.append(core.Step(CHAPTER, f"four methods on the {label} 2-D set", "optimise_certify", "cpu",
                             record=record, examples=count,
                             work=() if toy_settings is None or not count else _run_work(model, count, toy_settings,
                                                                                          chunk),
                             note=problem or "runs in the chapter's process on the CPU (no rsbook command)",
                             info={"label": label}))
    image, settings = p["image"], dict(p["image_settings"])
    train = commands.train_step(CHAPTER, root, image["dataset"], image["arch"], image["train_sigma"],
                            epochs=image["epochs"], seed=seed, device=device, workers=image.get("workers"),
                            batch_size=image["batch"], lr_step=image["lr_step"])
    out.append(train)
    dataset, chunk = image["dataset"], int(p["image_chunk"])
    count = min(int(image["num_examples"]), commands.dataset_size(dataset, "test"))
    model = _image_model(image["arch"], dataset)
    name, work = f"four methods on {count:,} {dataset} test images", _run_work(model, count, settings, chunk)
    try:
        from rsbook.ancer.pipeline import image_run_folder

        folder = image_run_folder(root, dataset, train.output, image["num_examples"], settings, chunk_size=chunk,
                                  seed=seed)
    except (FileNotFoundError, ConnectionError, ValueError) as err:  # the test labels are part of the folder
        out.append(core.Step(CHAPTER, name, "optimise_certify", device,
                             record=core.RunRecord(root / "anisotropic", dataset, _match(str(train.output), settings,
                                                                                          chunk)),
                             examples=count, work=work,
                             note=f"the {dataset} test set could not be read ({err}), so the run folder is unknown: "
                                  "the chapter's own run_methods call runs it; 'hvp': RANCER's Lanczos "
                                  "Hessian-vector products",
                             info={"label": dataset}))
        return out
    argv = image_argv(train.output, dataset, image["arch"], image["num_examples"], settings, root=root,
                      chunk_size=chunk, seed=seed, device=device, num_threads=p.get("cpu_threads"))
    out.append(core.Step(CHAPTER, name, "optimise_certify", device, argv=tuple(argv), module=MODULE, sharded=True,
                         output=folder, examples=count, work=work,
                         note="python -m rsbook.ancer.pipeline certify-image (whole chunks shared among the "
                              "processes when launched); 'hvp': RANCER's Lanczos Hessian-vector products",
                         info={"label": dataset}))
    return out


RECORD_VALUE_BYTES = 8
"""Bytes counted per stored optimisation value (float64; float32 tensors take half)."""


def _disk(p: Mapping) -> list:
    """The image experiment's base classifier and the per-input records of the four methods: Fixed and Isotropic
    a sigma each; ANCER d sigmas; RANCER d sigmas, d x rank reflectors, rank tau, signs and eigenvalues; 7 traced
    quantities per iteration of the three optimised methods."""
    image, settings = p.get("image") or {}, p.get("image_settings") or {}
    if "dataset" not in image or "arch" not in image:
        return []
    dataset = image["dataset"]
    parts = disk.model_parts(1, f"{image['arch']} on {dataset}",
                                  disk.core_parameters(image["arch"], data.num_classes(dataset)))
    d = math.prod(data.input_shape(dataset))
    rank = (settings.get("rancer") or {}).get("rank") or d
    iterations = sum((settings.get(m) or {}).get("iterations", 0) for m in ("iso", "ancer", "rancer"))
    per_input = 2 + d + d + d * rank + 3 * rank + 7 * iterations
    examples = int(image.get("num_examples", 0) or 0)
    if examples:
        parts.append(needs.Part(f"ANCER records of {examples:,} inputs ({per_input:,} values each)", 1,
                                    examples * per_input * RECORD_VALUE_BYTES, False))
    return parts


needs.declare(CHAPTER, needs.Needs(datasets=("image.dataset",),
                                           artifacts=lambda p: [{"repo": "tarasrumezhak/RANCER"}], disk=_disk))
