"""The heavy steps of the relaxation chapter, described once for the chapter and for the plan
(rsbook.book.steps, rsbook.book.plan).

    steps(parameters, root)  in the order the chapter runs them:
        training of every network (rsbook.relax.training.train_models: standard, dual, IBP, CROWN-IBP
        and Gaussian-noise training, Adam), as in-process calls on `device`;
        the relaxation certificates per model and norm (IBP, dual, CROWN, α-CROWN, LP, MILP, branch
        and bound and PGD, rsbook.relax.evaluate.run_certification), always on the CPU;
        CERTIFY of the noise-trained networks (rsbook.relax.evaluate.smoothing_radii) on `device`.

The networks are this chapter's own (rsbook.relax.training), not rsbook.models architectures, so no
`rsbook` command trains or certifies them: every step runs in the chapter's process. Training and
CERTIFY are estimated from measured throughput (robust training through each bound is its own
operation: 'train_dual', 'train_ibp', 'train_crown-ibp'); the LP and MILP solves are not estimated (their
time depends on each problem: the chapter's timing section measures them), and the plan says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

from rsbook import data
from rsbook.book import commands, disk, needs
from rsbook.book import steps as core
from rsbook.logs import LOG_MANIFEST_SUFFIX, run_folder

__all__ = ["CHAPTER", "MODEL_PARAMETERS", "steps", "noise_models", "checkpoints", "robust_step"]

CHAPTER = "relax"


def noise_models(smoothing: Mapping) -> dict:
    """{name: train_model settings} of the Gaussian-noise networks behind the smoothing comparison."""
    return {f"noise_{s:g}": {"mode": "noise", "sigma": s, "epochs": smoothing["epochs"]} for s in smoothing["sigmas"]}


def robust_step(method: str, norm: str, module, inputs, labels):
    """One robust-training step (rsbook.relax.training.robust_loss through the dual bound, interval bounds
    or CROWN-IBP at β = 1, its costliest; at a fixed eps: eps does not change the cost), backward and an
    update of the weights."""
    import torch

    from rsbook.relax.training import robust_loss

    value, _ = robust_loss(module, inputs, labels, 0.01, norm, "ce", "dual", method=method)
    module.zero_grad(set_to_none=True)
    value.backward()
    with torch.no_grad():
        for weight in module.parameters():
            weight -= 1e-3 * weight.grad


def _model(arch: str, dataset: str, hidden) -> core.Model:
    from rsbook.relax.toy import dataset_classes
    from rsbook.relax.training import ROBUST, build_model

    shape, classes = data.input_shape(dataset), dataset_classes(dataset)
    operations = {f"train_{method}_{norm}": partial(robust_step, method, norm)
                  for method in ROBUST for norm in ("linf", "l2")}
    return core.Model(f"relax {arch} {list(hidden or [])} ({dataset})",
                      partial(build_model, arch, shape, classes, hidden), shape, classes, operations)


def _train(root, dataset: str, arch: str, name: str, settings: dict, *, seed: int, device, hidden, training) -> Path:
    """Train one network as the chapter did before: rsbook.relax.training.train_models on the chapter's
    training split; returns its checkpoint."""
    from rsbook.relax.toy import chapter_dataset, dataset_classes
    from rsbook.relax.training import train_models

    train_set = chapter_dataset(dataset, "train")
    shape = tuple(train_set[0][0].shape)
    return train_models(root, dataset, train_set, arch, shape, dataset_classes(dataset), {name: settings}, seed=seed,
                        device=device, hidden=hidden, **training)[name]


@core.register(CHAPTER)
def steps(parameters: Mapping, root) -> list[core.Step]:
    """The chapter's steps at `parameters` (its parameters cell) with run folder `root`."""
    from rsbook.relax.toy import dataset_classes
    from rsbook.relax.training import CHECKPOINT, ROBUST

    p, root = parameters, Path(root)
    dataset, arch, hidden = p["dataset"], p["arch"], p.get("hidden")
    device, seed, training = p.get("device", "cpu"), int(p.get("seed", 0)), dict(p.get("training") or {})
    size, shape = commands.dataset_size(dataset, "train"), data.input_shape(dataset)
    model = _model(arch, dataset, hidden)
    batch = int(training.get("batch_size", 64))
    out: list[core.Step] = []
    in_chapter = "runs in the chapter's process (the relaxation networks have no rsbook command)"
    for name, settings in {**p["models"], **noise_models(p["smoothing"])}.items():
        arguments = {"hidden": hidden, **training, **settings}
        identity = {"arch": arch, "input_shape": list(shape), "num_classes": int(dataset_classes(dataset)),
                    "seed": seed, "dataset": dataset, "size": size, **arguments}
        mode = settings.get("mode", "standard")
        operation = f"train_{mode}_{settings.get('norm', 'linf')}" if mode in ROBUST else "train"
        out.append(core.Step(CHAPTER, f"train {name}", "train", device,
                             call=partial(_train, root, dataset, arch, name, settings, seed=seed, device=device,
                                          hidden=hidden, training=training),
                             output=run_folder(root, "train", name, identity) / CHECKPOINT,
                             epochs=int(settings["epochs"]),
                             work=(core.Work(operation, model, int(settings["epochs"]) * size,
                                             int(arguments.get("batch_size", batch))),),
                             note=in_chapter, info={"name": name}))
    examples = commands.selected_examples(dataset, "test", int(p.get("skip", 1)), int(p.get("max_index", -1)))
    common = {"skip": int(p.get("skip", 1)), "max_index": int(p.get("max_index", -1))}
    for norm, names, grid in (("linf", p.get("linf_models", ()), p["eps_linf"]), ("l2", p.get("l2_models", ()),
                                                                                    p["eps_l2"])):
        for name in names:
            out.append(core.Step(CHAPTER, f"relaxation certificates {name}, {norm}", "relaxation", "cpu",
                                 record=core.RunRecord(root / "relax", f"{name}_{norm}", {
                                     "norm": norm, "eps": sorted(float(e) for e in grid), **common}),
                                 examples=examples,
                                 note="not estimated: the LP, MILP and branch-and-bound times depend on each "
                                      "problem (the chapter's timing section measures them); every certificate "
                                      "runs on the CPU"))
    smoothing = p["smoothing"]
    for sigma in smoothing["sigmas"]:
        out.append(core.Step(CHAPTER, f"CERTIFY noise_{sigma:g}", "certify", device,
                             record=core.RunRecord(root / "smoothing", f"noise_{sigma:g}_sigma{float(sigma):g}", {
                                 "sigma": float(sigma), "n0": int(smoothing["n0"]), "n": int(smoothing["n"]),
                                 "alpha": float(smoothing["alpha"]), "batch": int(smoothing["batch"]),
                                 "skip": common["skip"]}, manifest="certify.tsv" + LOG_MANIFEST_SUFFIX),
                             examples=examples,
                             work=(core.Work("forward", model, examples * (int(smoothing["n0"]) + int(smoothing["n"])),
                                             int(smoothing["batch"])),),
                             note=in_chapter))
    return out


def checkpoints(plan, trained: Mapping) -> dict:
    """{network name: checkpoint} of the training steps of `plan`, from what rsbook.book.running.run returned."""
    return {step.info["name"]: Path(trained[step.name]) for step in plan if step.kind == "train"}


MODEL_PARAMETERS = 4_000_000
"""An upper bound on the parameters (and buffers) of one of this chapter's networks (rsbook.relax.training: mlp /
conv_small; 215k at profile full), for the disk estimate; tests/test_preflight.py builds them at every profile."""


def _disk(p: Mapping) -> list:
    count = len(p.get("models") or {}) + len((p.get("smoothing") or {}).get("sigmas", ()))
    return disk.model_parts(count, f"{p.get('arch', 'relax')} (bound)", MODEL_PARAMETERS)


needs.declare(CHAPTER, needs.Needs(datasets=("dataset",), disk=_disk))
