"""The networks of the relaxation chapter and their training: normal, with Gaussian noise (for
randomized smoothing), and robust through the dual bound (LP slides, "Robust Training via Duality";
Wong & Kolter 2018, Sec. 3).

Robust training minimises, instead of the loss at x, a loss of the dual lower bounds m_t of the
margins over the ε-ball: an upper bound on the worst-case loss in the ball, differentiable in θ
because the dual bound is a closed-form function of the weights (rsbook.relax.dual). Two losses:

  'ce'     Wong & Kolter's robust cross-entropy L(−J(x), y), J_t = m_t (J_y = 0): the cross-entropy
           of the logits of a worst case that the dual bound certifies;
  'hinge'  the slides' margin loss max_{t≠y} max(−m_t, 0) ("Robust Training with Lower Bounds").

Beside the dual bound, two cheaper bounds train networks for contrast: interval bound propagation
('ibp', Gowal et al. 2018) and CROWN-IBP ('crown-ibp', Zhang et al. 2020, "Towards Stable and
Efficient Training of Verifiably Robust Neural Networks", Sec. 3): interval bounds on every hidden
layer and CROWN's backward pass (rsbook.relax.crown, adaptive lower slopes) for the margins, mixed
with the interval margins as β·m_CROWN-IBP + (1 − β)·m_IBP, β falling linearly from 1 to 0 over the
ε ramp (their β_start = 1, β_end = 0). A convex combination of two lower bounds is a lower bound, so
the loss is still an upper bound on the worst-case loss. Their κ-mixing of the natural loss is left
out, as it is for the other two bounds here.

ε grows linearly from ε/ramp_steps to its target over the first `ramp_epochs` epochs (per batch),
as Wong & Kolter (2018) and Wong et al. (2018) schedule it; a large ε at initialisation makes almost
every ReLU unstable and the bound vacuous.

Checkpoints ({spec, state_dict, optimizer, epoch}) are rewritten atomically after every epoch and
every epoch draws its order and noise from generators seeded by (seed, epoch), so an interrupted
run resumes to the same weights.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from rsbook import streams
from rsbook._checks import check_positive_int
from rsbook._io import append_epoch_row, atomic_write, read_torch_dict, trim_epoch_rows
from rsbook.logs import begin_run, finish_manifest
from rsbook.progress import track
from rsbook.relax.crown import crown_margins
from rsbook.relax.dual import dual_margins, intermediate_bounds
from rsbook.relax.interval import NORMS, interval_bounds, interval_margins
from rsbook.relax.network import affine_network

__all__ = ["ARCHITECTURES", "MODES", "ROBUST", "LOSSES", "mlp", "conv_small", "build_model", "epsilon_schedule",
           "crown_ibp_beta", "robust_loss",
           "train_model", "train_models", "load_model", "clean_accuracy", "CHECKPOINT", "TRAIN_LOG"]

MODES = ("standard", "noise", "dual", "ibp", "crown-ibp")
ROBUST = ("dual", "ibp", "crown-ibp")
"""The modes that train through a margin lower bound (robust_loss's methods)."""
LOSSES = ("ce", "hinge")
CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.tsv"
_LOG_COLUMNS = ("epoch", "eps", "loss", "train_error", "robust_error", "seconds")


def mlp(input_shape, num_classes: int = 10, hidden=(100, 100)) -> nn.Sequential:
    """Flatten → (Linear → ReLU) per hidden width → Linear: the chapter's MLP (two hidden layers of 100)."""
    widths = [math.prod(input_shape), *(check_positive_int(h, "hidden") for h in hidden)]
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], check_positive_int(num_classes, "num_classes")))


def conv_small(input_shape=(3, 32, 32), num_classes: int = 10, hidden=None) -> nn.Sequential:
    """Wong & Kolter's small convolutional network (Wong et al. 2018, CIFAR-10): Conv(16, 4×4, stride 2)
    → ReLU → Conv(32, 4×4, stride 2) → ReLU → Linear(100) → ReLU → Linear(num_classes), padding 1."""
    channels, height, width = input_shape
    if height % 4 or width % 4:
        raise ValueError(f"conv_small needs height and width divisible by 4, got input_shape {tuple(input_shape)}")
    return nn.Sequential(
        nn.Conv2d(channels, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), 100), nn.ReLU(), nn.Linear(100, num_classes))


ARCHITECTURES = {"mlp": mlp, "conv_small": conv_small}


def build_model(arch: str, input_shape, num_classes: int, hidden=(100, 100)) -> nn.Sequential:
    """A freshly initialised `arch` ('mlp' or 'conv_small'); weights from torch's global generator."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    return ARCHITECTURES[arch](tuple(input_shape), num_classes, tuple(hidden) if hidden is not None else None)


def epsilon_schedule(step: int, ramp_steps: int, eps: float) -> float:
    """ε at training step `step` (0-based): eps · min(1, (step + 1) / ramp_steps); eps when ramp_steps is 0."""
    if ramp_steps <= 0:
        return float(eps)
    return float(eps) * min(1.0, (step + 1) / ramp_steps)


def crown_ibp_beta(step: int, ramp_steps: int) -> float:
    """CROWN-IBP's β at training step `step` (0-based): 1 − epsilon_schedule's fraction of the ramp, so 1 −
    1/ramp_steps at the first step and 0 from the end of the ramp on (Zhang et al. 2020, β from 1 to 0)."""
    return 1.0 - epsilon_schedule(step, ramp_steps, 1.0)


def robust_loss(net, x: torch.Tensor, labels: torch.Tensor, eps: float, norm: str = "linf", loss: str = "ce",
                bounds: str = "dual", method: str = "dual", beta: float = 1.0):
    """(mean robust loss, fraction of examples not certified) of a batch under a margin lower bound.

    x: (B, *input_shape), labels: (B,). The lower bound J (B, K) of the margins f_y − f_t over the
    ε-ball is Wong & Kolter's dual bound (method 'dual') with intermediate bounds `bounds` ('dual' as
    Wong & Kolter, 'ibp' or 'ibp+dual'), interval bound propagation (method 'ibp', Gowal et al.
    2018), or CROWN-IBP (method 'crown-ibp', Zhang et al. 2020): beta · CROWN on interval bounds +
    (1 − beta) · IBP, beta in [0, 1]; differentiable in the network's weights. loss: 'ce' or 'hinge'."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if method not in ROBUST:
        raise ValueError(f"method must be one of {ROBUST}, got {method!r}")
    if method == "crown-ibp" and not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1] (the weight of CROWN-IBP against IBP), got {beta!r}")
    network = affine_network(net, x.shape[1:], dtype=x.dtype, detach=False)
    flat = x.reshape(x.shape[0], -1)
    classes = network.num_classes
    spec = F.one_hot(labels, classes).to(x.dtype).unsqueeze(1) - torch.eye(classes, dtype=x.dtype, device=x.device)
    if method == "dual":
        margins = dual_margins(network, flat, eps, norm, spec, intermediate_bounds(network, flat, eps, norm, bounds))
    else:
        boxes = interval_bounds(network, flat, eps, norm)
        margins = interval_margins(network, flat, eps, norm, spec, boxes)
        if method == "crown-ibp" and beta > 0:
            margins = beta * crown_margins(network, flat, eps, norm, spec, boxes) + (1 - beta) * margins
    others = torch.ones_like(margins, dtype=torch.bool).scatter_(1, labels[:, None], False)
    not_certified = ((margins <= 0) & others).any(1).to(x.dtype).mean()
    if loss == "ce":
        value = F.cross_entropy(-margins, labels)
    else:
        value = torch.where(others, torch.relu(-margins), torch.zeros_like(margins)).amax(1).mean()
    return value, float(not_certified)


def _save(path: Path, spec: dict, model, optimizer, epoch: int):
    payload = {"spec": spec, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
    with atomic_write(path, "wb") as out:
        torch.save(payload, out)


def load_model(path, device=None) -> nn.Sequential:
    """The network saved by train_model at `path` (its checkpoint.pt or the run folder), in eval mode."""
    path = Path(path)
    path = path / CHECKPOINT if path.is_dir() else path
    payload = read_torch_dict(path)
    spec = payload["spec"]
    model = build_model(spec["arch"], spec["input_shape"], spec["num_classes"], spec.get("hidden"))
    model.load_state_dict(payload["state_dict"])
    return model.to(torch.device("cpu" if device is None else device)).eval()


def clean_accuracy(net, dataset, indices=None, batch_size: int = 500) -> float:
    """Fraction of dataset[i] (i in indices, default all) that the network classifies correctly."""
    indices = range(len(dataset)) if indices is None else list(indices)
    device = next(net.parameters()).device
    correct = 0
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            chunk = [dataset[i] for i in list(indices)[start:start + batch_size]]
            x = torch.stack([torch.as_tensor(c[0]) for c in chunk]).to(device)
            labels = torch.as_tensor([int(c[1]) for c in chunk], device=device)
            correct += int((net(x).argmax(1) == labels).sum())
    return correct / max(len(indices), 1)


def train_model(out, dataset, arch: str, input_shape, num_classes: int, mode: str = "standard", *, epochs: int,
                hidden=(100, 100), batch_size: int = 64, lr: float = 1e-3, eps: float = 0.0, norm: str = "linf",
                ramp_epochs: int = 0, loss: str = "ce", bounds: str = "dual", sigma: float = 0.0, seed: int = 0,
                device=None, progress: bool = False) -> Path:
    """Train `arch` on `dataset` (a sequence of (x, label)) into the folder `out`; return the checkpoint.

    mode: 'standard' (cross-entropy at x), 'noise' (cross-entropy at x + N(0, sigma² I), the base
    classifier of randomized smoothing, Cohen et al. 2019 Sec. 3.3), 'dual' (robust_loss at the
    scheduled ε with `norm`, `loss`, `bounds`), 'ibp' (the same with interval bounds) or 'crown-ibp'
    (CROWN-IBP, its β = 1 − the ramp's progress: 1 at the first step, 0 once ε reaches its target).
    Adam with learning rate lr. out/train_log.tsv gets one row per epoch (ε, mean loss, clean training
    error, robust error under the training bound for the modes in ROBUST), out/manifest.json the
    parameters. An existing checkpoint with the same parameters resumes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    if mode in ROBUST and not eps > 0:
        raise ValueError(f"eps must be > 0 for {mode} training, got {eps!r}")
    if mode == "noise" and not sigma > 0:
        raise ValueError(f"sigma must be > 0 for noise training, got {sigma!r}")
    if mode in ROBUST and (loss not in LOSSES or norm not in NORMS):
        raise ValueError(f"loss must be one of {LOSSES} and norm one of {NORMS}, got {loss!r}, {norm!r}")
    device = torch.device("cpu" if device is None else device)
    out = Path(out)
    spec = {"arch": arch, "input_shape": [int(s) for s in input_shape], "num_classes": int(num_classes),
            "hidden": [int(h) for h in hidden] if hidden is not None else None}
    parameters = {**spec, "mode": mode, "batch_size": batch_size, "lr": lr, "eps": float(eps), "norm": norm,
                  "ramp_epochs": int(ramp_epochs), "loss": loss, "bounds": bounds, "sigma": float(sigma)}
    with streams.seeded_global(seed, "init"):
        model = build_model(arch, input_shape, num_classes, hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    checkpoint, log = out / CHECKPOINT, out / TRAIN_LOG
    begin_run(out, parameters, seed=seed, device=device, epochs=epochs)
    start = 0
    if checkpoint.exists():
        payload = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        start = int(payload["epoch"])
    trim_epoch_rows(log, start)
    steps_per_epoch = math.ceil(len(dataset) / batch_size)
    ramp_steps = int(ramp_epochs) * steps_per_epoch
    for epoch in range(start, epochs):
        started = time.perf_counter()
        order = streams.generator(seed, "shuffle", epoch)
        noise = streams.generator(seed, "train", epoch, device=device)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=order)
        model.train()
        totals = {"loss": 0.0, "error": 0.0, "robust": 0.0, "seen": 0}
        eps_now = 0.0
        for step, (inputs, labels) in enumerate(track(loader, f"epoch {epoch + 1}/{epochs}", unit="batch",
                                                      leave=False, every=0, disable=not progress)):
            inputs, labels = inputs.to(device), labels.to(device)
            robust = float("nan")
            if mode in ROBUST:
                step_index = epoch * steps_per_epoch + step
                eps_now = epsilon_schedule(step_index, ramp_steps, eps)
                value, robust = robust_loss(model, inputs, labels, eps_now, norm, loss, bounds, method=mode,
                                            beta=crown_ibp_beta(step_index, ramp_steps))
                logits = model(inputs)
            else:
                noisy = inputs + sigma * torch.randn(inputs.shape, generator=noise, device=device) if mode == "noise" \
                    else inputs
                logits = model(noisy)
                value = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            count = len(labels)
            totals["loss"] += float(value.detach()) * count
            totals["error"] += float((logits.argmax(1) != labels).float().sum())
            totals["robust"] += robust * count
            totals["seen"] += count
        seen = totals["seen"]
        _save(checkpoint, spec, model, optimizer, epoch + 1)
        append_epoch_row(log, _LOG_COLUMNS, (epoch + 1, float(eps_now), totals["loss"] / seen,
                                             totals["error"] / seen, totals["robust"] / seen,
                                             time.perf_counter() - started))
    finish_manifest(out)
    model.eval()
    return checkpoint


def train_models(root, dataset_name: str, dataset, arch: str, input_shape, num_classes: int, models: dict, *,
                 seed: int = 0, device=None, progress: bool = False, **common) -> dict:
    """Train (or resume) on `dataset` (named dataset_name) one network per entry of `models` ({name:
    train_model keyword arguments,
    e.g. {"mode": "dual", "eps": 0.1, "epochs": 20}}), each in its own run folder
    root/train/<name>-<digest of its parameters> (rsbook.logs.run_folder); `common` keyword
    arguments apply to every model unless overridden. Returns {name: checkpoint path}."""
    from rsbook.logs import run_folder

    checkpoints = {}
    for name, settings in models.items():
        arguments = {**common, **settings}
        parameters = {"arch": arch, "input_shape": list(input_shape), "num_classes": int(num_classes), "seed": seed,
                      "dataset": dataset_name, "size": len(dataset), **arguments}
        folder = run_folder(root, "train", name, parameters)
        checkpoints[name] = train_model(folder, dataset, arch, input_shape, num_classes, seed=seed, device=device,
                                        progress=progress, **arguments)
    return checkpoints
