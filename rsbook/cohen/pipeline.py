"""The pipelines behind the re-run chapters, as resumable library calls: train one base classifier
per noise level, certify or predict every model at every noise level, attack the certified
examples, certify top-k. Every step writes an immutable, self-describing run folder under `root`
(named for what it holds plus a short digest of its parameters) and skips work already on disk,
so re-executing a chapter resumes where it stopped.

The top-k radii and the attacks write one results table per run folder, each example's rows (one per k,
one per multiplier) appended together, every example drawing from streams keyed by its idx
(rsbook.streams). Under torch.distributed (a process group of K > 1 processes, rsbook.distributed) rank
0 begins the run and folds in the shards a killed run left, rank r takes the examples still missing at
positions r, r + K, ... and appends their rows to results.tsv.part<r>, and after a barrier rank 0 folds
the shards into results.tsv in the one-process order (rsbook.logs.fold_shards: whole examples only) and
stamps the manifest finished: K processes write the rows one process writes. Both have a command line,
`python -m rsbook.cohen.pipeline topk|attack ...` (main), launched at profile full as
`torchrun --standalone --nproc_per_node=K -m rsbook.cohen.pipeline -- topk ...`, one process per GPU,
into the run folder the chapter's own call (topk_folder, attack_folder) then only reads back.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rsbook import distributed, streams
from rsbook._checks import (
    check_alpha,
    check_checkpoint,
    check_clip,
    check_output_path,
    check_positive_int,
    check_seed,
)
from rsbook.analysis import certified_accuracy
from rsbook.cohen.attacks import ATTACK_COLUMNS, _check_multipliers, attack_certify_log
from rsbook.cohen.topk import certify_topk
from rsbook.data import load_dataset, num_classes
from rsbook.dataset_runs import certify_dataset, predict_dataset, selected_indices
from rsbook.logs import (
    ResultsTable,
    begin_run,
    finish_manifest,
    fold_shards,
    read_certify_log,
    read_predict_log,
    run_folder,
    table_keys,
)
from rsbook.models import load_checkpoint
from rsbook.progress import track
from rsbook.smooth import Smooth

__all__ = ["certify_grid", "predict_runs", "topk_radii", "topk_folder", "attack_runs", "attack_folder",
           "cross_noise_matrix", "main"]

RESULTS = "results.tsv"


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


TOPK_COLUMNS = ("idx", "label", "k", "radius")
"""Columns of topk_radii's results table: one row per (example, k)."""


def _begin_table(folder: Path, columns, parameters: dict, seed, device, group: int, order) -> set:
    """Rank 0's start of a per-example results run: begin (or resume) the manifest, fold in the shards
    a killed distributed run left and cut a partly written example (rsbook.logs.fold_shards), create the
    table; return the keys of the examples done."""
    begin_run(folder, parameters, seed=seed, device=device)
    fold_shards(folder / RESULTS, columns, order=order, group=group)
    ResultsTable(folder / RESULTS, columns)  # creates it with its header
    return table_keys(folder / RESULTS, columns, group)


def _finish_table(folder: Path, columns, group: int, order) -> None:
    fold_shards(folder / RESULTS, columns, order=order, group=group)
    finish_manifest(folder)


def _sharded_results(folder: Path, columns, parameters: dict, keys, rows_of, *, group: int, seed, device,
                     label: str, progress: bool) -> pd.DataFrame:
    """The per-example results run in `folder` (results.tsv with `columns`, `group` rows per example,
    rows_of(key) computing an example's rows) over the examples `keys` (their idx, in the table's order),
    resumably. One process: rows are appended to results.tsv. Under a process group of K processes rank
    0 begins the run (folding leftover shards), rank r computes the examples still missing at positions
    r, r + K, ... and appends them to results.tsv.part<r>; after a barrier rank 0 folds the shards in
    `keys` order and stamps the manifest finished. Every rank returns the whole table."""
    position = {int(k): p for p, k in enumerate(keys)}
    order = lambda key: position.get(key, len(position))
    rank, world = distributed.rank_world()
    done = distributed.on_rank_zero(_begin_table, folder, columns, parameters, seed, device, group, order)
    todo = [int(k) for k in keys if int(k) not in done]
    table = ResultsTable(folder / (RESULTS if world == 1 else f"{RESULTS}.part{rank}"), columns)
    for key in track(todo[rank::world], label if world == 1 else f"{label} [rank {rank}]", unit="example",
                     disable=not progress, position=rank if world > 1 else None):
        table.append(rows_of(key))
    distributed.barrier()  # every shard complete before rank 0 folds them
    distributed.on_rank_zero(_finish_table, folder, columns, group, order)  # no rank returns before the fold
    return pd.read_csv(folder / RESULTS, sep="\t")


def _topk_parameters(dataset, checkpoint, sigma, ks, n, alpha, batch_size, skip, split) -> dict:
    return {"dataset": dataset, "split": split, "checkpoint": str(checkpoint), "sigma": float(sigma),
            "ks": [int(k) for k in ks], "n": n, "alpha": alpha, "batch": batch_size, "skip": skip,
            "samples": "one set per example, shared by every k"}


def topk_folder(root, dataset: str, checkpoint, sigma: float, ks, *, n: int, alpha: float, batch_size: int,
                skip: int = 1, split: str = "test") -> Path:
    """The run folder topk_radii(root, dataset, checkpoint, sigma, ks, ...) writes, computing nothing."""
    parameters = _topk_parameters(dataset, checkpoint, sigma, ks, n, alpha, batch_size, skip, split)
    return run_folder(root, "topk", f"{dataset}_sigma{float(sigma):g}", parameters)


def topk_radii(root, dataset: str, checkpoint, sigma: float, ks, *, n: int, alpha: float, batch_size: int,
               skip: int = 1, max_index: int = -1, seed: int = 0, split: str = "test", device=None,
               progress: bool = False) -> pd.DataFrame:
    """Jia et al. (2020) top-k certified radius of the true label for each k in `ks` on the
    selected examples (rsbook.cohen.topk.certify_topk: one set of n samples per example, from the stream
    (seed, 'estimate', 'topk', idx), shared by every k, each k's radius with probability >= 1 - alpha). Resumable: results are
    appended per example (its rows for every k together) to a run folder (topk_folder). Under a
    torch.distributed process group the examples are shared among the ranks (_sharded_results); the
    streams are the example's, so the rows are those of one process.
    Returns a frame with columns idx, label, k, radius (0 where not certified). Every argument is checked
    before the run folder is begun."""
    ks = [check_positive_int(k, "ks") for k in ks]
    if not ks or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be distinct positive integers, got {ks!r}")
    check_positive_int(n, "n"), check_alpha(alpha), check_positive_int(batch_size, "batch_size")
    check_positive_int(skip, "skip"), check_seed(seed), check_output_path(root, "root", folder=True)
    check_checkpoint(checkpoint)
    device = distributed.local_device(device) if distributed.rank_world()[1] > 1 else device
    parameters = _topk_parameters(dataset, checkpoint, sigma, ks, n, alpha, batch_size, skip, split)
    folder = topk_folder(root, dataset, checkpoint, sigma, ks, n=n, alpha=alpha, batch_size=batch_size, skip=skip,
                         split=split)
    data = load_dataset(dataset, split)
    smooth = _smooth(checkpoint, dataset, sigma, device)

    def rows_of(idx):
        x, label = data[idx]
        radii = certify_topk(smooth, x, label, list(ks), n, alpha, batch_size,
                             generator=streams.generator(seed, "estimate", "topk", idx, device=smooth.device))
        return [{"idx": idx, "label": label, "k": k, "radius": float(radius)} for k, radius in zip(ks, radii)]

    return _sharded_results(folder, TOPK_COLUMNS, parameters, selected_indices(len(data), skip, max_index), rows_of,
                            group=len(ks), seed=seed, device=device, label="top-k", progress=progress)


def _attack_parameters(dataset, checkpoint, sigma, multipliers, n_predict, alpha, batch_size, steps, num_noise,
                       clip) -> dict:
    return {"dataset": dataset, "checkpoint": str(checkpoint), "sigma": float(sigma),
            "multipliers": [float(m) for m in multipliers], "n_predict": n_predict, "alpha": alpha,
            "batch": batch_size, "steps": steps, "num_noise": num_noise, "clip": clip}


def attack_folder(root, dataset: str, checkpoint, sigma: float, multipliers=(1.5, 2.0), *, n_predict: int,
                  alpha: float, batch_size: int, steps: int, num_noise: int, clip=None) -> Path:
    """The run folder attack_runs(root, dataset, checkpoint, sigma, log, multipliers, ...) writes,
    computing nothing (the certify log is not part of it)."""
    parameters = _attack_parameters(dataset, checkpoint, sigma, multipliers, n_predict, alpha, batch_size, steps,
                                    num_noise, clip)
    return run_folder(root, "attack", f"{dataset}_sigma{float(sigma):g}", parameters)


def attack_runs(root, dataset: str, checkpoint, sigma: float, certify_log: pd.DataFrame, multipliers=(1.5, 2.0), *,
                n_predict: int, alpha: float, batch_size: int, steps: int, num_noise: int, max_examples=None,
                clip=None, seed: int = 1, device=None, progress: bool = False) -> pd.DataFrame:
    """Cohen et al. 2019, Sec. 4 and App. J.3: attack the smoothed classifier (rsbook.attacks) at
    each multiple of the certified radius on the correctly certified rows of `certify_log` (at
    most max_examples of them, in log order). Every example draws from its own stream (seed, 'attack',
    idx; rsbook.cohen.attacks.attack_certify_log). Resumable: results are appended per example (its
    rows for every multiplier together) to a run folder (attack_folder). Under a torch.distributed
    process group the examples are shared among the ranks (_sharded_results).
    Returns rsbook.attacks.ATTACK_COLUMNS rows. Every argument is checked before the run folder is begun."""
    checked = _check_multipliers(multipliers)
    check_positive_int(n_predict, "n_predict"), check_alpha(alpha), check_positive_int(batch_size, "batch_size")
    check_positive_int(steps, "steps"), check_positive_int(num_noise, "num_noise"), check_clip(clip)
    check_seed(seed), check_output_path(root, "root", folder=True)
    if max_examples is not None:
        check_positive_int(max_examples, "max_examples")
    missing = [c for c in ("idx", "label", "radius", "correct") if c not in getattr(certify_log, "columns", ())]
    if missing:
        raise ValueError(f"certify_log must be a certify log DataFrame; it lacks columns {missing}")
    check_checkpoint(checkpoint)
    device = distributed.local_device(device) if distributed.rank_world()[1] > 1 else device
    parameters = _attack_parameters(dataset, checkpoint, sigma, multipliers, n_predict, alpha, batch_size, steps,
                                    num_noise, clip)
    folder = attack_folder(root, dataset, checkpoint, sigma, multipliers, n_predict=n_predict, alpha=alpha,
                           batch_size=batch_size, steps=steps, num_noise=num_noise, clip=clip)
    data = load_dataset(dataset, "test")
    smooth = _smooth(checkpoint, dataset, sigma, device)
    certified = certify_log[(certify_log["correct"] == 1) & (certify_log["radius"] > 0)]
    if max_examples is not None:
        certified = certified.head(max_examples)
    by_idx = certified.set_index(certified["idx"].astype(int), drop=False)

    def rows_of(idx):
        result = attack_certify_log(smooth, smooth.base_classifier, data, by_idx.loc[[idx]], multipliers,
                                    n_predict=n_predict, alpha=alpha, batch_size=batch_size, steps=steps,
                                    num_noise=num_noise, clip=clip, seed=seed, progress=False)
        return result.to_dict("records")

    return _sharded_results(folder, ATTACK_COLUMNS, parameters, certified["idx"].astype(int).tolist(), rows_of,
                            group=len(checked), seed=seed, device=device, label="attack", progress=progress)


def cross_noise_matrix(grid: pd.DataFrame, radius: float) -> pd.DataFrame:
    """Certified accuracy at `radius` for every (training noise, certification noise) pair of a
    certify_grid (Cohen et al. Fig. 15 / App. H.3 as a matrix): rows training noise, columns sigma."""
    values = grid.assign(accuracy=[float(certified_accuracy(log, [radius]).iloc[0]) for log in grid["log"]])
    matrix = values.pivot(index="noise", columns="sigma", values="accuracy")
    matrix.index.name, matrix.columns.name = "training noise", "certification sigma"
    return matrix


# ------------------------------------------------------------------------------------ command line

def _command_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rsbook.cohen.pipeline",
                                     description="The re-run chapter's top-k radii (topk_radii) and attacks on "
                                     "certified examples (attack_runs); under `torchrun --nproc_per_node=K -m "
                                     "rsbook.cohen.pipeline -- topk|attack ...`, the examples shared among K "
                                     "processes.")
    commands = parser.add_subparsers(dest="command", required=True)
    topk = commands.add_parser("topk", help="top-k certified radii of the selected examples into the run folder "
                               "topk_radii uses (resumable), printing it")
    attack = commands.add_parser("attack", help="attack the correctly certified examples of a certify log into the "
                                 "run folder attack_runs uses (resumable), printing it")
    for command in (topk, attack):
        command.add_argument("--dataset", required=True, help="dataset name (rsbook.data.DATASETS)")
        command.add_argument("--checkpoint", required=True, type=Path, help="the trained classifier (`rsbook train`)")
        command.add_argument("--sigma", required=True, type=float, help="noise level of the smoothed classifier")
    topk.add_argument("--ks", required=True, type=int, nargs="+", help="the k of top-k, e.g. 1 3 5")
    topk.add_argument("--n", required=True, type=int, help="samples per example and k")
    attack.add_argument("--certify-log", required=True, type=Path,
                        help="the certify log (`rsbook certify`) whose correctly certified examples are attacked")
    attack.add_argument("--multipliers", type=float, nargs="+", default=[1.5, 2.0],
                        help="multiples of the certified radius (default 1.5 2)")
    attack.add_argument("--n-predict", required=True, type=int, help="PREDICT's samples at the attacked input")
    for command in (topk, attack):
        command.add_argument("--alpha", required=True, type=float, help="failure probability")
        command.add_argument("--batch", dest="batch_size", required=True, type=int, help="noisy copies per batch")
    topk.add_argument("--skip", type=int, default=1, help="every skip-th example (default 1)")
    topk.add_argument("--max-index", type=int, default=-1, help="last example index (default -1: all)")
    attack.add_argument("--steps", required=True, type=int, help="gradient steps of the attack")
    attack.add_argument("--num-noise", required=True, type=int, help="noisy copies per gradient step")
    attack.add_argument("--max-examples", type=int, help="attack at most this many certified examples")
    attack.add_argument("--clip", type=float, nargs=2, metavar=("LO", "HI"), help="input range (default: none)")
    topk.add_argument("--seed", type=int, default=0, help="seed of the noise streams (default 0)")
    attack.add_argument("--seed", type=int, default=1, help="seed of the attack streams (default 1)")
    topk.add_argument("--split", default="test", help="dataset split (default test)")
    for command, kind in ((topk, "topk"), (attack, "attack")):
        command.add_argument("--root", required=True, type=Path,
                             help=f"runs root: the run folder is <root>/{kind}/<dataset>_sigma<sigma>-<digest>")
        command.add_argument("--device", default="cpu", help="torch device (default cpu; cuda: one GPU per process)")
        command.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")
    return parser


def main(argv=None) -> int:
    """`python -m rsbook.cohen.pipeline topk --dataset D --checkpoint CKPT --sigma S --ks 1 3 5 --n N --alpha A
    --batch B --root ROOT [--skip --max-index --seed --split --device --no-progress]` (topk_radii) or
    `... attack --dataset D --checkpoint CKPT --sigma S --certify-log LOG --n-predict N --alpha A --batch B
    --steps T --num-noise M --root ROOT [--multipliers --max-examples --clip LO HI --seed --device
    --no-progress]` (attack_runs on the log as rsbook.logs.read_certify_log reads it), printing the run
    folder. Under `torchrun --nproc_per_node=K -m rsbook.cohen.pipeline -- topk|attack ...` the processes
    join a process group (rsbook.distributed.join; gloo on the CPU, NCCL with cuda:LOCAL_RANK per
    process) and share the examples. A refused input (a missing checkpoint or log, a bad value) exits
    with status 2 and one line `rsbook.cohen topk: error: ...` on standard error naming the flag, having
    written nothing."""
    args = vars(_command_parser().parse_args(argv))
    command = args.pop("command")
    flags = distributed.command_flags(args, batch_size="--batch")

    def work():
        root, dataset, checkpoint = args.pop("root"), args.pop("dataset"), args.pop("checkpoint")
        sigma = args.pop("sigma")
        if command == "topk":
            ks = args.pop("ks")
            topk_radii(root, dataset, checkpoint, sigma, ks, **args)
            return topk_folder(root, dataset, checkpoint, sigma, ks, n=args["n"], alpha=args["alpha"],
                               batch_size=args["batch_size"], skip=args["skip"], split=args["split"])
        log_path, multipliers = args.pop("certify_log"), args.pop("multipliers")
        if not Path(log_path).is_file():
            raise FileNotFoundError(f"certify log {log_path} does not exist (run `rsbook certify` first)")
        clip = None if args["clip"] is None else tuple(args.pop("clip"))
        args.pop("clip", None)
        attack_runs(root, dataset, checkpoint, sigma, read_certify_log(log_path), multipliers, clip=clip, **args)
        return attack_folder(root, dataset, checkpoint, sigma, multipliers, n_predict=args["n_predict"],
                             alpha=args["alpha"], batch_size=args["batch_size"], steps=args["steps"],
                             num_noise=args["num_noise"], clip=clip)

    return distributed.run_command(f"rsbook.cohen {command}", args["device"], work, flags)


if __name__ == "__main__":
    import sys

    sys.exit(main())
