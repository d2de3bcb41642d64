"""The pipelines behind the re-run chapters, as resumable library calls: train one base classifier
per noise level, certify or predict every model at every noise level, attack the certified
examples, certify top-k. Every step writes an immutable, self-describing run folder under `root`
(named for what it holds plus a short digest of its parameters) and skips work already on disk,
so re-executing a chapter resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rsbook import streams
from rsbook.analysis import certified_accuracy
from rsbook.cohen.attacks import ATTACK_COLUMNS, attack_certify_log
from rsbook.cohen.topk import certify_topk
from rsbook.data import load_dataset, num_classes
from rsbook.dataset_runs import certify_dataset, predict_dataset, selected_indices
from rsbook.logs import (
    ResultsTable,
    begin_run,
    finish_manifest,
    read_certify_log,
    read_predict_log,
    run_folder,
)
from rsbook.models import load_checkpoint
from rsbook.progress import track
from rsbook.smooth import Smooth

__all__ = ["certify_grid", "predict_runs", "topk_radii", "attack_runs",
           "cross_noise_matrix"]


def _smooth(checkpoint, dataset: str, sigma: float, device) -> Smooth:
    classes = num_classes(dataset)
    model, _ = load_checkpoint(checkpoint, classes, device=device, dataset=dataset)
    return Smooth(model, classes, sigma, device=device)


def certify_grid(root, dataset: str, checkpoints: dict, cross_sigmas=(), *, n0: int, n: int, alpha: float,
                 batch_size: int, skip: int = 1, max_index: int = -1, seed: int = 0, split: str = "test",
                 device=None, progress: bool = False) -> pd.DataFrame:
    """CERTIFY (Cohen et al. 2019, Sec. 3.2.2) the selected test examples with every trained model
    (training noise) at its own noise level and at every level in `cross_sigmas` (Fig. 15).
    Returns one row per log: noise, sigma, path, log (the parsed DataFrame)."""
    data = load_dataset(dataset, split)
    rows = []
    for noise, checkpoint in checkpoints.items():
        for sigma in sorted({float(noise), *map(float, cross_sigmas)}):
            parameters = {"dataset": dataset, "split": split, "checkpoint": str(checkpoint), "n0": n0, "n": n,
                          "alpha": alpha, "batch": batch_size, "skip": skip, "seed": seed}
            folder = run_folder(root, "certify", f"{dataset}_noise{noise:g}_sigma{float(sigma):g}", parameters)
            path = certify_dataset(_smooth(checkpoint, dataset, sigma, device), data, folder / "certify.tsv", n0=n0,
                                   n=n, alpha=alpha, batch_size=batch_size, skip=skip, max_index=max_index,
                                   seed=seed, parameters={"dataset": dataset, "split": split,
                                                          "checkpoint": str(checkpoint)}, progress=progress)
            rows.append({"noise": float(noise), "sigma": float(sigma), "path": path, "log": read_certify_log(path)})
    return pd.DataFrame(rows)


def predict_runs(root, dataset: str, checkpoint, sigma: float, ns, *, alpha: float, batch_size: int, skip: int = 1,
                 max_index: int = -1, seed: int = 0, split: str = "test", device=None,
                 progress: bool = False) -> dict:
    """PREDICT (Cohen et al. 2019, Sec. 3.2.1) the selected examples with one model at each number
    of samples in `ns`. Returns {n: predict-log DataFrame}."""
    data = load_dataset(dataset, split)
    smooth = _smooth(checkpoint, dataset, sigma, device)
    logs = {}
    for n in ns:
        parameters = {"dataset": dataset, "split": split, "checkpoint": str(checkpoint), "sigma": float(sigma),
                      "n": int(n), "alpha": alpha, "batch": batch_size, "skip": skip, "seed": seed}
        folder = run_folder(root, "predict", f"{dataset}_sigma{float(sigma):g}_n{int(n)}", parameters)
        path = predict_dataset(smooth, data, folder / "predict.tsv", n=int(n), alpha=alpha, batch_size=batch_size,
                               skip=skip, max_index=max_index, seed=seed,
                               parameters={"dataset": dataset, "split": split, "checkpoint": str(checkpoint)},
                               progress=progress)
        logs[int(n)] = read_predict_log(path)
    return logs


def _resumable_table(folder: Path, columns, parameters: dict, seed: int, device):
    """(ResultsTable, manifest) for a per-example results run in `folder`."""
    begin_run(folder, parameters, seed=seed, device=device)
    return ResultsTable(folder / "results.tsv", columns)


def topk_radii(root, dataset: str, checkpoint, sigma: float, ks, *, n: int, alpha: float, batch_size: int,
               skip: int = 1, max_index: int = -1, seed: int = 0, split: str = "test", device=None,
               progress: bool = False) -> pd.DataFrame:
    """Jia et al. (2020) top-k certified radius of the true label for each k in `ks` on the
    selected examples (rsbook.cohen.topk.certify_topk: one set of n samples per example and k, from the
    stream (seed, 'estimate', 'topk', idx, k), each with probability >= 1 - alpha). Resumable: results are appended per example to a run folder.
    Returns a frame with columns idx, label, k, radius (0 where not certified)."""
    parameters = {"dataset": dataset, "split": split, "checkpoint": str(checkpoint), "sigma": float(sigma),
                  "ks": [int(k) for k in ks], "n": n, "alpha": alpha, "batch": batch_size, "skip": skip}
    folder = run_folder(root, "topk", f"{dataset}_sigma{float(sigma):g}", parameters)
    table = _resumable_table(folder, ("idx", "label", "k", "radius"), parameters, seed, device)
    data = load_dataset(dataset, split)
    smooth = _smooth(checkpoint, dataset, sigma, device)
    todo = [i for i in selected_indices(len(data), skip, max_index) if i not in table.done]
    for idx in track(todo, "top-k", unit="example", disable=not progress):
        x, label = data[idx]
        rows = []
        for k in ks:
            radius = certify_topk(smooth, x, label, int(k), n, alpha, batch_size,
                                  generator=streams.generator(seed, "estimate", "topk", idx, int(k),
                                                              device=smooth.device))
            rows.append({"idx": idx, "label": label, "k": int(k), "radius": float(radius)})
        table.append(rows)
    finish_manifest(folder)
    return table.read()


def attack_runs(root, dataset: str, checkpoint, sigma: float, certify_log: pd.DataFrame, multipliers=(1.5, 2.0), *,
                n_predict: int, alpha: float, batch_size: int, steps: int, num_noise: int, max_examples=None,
                clip=None, seed: int = 1, device=None, progress: bool = False) -> pd.DataFrame:
    """Cohen et al. 2019, Sec. 4 and App. J.3: attack the smoothed classifier (rsbook.attacks) at
    each multiple of the certified radius on the correctly certified rows of `certify_log` (at
    most max_examples of them). Resumable: results are appended per example to a run folder.
    Returns rsbook.attacks.ATTACK_COLUMNS rows."""
    parameters = {"dataset": dataset, "checkpoint": str(checkpoint), "sigma": float(sigma),
                  "multipliers": [float(m) for m in multipliers], "n_predict": n_predict, "alpha": alpha,
                  "batch": batch_size, "steps": steps, "num_noise": num_noise, "clip": clip}
    folder = run_folder(root, "attack", f"{dataset}_sigma{float(sigma):g}", parameters)
    table = _resumable_table(folder, ATTACK_COLUMNS, parameters, seed, device)
    data = load_dataset(dataset, "test")
    smooth = _smooth(checkpoint, dataset, sigma, device)
    certified = certify_log[(certify_log["correct"] == 1) & (certify_log["radius"] > 0)]
    if max_examples is not None:
        certified = certified.head(max_examples)
    todo = certified[~certified["idx"].isin(table.done)]
    for position in track(range(len(todo)), "attack", unit="example", disable=not progress):
        row = todo.iloc[[position]]
        result = attack_certify_log(smooth, smooth.base_classifier, data, row, multipliers, n_predict=n_predict,
                                    alpha=alpha, batch_size=batch_size, steps=steps, num_noise=num_noise, clip=clip,
                                    seed=seed, progress=False)
        table.append(result.to_dict("records"))
    finish_manifest(folder)
    return table.read()


def cross_noise_matrix(grid: pd.DataFrame, radius: float) -> pd.DataFrame:
    """Certified accuracy at `radius` for every (training noise, certification noise) pair of a
    certify_grid (Cohen et al. Fig. 15 / App. H.3 as a matrix): rows training noise, columns sigma."""
    values = grid.assign(accuracy=[float(certified_accuracy(log, [radius]).iloc[0]) for log in grid["log"]])
    matrix = values.pivot(index="noise", columns="sigma", values="accuracy")
    matrix.index.name, matrix.columns.name = "training noise", "certification sigma"
    return matrix
