"""Base classifiers and their checkpoints.

A checkpoint is a torch file holding {arch, dataset, state_dict, noise_sd, epoch, optimizer}.
A bare state_dict (as the RANCER authors release) is also accepted when its architecture is named.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rsbook._io import atomic_write

__all__ = ["ARCHITECTURES", "build", "save_checkpoint", "load_checkpoint", "DigitsCNN", "RancerMLP"]


class DigitsCNN(nn.Module):
    """A small CNN for 1x8x8 digits: two 3x3 convolutions, a 2x2 max-pool, two linear layers."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class RancerMLP(nn.Module):
    """The RANCER thesis's 2-D classifier: Linear(2, 3) -> tanh -> Linear(3, 2) -> log-softmax."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.fc2 = nn.Linear(3, num_classes)

    def forward(self, x):
        return torch.log_softmax(self.fc2(torch.tanh(self.fc1(x))), dim=1)


ARCHITECTURES = {"digits_cnn": DigitsCNN, "rancer_mlp": RancerMLP}


def build(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised base classifier of architecture `arch`."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    return ARCHITECTURES[arch](num_classes=num_classes)


def save_checkpoint(path, model: nn.Module, arch: str, dataset: str, noise_sd: float, epoch: int, optimizer=None):
    """Write a checkpoint atomically (temporary file, then rename)."""
    payload = {
        "arch": arch,
        "dataset": dataset,
        "state_dict": model.state_dict(),
        "noise_sd": float(noise_sd),
        "epoch": int(epoch),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
    }
    with atomic_write(path, "wb") as out:
        torch.save(payload, out)


def load_checkpoint(path, num_classes: int, arch: str | None = None, device=None) -> tuple[nn.Module, dict]:
    """(model in eval mode on `device`, checkpoint dict) from a checkpoint file.

    A file holding a bare state_dict needs `arch`; a full checkpoint's arch must agree with it
    when both are given.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {path} is not a readable torch file ({err})") from err
    if not isinstance(payload, dict):
        raise ValueError(f"checkpoint {path} holds a {type(payload).__name__}, expected a dict")
    if "state_dict" in payload:
        stored = payload.get("arch")
        if arch is not None and stored is not None and arch != stored:
            raise ValueError(f"checkpoint {path} is a {stored!r} model, but arch {arch!r} was requested")
        arch, state = arch or stored, payload["state_dict"]
    else:
        if arch is None:
            raise ValueError(f"checkpoint {path} holds a bare state_dict; name its architecture (arch / --arch)")
        state, payload = payload, {"arch": arch, "state_dict": payload}
    model = build(arch, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not fit architecture {arch!r}: {err}") from err
    return model.to(torch.device("cpu" if device is None else device)).eval(), payload
