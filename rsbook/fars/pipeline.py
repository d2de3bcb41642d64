"""The pipeline behind the FaRS chapter, as resumable library calls: train a 1-Lipschitz SLL backbone
with a head (end to end, or a head on frozen features), certify the test examples in the embedding
space (closed form for a linear head; Monte Carlo on the head for a sparsemax or a deeper head), attack
the full model with l2-PGD, and time each way of certifying against Cohen et al.'s CERTIFY on the whole
network. Every long step writes a run folder under `root` (rsbook.logs.run_folder) and skips the
work already on disk; training checkpoints after every epoch.

Training also runs from the command line, on one process or data parallel on K (DistributedDataParallel,
rsbook.distributed): `python -m rsbook.fars.pipeline train --dataset digits --epochs 2 --out RUN`, or
`torchrun --standalone --nproc_per_node=K -m rsbook.fars.pipeline -- train ...` (main).

Tables use the layout of the FaRS paper (rsbook.published.table("fars", "Table 1") / "Table 2"): rows
`variant` ('original', 'sparsemax'), columns `epsilon` ('natural', then the radii as strings), values
as fractions.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from rsbook import distributed, streams
from rsbook._checks import (
    check_alpha,
    check_clip,
    check_finite_real,
    check_nonnegative_int,
    check_output_path,
    check_positive_int,
    check_seed,
    check_sigma,
)
from rsbook._io import append_epoch_row, atomic_write, read_torch_dict
from rsbook.analysis import certified_accuracy
from rsbook.attacks import pgd
from rsbook.data import input_shape, load_dataset, num_classes
from rsbook.dataset_runs import selected_indices
from rsbook.fars.certify import (
    BOUNDS,
    FaRS,
    SmoothedSparsemaxModel,
    SparsemaxSmooth,
    build_head,
    carry_radius,
    linear_certify,
    margin_logits,
    nearest_boundary_point,
    per_class_radius,
    sparsemax,
)
from rsbook.fars.lipschitz import (
    adversarial_lipschitz_ratio,
    max_jacobian_norm,
    sll_backbone,
)
from rsbook.logs import (
    ResultsTable,
    begin_run,
    finish_manifest,
    run_folder,
)
from rsbook.progress import track
from rsbook.smooth import ABSTAIN, Smooth
from rsbook.timing import timed

__all__ = ["CHECKPOINT", "TRAIN_LOG", "train_fars", "train_run", "load_fars", "select", "embed", "linear_certificates",
           "per_class_certificates", "per_class_overclaims", "sparsemax_agreement", "smoothing_certificates",
           "sparsemax_certificates", "pgd_robustness",
           "smoothed_pgd_robustness", "robust_accuracy", "accuracy_table", "sanity_check", "certificate_violations",
           "certification_times", "lipschitz_check", "CERTIFY_COLUMNS", "main"]

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.tsv"
_LOG_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "test_accuracy", "seconds")
CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
"""Columns of the per-example certificate frames (the authors' certify-log layout, time in seconds)."""


# ------------------------------------------------------------------------------------------ training

def _cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _build(payload: dict) -> FaRS:
    config = dict(payload["backbone"])
    shape = config.pop("input_shape")
    backbone = sll_backbone(shape, **config)
    return FaRS(backbone, build_head(int(config["embedding_dim"]), int(payload["num_classes"]), payload["hidden"]))


def load_fars(path, device=None) -> tuple[FaRS, dict]:
    """(model in eval mode on `device`, payload) from a checkpoint written by train_fars:
    {kind: 'fars', dataset, backbone (config incl. input_shape), hidden, num_classes, state_dict, epoch, ...}."""
    payload = read_torch_dict(path)
    if payload.get("kind") != "fars":
        raise ValueError(f"checkpoint {path} is not a FaRS checkpoint (written by rsbook.fars.pipeline.train_fars)")
    model = _build(payload)
    model.load_state_dict(payload["state_dict"])
    return model.to(torch.device("cpu" if device is None else device)).eval(), payload


def _backbone_from(path, backbone_config):
    """(backbone config, backbone state_dict) from a FaRS checkpoint, or from a bare SLLBackbone
    state_dict when `backbone_config` (with input_shape) describes it."""
    payload = read_torch_dict(path)
    if payload.get("kind") == "fars":
        state = {k[len("backbone."):]: v for k, v in payload["state_dict"].items() if k.startswith("backbone.")}
        return dict(payload["backbone"]), state
    if backbone_config is None or "input_shape" not in backbone_config:
        raise ValueError(f"checkpoint {path} is not a FaRS checkpoint; to load a bare backbone state_dict, give its "
                         "backbone configuration (with input_shape)")
    return dict(backbone_config), payload


def _clean_accuracy(model: FaRS, data, batch_size: int, device, workers: int) -> float:
    """Accuracy of `model` on `data`; under a distributed run each rank takes its share
    (rsbook.distributed.shard) and the counts are summed, which gives the single-process number."""
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for inputs, labels in DataLoader(distributed.shard(data), batch_size=batch_size, shuffle=False,
                                         num_workers=workers):
            correct += int((model(inputs.to(device)).argmax(1) == labels.to(device)).sum())
            total += len(labels)
    correct, total = distributed.all_sum([correct, total], device)
    return correct / max(total, 1)


class _TrainingForward(nn.Module):
    """train_fars's training forward, (logits, the logits the loss sees), as one module, so that
    DistributedDataParallel sees every use of a trained parameter (the pairwise margin reads the
    head's weight)."""

    def __init__(self, model: FaRS, train_backbone: bool, margin: float, margin_mode: str):
        super().__init__()
        self.model, self.train_backbone, self.margin, self.margin_mode = model, train_backbone, margin, margin_mode

    def forward(self, inputs, labels, noise=None):
        if self.train_backbone:
            z = self.model.backbone(inputs)
        else:
            with torch.no_grad():
                z = self.model.backbone(inputs)
        if noise is not None:
            z = z + noise
        logits = self.model.head(z)
        if not self.margin > 0:
            return logits, logits
        weight = self.model.head.weight if self.margin_mode == "pairwise" else None
        return logits, margin_logits(logits, labels, self.margin, weight)


def train_fars(dataset: str, out, *, backbone: dict | None = None, hidden=(), epochs: int, batch_size: int = 128,
               lr: float = 0.01, weight_decay: float = 0.0, margin: float = 0.0, margin_mode: str = "pairwise",
               logit_scale: float = 1.0, embedding_noise: float = 0.0, seed: int = 0, backbone_checkpoint=None,
               train_backbone: bool = True, device=None, workers: int = 0, evaluate: bool = True,
               progress: bool = False) -> Path:
    """Train a FaRS model (an SLL backbone, rsbook.fars.lipschitz.sll_backbone(**backbone), and a head,
    rsbook.fars.build_head(hidden)) on `dataset` into the folder `out`; return the checkpoint path.

    Loss: cross-entropy of logit_scale * margin_logits(head(z + noise), y, margin), z = backbone(x):
    margin_mode 'pairwise' (linear head only) adds margin * ||w_y - w_j||_2 to each non-target logit, so
    a correct fit means a certified radius above `margin`; 'constant' adds `margin` (Tsuzuku et al.
    2018). embedding_noise > 0 adds N(0, embedding_noise^2) to z during training (Gaussian augmentation of
    a head that will be smoothed in the embedding space). Adam with a cosine learning-rate decay over
    `epochs`; the dataset's own training augmentation.

    backbone_checkpoint: start the backbone from a FaRS checkpoint (or a bare SLLBackbone state_dict whose
    configuration, with input_shape, is `backbone`); with train_backbone=False it stays frozen and only
    the head is trained (a linear probe on frozen features, as in FaRS Sec. 3).

    Resumable: out/checkpoint.pt is rewritten after every epoch with the optimizer state, out/train_log.tsv
    gets one row per epoch (test_accuracy: clean accuracy on the test split), out/manifest.json records
    the parameters. Initial weights come from `seed`, each epoch's shuffling, augmentation and noise from
    generators seeded by (seed, epoch), so an interrupted and resumed run ends with the same weights (on
    deterministic kernels).

    Under torchrun (world size K > 1: `torchrun --nproc_per_node=K -m rsbook.fars.pipeline -- train
    ...`, see main) the run is data parallel, as rsbook.train.train (rsbook.distributed): batch_size is
    the global batch (refused unless K divides it), each rank's augmentation and embedding noise come
    from streams keyed by (epoch, rank), the logged loss, training accuracy and test accuracy are
    summed over the ranks (the test accuracy, each rank scoring its share, is the single-process
    number for the same weights), rank 0 writes the checkpoint (the single-process format, read by
    load_fars), the log and the manifest, which records K (a run with epochs left is resumed only by
    K processes), and a resumed run with the same K ends with the weights of an uninterrupted one.

    Every argument is checked before the run folder is begun: a refused one (ValueError naming it) leaves
    nothing behind.
    """
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = check_seed(seed)
    check_finite_real(lr, "lr", minimum=0, strict=True)
    check_finite_real(weight_decay, "weight_decay", minimum=0, strict=False)
    check_finite_real(margin, "margin", minimum=0, strict=False)
    if margin_mode not in ("pairwise", "constant"):
        raise ValueError(f"margin_mode must be 'pairwise' or 'constant', got {margin_mode!r}")
    check_finite_real(logit_scale, "logit_scale", minimum=0, strict=True)
    workers = check_nonnegative_int(workers, "workers")
    check_output_path(out, "out", folder=True)
    embedding_noise = float(embedding_noise)
    if embedding_noise != 0:
        check_sigma(embedding_noise, "embedding_noise")
    hidden = [int(h) for h in (hidden or [])]
    if margin > 0 and margin_mode == "pairwise" and hidden:
        raise ValueError("margin_mode 'pairwise' needs a linear head (hidden = []); use 'constant' for a deeper head")
    if not train_backbone and backbone_checkpoint is None:
        raise ValueError("train_backbone=False needs a backbone_checkpoint to freeze")
    rank, world = distributed.rank_world()
    distributed.per_rank_batch(batch_size, world)
    device = distributed.local_device(device)
    out = Path(out)
    classes = num_classes(dataset)

    streams.seed_global(seed, "init", "fars")
    if backbone_checkpoint is not None:
        config, state = _backbone_from(backbone_checkpoint, backbone)
    else:
        config = {"input_shape": list(input_shape(dataset)), **(backbone or {})}
        state = None
    shape = config.pop("input_shape")
    net = sll_backbone(shape, **config)
    if state is not None:
        net.load_state_dict(state)
    model = FaRS(net, build_head(int(net.config["embedding_dim"]), classes, hidden)).to(device)
    if not train_backbone:
        model.backbone.requires_grad_(False)  # frozen: no gradient, and nothing for DDP to synchronise
    optimizer = torch.optim.Adam(model.parameters() if train_backbone else model.head.parameters(), lr=lr,
                                 weight_decay=weight_decay)

    parameters = {"dataset": dataset, "backbone": net.config, "hidden": hidden, "epochs": epochs,
                  "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "margin": margin,
                  "margin_mode": margin_mode, "logit_scale": logit_scale, "embedding_noise": embedding_noise,
                  "backbone_checkpoint": None if backbone_checkpoint is None else str(backbone_checkpoint),
                  "train_backbone": bool(train_backbone)}
    train_set = load_dataset(dataset, "train", augment=True)
    test_set = load_dataset(dataset, "test") if evaluate else None
    checkpoint_path, log_path = out / CHECKPOINT, out / TRAIN_LOG
    start = distributed.start_run(out, parameters, seed=seed, device=device, epochs=epochs, checkpoint=checkpoint_path,
                                  log=log_path)
    if start:
        payload = read_torch_dict(checkpoint_path)
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
    distributed.barrier()  # every rank has read the checkpoint before rank 0 rewrites it
    step = distributed.wrap(_TrainingForward(model, train_backbone, margin, margin_mode), device)
    for epoch in range(start, epochs):
        started = time.perf_counter()
        current = _cosine_lr(lr, epoch, epochs)
        for group in optimizer.param_groups:
            group["lr"] = current
        loader = distributed.epoch_loader(train_set, batch_size, epoch, seed=seed, tag=("fars",), workers=workers)
        noise_gen = streams.generator(seed, "train", "fars", *distributed.rank_key(epoch), device=device)
        model.train(train_backbone)
        model.head.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for inputs, labels in track(loader, f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False, every=0,
                                    disable=not progress or rank != 0):
            inputs, labels = inputs.to(device), labels.to(device)
            noise = None
            if embedding_noise:
                noise = torch.randn((len(inputs), int(net.config["embedding_dim"])), generator=noise_gen,
                                    device=device) * embedding_noise
            logits, shifted = step(inputs, labels, noise)
            loss = F.cross_entropy(logit_scale * shifted, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], device)
        distributed.sync_buffers(model)
        accuracy = _clean_accuracy(model, test_set, batch_size, device, workers) if evaluate else float("nan")
        if rank == 0:
            payload = {"kind": "fars", "dataset": dataset, "backbone": net.config, "hidden": hidden,
                       "num_classes": classes, "state_dict": model.state_dict(), "epoch": epoch + 1,
                       "optimizer": optimizer.state_dict()}
            with atomic_write(checkpoint_path, "wb") as handle:
                torch.save(payload, handle)
            append_epoch_row(log_path, _LOG_COLUMNS, (epoch + 1, current, loss_sum / seen, correct / seen, accuracy,
                                                      time.perf_counter() - started))
    distributed.finish_run(out)
    return checkpoint_path


def train_run(root, name: str, dataset: str, **kwargs) -> Path:
    """train_fars into the run folder root/train/<name>-<digest of dataset and kwargs>
    (rsbook.logs.run_folder): changing any setting trains into a new folder, and rerunning with
    the same settings resumes or reuses the finished run. Returns the checkpoint path."""
    settings = {"dataset": dataset, **{k: v for k, v in kwargs.items() if k not in ("device", "workers", "progress")}}
    return train_fars(dataset, run_folder(root, "train", name, settings), **kwargs)


def _command_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rsbook.fars.pipeline",
                                     description="Train a FaRS model (train_fars); under `torchrun "
                                     "--nproc_per_node=K -m rsbook.fars.pipeline -- train ...`, data parallel.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train_fars into --out (resumable), printing the checkpoint path")
    train.add_argument("--dataset", required=True, help="dataset name (rsbook.data.DATASETS)")
    train.add_argument("--out", required=True, type=Path, help="folder for checkpoint.pt, train_log.tsv, manifest")
    train.add_argument("--backbone", help="sll_backbone options as a JSON object, e.g. '{\"widths\": [16, 32]}' "
                       "(default: rsbook.fars.lipschitz.BACKBONE_DEFAULTS)")
    train.add_argument("--hidden", type=int, nargs="*", default=[],
                       help="hidden widths of the head (default: none, a linear head)")
    train.add_argument("--epochs", type=int, required=True, help="epochs (the cosine schedule spans them)")
    train.add_argument("--batch-size", type=int, default=128,
                       help="global batch size (default 128; split evenly over torchrun's processes)")
    train.add_argument("--lr", type=float, default=0.01, help="Adam's initial learning rate (default 0.01)")
    train.add_argument("--weight-decay", type=float, default=0.0, help="Adam's weight decay (default 0)")
    train.add_argument("--margin", type=float, default=0.0, help="logit margin (default 0)")
    train.add_argument("--margin-mode", default="pairwise", choices=("pairwise", "constant"),
                       help="pairwise: margin * ||w_y - w_j||, a certified-radius margin (linear head); constant")
    train.add_argument("--logit-scale", type=float, default=1.0, help="factor of the logits in the loss (default 1)")
    train.add_argument("--embedding-noise", type=float, default=0.0,
                       help="standard deviation of N(0, s^2) noise added to the embedding in training (default 0)")
    train.add_argument("--backbone-checkpoint", type=Path, help="start the backbone from this FaRS checkpoint")
    train.add_argument("--train-backbone", action=argparse.BooleanOptionalAction, default=True,
                       help="train the backbone too (default); --no-train-backbone: a head on frozen features")
    train.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling, augmentation and noise")
    train.add_argument("--device", default="cpu", help="torch device (default cpu; cuda: one GPU per process)")
    train.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    train.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                       help="no test accuracy per epoch")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")
    return parser


def main(argv=None) -> int:
    """`python -m rsbook.fars.pipeline train --dataset D --epochs E --out RUN [train_fars's options, as
    --kebab-case flags; --backbone as JSON]`: train_fars from the command line, printing the checkpoint
    path. Under `torchrun --nproc_per_node=K -m rsbook.fars.pipeline -- train ...` the processes join a
    process group (rsbook.distributed.join) and train data parallel. A refused input exits with status
    2 and one line `rsbook.fars train: error: ...` naming the flag on standard error from each process,
    having written nothing."""
    import json

    args = vars(_command_parser().parse_args(argv))
    args.pop("command")
    flags = distributed.command_flags(args)

    def work():
        text = args.pop("backbone")
        try:
            backbone = None if text is None else json.loads(text)
        except json.JSONDecodeError:
            backbone = text
        if backbone is not None and not isinstance(backbone, dict):
            raise ValueError("--backbone must be a JSON object of sll_backbone options, e.g. '{\"widths\": [16, 32], "
                             f"\"embedding_dim\": 64}}', got {text!r}")
        return train_fars(args.pop("dataset"), args.pop("out"), backbone=backbone, **args)

    return distributed.run_command("rsbook.fars train", args["device"], work, flags)



# ----------------------------------------------------------------------------------- certification

def select(data, skip: int = 1, max_examples: int | None = None) -> list[int]:
    """Indices of the evaluated examples: every `skip`-th, at most `max_examples` of them (None: all)."""
    indices = selected_indices(len(data), skip)
    return indices if max_examples is None else indices[: check_positive_int(max_examples, "max_examples")]


def embed(model: FaRS, data, indices, batch_size: int = 256, device=None, workers: int = 0):
    """(z, labels): the backbone's embeddings (N, embedding_dim) and the labels (N,) of data[indices],
    on `device`."""
    device = torch.device("cpu" if device is None else device)
    zs, labels = [], []
    model.eval()
    with torch.inference_mode():
        loader = DataLoader(Subset(data, list(indices)), batch_size=check_positive_int(batch_size, "batch_size"),
                            shuffle=False, num_workers=workers)
        for inputs, y in loader:
            zs.append(model.backbone(inputs.to(device)))
            labels.append(y.to(device))
    return torch.cat(zs), torch.cat(labels)


def _head_tensors(model: FaRS):
    if not model.is_linear:
        raise ValueError("the closed-form certificate needs a single linear head")
    bias = model.head.bias.detach() if model.head.bias is not None else None
    return model.head.weight.detach(), bias


def _frame(indices, labels, prediction, radius, seconds) -> pd.DataFrame:
    labels = torch.as_tensor(labels).cpu().numpy()
    prediction = torch.as_tensor(prediction).cpu().numpy()
    return pd.DataFrame({"idx": np.asarray(indices, dtype=np.int64), "label": labels.astype(np.int64),
                         "predict": prediction.astype(np.int64),
                         "radius": torch.as_tensor(radius).cpu().numpy().astype(float),
                         "correct": (prediction == labels).astype(np.int64), "time": seconds})


def linear_certificates(model: FaRS, z, labels, indices) -> pd.DataFrame:
    """The exact closed-form certificate (rsbook.fars.linear_certify) of the linear head at each
    embedding z, carried to input space (Proposition 1): columns CERTIFY_COLUMNS, time the mean seconds
    per example of the whole batch's computation (excluding the backbone)."""
    weight, bias = _head_tensors(model)
    started = time.perf_counter()
    prediction, radius = linear_certify(z, weight, bias)
    seconds = (time.perf_counter() - started) / max(len(indices), 1)
    return _frame(indices, labels, prediction, carry_radius(radius, model.lipschitz_constant), seconds)


def per_class_certificates(model: FaRS, z, labels, indices) -> pd.DataFrame:
    """The seed text's per-class score difference (rsbook.fars.per_class_radius; not a certificate) in
    the same layout as linear_certificates, for comparison."""
    weight, bias = _head_tensors(model)
    prediction, radius = per_class_radius(z, weight, bias)
    return _frame(indices, labels, prediction, carry_radius(radius, model.lipschitz_constant), 0.0)


def sparsemax_agreement(model: FaRS, z, r: float = 1.0) -> float:
    """Fraction of the embeddings z on which the deterministic sparsemax head, argmax sparsemax(l(z), r),
    predicts the same class as the linear head, argmax l(z): 1 up to exact ties, since sparsemax
    preserves the order of its inputs (rsbook.fars.certify module docstring)."""
    with torch.inference_mode():
        logits = model.head(torch.as_tensor(z))
        return float((sparsemax(logits, r).argmax(dim=1) == logits.argmax(dim=1)).double().mean())


def per_class_overclaims(model: FaRS, z, indices) -> pd.DataFrame:
    """Where the seed text's per-class score difference claims more than the exact radius, in the
    embedding space: one row per example with idx, exact (margin_radius), per_class (per_class_radius),
    overclaim (per_class > exact) and witness (for an over-claim: the point nearest_boundary_point, at
    distance just above `exact` and hence inside the claimed ball, where the linear head's prediction
    differs; False elsewhere)."""
    weight, bias = _head_tensors(model)
    prediction, exact = linear_certify(z, weight, bias)
    _, claimed = per_class_radius(z, weight, bias)
    overshoot = 1e-6
    over = claimed > exact + overshoot
    points = nearest_boundary_point(z, weight, bias, overshoot=overshoot)
    logits = points @ weight.to(torch.float64).T + (0.0 if bias is None else bias.to(torch.float64))
    inside = (points - torch.as_tensor(z).to(torch.float64)).norm(dim=1) < claimed
    witness = over & inside & (logits.argmax(dim=1) != prediction)
    return pd.DataFrame({"idx": np.asarray(indices, dtype=np.int64), "exact": exact.cpu().numpy(),
                         "per_class": claimed.cpu().numpy(), "overclaim": over.cpu().numpy(),
                         "witness": witness.cpu().numpy()})


def _certify_rows(folder: Path, parameters: dict, seed: int, device, indices, z, labels, certify_one,
                  lipschitz: float, progress: bool, desc: str) -> pd.DataFrame:
    """Resumable per-example loop: certify_one(z_i, (select, estimate)) -> (prediction, radius), one row
    per example appended to folder/results.tsv, each with its own pair of streams
    rsbook.streams.certify_generators(seed, idx)."""
    check_seed(seed)
    begin_run(folder, parameters, seed=seed, device=device)
    table = ResultsTable(folder / "results.tsv", CERTIFY_COLUMNS)
    positions = [p for p, idx in enumerate(indices) if int(idx) not in table.done]
    for position in track(positions, desc, unit="example", disable=not progress):
        idx, label = int(indices[position]), int(labels[position])
        generators = streams.certify_generators(seed, idx, device=device)
        started = time.perf_counter()
        prediction, radius = certify_one(z[position], generators)
        seconds = time.perf_counter() - started
        table.append([{"idx": idx, "label": label, "predict": int(prediction),
                       "radius": float(carry_radius(radius, lipschitz)),
                       "correct": int(prediction != ABSTAIN and prediction == label), "time": seconds}])
    finish_manifest(folder)
    frame = table.read()
    return frame.set_index("idx").loc[[int(i) for i in indices]].reset_index()


def _check_certify(n0, n, alpha, batch_size, lipschitz) -> None:
    """The head certificates' CERTIFY arguments, checked before their run folder is begun."""
    check_positive_int(n0, "n0"), check_positive_int(n, "n"), check_alpha(alpha)
    check_positive_int(batch_size, "batch_size"), check_finite_real(lipschitz, "lipschitz", minimum=0, strict=True)


def smoothing_certificates(root, name: str, head, z, labels, indices, *, num_classes: int, sigma: float, n0: int,
                           n: int, alpha: float, batch_size: int, seed: int = 0, lipschitz: float = 1.0,
                           parameters: dict | None = None, device=None, progress: bool = False) -> pd.DataFrame:
    """Cohen et al.'s CERTIFY (rsbook.smooth.Smooth) applied to the head at each embedding z (FaRS
    Sec. 2.2, "Multi-Layer Linear Module"), radii divided by the backbone's Lipschitz constant
    (Proposition 1). Resumable run folder root/certify_head/<name>-<digest>; `parameters` should
    identify the head (e.g. its checkpoint). Returns CERTIFY_COLUMNS rows in the order of `indices`."""
    _check_certify(n0, n, alpha, batch_size, lipschitz)
    device = torch.device("cpu" if device is None else device)
    smooth = Smooth(head.eval(), num_classes, sigma, device=device)
    settings = {**(parameters or {}), "sigma": float(sigma), "n0": n0, "n": n, "alpha": alpha, "batch": batch_size,
                "lipschitz": float(lipschitz), "examples": [int(i) for i in indices]}
    folder = run_folder(root, "certify_head", name, settings)
    return _certify_rows(folder, settings, seed, device, indices, z, labels,
                         lambda zi, g: smooth.certify(zi, n0, n, alpha, batch_size, generator=g[0],
                                                      estimate_generator=g[1]), lipschitz,
                         progress, "certify head")


def sparsemax_certificates(root, name: str, head, z, labels, indices, *, num_classes: int, sigma: float, r: float,
                           n0: int, n: int, alpha: float, batch_size: int, seed: int = 0, bound: str = "bernstein",
                           lipschitz: float = 1.0, parameters: dict | None = None, device=None,
                           progress: bool = False) -> pd.DataFrame:
    """The smoothed sparsemax head (rsbook.fars.SparsemaxSmooth.certify) at each embedding z, radii carried
    to input space. Resumable run folder root/certify_sparsemax/<name>-<digest>. Returns CERTIFY_COLUMNS
    rows in the order of `indices`."""
    _check_certify(n0, n, alpha, batch_size, lipschitz)
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    device = torch.device("cpu" if device is None else device)
    smooth = SparsemaxSmooth(head.eval(), num_classes, sigma, r, device=device)
    settings = {**(parameters or {}), "sigma": float(sigma), "r": float(r), "n0": n0, "n": n, "alpha": alpha,
                "batch": batch_size, "bound": bound, "lipschitz": float(lipschitz),
                "examples": [int(i) for i in indices]}
    folder = run_folder(root, "certify_sparsemax", name, settings)
    return _certify_rows(folder, settings, seed, device, indices, z, labels,
                         lambda zi, g: smooth.certify(zi, n0, n, alpha, batch_size, generator=g[0], bound=bound,
                                                      estimate_generator=g[1]),
                         lipschitz, progress, "certify sparsemax")


# -------------------------------------------------------------------------------------------- attacks

def _epsilon_column(epsilon: float) -> str:
    return f"pgd_{float(epsilon):g}"


def _attack_loop(folder: Path, parameters: dict, seed: int, device, data, indices, epsilons, batch_size: int,
                 attack_batch, progress: bool, desc: str) -> pd.DataFrame:
    """Resumable batched loop: attack_batch(x, y, key) -> (clean (B,) bool, {epsilon: robust (B,) bool}), key
    the batch's first index (for its random streams); one row per example (idx, label, clean, pgd_<eps>...),
    appended after each batch."""
    check_seed(seed)
    begin_run(folder, parameters, seed=seed, device=device)
    columns = ("idx", "label", "clean", *[_epsilon_column(e) for e in epsilons])
    table = ResultsTable(folder / "results.tsv", columns)
    todo = [int(i) for i in indices if int(i) not in table.done]
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    for batch in track(batches, desc, unit="batch", disable=not progress):
        xs, ys = zip(*(data[i] for i in batch))
        x = torch.stack([torch.as_tensor(v) for v in xs]).to(device)
        y = torch.as_tensor(ys, dtype=torch.long, device=device)
        clean, robust = attack_batch(x, y, batch[0])
        rows = []
        for k, idx in enumerate(batch):
            row = {"idx": idx, "label": int(y[k]), "clean": int(clean[k])}
            row.update({_epsilon_column(e): int(robust[e][k]) for e in epsilons})
            rows.append(row)
        table.append(rows)
    finish_manifest(folder)
    return table.read().set_index("idx").loc[[int(i) for i in indices]].reset_index()


def _check_epsilons(epsilons) -> list[float]:
    values = [float(e) for e in epsilons]
    if not values or any(not math.isfinite(e) or e <= 0 for e in values):
        raise ValueError(f"epsilons must be a non-empty list of finite numbers > 0, got {epsilons!r}")
    return values


def pgd_robustness(root, name: str, model, data, indices, epsilons, *, steps: int, batch_size: int, clip=(0.0, 1.0),
                   parameters: dict | None = None, seed: int = 0, device=None, progress: bool = False) -> pd.DataFrame:
    """l2-PGD (rsbook.attacks.pgd, Madry et al. 2018; FaRS Table 2) on the full model f = l o e at each
    epsilon, from delta = 0 (deterministic), default step 2.5 epsilon / steps. One row per example:
    idx, label, clean (f(x) correct), pgd_<eps> (f(x_adv) correct). Resumable run folder
    root/pgd/<name>-<digest>."""
    device = torch.device("cpu" if device is None else device)
    epsilons = _check_epsilons(epsilons)
    steps = check_positive_int(steps, "steps")
    check_clip(clip)
    model = model.eval()
    settings = {**(parameters or {}), "epsilons": epsilons, "steps": steps, "clip": list(clip) if clip else None,
                "examples": [int(i) for i in indices]}

    def attack_batch(x, y, key):
        with torch.inference_mode():
            clean = (model(x).argmax(1) == y).cpu()
        robust = {}
        for e in epsilons:
            adversarial = pgd(model, x, y, e, norm="l2", steps=steps, clip=clip, random_start=False)
            with torch.inference_mode():
                robust[e] = (model(adversarial).argmax(1) == y).cpu()
        return clean, robust

    return _attack_loop(run_folder(root, "pgd", name, settings), settings, seed, device, data, indices, epsilons,
                        check_positive_int(batch_size, "batch_size"), attack_batch, progress, "l2-PGD")


def smoothed_pgd_robustness(root, name: str, model: FaRS, data, indices, epsilons, *, num_classes: int, sigma: float,
                            r: float, num_noise: int, n_predict: int, steps: int, batch_size: int,
                            clip=(0.0, 1.0), parameters: dict | None = None, seed: int = 0, device=None,
                            progress: bool = False) -> pd.DataFrame:
    """l2-PGD on the smoothed sparsemax classifier x -> argmax H(e(x)) (rsbook.fars.SparsemaxSmooth):
    the attack ascends -log of a Monte Carlo estimate of H_y(e(x + delta)) with `num_noise` draws per step
    (rsbook.fars.SmoothedSparsemaxModel; Salman et al. 2019's objective), then the smoothed classifier
    is evaluated at x_adv as SparsemaxSmooth.predict does it, argmax of the mean of h over n_predict fresh
    draws (vectorised over the examples). clean: the same prediction at x. Each batch draws the attack's
    noise from the stream (seed, 'attack', its first idx) and each evaluation from its own 'predict'
    stream (rsbook.streams). Rows as pgd_robustness.
    Resumable run folder root/pgd_sparsemax/<name>-<digest>."""
    device = torch.device("cpu" if device is None else device)
    epsilons = _check_epsilons(epsilons)
    check_positive_int(steps, "steps"), check_positive_int(num_noise, "num_noise"), check_clip(clip)
    model = model.eval()
    settings = {**(parameters or {}), "epsilons": epsilons, "steps": steps, "sigma": float(sigma), "r": float(r),
                "num_noise": num_noise, "n_predict": n_predict, "clip": list(clip) if clip else None,
                "examples": [int(i) for i in indices]}
    SparsemaxSmooth(model.head, num_classes, sigma, r, device=device)  # validates the arguments
    rows = max(1, (1 << 19) // check_positive_int(n_predict, "n_predict"))  # examples per evaluation chunk

    def predict(x, generator):
        """argmax of the Monte Carlo mean of h over n_predict draws per example (SparsemaxSmooth.predict,
        all examples of a chunk at once)."""
        evaluator = SmoothedSparsemaxModel(model.backbone, model.head, sigma, n_predict, r, generator=generator).eval()
        with torch.inference_mode():
            return torch.cat([evaluator(x[i:i + rows]).argmax(dim=1).cpu() for i in range(0, len(x), rows)])

    def attack_batch(x, y, key):
        noise = streams.generator(seed, "attack", key, device=device)
        target = SmoothedSparsemaxModel(model.backbone, model.head, sigma, num_noise, r, generator=noise).eval()
        clean = predict(x, streams.generator(seed, "predict", key, "clean", device=device)) == y.cpu()
        robust = {}
        for e in epsilons:
            adversarial = pgd(target, x, y, e, norm="l2", steps=steps, clip=clip, random_start=False)
            robust[e] = predict(adversarial, streams.generator(seed, "predict", key, f"{e:g}", device=device)) == y.cpu()
        return clean, robust

    return _attack_loop(run_folder(root, "pgd_sparsemax", name, settings), settings, seed, device, data, indices,
                        epsilons, check_positive_int(batch_size, "batch_size"), attack_batch, progress,
                        "l2-PGD (smoothed sparsemax)")


def robust_accuracy(frame: pd.DataFrame, epsilons) -> pd.Series:
    """Accuracy under attack from a pgd_robustness frame: index 'natural' (clean accuracy) then each
    epsilon as a string ('0.05', ...)."""
    values = {"natural": float(frame["clean"].mean())}
    values.update({f"{float(e):g}": float(frame[_epsilon_column(e)].mean()) for e in epsilons})
    return pd.Series(values, name="accuracy")


# ----------------------------------------------------------------------------------------- tables

def _certified_row(log: pd.DataFrame, epsilons) -> pd.Series:
    values = {"natural": float((log["correct"] == 1).mean())}  # abstentions are never correct
    values.update({f"{float(e):g}": float(certified_accuracy(log, [float(e)]).iloc[0]) for e in epsilons})
    return pd.Series(values)


def accuracy_table(results: dict, epsilons, kind: str = "certified") -> pd.DataFrame:
    """FaRS Table 1 (kind 'certified': results are certificate frames, columns correct and radius; natural
    = correct and not abstained, epsilon columns = certified accuracy, radius >= epsilon) or Table 2
    (kind 'empirical': results are pgd_robustness frames). results: {variant: frame}. Rows `variant`,
    columns `epsilon` ('natural', then f'{eps:g}'), fractions."""
    if kind not in ("certified", "empirical"):
        raise ValueError(f"kind must be 'certified' or 'empirical', got {kind!r}")
    rows = {variant: (_certified_row(frame, epsilons) if kind == "certified" else robust_accuracy(frame, epsilons))
            for variant, frame in results.items()}
    table = pd.DataFrame(rows).T
    table.index.name, table.columns.name = "variant", "epsilon"
    return table


def sanity_check(certified: pd.DataFrame, empirical: pd.DataFrame) -> pd.DataFrame:
    """FaRS Sec. 3's sanity check: accuracy under attack minus certified accuracy, per variant and epsilon
    (the 'natural' column compares clean accuracies). Every entry must be >= 0 when the certificates hold
    (for Monte Carlo certificates, up to their failure probability alpha per example)."""
    columns = [c for c in certified.columns if c in empirical.columns]
    return (empirical.loc[certified.index, columns] - certified[columns]).rename_axis(
        index=certified.index.name, columns=certified.columns.name)


def certificate_violations(certificates: pd.DataFrame, attacked: pd.DataFrame, epsilons) -> pd.Series:
    """Per epsilon, the number of examples certified correct at radius >= epsilon that the attack still
    broke (a direct refutation of a certificate; must be 0 for exact certificates and rare, at most
    about alpha per example, for Monte Carlo ones). Index: epsilon strings."""
    merged = certificates[["idx", "correct", "radius"]].merge(attacked, on="idx", how="inner")
    counts = {}
    for e in epsilons:
        certified = (merged["correct"] == 1) & (merged["radius"] >= float(e))
        counts[f"{float(e):g}"] = int((certified & (merged[_epsilon_column(e)] == 0)).sum())
    return pd.Series(counts, name="violations")


# ------------------------------------------------------------------------------------------- speed

def certification_times(model: FaRS, xs: torch.Tensor, *, sigma_head: float, sigma_input: float, r: float, n0: int,
                        n: int, alpha: float, batch_size: int, num_classes: int, seed: int = 0, deep_head=None,
                        device=None) -> pd.DataFrame:
    """Seconds per certified example, measured in one run on the same inputs xs (N, ...) and device:

    * 'FaRS closed form': backbone forward of the whole batch xs plus linear_certify (no sampling);
    * 'FaRS, CERTIFY on the linear head': per example, backbone forward then Smooth(head).certify(z, n0, n);
    * 'FaRS, sparsemax head (Monte Carlo)': per example, backbone then SparsemaxSmooth.certify(z, n0, n);
    * 'FaRS, CERTIFY on the deeper head': the same with `deep_head` (when given);
    * 'Cohen et al., CERTIFY on the whole network': Smooth(model).certify(x, n0, n) at sigma_input, the
      backbone evaluated on every one of the n0 + n noisy copies.

    Every method first runs once on xs[:1] (warm-up, not timed). Returns a frame indexed by method with
    columns seconds_per_example and speedup (Cohen's time over the method's)."""
    device = torch.device("cpu" if device is None else device)
    xs = torch.as_tensor(xs).to(device)
    model = model.eval().to(device)
    weight, bias = _head_tensors(model)
    generator = streams.generator(seed, "probe", "speed", device=device)
    whole = Smooth(model, num_classes, sigma_input, device=device)
    on_head = Smooth(model.head, num_classes, sigma_head, device=device)
    soft = SparsemaxSmooth(model.head, num_classes, sigma_head, r, device=device)
    deep = None if deep_head is None else Smooth(deep_head.eval().to(device), num_classes, sigma_head, device=device)

    def closed_form(inputs):
        with torch.inference_mode():
            linear_certify(model.backbone(inputs), weight, bias)

    def per_example(certifier):
        def run(inputs):
            for x in inputs:
                with torch.inference_mode():
                    z = model.backbone(x[None])[0]
                certifier(z)
        return run

    def cohen(inputs):
        for x in inputs:
            whole.certify(x, n0, n, alpha, batch_size, generator=generator)

    methods = {
        "FaRS closed form (linear head)": closed_form,
        "FaRS, CERTIFY on the linear head": per_example(
            lambda z: on_head.certify(z, n0, n, alpha, batch_size, generator=generator)),
        "FaRS, sparsemax head (Monte Carlo)": per_example(
            lambda z: soft.certify(z, n0, n, alpha, batch_size, generator=generator)),
    }
    if deep is not None:
        methods["FaRS, CERTIFY on the deeper head"] = per_example(
            lambda z: deep.certify(z, n0, n, alpha, batch_size, generator=generator))
    methods["Cohen et al., CERTIFY on the whole network"] = cohen
    for method in methods.values():  # warm-up on one example
        method(xs[:1])
    seconds = {name: timed(lambda m=method: m(xs), device) / len(xs) for name, method in methods.items()}
    frame = pd.DataFrame({"seconds_per_example": seconds})
    frame["speedup"] = frame.loc["Cohen et al., CERTIFY on the whole network", "seconds_per_example"] / \
        frame["seconds_per_example"]
    frame.index.name = "method"
    return frame


def lipschitz_check(backbone, xs, *, iterations: int = 30, steps: int = 100, seed: int = 0) -> dict:
    """Empirical lower bounds on the backbone's l2 Lipschitz constant on inputs xs (N, ...): the largest
    Jacobian spectral norm by power iteration, and the largest ratio ||e(x) - e(y)|| / ||x - y|| found by
    gradient ascent from pairs near xs (rsbook.fars.lipschitz). Both must be <= 1 (up to float rounding)."""
    backbone = backbone.eval()
    device = next(backbone.parameters()).device
    xs = torch.as_tensor(xs).to(device)
    generator = streams.generator(seed, "probe", "lipschitz", device=device)
    return {"jacobian": float(max_jacobian_norm(backbone, xs, iterations, generator)),
            "pairs": float(adversarial_lipschitz_ratio(backbone, xs, steps=steps, generator=generator))}


if __name__ == "__main__":
    import sys

    sys.exit(main())
