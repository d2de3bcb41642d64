"""The heavy steps of the re-run chapter (book chapter "Cohen et al. (2019), re-run"), described once
for the chapter and for the plan (rsbook.book.steps, rsbook.book.plan).

    steps(parameters, root)  every step at the chapter's parameters, in the order they run:
        one `rsbook train` per dataset and noise level (Sec. 3.3), or, where the authors released that model and
        the file is under $RSBOOK_MODELS (rsbook.released; parameter `released`), a step that uses it instead,
        one certify log per model and certification noise (its own and cross_sigmas; Sec. 3.2.2, Fig. 15): with
        certify = 'fixed' `rsbook certify` (CERTIFY, n samples); with certify = 'sequential' `rsbook certify
        --radii` (rsbook.sequential_grid: the table's radii, or the cross-noise matrix's radius, decided from
        one stream per example with n_max = n), plus fixed-n CERTIFY logs on every figure_skip-th example
        where a figure needs each example's radius (Figure 8's noise level, the attacked model),
        one `rsbook predict` per number of samples of Table 4 and the reference n,
        the top-k radii (`python -m rsbook.cohen.pipeline topk`, topk_argv) and the attacks on the
        certified examples of the matched certify log of their (dataset, sigma), a certify step earlier
        in the list (`python -m rsbook.cohen.pipeline attack --certify-log LOG`, attack_argv).

The chapter runs them with rsbook.book.running.run (in its process at the smoke and default profiles, through
torchrun at full: one process per GPU; top-k and attack are sharded commands of the module
'rsbook.cohen.pipeline', each process taking every K-th example still missing) and reads the results
with `checkpoints`, `grids` and `predict_logs`, which return what rsbook.train.train_models,
rsbook.cohen.pipeline.certify_grid and predict_runs return. The top-k and attack steps' outputs are the
run folders rsbook.cohen.pipeline.topk_radii and attack_runs use (topk_folder, attack_folder), complete
once their manifest.json is stamped finished with no per-process shard left (rsbook.book.running.progress), so
the chapter's own calls afterwards only read back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from rsbook import released
from rsbook.book import commands, disk, needs
from rsbook.book import steps as core
from rsbook.logs import read_certify_log, read_log, read_predict_log

__all__ = ["CHAPTER", "MODULE", "CERTIFY_MODES", "steps", "checkpoints", "models", "grids", "figure_logs",
           "predict_logs", "table_radii", "sequential_cost", "topk_argv", "attack_argv"]

CERTIFY_MODES = ("fixed", "sequential")

CHAPTER = "cohen_rerun"
MODULE = "rsbook.cohen.pipeline"
"""The module whose command line runs the top-k radii and the attacks (`python -m rsbook.cohen.pipeline`)."""


def _sigmas(setting: Mapping, parameters: Mapping) -> list[float]:
    return [float(s) for s in setting.get("sigmas", parameters.get("sigmas", ()))]


def table_radii(dataset: str, parameters: Mapping) -> list[float]:
    """The radii a matched log is certified at in sequential mode: the columns of the paper's table for the
    dataset (Table 3 for CIFAR-10, Table 2 for ImageNet), else the chapter's `radii`, and the cross-noise
    matrix's radius."""
    from rsbook import published

    paper = {"cifar10": "Table 3", "imagenet": "Table 2"}
    columns = list(published.table("cohen", paper[dataset]).columns) if dataset in paper else parameters["radii"]
    return sorted({float(r) for r in columns} | {float(parameters.get("matrix_radius", columns[0]))})


def _figure_sigmas(p: Mapping) -> set:
    """(dataset, sigma) whose matched model needs a fixed-n log for a figure in sequential mode: Figure 8's noise
    level (the middle one of the first dataset, as the chapter picks it) and the attacked model."""
    first = next(iter(p["experiments"]))
    sigmas = sorted(_sigmas(p["experiments"][first], p))
    found = {(first, sigmas[len(sigmas) // 2])}
    if p.get("attack"):
        found.add((p["attack"]["dataset"], float(p["attack"]["sigma"])))
    return found


def _grid_samples(dataset: str, noise: float, sigma: float, radii, p: Mapping, options: Mapping) -> float | None:
    """Mean draws per example of the grid test, replayed on the authors' released log of the model trained at
    `noise` and certified at `sigma` (rsbook.replay.grid_cost), or None where there is none or it cannot be read
    (the estimate is then n_max)."""
    from rsbook.replay import grid_cost

    try:
        return grid_cost(dataset, sigma, radii, noise=noise, n=int(p["n"]), alpha=float(p["alpha"]), n0=int(p["n0"]),
                         batch_size=1000, stop_if_wrong=bool(options.get("stop_if_wrong", False)),
                         futility=float(options.get("futility", 0.001)), method=options.get("method", "betting"))
    except (OSError, ValueError, KeyError):
        return None


@core.register(CHAPTER)
def steps(parameters: Mapping, root) -> list[core.Step]:
    """The chapter's steps at `parameters` (its parameters cell: experiments, sigmas, cross_sigmas, n0, n,
    alpha, released, certify, sequential, figure_skip, predict, topk, attack, device, seed) with run folder
    `root`. Training follows rsbook.train.train_models (the same folders; an experiment's optional `workers`
    sets the data-loading processes of `rsbook train`), every log is written by its `rsbook` command."""
    p, root = parameters, Path(root)
    device, seed = p.get("device", "cpu"), int(p.get("seed", 0))
    n0, n, alpha = int(p["n0"]), int(p["n"]), float(p["alpha"])
    mode = p.get("certify", "fixed")
    if mode not in CERTIFY_MODES:
        raise ValueError(f"certify must be one of {CERTIFY_MODES}, got {mode!r}")
    options = dict(p.get("sequential") or {})
    out: list[core.Step] = []
    trained: dict[str, dict[float, core.Step]] = {}
    for dataset, setting in p["experiments"].items():
        trained[dataset] = {}
        for sigma in _sigmas(setting, p):
            file = released.path(dataset, setting["arch"], sigma) if p.get("released", True) else None
            if file is not None:
                step = commands.released_step(CHAPTER, dataset, setting["arch"], sigma, file)
            else:
                step = commands.train_step(CHAPTER, root, dataset, setting["arch"], sigma, epochs=setting["epochs"],
                                       seed=seed, device=device, workers=setting.get("workers"),
                                       batch_size=setting["batch"], lr_step=setting["lr_step"])
            trained[dataset][sigma] = step
            out.append(step)
    figures = _figure_sigmas(p) if mode == "sequential" else set()
    for dataset, setting in p["experiments"].items():
        for noise, model in trained[dataset].items():
            common = dict(batch=setting["certify_batch"], seed=seed, device=device, trained_epochs=model.epochs,
                          noise=noise)
            for sigma in sorted({noise, *map(float, p.get("cross_sigmas", ()))}):
                if mode == "fixed":
                    out.append(commands.certify_step(CHAPTER, root, dataset, model.output, setting["arch"], sigma, n0=n0,
                                                 n=n, alpha=alpha, skip=setting["skip"], table=sigma == noise,
                                                 **common))
                    continue
                radii = table_radii(dataset, p) if sigma == noise else [float(p["matrix_radius"])]
                out.append(commands.certify_grid_step(
                    CHAPTER, root, dataset, model.output, setting["arch"], sigma, radii, n0=n0, n_max=n, alpha=alpha,
                    method=options.get("method", "betting"), futility=float(options.get("futility", 0.001)),
                    stop_if_wrong=bool(options.get("stop_if_wrong", False)), skip=setting["skip"],
                    samples_per_example=_grid_samples(dataset, noise, sigma, radii, p, options),
                    table=sigma == noise, **common))
                if sigma == noise and (dataset, sigma) in figures:
                    out.append(commands.certify_step(CHAPTER, root, dataset, model.output, setting["arch"], sigma, n0=n0,
                                                 n=n, alpha=alpha, skip=setting["skip"] * int(p.get("figure_skip", 1)),
                                                 name=f"certify {dataset}, σ = {sigma:g} (fixed n, for the figures)",
                                                 **common))
    predict = p.get("predict")
    if predict:
        model = trained[predict["dataset"]][float(predict["sigma"])]
        arch = p["experiments"][predict["dataset"]]["arch"]
        for count in dict.fromkeys([*predict["ns"], predict["reference_n"]]):
            out.append(commands.predict_step(CHAPTER, root, predict["dataset"], model.output, arch, predict["sigma"],
                                         n=int(count), alpha=alpha, batch=predict["batch"], skip=predict["skip"],
                                         seed=seed, device=device, trained_epochs=model.epochs))
    topk = p.get("topk")
    if topk:
        out.append(_topk(root, p, topk, trained, alpha, seed, device))
    attack = p.get("attack")
    if attack:
        out.append(_attack(root, p, attack, trained, out, alpha, seed, device))
    return out


def topk_argv(root, dataset: str, checkpoint, sigma: float, ks, *, n: int, alpha: float, batch: int, skip: int,
              seed: int, device: str) -> list:
    """The argv of `python -m rsbook.cohen.pipeline topk` doing what the chapter's topk_radii(root, dataset,
    checkpoint, sigma, ks, n=n, alpha=alpha, batch_size=batch, skip=skip, seed=seed, device=device) does."""
    return ["topk", "--dataset", dataset, "--checkpoint", Path(checkpoint), "--sigma", float(sigma),
            "--ks", *[int(k) for k in ks], "--n", int(n), "--alpha", float(alpha), "--batch", int(batch),
            "--skip", int(skip), "--seed", int(seed), "--root", Path(root), "--device", device]


def attack_argv(root, dataset: str, checkpoint, sigma: float, certify_log, multipliers, *, n_predict: int,
                alpha: float, batch: int, steps: int, num_noise: int, max_examples, clip, seed: int,
                device: str) -> list:
    """The argv of `python -m rsbook.cohen.pipeline attack` doing what the chapter's attack_runs(root, dataset,
    checkpoint, sigma, read_certify_log(certify_log), multipliers, ...) does."""
    argv = ["attack", "--dataset", dataset, "--checkpoint", Path(checkpoint), "--sigma", float(sigma),
            "--certify-log", Path(certify_log), "--multipliers", *[float(m) for m in multipliers],
            "--n-predict", int(n_predict), "--alpha", float(alpha), "--batch", int(batch), "--steps", int(steps),
            "--num-noise", int(num_noise)]
    argv += [] if max_examples is None else ["--max-examples", int(max_examples)]
    argv += [] if clip is None else ["--clip", *[float(c) for c in clip]]
    return argv + ["--seed", int(seed), "--root", Path(root), "--device", device]


def _topk(root: Path, p: Mapping, topk: Mapping, trained, alpha: float, seed: int, device: str) -> core.Step:
    """rsbook.cohen.pipeline.topk_radii as the chapter calls it, as a sharded command: n samples per
    example, shared by every k."""
    from rsbook.cohen.pipeline import topk_folder

    dataset, sigma = topk["dataset"], float(topk["sigma"])
    model = trained[dataset][sigma]
    ks = [int(k) for k in topk["ks"]]
    n, batch, skip = int(topk["n"]), int(topk["batch"]), int(topk["skip"])
    folder = topk_folder(root, dataset, model.output, sigma, ks, n=n, alpha=alpha, batch_size=batch, skip=skip)
    argv = topk_argv(root, dataset, model.output, sigma, ks, n=n, alpha=alpha, batch=batch, skip=skip, seed=seed,
                     device=device)
    examples = commands.selected_examples(dataset, "test", skip)
    arch = p["experiments"][dataset]["arch"]
    return core.Step(CHAPTER, f"top-k radii {dataset}, σ = {sigma:g}", "topk", device, argv=tuple(argv),
                     module=MODULE, sharded=True, output=folder, examples=examples,
                     work=(core.Work("forward", commands.core_model(arch, dataset), examples * n, batch),),
                     note="python -m rsbook.cohen.pipeline topk (examples shared among the processes when launched)",
                     info={"dataset": dataset, "sigma": sigma})


def _attack(root: Path, p: Mapping, attack: Mapping, trained, earlier, alpha: float, seed: int,
            device: str) -> core.Step:
    """rsbook.cohen.pipeline.attack_runs as the chapter calls it, as a sharded command on the certify log
    of the model trained and certified at the attack's sigma (a step in `earlier`): per correctly certified
    example and multiple of R, `steps` gradient steps on num_noise noisy copies, then PREDICT with
    n_predict samples. How many examples are certified correctly is known only after certification: the
    estimate counts every selected example (at most max_examples), an upper bound."""
    from rsbook.cohen.pipeline import attack_folder

    dataset, sigma = attack["dataset"], float(attack["sigma"])
    model = trained[dataset][sigma]
    setting = p["experiments"][dataset]
    clip = None if dataset == "digits" else (0.0, 1.0)
    log = next(step for step in earlier if step.kind == "certify" and step.info.get("dataset") == dataset
               and step.info.get("noise") == sigma and step.info.get("sigma") == sigma)  # fixed n in either mode
    multipliers = [float(m) for m in attack["multipliers"]]
    options = {"n_predict": int(attack["n_predict"]), "alpha": alpha, "steps": int(attack["steps"]),
               "num_noise": int(attack["num_noise"]), "clip": clip}
    folder = attack_folder(root, dataset, model.output, sigma, multipliers, batch_size=int(attack["batch"]), **options)
    argv = attack_argv(root, dataset, model.output, sigma, log.output, multipliers, batch=int(attack["batch"]),
                       max_examples=attack.get("max_examples"), seed=seed, device=device, **options)
    examples = commands.selected_examples(dataset, "test", int(setting["skip"]))
    if attack.get("max_examples") is not None:
        examples = min(examples, int(attack["max_examples"]))
    per = examples * len(attack["multipliers"])
    net = commands.core_model(setting["arch"], dataset)
    return core.Step(CHAPTER, f"attack {dataset}, σ = {sigma:g}", "attack", device, argv=tuple(argv), module=MODULE,
                     sharded=True, output=folder, examples=examples,
                     work=(core.Work("gradient", net, per * int(attack["steps"]) * int(attack["num_noise"]),
                                     int(attack["num_noise"])),
                           core.Work("forward", net, per * int(attack["n_predict"]), int(attack["batch"]))),
                     note="upper bound: every selected example counted as certified correctly; python -m "
                          "rsbook.cohen.pipeline attack on the certify log (examples shared among the processes "
                          "when launched)",
                     info={"dataset": dataset, "sigma": sigma})


def checkpoints(steps: Sequence[core.Step]) -> dict[str, dict[float, Path]]:
    """{dataset: {training sigma: checkpoint path}} of the models, trained here (train steps, as
    rsbook.train.train_models) or the authors' (released steps)."""
    found: dict[str, dict[float, Path]] = {}
    for step in [*core.outputs(steps, "train"), *core.outputs(steps, "released")]:
        found.setdefault(step.info["dataset"], {})[step.info["sigma"]] = step.output
    return {dataset: dict(sorted(models.items())) for dataset, models in found.items()}


def models(steps: Sequence[core.Step]) -> pd.DataFrame:
    """One row per model — dataset, sigma (training noise), origin ('trained here' or 'released (<document>)'),
    checkpoint and sha256 (None for a model not trained yet) — for the chapter's manifest and text."""
    from rsbook.published import file_sha256

    rows = []
    for step in [*core.outputs(steps, "train"), *core.outputs(steps, "released")]:
        trained = step.kind == "train"
        sha = (file_sha256(step.output) if step.output.exists() else None) if trained else step.info["sha256"]
        rows.append({"dataset": step.info["dataset"], "sigma": step.info["sigma"],
                     "origin": "trained here" if trained else step.info["origin"], "checkpoint": str(step.output),
                     "sha256": sha})
    return pd.DataFrame(rows, columns=["dataset", "sigma", "origin", "checkpoint", "sha256"])


def grids(steps: Sequence[core.Step]) -> dict[str, pd.DataFrame]:
    """{dataset: one row per table log — noise (training sigma), sigma, path, log (the parsed log), method
    ('fixed' or 'sequential')}, as rsbook.cohen.pipeline.certify_grid returns (plus method): the CERTIFY logs
    in fixed mode, the sequential logs (rsbook certify --radii) in sequential mode, never the figures' fixed-n
    logs. Raises FileNotFoundError for a log not written yet."""
    sequential = bool(core.outputs(steps, "certify_radius"))
    rows: dict[str, list] = {}
    for step in core.outputs(steps, "certify_radius" if sequential else "certify"):
        rows.setdefault(step.info["dataset"], []).append(
            {"noise": step.info["noise"], "sigma": step.info["sigma"], "path": step.output,
             "log": read_log(step.output), "method": "sequential" if sequential else "fixed"})
    return {dataset: pd.DataFrame(found) for dataset, found in rows.items()}


def figure_logs(steps: Sequence[core.Step]) -> dict[tuple[str, float], pd.DataFrame]:
    """{(dataset, sigma): the fixed-n CERTIFY log of the matched model} for the figures that need each example's
    radius (Figure 8, the attacks): the table logs themselves in fixed mode, the extra fixed-n logs in sequential
    mode."""
    return {(step.info["dataset"], step.info["sigma"]): read_certify_log(step.output)
            for step in core.outputs(steps, "certify") if step.info["noise"] == step.info["sigma"]}


def sequential_cost(grid: pd.DataFrame, n0: int, n: int) -> pd.DataFrame:
    """Per table log of `grids` (one dataset): sigma, method, examples, samples per example (mean, n0 included:
    the log's samples column in sequential mode, n0 + n in fixed mode), fixed (n0 + n) and ratio (fixed / mean);
    plus a row 'table' with the totals over the logs."""
    rows = []
    for row in grid.itertuples():
        log = row.log
        mean = float(log["samples"].mean()) if "samples" in log else float(n0 + n)
        rows.append({"sigma": f"{row.sigma:g}", "method": row.method, "examples": len(log), "samples": mean,
                     "fixed": float(n0 + n), "ratio": float(n0 + n) / mean})
    frame = pd.DataFrame(rows)
    total = {"sigma": "table", "method": "/".join(sorted(set(frame["method"]))), "examples": int(frame["examples"].sum()),
             "samples": float((frame["samples"] * frame["examples"]).sum() / frame["examples"].sum()),
             "fixed": float(n0 + n)}
    total["ratio"] = total["fixed"] / total["samples"]
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True).set_index("sigma")


def predict_logs(steps: Sequence[core.Step]) -> dict[int, pd.DataFrame]:
    """{n: the parsed predict log} of the predict steps, as rsbook.cohen.pipeline.predict_runs returns."""
    return {step.info["n"]: read_predict_log(step.output) for step in core.outputs(steps, "predict")}


def _models(p: Mapping) -> list[tuple[str, str, float]]:
    """(dataset, arch, noise) of every model the chapter uses, whose release it takes when present."""
    if not p.get("released", True):
        return []
    return [(dataset, setting["arch"], sigma) for dataset, setting in p["experiments"].items()
            for sigma in _sigmas(setting, p)]


def _disk(p: Mapping) -> list:
    """The checkpoints of the models trained here (not those taken from the authors' release)."""
    from rsbook import data

    parts = []
    for dataset, setting in (p.get("experiments") or {}).items():
        trained = [s for s in _sigmas(setting, p)
                   if not (p.get("released", True) and released.path(dataset, setting["arch"], s))]
        parts += disk.model_parts(len(trained), f"{setting['arch']} on {dataset}",
                                       disk.core_parameters(setting["arch"], data.num_classes(dataset)))
    return parts


needs.declare(CHAPTER, needs.Needs(datasets=("experiments.*", "predict.dataset", "attack.dataset",
                                                     "topk.dataset"), disk=_disk, models=_models))
needs.declare("cohen_logs", needs.Needs(artifacts=lambda p: [{"repo": "locuslab/smoothing"}]))
needs.declare("sequential", needs.Needs(artifacts=lambda p: [{"repo": "locuslab/smoothing",
                                                                       "kind": "certify_log"}]))

core.register_paths(CHAPTER, {
    "from scratch": core.CostPath("full", {"released": False, "certify": "fixed"}),
    "released models, fixed n": core.CostPath("full", {"released": False, "certify": "fixed"}, released=True),
    "released models, sequential": core.CostPath("full", {"released": False, "certify": "sequential"}, released=True),
    "sampled (paper-sample)": core.CostPath("paper-sample", {"released": False}, released=True),
})
