"""The `rsbook` command line. Nothing runs at import time; argparse lives here only.

    rsbook certify --dataset rancer_toy --checkpoint CKPT [--arch rancer_mlp] --sigma 0.25 --n0 100 --n 100000
                   --alpha 0.001 --batch 1000 [--skip 1] [--max -1] [--seed 0] --out runs/x/certify.tsv
    rsbook predict --dataset digits --checkpoint CKPT --sigma 0.25 --n 1000 --alpha 0.001 --batch 500 --out LOG
    rsbook fetch [NAME ...] [--all] [--list]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _add_smoothing_arguments(parser: argparse.ArgumentParser, certify: bool):
    parser.add_argument("--dataset", required=True, help="dataset name (rsbook.data.DATASETS)")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--checkpoint", required=True, type=Path, help="base classifier checkpoint")
    parser.add_argument("--arch", help="architecture, needed when the checkpoint is a bare state_dict")
    parser.add_argument("--sigma", required=True, type=float, help="noise standard deviation, in input units")
    if certify:
        parser.add_argument("--n0", type=int, default=100, help="samples to guess the top class (default 100)")
    parser.add_argument("--n", type=int, default=100000, help="samples to estimate p_A (default 100,000)")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability (default 0.001)")
    parser.add_argument("--batch", type=int, default=1000, help="noisy copies per forward pass (default 1000)")
    parser.add_argument("--skip", type=int, default=1, help="use every skip-th example (default 1)")
    parser.add_argument("--max", type=int, default=-1, help="stop before this example index (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-example noise streams (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", required=True, type=Path, help="log file; its folder receives manifest.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsbook", description="Randomized-smoothing certificates and the "
                                     "artifacts of the papers rsbook reproduces.")
    commands = parser.add_subparsers(dest="command", required=True)
    certify = commands.add_parser("certify", help="CERTIFY every selected example of a dataset (Cohen et al. 2019)")
    _add_smoothing_arguments(certify, certify=True)
    predict = commands.add_parser("predict", help="PREDICT every selected example of a dataset (Cohen et al. 2019)")
    _add_smoothing_arguments(predict, certify=False)
    fetch = commands.add_parser("fetch", help="fetch the authors' released artifacts into the cache")
    fetch.add_argument("names", nargs="*", help="artifact names (see --list)")
    fetch.add_argument("--all", action="store_true", help="fetch every pinned artifact")
    fetch.add_argument("--list", action="store_true", help="list the pinned artifacts")
    return parser


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _smooth_command(args) -> Path:
    from rsbook.data import load_dataset, num_classes
    from rsbook.dataset_runs import certify_dataset, predict_dataset
    from rsbook.models import load_checkpoint
    from rsbook.smooth import Smooth

    dataset = load_dataset(args.dataset, args.split)
    classes = num_classes(args.dataset)
    model, checkpoint = load_checkpoint(args.checkpoint, classes, arch=args.arch, device=args.device)
    smooth = Smooth(model, classes, args.sigma, device=args.device)
    parameters = {"dataset": args.dataset, "split": args.split, "checkpoint": str(args.checkpoint),
                  "checkpoint_sha256": _sha256(args.checkpoint), "arch": checkpoint["arch"]}
    common = dict(alpha=args.alpha, batch_size=args.batch, skip=args.skip, max_index=args.max, seed=args.seed,
                  parameters=parameters, progress=not args.no_progress)
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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("certify", "predict"):
            print(_smooth_command(args))
        else:
            _fetch_command(args)
    except (ValueError, KeyError, FileNotFoundError, ConnectionError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"rsbook {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0
