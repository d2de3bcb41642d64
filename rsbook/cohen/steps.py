"""The heavy steps of the re-run chapter (book chapter "Cohen et al. (2019), re-run"), described once
for the chapter and for the plan (rsbook.steps, rsbook.plan).

    steps(parameters, root)  every step at the chapter's parameters, in the order they run:
        one `rsbook train` per dataset and noise level (Sec. 3.3),
        one `rsbook certify` per trained model and certification noise (its own and cross_sigmas; Sec. 3.2.2, Fig. 15),
        one `rsbook predict` per number of samples of Table 4 and the reference n,
        the top-k radii (`python -m rsbook.cohen.pipeline topk`, topk_argv) and the attacks on the
        certified examples of the matched certify log of their (dataset, sigma), a certify step earlier
        in the list (`python -m rsbook.cohen.pipeline attack --certify-log LOG`, attack_argv).

The chapter runs them with rsbook.steps.run (in its process at the smoke and default profiles, through
torchrun at full: one process per GPU; top-k and attack are sharded commands of the module
'rsbook.cohen.pipeline', each process taking every K-th example still missing) and reads the results
with `checkpoints`, `grids` and `predict_logs`, which return what rsbook.train.train_models,
rsbook.cohen.pipeline.certify_grid and predict_runs return. The top-k and attack steps' outputs are the
run folders rsbook.cohen.pipeline.topk_radii and attack_runs use (topk_folder, attack_folder), complete
once their manifest.json is stamped finished with no per-process shard left (rsbook.steps.progress), so
the chapter's own calls afterwards only read back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from rsbook import steps as core
from rsbook.logs import read_certify_log, read_predict_log

__all__ = ["CHAPTER", "MODULE", "steps", "checkpoints", "grids", "predict_logs", "topk_argv", "attack_argv"]

CHAPTER = "cohen_rerun"
MODULE = "rsbook.cohen.pipeline"
"""The module whose command line runs the top-k radii and the attacks (`python -m rsbook.cohen.pipeline`)."""


def _sigmas(setting: Mapping, parameters: Mapping) -> list[float]:
    return [float(s) for s in setting.get("sigmas", parameters.get("sigmas", ()))]


@core.register(CHAPTER)
def steps(parameters: Mapping, root) -> list[core.Step]:
    """The chapter's steps at `parameters` (its parameters cell: experiments, sigmas, cross_sigmas, n0, n,
    alpha, predict, topk, attack, device, seed) with run folder `root`. Training follows
    rsbook.train.train_models (the same folders; an experiment's optional `workers` sets the data-loading
    processes of `rsbook train`), every log is written by its `rsbook` command."""
    p, root = parameters, Path(root)
    device, seed = p.get("device", "cpu"), int(p.get("seed", 0))
    n0, n, alpha = int(p["n0"]), int(p["n"]), float(p["alpha"])
    out: list[core.Step] = []
    trained: dict[str, dict[float, core.Step]] = {}
    for dataset, setting in p["experiments"].items():
        trained[dataset] = {}
        for sigma in _sigmas(setting, p):
            step = core.train_step(CHAPTER, root, dataset, setting["arch"], sigma, epochs=setting["epochs"], seed=seed,
                                   device=device, workers=setting.get("workers"), batch_size=setting["batch"],
                                   lr_step=setting["lr_step"])
            trained[dataset][sigma] = step
            out.append(step)
    for dataset, setting in p["experiments"].items():
        for noise, model in trained[dataset].items():
            for sigma in sorted({noise, *map(float, p.get("cross_sigmas", ()))}):
                out.append(core.certify_step(CHAPTER, root, dataset, model.output, setting["arch"], sigma, n0=n0, n=n,
                                             alpha=alpha, batch=setting["certify_batch"], skip=setting["skip"],
                                             seed=seed, device=device, trained_epochs=model.epochs, noise=noise))
    predict = p.get("predict")
    if predict:
        model = trained[predict["dataset"]][float(predict["sigma"])]
        arch = p["experiments"][predict["dataset"]]["arch"]
        for count in dict.fromkeys([*predict["ns"], predict["reference_n"]]):
            out.append(core.predict_step(CHAPTER, root, predict["dataset"], model.output, arch, predict["sigma"],
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
    example and k."""
    from rsbook.cohen.pipeline import topk_folder

    dataset, sigma = topk["dataset"], float(topk["sigma"])
    model = trained[dataset][sigma]
    ks = [int(k) for k in topk["ks"]]
    n, batch, skip = int(topk["n"]), int(topk["batch"]), int(topk["skip"])
    folder = topk_folder(root, dataset, model.output, sigma, ks, n=n, alpha=alpha, batch_size=batch, skip=skip)
    argv = topk_argv(root, dataset, model.output, sigma, ks, n=n, alpha=alpha, batch=batch, skip=skip, seed=seed,
                     device=device)
    examples = core.selected_examples(dataset, "test", skip)
    arch = p["experiments"][dataset]["arch"]
    return core.Step(CHAPTER, f"top-k radii {dataset}, σ = {sigma:g}", "topk", device, argv=tuple(argv),
                     module=MODULE, sharded=True, output=folder, examples=examples,
                     work=(core.Work("forward", core.core_model(arch, dataset), examples * len(ks) * n, batch),),
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
               and step.info.get("noise") == sigma and step.info.get("sigma") == sigma)
    multipliers = [float(m) for m in attack["multipliers"]]
    options = {"n_predict": int(attack["n_predict"]), "alpha": alpha, "steps": int(attack["steps"]),
               "num_noise": int(attack["num_noise"]), "clip": clip}
    folder = attack_folder(root, dataset, model.output, sigma, multipliers, batch_size=int(attack["batch"]), **options)
    argv = attack_argv(root, dataset, model.output, sigma, log.output, multipliers, batch=int(attack["batch"]),
                       max_examples=attack.get("max_examples"), seed=seed, device=device, **options)
    examples = core.selected_examples(dataset, "test", int(setting["skip"]))
    if attack.get("max_examples") is not None:
        examples = min(examples, int(attack["max_examples"]))
    per = examples * len(attack["multipliers"])
    net = core.core_model(setting["arch"], dataset)
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
    """{dataset: {training sigma: checkpoint path}} of the train steps (as rsbook.train.train_models)."""
    found: dict[str, dict[float, Path]] = {}
    for step in core.outputs(steps, "train"):
        found.setdefault(step.info["dataset"], {})[step.info["sigma"]] = step.output
    return found


def grids(steps: Sequence[core.Step]) -> dict[str, pd.DataFrame]:
    """{dataset: one row per certify log — noise (training sigma), sigma, path, log (the parsed log)}, as
    rsbook.cohen.pipeline.certify_grid returns. Raises FileNotFoundError for a log not written yet."""
    rows: dict[str, list] = {}
    for step in core.outputs(steps, "certify"):
        rows.setdefault(step.info["dataset"], []).append(
            {"noise": step.info["noise"], "sigma": step.info["sigma"], "path": step.output,
             "log": read_certify_log(step.output)})
    return {dataset: pd.DataFrame(found) for dataset, found in rows.items()}


def predict_logs(steps: Sequence[core.Step]) -> dict[int, pd.DataFrame]:
    """{n: the parsed predict log} of the predict steps, as rsbook.cohen.pipeline.predict_runs returns."""
    return {step.info["n"]: read_predict_log(step.output) for step in core.outputs(steps, "predict")}
