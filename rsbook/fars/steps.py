"""The heavy steps of the FaRS chapter, described once for the chapter and for the plan (rsbook.book.steps,
rsbook.book.plan).

    steps(parameters, root)  in the order the chapter runs them:
        training (`python -m rsbook.fars.pipeline train`, train_fars): the SLL backbone with its linear
        head end to end (unless a backbone_checkpoint is given), the linear probe on frozen features
        (probe epochs > 0) and the deeper head trained with embedding noise;
        the certificates in the embedding space (closed form; the sparsemax head and both heads by
        Monte Carlo on the head only), l2-PGD on the full model and on the smoothed sparsemax head, and
        the timing of every way of certifying against CERTIFY on the whole network.

Training steps are commands of FaRS's own command line (module 'rsbook.fars.pipeline', sharded: it
trains data parallel under torchrun, rsbook.distributed), since the core's `rsbook` command may not
import a document package: rsbook.book.running.run runs them in the chapter's process through
rsbook.fars.pipeline.main (launch=False) or launches them through torchrun with one process per
device (launch=True, profile full). Each trains into the run folder train_run would use for the same
settings, root/train/<name>-<digest> (rsbook.logs.run_folder), with train_run's parameters, so either
way writes and resumes the same run and the chapter reads its checkpoint there. The certificates and
attacks run in the chapter through rsbook.fars.pipeline and are found again by their run folders.
`checkpoints` gives the chapter the three checkpoints it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import json

import torch
import torch.nn.functional as F

from rsbook import data
from rsbook.book import commands, disk, needs
from rsbook.book import steps as core
from rsbook.logs import run_folder

__all__ = ["CHAPTER", "MODEL_PARAMETERS", "MODULE", "steps", "checkpoints", "train_head", "train_argv"]

CHAPTER = "fars"

MODULE = "rsbook.fars.pipeline"
"""The module whose command line trains a FaRS model (`python -m rsbook.fars.pipeline train`)."""

_RUN_ONLY = ("device", "workers", "progress")
"""train_run's settings that do not identify the run (left out of its folder's digest)."""

_SWITCHES = {"train_backbone": ("--train-backbone", "--no-train-backbone"), "evaluate": (None, "--no-evaluate"),
             "progress": (None, "--no-progress")}
"""train_fars's booleans as the command line's flags (when True, when False; None: the default)."""

_TRAIN_OPTIONS = ("backbone", "hidden", "epochs", "batch_size", "lr", "weight_decay", "margin", "margin_mode",
                  "logit_scale", "embedding_noise", "seed", "backbone_checkpoint", "device", "workers",
                  *_SWITCHES)
"""train_fars's keyword arguments the command line takes (rsbook.fars.pipeline._command_parser)."""


def train_argv(dataset: str, out, **kwargs) -> list:
    """The argv of `python -m rsbook.fars.pipeline train` that calls train_fars(dataset, out, **kwargs):
    each keyword as its --kebab-case flag, `backbone` as JSON, `hidden` as its widths, booleans as
    --[no-]flags; numbers written so that they parse back to the same value (floats by repr). The run's
    recorded parameters are those of the call (train_fars normalises them the same way either way)."""
    unknown = sorted(set(kwargs) - set(_TRAIN_OPTIONS))
    if unknown:
        raise ValueError(f"train_fars options with no command-line flag: {unknown}")
    argv = ["train", "--dataset", dataset, "--out", Path(out)]
    for key, value in kwargs.items():
        if value is None:
            continue  # the command's default is None too
        if key in _SWITCHES:
            flag = _SWITCHES[key][0 if value else 1]
            argv += [] if flag is None else [flag]
        elif key == "backbone":
            argv += ["--backbone", json.dumps(dict(value))]
        elif key == "hidden":
            widths = [int(h) for h in value]
            argv += ["--hidden", *widths] if widths else []
        elif key == "backbone_checkpoint":
            argv += ["--backbone-checkpoint", Path(value)]
        else:
            argv += [f"--{key.replace('_', '-')}", commands._number(value)]
    return argv


def train_head(module, inputs, labels):
    """One training step of the head alone on frozen features (a linear probe, or the deeper head):
    the backbone's forward pass without gradients, then the head's forward, backward and update; the
    operation 'train_head' of the FaRS models."""
    with torch.no_grad():
        z = module.backbone(inputs)
    loss = F.cross_entropy(module.head(z), labels)
    module.head.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for weight in module.head.parameters():
            weight -= 1e-3 * weight.grad


def _fars_model(dataset: str, backbone: Mapping, hidden) -> core.Model:
    from rsbook.fars.certify import FaRS, build_head
    from rsbook.fars.lipschitz import BACKBONE_DEFAULTS, sll_backbone

    classes, shape = data.num_classes(dataset), data.input_shape(dataset)
    embedding = int({**BACKBONE_DEFAULTS, **backbone}["embedding_dim"])

    def build():
        return FaRS(sll_backbone(shape, **backbone), build_head(embedding, classes, hidden))

    head = "linear head" if not hidden else f"MLP head {list(hidden)}"
    return core.Model(f"FaRS SLL backbone {dict(backbone)} + {head} ({dataset})", build, shape, classes,
                      {"train_head": train_head})


def _head_model(dataset: str, backbone: Mapping, hidden) -> core.Model:
    from rsbook.fars.certify import build_head
    from rsbook.fars.lipschitz import BACKBONE_DEFAULTS

    classes = data.num_classes(dataset)
    embedding = int({**BACKBONE_DEFAULTS, **backbone}["embedding_dim"])
    head = "linear head" if not hidden else f"MLP head {list(hidden)}"
    return core.Model(f"FaRS {head} on {embedding}-d embeddings ({dataset})",
                      partial(build_head, embedding, classes, list(hidden or [])), (embedding,), classes)


def _training(root: Path, name: str, dataset: str, kwargs: dict, work: tuple, device: str, note: str) -> core.Step:
    """A training step: `python -m rsbook.fars.pipeline train` with the settings of
    train_run(root, name, dataset, **kwargs), into train_run's folder, where it leaves the checkpoint."""
    from rsbook.fars.pipeline import CHECKPOINT

    settings = {"dataset": dataset, **{k: v for k, v in kwargs.items() if k not in _RUN_ONLY}}
    folder = run_folder(root, "train", name, settings)
    return core.Step(CHAPTER, f"train {name.replace('_', ' ')}", "train", device,
                     argv=tuple(train_argv(dataset, folder, **kwargs)), module=MODULE, sharded=True,
                     output=folder / CHECKPOINT, epochs=int(kwargs["epochs"]), work=work, note=note,
                     info={"name": name})


@core.register(CHAPTER)
def steps(parameters: Mapping, root) -> list[core.Step]:
    """The chapter's steps at `parameters` (its parameters cell) with run folder `root`."""
    p, root = parameters, Path(root)
    dataset, device, seed, workers = p["dataset"], p.get("device", "cpu"), int(p.get("seed", 0)), p.get("workers", 0)
    backbone, sigma_head = dict(p.get("backbone") or {}), float(p["sigma_head"])
    train_size, test_size = commands.dataset_size(dataset, "train"), commands.dataset_size(dataset, "test")
    linear = _fars_model(dataset, backbone, [])
    deep = _fars_model(dataset, backbone, p["deep_head"]["hidden"])
    note = ("python -m rsbook.fars.pipeline train (data parallel when launched); data loading not timed"
            + ("; the given backbone_checkpoint's architecture is taken to be `backbone`"
               if p.get("backbone_checkpoint") is not None else ""))
    out: list[core.Step] = []

    def epochs_work(model, operation, settings):
        return (core.Work(operation, model, settings["epochs"] * train_size, int(settings["batch"])),
                core.Work("forward", model, settings["epochs"] * test_size, int(settings["batch"])))

    end_to_end = p.get("backbone_checkpoint")
    if end_to_end is None:
        t = p["train"]
        step = _training(root, "end_to_end", dataset, dict(
            backbone=p.get("backbone"), epochs=t["epochs"], batch_size=t["batch"], lr=t["lr"], margin=t["margin"],
            logit_scale=t["logit_scale"], seed=seed, device=device, workers=workers),
            epochs_work(linear, "train", t), device, note)
        out.append(step)
        end_to_end = step.output
    checkpoint = end_to_end
    probe = p["probe"]
    if probe["epochs"] > 0:
        step = _training(root, "probe", dataset, dict(
            epochs=probe["epochs"], batch_size=probe["batch"], lr=probe["lr"], margin=probe["margin"],
            logit_scale=probe["logit_scale"], seed=seed, backbone_checkpoint=end_to_end, train_backbone=False,
            device=device, workers=workers), epochs_work(linear, "train_head", probe), device, note)
        out.append(step)
        checkpoint = step.output
    d = p["deep_head"]
    deep_step = _training(root, "deep_head", dataset, dict(
        hidden=d["hidden"], epochs=d["epochs"], batch_size=d["batch"], lr=d["lr"], embedding_noise=sigma_head,
        seed=seed, backbone_checkpoint=checkpoint, train_backbone=False, device=device, workers=workers),
        epochs_work(deep, "train_head", d), device, note)
    out.append(deep_step)

    from rsbook.dataset_runs import selected_indices

    indices = selected_indices(test_size, int(p.get("skip", 1)))
    count = len(indices if p.get("max_examples") is None else indices[:int(p["max_examples"])])
    n0, n, alpha, batch = int(p["n0"]), int(p["n"]), float(p["alpha"]), int(p["mc_batch"])
    head, mlp = _head_model(dataset, backbone, []), _head_model(dataset, backbone, d["hidden"])
    attack, epsilons = p["attack"], [float(e) for e in p["epsilons"]]
    sampled = count * (n0 + n)
    chapter = "runs in the chapter's process (no rsbook command)"
    out.append(core.Step(CHAPTER, "embeddings and closed-form certificates", "certify_head", device,
                         work=(core.Work("forward", linear, count, int(attack["batch"])),),
                         note="recomputed at every execution (seconds); " + chapter))
    certify = {"n0": n0, "n": n, "alpha": alpha, "batch": batch}
    out.append(core.Step(CHAPTER, "sparsemax head, Monte Carlo on the head", "certify_head", device,
                         record=core.RunRecord(root / "certify_sparsemax", "sparsemax", {
                             "checkpoint": str(checkpoint), "sigma": sigma_head, "r": float(p["sparsemax_r"]),
                             "bound": p["bound"], **certify}),
                         examples=count, work=(core.Work("forward", head, sampled, batch),), note=chapter))
    for name, model, trained in (("linear", head, checkpoint), ("mlp", mlp, deep_step.output)):
        out.append(core.Step(CHAPTER, f"CERTIFY on the {name} head", "certify_head", device,
                             record=core.RunRecord(root / "certify_head", name, {
                                 "checkpoint": str(trained), "sigma": sigma_head, **certify}),
                             examples=count, work=(core.Work("forward", model, sampled, batch),), note=chapter))
    steps_, per = int(attack["steps"]), count * len(epsilons)
    clip = [0.0, 1.0]
    out.append(core.Step(CHAPTER, "l2-PGD on the full model", "attack", device,
                         record=core.RunRecord(root / "pgd", "original", {
                             "checkpoint": str(checkpoint), "epsilons": epsilons, "steps": steps_, "clip": clip}),
                         examples=count,
                         work=(core.Work("gradient", linear, per * steps_, int(attack["batch"])),
                               core.Work("forward", linear, count + per, int(attack["batch"]))), note=chapter))
    out.append(core.Step(CHAPTER, "l2-PGD on the smoothed sparsemax head", "attack", device,
                         record=core.RunRecord(root / "pgd_sparsemax", "sparsemax", {
                             "checkpoint": str(checkpoint), "epsilons": epsilons, "steps": steps_,
                             "sigma": sigma_head, "r": float(p["sparsemax_r"]), "num_noise": int(attack["num_noise"]),
                             "n_predict": int(attack["n_predict"]), "clip": clip}),
                         examples=count,
                         work=(core.Work("gradient", linear, per * steps_, int(attack["batch"])),
                               core.Work("forward", linear, count + per, int(attack["batch"])),
                               core.Work("forward", head, (count + per) * int(attack["n_predict"]), batch)),
                         note="the head's num_noise copies per attack step are not counted (the backbone's pass "
                              "dominates); " + chapter))
    speed = p["speed"]
    timed = (min(int(speed["examples"]), count) + 1) * (n0 + n)  # the measured examples and one warm-up
    out.append(core.Step(CHAPTER, "timing of every certification method", "timing", device,
                         work=(core.Work("forward", linear, timed, int(speed["batch"])),
                               core.Work("forward", head, 2 * timed, int(speed["batch"])),
                               core.Work("forward", mlp, timed, int(speed["batch"]))),
                         note="a measurement: it reruns at every execution; " + chapter))
    return out


def checkpoints(parameters: Mapping, plan, trained: Mapping) -> dict:
    """{'end_to_end', 'checkpoint', 'deep_head'}: the backbone's checkpoint (trained here, or the given
    backbone_checkpoint), the model the chapter certifies (the probe's when probe epochs > 0, else the
    end-to-end one) and the deeper head's; `trained` is what rsbook.book.running.run returned for `plan`."""
    names = {step.info["name"]: step.name for step in plan if step.kind == "train"}
    end_to_end = parameters.get("backbone_checkpoint")
    end_to_end = trained[names["end_to_end"]] if end_to_end is None else end_to_end
    checkpoint = trained[names["probe"]] if "probe" in names else end_to_end
    return {"end_to_end": end_to_end, "checkpoint": checkpoint, "deep_head": trained[names["deep_head"]]}


MODEL_PARAMETERS = 64_000_000
"""An upper bound on the parameters (and buffers) of this chapter's SLL backbone with its deepest head (45M at
profile full), for the disk estimate; tests/test_preflight.py builds them at every profile."""


def _disk(p: Mapping) -> list:
    probe = (p.get("probe") or {}).get("epochs", 0) or 0
    count = (p.get("backbone_checkpoint") is None) + (probe > 0) + ("deep_head" in p)
    return disk.model_parts(count, "FaRS backbone + head (bound)", MODEL_PARAMETERS)


needs.declare(CHAPTER, needs.Needs(datasets=("dataset",), disk=_disk))
