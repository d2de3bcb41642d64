"""The `rsbook` command line. Nothing runs at import time; argparse lives here only.

    rsbook certify --dataset rancer_toy --checkpoint CKPT [--arch rancer_mlp] --sigma 0.25 --n0 100 --n 100000
                   --alpha 0.001 --batch 1000 [--skip 1] [--max -1] [--seed 0] --out runs/x/certify.tsv
    rsbook certify ... --radius 0.5 [--n-max 100000] [--method betting] --out LOG   (sequential: rsbook.sequential)
    rsbook certify ... --radii 0 0.25 0.5 [--stop-if-wrong] --out LOG   (a table's radii from one stream:
                                                                          rsbook.sequential_grid)
    rsbook predict --dataset digits --checkpoint CKPT --sigma 0.25 --n 1000 --alpha 0.001 --batch 500 --out LOG
    rsbook train --dataset digits --arch digits_cnn --noise-sd 0.25 [--epochs 10] --seed 0 --out runs/digits/0.25
    rsbook fetch [NAME ...] [--all] [--list]
    rsbook analyze LOG [LOG ...] --radii 0 0.25 0.5 [--sigma S ...] [--labels L ...] [--format md|latex|csv]
                   [--decimals 2] [--plot FILE.png|pdf|svg]       (the papers' tables from logs: rsbook.log_tables)

Under `torchrun --nproc_per_node=K -m rsbook -- certify ...` each process certifies a disjoint shard
of the examples and rank 0 merges the shards into the log. The `--` keeps torchrun's own parser,
which would read `--n` and `--max` as ambiguous abbreviations of its --nnodes and --max-restarts, off
our flags; `-n`/`--num-samples` and `--max-index` are aliases that need no `--`. Under
`torchrun --nproc_per_node=K -m rsbook -- train ...` training is data parallel (DistributedDataParallel,
the batch split over the K processes, rank 0 writing; rsbook.distributed).

Every command checks all its arguments before it writes anything; a refused input exits with status 2 and
one line `rsbook <command>: error: ...` that names the flag (rsbook.distributed.run_command).

Training hyperparameters left out take the dataset's defaults (rsbook.train.DEFAULTS, listed by
`rsbook train --help`); the values used go into the run's manifest.json. Progress goes to stderr: a
bar on a terminal, plain lines in files and pipes (rsbook.progress).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

__all__ = ["main", "build_parser"]


def _add_smoothing_arguments(parser: argparse.ArgumentParser, certify: bool):
    parser.add_argument("--dataset", required=True, help="dataset name (rsbook.data.DATASETS)")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--checkpoint", required=True, type=Path, help="base classifier checkpoint")
    parser.add_argument("--arch", help="architecture, needed when the checkpoint is a bare state_dict")
    parser.add_argument("--sigma", required=True, type=float, help="noise standard deviation, in input units")
    if certify:
        parser.add_argument("--n0", type=int, default=100, help="samples to guess the top class (default 100)")
        parser.add_argument("--radius", type=float, help="only ask 'is each example robust at this radius?': a "
                            "sequential test (rsbook.sequential) that stops as soon as it is decided; the log gains "
                            "a samples column")
        parser.add_argument("--radii", type=float, nargs="+", help="decide every radius of a table at once: one "
                            "stream and one sequential test valid for all of them (rsbook.sequential_grid); the log "
                            "gains a samples column and each row's radius is its largest certified radius")
        parser.add_argument("--n-max", type=int, help="with --radius or --radii: most samples per example after n0 "
                            "(default: --n)")
        parser.add_argument("--method", choices=("betting", "union", "fixed"),
                            help="with --radius or --radii: the sequential test (default betting)")
        parser.add_argument("--futility", type=float,
                            help="with --radius or --radii: futility level beta, the chance of giving up on a "
                                 "certifiable example early (costs power, never validity; default 0.001)")
        parser.add_argument("--stop-if-wrong", action="store_true",
                            help="with --radius or --radii: stop an example whose selected class is not its label "
                                 "after n0 (it cannot count towards certified accuracy; its row abstains)")
    parser.add_argument("--n", "-n", "--num-samples", dest="n", type=int, default=100000,
                        help="samples to estimate p_A (default 100,000); under torchrun write -n or --num-samples")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability (default 0.001)")
    parser.add_argument("--batch", type=int, default=1000, help="noisy copies per forward pass (default 1000)")
    parser.add_argument("--skip", type=int, default=1, help="use every skip-th example (default 1)")
    parser.add_argument("--max", "--max-index", dest="max", type=int, default=-1,
                        help="stop before this example index (default: all); under torchrun write --max-index")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-example noise streams (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", required=True, type=Path,
                        help="log file; its manifest goes beside it as <log>.manifest.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    from rsbook.train import SCHEDULES

    parser = argparse.ArgumentParser(prog="rsbook", description="Randomized-smoothing certificates and the "
                                     "artifacts of the papers rsbook reproduces.")
    commands = parser.add_subparsers(dest="command", required=True)
    certify = commands.add_parser("certify", help="CERTIFY every selected example of a dataset (Cohen et al. 2019)")
    _add_smoothing_arguments(certify, certify=True)
    predict = commands.add_parser("predict", help="PREDICT every selected example of a dataset (Cohen et al. 2019)")
    _add_smoothing_arguments(predict, certify=False)
    train = commands.add_parser("train", help="train a base classifier with Gaussian noise augmentation "
                                "(Cohen et al. 2019, Sec. 3.3)", epilog=_training_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--dataset", required=True, help="dataset name (rsbook.data.DATASETS)")
    train.add_argument("--arch", required=True, help="architecture (rsbook.models.ARCHITECTURES)")
    train.add_argument("--noise-sd", required=True, type=float, help="training noise level sigma")
    train.add_argument("--epochs", type=int, help="epochs (default: the dataset's)")
    train.add_argument("--batch", type=int, help="batch size (default: the dataset's); under torchrun the global "
                       "batch, split evenly over the processes")
    train.add_argument("--lr", type=float, help="initial learning rate (default: the dataset's)")
    train.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default: the dataset's; "
                       "'step' when --lr-step or --gamma is given)")
    train.add_argument("--lr-step", type=int, help="step schedule: multiply the lr by --gamma every this many epochs")
    train.add_argument("--gamma", type=float, help="step schedule: the lr's factor at each step")
    train.add_argument("--momentum", type=float, help="SGD momentum (default: the dataset's)")
    train.add_argument("--weight-decay", type=float, help="weight decay (default: the dataset's)")
    train.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    train.add_argument("--seed", type=int, default=0, help="seed of shuffling, augmentation and noise")
    train.add_argument("--device", default="cpu", help="torch device (default cpu)")
    train.add_argument("--out", required=True, type=Path, help="folder for checkpoint.pt, train_log.tsv, manifest")
    train.add_argument("--no-progress", action="store_true", help="no progress output")
    analyze = commands.add_parser(
        "analyze", help="the papers' tables from certify logs: certified accuracy at radii, ACR, abstention, the "
        "best-sigma envelope (rsbook.log_tables)",
        description="Certified accuracy at each radius, the average certified radius and the abstention rate of "
        "each certify log (the authors' layout or this project's, with or without a samples column), and the "
        "best-sigma envelope across them, computed as the book's chapters compute them. Each log's sigma: "
        "--sigma, else its manifest <log>.manifest.json, else a path component sigma_<value> (the authors' "
        "layout). A sequential log (samples column) has no cells above the radius it tests.")
    analyze.add_argument("logs", nargs="+", type=Path, help="certify logs")
    analyze.add_argument("--radii", nargs="+", type=float, required=True, help="radii r of the certified-accuracy "
                         "columns, e.g. 0 0.25 0.5 0.75 1")
    analyze.add_argument("--sigma", dest="sigmas", nargs="+", type=float,
                         help="the noise level of each log, in the order of the logs (default: from each log's "
                              "manifest, else its path)")
    analyze.add_argument("--labels", nargs="+", help="a name per log for the tables and the plot (default: the "
                         "shortest ends of the paths that tell them apart)")
    analyze.add_argument("--format", choices=("md", "latex", "csv"), default="md",
                         help="Markdown (default), LaTeX (booktabs) or CSV (long, full precision)")
    analyze.add_argument("--decimals", type=int, default=2, help="digits printed in md and latex (default 2)")
    analyze.add_argument("--plot", type=Path, help="also draw the certified-accuracy curves into this .png, .pdf "
                         "or .svg file")
    fetch = commands.add_parser("fetch", help="fetch the authors' released artifacts into the cache")
    fetch.add_argument("names", nargs="*", help="artifact names (see --list)")
    fetch.add_argument("--all", action="store_true", help="fetch every pinned artifact")
    fetch.add_argument("--list", action="store_true", help="list the pinned artifacts")
    return parser


def _training_epilog() -> str:
    from rsbook.train import DEFAULTS, describe_settings

    return "\n".join(["defaults per dataset (rsbook.train.DEFAULTS):"]
                     + [f"  {dataset}: {describe_settings(values)}" for dataset, values in DEFAULTS.items()])


def _smooth_command(args) -> Path:
    from rsbook import published
    from rsbook._checks import check_checkpoint, check_output_path
    from rsbook.data import load_dataset, num_classes
    from rsbook.dataset_runs import certify_dataset, certify_grid_dataset, certify_radius_dataset, predict_dataset
    from rsbook.models import load_checkpoint
    from rsbook.sequential import DEFAULT_FUTILITY
    from rsbook.smooth import Smooth

    sequential = args.command == "certify" and (args.radius is not None or bool(args.radii))
    if args.command == "certify" and args.radius is not None and args.radii:
        raise ValueError("give --radius or --radii, not both")
    if args.command == "certify" and not sequential:
        given = [flag for flag, value in (("--n-max", args.n_max), ("--method", args.method),
                                          ("--futility", args.futility), ("--stop-if-wrong", args.stop_if_wrong or None))
                 if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} {'need' if len(given) > 1 else 'needs'} --radius or --radii (they "
                             "set the sequential test; a fixed-n CERTIFY draws exactly --n samples)")
    check_output_path(args.out, "--out", folder=False)
    check_checkpoint(args.checkpoint, "--checkpoint")
    device = args.device
    if torch.distributed.is_initialized() and torch.device(device).type == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    dataset = load_dataset(args.dataset, args.split)
    classes = num_classes(args.dataset)
    model, checkpoint = load_checkpoint(args.checkpoint, classes, arch=args.arch, device=device,
                                        dataset=args.dataset)
    smooth = Smooth(model, classes, args.sigma, device=device)
    parameters = {"dataset": args.dataset, "split": args.split, "checkpoint": str(args.checkpoint),
                  "checkpoint_sha256": published.file_sha256(args.checkpoint), "arch": checkpoint["arch"]}
    common = dict(alpha=args.alpha, batch_size=args.batch, skip=args.skip, max_index=args.max, seed=args.seed,
                  parameters=parameters, progress=not args.no_progress)
    if sequential:
        grid = dict(n0=args.n0, n_max=args.n if args.n_max is None else args.n_max, method=args.method or "betting",
                    stop_if_wrong=args.stop_if_wrong,
                    futility=DEFAULT_FUTILITY if args.futility is None else args.futility, **common)
        if args.radius is not None:
            return certify_radius_dataset(smooth, dataset, args.out, radius=args.radius, **grid)
        return certify_grid_dataset(smooth, dataset, args.out, radii=args.radii, **grid)
    if args.command == "certify":
        return certify_dataset(smooth, dataset, args.out, n0=args.n0, n=args.n, **common)
    return predict_dataset(smooth, dataset, args.out, n=args.n, **common)


def _fetch_command(args):
    from rsbook import published

    pinned = published.artifacts()
    if args.list:
        for row in pinned.itertuples():
            print(f"{row.name}\t{row.sha256}")
        return
    names = pinned["name"].tolist() if args.all else args.names
    if not names:
        raise ValueError("name at least one artifact, or pass --all (--list shows them)")
    for name in names:
        print(published.fetch(name))


def _analyze_command(args) -> str:
    """The tables of `rsbook analyze` (rsbook.log_tables), every argument checked before any log is read;
    with --plot the figure is written too (atomically)."""
    from rsbook import log_tables
    from rsbook._checks import check_nonnegative_int

    radii = log_tables.check_radii(args.radii)
    check_nonnegative_int(args.decimals, "decimals")
    if args.plot is not None:
        log_tables.check_plot_path(args.plot)
    runs = log_tables.read_logs(args.logs, args.sigmas, args.labels)
    text = log_tables.render(log_tables.summary(runs, radii), log_tables.envelope(runs, radii), args.format,
                             args.decimals)
    if args.plot is not None:
        fig, _ = log_tables.curves_figure(runs)
        log_tables.save_figure(fig, args.plot)
    return text.rstrip("\n")


def _train_command(args) -> Path:
    from rsbook.train import train

    return train(args.dataset, args.arch, args.noise_sd, args.epochs, args.out, seed=args.seed,
                 batch_size=args.batch, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                 lr_step=args.lr_step, gamma=args.gamma, schedule=args.schedule, workers=args.workers,
                 device=args.device, progress=not args.no_progress)


def main(argv=None) -> int:
    """Run `rsbook <argv>`; return the exit status: 0, or 2 with one line `rsbook <command>: error: ...` on
    standard error for a refused input (rsbook.distributed.run_command), which is refused before any run
    folder, log or manifest is written. A refusal names the flag to change (--batch, not the library's
    batch_size)."""
    from rsbook.distributed import command_flags, run_command

    args = build_parser().parse_args(argv)
    flags = command_flags(vars(args), batch_size="--batch", max_index="--max")
    if args.command in ("certify", "predict"):  # under torchrun: the examples shared among the processes
        return run_command(f"rsbook {args.command}", args.device, lambda: _smooth_command(args), flags)
    if args.command == "train":  # under torchrun: data parallel (rsbook.distributed)
        return run_command("rsbook train", args.device, lambda: _train_command(args), flags)
    if args.command == "analyze":
        return run_command("rsbook analyze", None, lambda: _analyze_command(args), {**flags, "sigmas": "--sigma"})
    return run_command(f"rsbook {args.command}", None, lambda: _fetch_command(args), flags)
