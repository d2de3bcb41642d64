"""Training a base classifier with Gaussian data augmentation (Cohen et al. 2019, Sec. 3.3, App. F).

Cross-entropy on x + eps, eps ~ N(0, noise_sd^2 I), after the dataset's own augmentation (random
crop and flip for CIFAR-10 and ImageNet, App. J.2); SGD with momentum and weight decay.

Every hyperparameter left unset takes the dataset's value from DEFAULTS, the one place they live:
CIFAR-10, ImageNet and Imagenette follow Cohen et al.'s recipe (COHEN: the authors' train.py, lr 0.1,
momentum 0.9, weight decay 1e-4, lr x 0.1 every 30 epochs, 90 epochs, at the batch size of their
experiments.MD); the 1,257 training digits get a small batch and a linear decay, so that two epochs
already give a useful model. The values used are recorded in the run's manifest.

The initial weights come from `seed`, and every epoch draws its shuffling, augmentation and noise
from generators seeded by (seed, epoch), and the checkpoint is rewritten atomically after every
epoch, so a run that is interrupted and resumed ends with the same weights as one that was not (on
deterministic kernels).

Under torchrun (`torchrun --nproc_per_node=K -m rsbook -- train ...`) the same run is data parallel
with DistributedDataParallel over K processes (rsbook.distributed): the batch is the global batch,
each rank's noise and augmentation come from streams keyed by (epoch, rank), rank 0 writes the
checkpoint in the single-process format, and the resume guarantee holds for the same K.
"""

from __future__ import annotations

import math
import numbers
import time
from pathlib import Path
from types import MappingProxyType

import torch
from torch.utils.data import DataLoader

from rsbook import distributed, streams
from rsbook._checks import check_nonnegative_int, check_output_path, check_positive_int, check_seed, check_sigma
from rsbook._io import append_epoch_row
from rsbook.data import load_dataset, num_classes
from rsbook.logs import run_folder
from rsbook.models import build, load_checkpoint, save_checkpoint
from rsbook.progress import echo, track

__all__ = ["train", "train_models", "training_defaults", "describe_settings", "COHEN", "DEFAULTS", "SCHEDULES",
           "CHECKPOINT", "TRAIN_LOG"]

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.tsv"
_LOG_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "test_noisy_accuracy", "seconds")

#: 'step': lr * gamma ** (epoch // lr_step), as torch's StepLR in the authors' train.py; a run may be
#: extended with more epochs. 'linear': lr * (1 - t / T) at optimizer step t of T = epochs * batches per
#: epoch, so `epochs` belongs to the run's parameters.
SCHEDULES = ("step", "linear")

#: Cohen et al.'s recipe: the defaults of locuslab/smoothing code/train.py, and batch 400 as in its
#: experiments.MD for CIFAR-10 and ImageNet (the paper's text states none of these).
COHEN = MappingProxyType({"schedule": "step", "epochs": 90, "batch_size": 400, "lr": 0.1, "momentum": 0.9,
                          "weight_decay": 1e-4, "lr_step": 30, "gamma": 0.1})

#: Per dataset, the value of every hyperparameter a caller leaves unset (see training_defaults). Digits:
#: measured on 2 CPU cores, `rsbook train --dataset digits --arch digits_cnn --noise-sd 0.25 --epochs 2`
#: reaches a noisy test accuracy above 0.9 in seconds (tests/test_train.py checks the accuracy).
DEFAULTS = MappingProxyType({
    "digits": MappingProxyType({"schedule": "linear", "epochs": 10, "batch_size": 2, "lr": 0.1, "momentum": 0.0,
                                "weight_decay": 1e-4, "lr_step": None, "gamma": None}),
    "cifar10": COHEN,
    "imagenet": COHEN,
    "imagenette": COHEN,
})

_HYPERPARAMETERS = tuple(COHEN)


def _check_real(value, name: str, ok, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be a finite number {expected}, got {value!r}")
    return float(value)


def training_defaults(dataset: str, **given) -> dict:
    """The hyperparameters a run on `dataset` uses: {schedule, epochs, batch_size, lr, momentum,
    weight_decay, lr_step, gamma}, where every value given (not None) is kept and checked.

    The schedule is the one given, else 'step' when lr_step or gamma is given, else the dataset's.
    Unset values come from DEFAULTS[dataset] when that is the dataset's own schedule, otherwise from
    COHEN (so naming a step size keeps Cohen's optimizer settings, as before per-dataset defaults).
    lr_step and gamma are None under the linear schedule. Raises ValueError naming a bad value.
    """
    unknown = sorted(set(given) - set(_HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; expected some of {list(_HYPERPARAMETERS)}")
    if dataset not in DEFAULTS:
        raise ValueError(f"dataset must be one of {sorted(DEFAULTS)} to train on it, got {dataset!r}")
    given = {k: v for k, v in given.items() if v is not None}
    step_only = sorted({"lr_step", "gamma"} & set(given))
    schedule = given.get("schedule") or ("step" if step_only else DEFAULTS[dataset]["schedule"])
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "linear" and step_only:
        raise ValueError(f"{' and '.join(step_only)} belong to the step schedule; the linear schedule decays to 0 "
                         "over the run: leave them unset or choose schedule='step'")
    base = DEFAULTS[dataset] if schedule == DEFAULTS[dataset]["schedule"] else COHEN
    values = {**base, **given, "schedule": schedule}
    if schedule == "linear":
        values["lr_step"] = values["gamma"] = None
    values["epochs"] = check_positive_int(values["epochs"], "epochs")
    values["batch_size"] = check_positive_int(values["batch_size"], "batch_size")
    values["lr"] = _check_real(values["lr"], "lr", lambda v: v > 0, "> 0")
    values["momentum"] = _check_real(values["momentum"], "momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    values["weight_decay"] = _check_real(values["weight_decay"], "weight_decay", lambda v: v >= 0, ">= 0")
    if values["gamma"] is not None:
        values["gamma"] = _check_real(values["gamma"], "gamma", lambda v: 0 < v <= 1, "in (0, 1]")
    if values["lr_step"] is not None:
        values["lr_step"] = check_positive_int(values["lr_step"], "lr_step")
    return values


def _learning_rate(settings: dict, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of epoch `epoch` (0-based)."""
    if settings["schedule"] == "step":
        return settings["lr"] * settings["gamma"] ** (epoch // settings["lr_step"])
    done = epoch * steps_per_epoch + step
    return settings["lr"] * (1 - done / (settings["epochs"] * steps_per_epoch))


def _noisy_accuracy(model, dataset, batch_size, noise_sd, device, generator, workers) -> float:
    """Accuracy of `model` on `dataset` plus N(0, noise_sd^2) noise from `generator`; under a
    distributed run each rank takes its share (rsbook.distributed.shard) and the counts are summed."""
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for inputs, labels in DataLoader(distributed.shard(dataset), batch_size=batch_size, shuffle=False,
                                         num_workers=workers):
            inputs, labels = inputs.to(device), labels.to(device)
            noise = torch.randn(inputs.shape, generator=generator, device=device) * noise_sd
            correct += int((model(inputs + noise).argmax(1) == labels).sum())
            total += len(labels)
    correct, total = distributed.all_sum([correct, total], device)
    return correct / max(total, 1)


def describe_settings(settings: dict) -> str:
    """One line naming the hyperparameters of `settings` (training_defaults' result, or a DEFAULTS entry)."""
    schedule = (f"lr x {settings['gamma']:g} every {settings['lr_step']} epochs" if settings["schedule"] == "step"
                else "lr decaying linearly to 0")
    return (f"{settings['epochs']} epochs, batch {settings['batch_size']}, SGD lr {settings['lr']:g}, momentum "
            f"{settings['momentum']:g}, weight decay {settings['weight_decay']:g}, {schedule}")


def train(dataset: str, arch: str, noise_sd: float, epochs: int | None, out, *, seed: int = 0,
          batch_size: int | None = None, lr: float | None = None, momentum: float | None = None,
          weight_decay: float | None = None, lr_step: int | None = None, gamma: float | None = None,
          schedule: str | None = None, workers: int = 0, device=None, evaluate: bool = True,
          progress: bool = True) -> Path:
    """Train `arch` on `dataset` with Gaussian noise augmentation at `noise_sd` for `epochs`
    epochs into the folder `out`; return the checkpoint path.

    Hyperparameters left None (epochs included) take the dataset's defaults (training_defaults,
    DEFAULTS). out/checkpoint.pt ({arch, dataset, state_dict, noise_sd, epoch, optimizer}) is
    rewritten after each epoch; out/train_log.tsv gets one row per epoch (lr at the epoch's first
    step, mean training loss and accuracy on noisy inputs, accuracy of the base classifier on noisy
    test inputs); out/manifest.json records the hyperparameters used and the world size. If
    out/checkpoint.pt exists the run resumes after its epoch (the parameters must match; under the
    step schedule `epochs` may grow, so a finished run can be extended; under the linear schedule
    `epochs` shapes the schedule and is a parameter). `progress`: a bar per epoch on a terminal,
    plain lines otherwise, and one line per epoch (rsbook.progress).

    Under torchrun (a process group of world size K > 1, e.g. `torchrun --nproc_per_node=K -m rsbook
    -- train ...`) the run is data parallel (rsbook.distributed): DistributedDataParallel, batch_size
    is the global batch (B / K per rank; a B that K does not divide is refused before anything is
    written), each rank's noise and augmentation streams keyed by (epoch, rank), per-rank BatchNorm
    with rank 0's running statistics, the training loss and accuracy and the noisy test accuracy
    summed over the ranks (each evaluates its share of the test set with its own 'evaluate' stream),
    and rank 0 writing the checkpoint (the single-process format), the log and the manifest. The
    manifest records K (like the device, not a parameter: a finished run is read back by any number
    of processes), a run with epochs left is resumed only by K processes (else ValueError), and a
    run interrupted and resumed with the same K ends with the weights of an uninterrupted one (on
    deterministic kernels). A CUDA `device` means each rank's own GPU, cuda:LOCAL_RANK.

    Every argument is checked before the run folder is begun: a refused one (ValueError naming it) leaves
    nothing behind.
    """
    noise_sd = float(noise_sd)
    if noise_sd != 0:
        check_sigma(noise_sd, "noise_sd")
    settings = training_defaults(dataset, schedule=schedule, epochs=epochs, batch_size=batch_size, lr=lr,
                                 momentum=momentum, weight_decay=weight_decay, lr_step=lr_step, gamma=gamma)
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    seed = check_seed(seed)
    workers = check_nonnegative_int(workers, "workers")
    out = check_output_path(out, "out", folder=True)
    rank, world = distributed.rank_world()
    distributed.per_rank_batch(batch_size, world)
    device = distributed.local_device(device)
    show = progress and rank == 0
    classes = num_classes(dataset)
    train_set = load_dataset(dataset, "train", augment=True)
    test_set = load_dataset(dataset, "test") if evaluate else None
    parameters = {"dataset": dataset, "arch": arch, "noise_sd": noise_sd,
                  **{k: v for k, v in settings.items() if k != "epochs"}}
    if settings["schedule"] == "linear":
        parameters["epochs"] = epochs

    with streams.seeded_global(seed, "init"):
        net = build(arch, classes, dataset=dataset).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                                weight_decay=settings["weight_decay"])
    checkpoint_path, log_path = out / CHECKPOINT, out / TRAIN_LOG
    start_epoch = distributed.start_run(out, parameters, seed=seed, device=device, epochs=epochs,
                                        checkpoint=checkpoint_path, log=log_path)
    if show:
        echo(f"train {arch} on {dataset} at noise_sd {noise_sd:g}: {describe_settings(settings)}"
             + (f", on {world} processes (batch {batch_size // world} each)" if world > 1 else ""))
    if start_epoch:
        resumed, payload = load_checkpoint(checkpoint_path, classes, device=device)
        net.load_state_dict(resumed.state_dict())
        if payload.get("optimizer") is not None:
            optimizer.load_state_dict(payload["optimizer"])
    distributed.barrier()  # every rank has read the checkpoint before rank 0 rewrites it
    model = distributed.wrap(net, device)
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        loader = distributed.epoch_loader(train_set, batch_size, epoch, seed=seed, workers=workers)
        noise_gen = streams.generator(seed, "train", *distributed.rank_key(epoch), device=device)
        first_lr = _learning_rate(settings, epoch, 0, len(loader))
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = track(loader, f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False, every=0, final=False,
                        disable=not show)
        for step, (inputs, labels) in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(settings, epoch, step, len(loader))
            inputs, labels = inputs.to(device), labels.to(device)
            inputs = inputs + torch.randn(inputs.shape, generator=noise_gen, device=device) * noise_sd
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            batches.set_postfix(loss=f"{loss_sum / seen:.3f}")
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], device)
        distributed.sync_buffers(model)
        test_accuracy = float("nan")
        if evaluate:
            eval_gen = streams.generator(seed, "evaluate", *distributed.rank_key(epoch), device=device)
            test_accuracy = _noisy_accuracy(net, test_set, batch_size, noise_sd, device, eval_gen, workers)
        if rank == 0:
            save_checkpoint(checkpoint_path, net, arch, dataset, noise_sd, epoch + 1, optimizer)
        seconds = time.perf_counter() - started
        if rank == 0:
            append_epoch_row(log_path, _LOG_COLUMNS, (epoch + 1, first_lr, loss_sum / seen, correct / seen,
                                                      test_accuracy, seconds))
        if show:
            echo(f"epoch {epoch + 1}/{epochs}: lr {first_lr:g}, loss {loss_sum / seen:.4f}, "
                 f"noisy train acc {correct / seen:.4f}, noisy test acc {test_accuracy:.4f}, {seconds:.1f} s")
    distributed.finish_run(out)
    return checkpoint_path


def train_models(root, dataset: str, arch: str, sigmas, *, epochs: int | None, seed: int = 0,
                 progress: bool = False, **train_kwargs) -> dict:
    """Train (or resume training) one base classifier per noise level in `sigmas` with Gaussian
    data augmentation (rsbook.train.train), each in the run folder root/train/<name>-<digest> whose
    digest covers the hyperparameters actually used (training_defaults), so a change of defaults
    starts new runs. Returns {sigma: checkpoint path}."""
    hyper = {k: train_kwargs[k] for k in _HYPERPARAMETERS if k in train_kwargs}
    settings = training_defaults(dataset, **{**hyper, "epochs": epochs})
    identity = {k: v for k, v in settings.items() if k != "epochs" or settings["schedule"] == "linear"}
    checkpoints = {}
    for sigma in sigmas:
        parameters = {"dataset": dataset, "arch": arch, "noise_sd": float(sigma), "seed": seed, **identity}
        folder = run_folder(root, "train", f"{arch}_{dataset}_noise{float(sigma):g}", parameters)
        checkpoints[float(sigma)] = train(dataset, arch, sigma, epochs, folder, seed=seed, progress=progress,
                                          **train_kwargs)
    return checkpoints
