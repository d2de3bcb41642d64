"""Training a base classifier with Gaussian data augmentation (Cohen et al. 2019, Sec. 3.3, App. F).

Cross-entropy on x + eps, eps ~ N(0, noise_sd^2 I), after the dataset's own augmentation (random
crop and flip for CIFAR-10 and ImageNet, App. J.2); SGD with momentum and weight decay and a step
learning-rate schedule (by default lr 0.1, x0.1 every 30 epochs, as in the authors' train.py).

The initial weights come from `seed`, and every epoch draws its shuffling, augmentation and noise
from generators seeded by (seed, epoch),
and the checkpoint is rewritten atomically after every epoch, so a run that is interrupted and
resumed ends with the same weights as one that was not (on deterministic kernels).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from rsbook import streams
from rsbook._checks import check_positive_int, check_seed, check_sigma
from rsbook._io import append_epoch_row, trim_epoch_rows
from rsbook.data import load_dataset, num_classes
from rsbook.logs import run_folder, run_manifest
from rsbook.models import build, load_checkpoint, save_checkpoint

__all__ = ["train", "train_models", "CHECKPOINT", "TRAIN_LOG"]

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.tsv"
_LOG_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "test_noisy_accuracy", "seconds")


def _learning_rate(lr: float, epoch: int, lr_step: int, gamma: float) -> float:
    return lr * gamma ** (epoch // lr_step)


def _noisy_accuracy(model, loader, noise_sd, device, generator) -> float:
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            noise = torch.randn(inputs.shape, generator=generator, device=device) * noise_sd
            correct += int((model(inputs + noise).argmax(1) == labels).sum())
            total += len(labels)
    return correct / max(total, 1)


def train(dataset: str, arch: str, noise_sd: float, epochs: int, out, *, seed: int = 0, batch_size: int = 256,
          lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4, lr_step: int = 30, gamma: float = 0.1,
          workers: int = 0, device=None, evaluate: bool = True, progress: bool = True) -> Path:
    """Train `arch` on `dataset` with Gaussian noise augmentation at `noise_sd` for `epochs`
    epochs into the folder `out`; return the checkpoint path.

    out/checkpoint.pt ({arch, dataset, state_dict, noise_sd, epoch, optimizer}) is rewritten after
    each epoch; out/train_log.tsv gets one row per epoch (lr, mean training loss and accuracy on
    noisy inputs, accuracy of the base classifier on noisy test inputs); out/manifest.json records
    the parameters. If out/checkpoint.pt exists the run resumes after its epoch (the parameters
    must match; `epochs` may grow, so a finished run can be extended).
    """
    noise_sd = float(noise_sd)
    if noise_sd != 0:
        check_sigma(noise_sd, "noise_sd")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr_step = check_positive_int(lr_step, "lr_step")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    seed = check_seed(seed)
    device = torch.device("cpu" if device is None else device)
    out = Path(out)
    classes = num_classes(dataset)
    train_set = load_dataset(dataset, "train", augment=True)
    test_set = load_dataset(dataset, "test") if evaluate else None
    parameters = {"dataset": dataset, "arch": arch, "noise_sd": noise_sd, "batch_size": batch_size, "lr": lr,
                  "momentum": momentum, "weight_decay": weight_decay, "lr_step": lr_step, "gamma": gamma}

    with streams.seeded_global(seed, "init"):
        model = build(arch, classes, dataset=dataset).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    checkpoint_path, log_path = out / CHECKPOINT, out / TRAIN_LOG
    with run_manifest(out, parameters, seed=seed, device=device, epochs=epochs):
        start_epoch = 0
        if checkpoint_path.exists():
            resumed, payload = load_checkpoint(checkpoint_path, classes, device=device)
            model.load_state_dict(resumed.state_dict())
            if payload.get("optimizer") is not None:
                optimizer.load_state_dict(payload["optimizer"])
            start_epoch = int(payload["epoch"])
        trim_epoch_rows(log_path, start_epoch)
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            current_lr = _learning_rate(lr, epoch, lr_step, gamma)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            streams.seed_global(seed, "augment", epoch)
            order = streams.generator(seed, "shuffle", epoch)
            noise_gen = streams.generator(seed, "train", epoch, device=device)
            loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=order, num_workers=workers,
                                drop_last=False)
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False, disable=not progress)
            for inputs, labels in bar:
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
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
            test_accuracy = float("nan")
            if evaluate:
                test_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=workers)
                eval_gen = streams.generator(seed, "evaluate", epoch, device=device)
                test_accuracy = _noisy_accuracy(model, test_loader, noise_sd, device, eval_gen)
            save_checkpoint(checkpoint_path, model, arch, dataset, noise_sd, epoch + 1, optimizer)
            append_epoch_row(log_path, _LOG_COLUMNS, (epoch + 1, current_lr, loss_sum / seen, correct / seen,
                                                      test_accuracy, time.perf_counter() - started))
            if progress:
                tqdm.write(f"epoch {epoch + 1}/{epochs}: lr {current_lr:g}, loss {loss_sum / seen:.4f}, "
                           f"noisy train acc {correct / seen:.4f}, noisy test acc {test_accuracy:.4f}")
    return checkpoint_path


def train_models(root, dataset: str, arch: str, sigmas, *, epochs: int, seed: int = 0, progress: bool = False,
                 **train_kwargs) -> dict:
    """Train (or resume training) one base classifier per noise level in `sigmas` with Gaussian
    data augmentation (rsbook.train.train). Returns {sigma: checkpoint path}."""
    checkpoints = {}
    for sigma in sigmas:
        parameters = {"dataset": dataset, "arch": arch, "noise_sd": float(sigma), "seed": seed, **train_kwargs}
        folder = run_folder(root, "train", f"{arch}_{dataset}_noise{float(sigma):g}", parameters)
        checkpoints[float(sigma)] = train(dataset, arch, sigma, epochs, folder, seed=seed, progress=progress,
                                          **train_kwargs)
    return checkpoints
