"""Base classifiers and their checkpoints.

Architectures (ARCHITECTURES, built by `build(arch, num_classes, dataset)`):
  digits_cnn       DigitsCNN, for 1x8x8 digits
  rancer_mlp       RancerMLP, the RANCER thesis's 2-D classifier
  cifar_resnet20   CIFAR ResNet-20 (rsbook.models.cifar_resnet), 3x32x32 input
  cifar_resnet110  CIFAR ResNet-110, Cohen et al. 2019's CIFAR-10 base classifier (App. J.2)
  resnet50         torchvision's ResNet-50, 3x224x224 input, Cohen et al.'s ImageNet base classifier;
                   always randomly initialised (no pretrained weights are ever downloaded)
  cifar_resnet18   ResNet-18 with a CIFAR stem, the RANCER thesis's CIFAR-10 base classifier

Every model takes inputs in the dataset's own units ([0, 1] pixels for images). For cifar10,
imagenet and imagenette, `build` puts the dataset's per-channel standardisation in front of the
architecture, ``nn.Sequential(NormalizeLayer(mean, std), net)`` (rsbook.models.normalize; Cohen et al.
App. J.2), so noise is added and radii are measured in pixel space. For digits, rancer_toy or no
dataset the bare architecture is returned.

A checkpoint is a torch file holding {arch, dataset, state_dict, noise_sd, epoch, optimizer}; the
normalisation statistics are not stored but rebuilt from `dataset` on loading. A bare state_dict
(as the RANCER authors release) is also accepted when its architecture is named, and so is a
checkpoint in the layout of Cohen et al.'s code base ({arch, state_dict, epoch, optimizer}, the same
architecture names and state_dict keys, 'module.' of nn.DataParallel removed) when its dataset is
named; that path is tested on checkpoints made here in that layout, not on the authors' files.
"""

from __future__ import annotations

import numbers
import re
from pathlib import Path

import torch
from torch import nn

from rsbook._io import atomic_write, read_torch_dict
from rsbook.models.cifar_resnet import CifarResNet, cifar_resnet20, cifar_resnet110
from rsbook.models.normalize import NormalizeLayer, normalization, normalized

__all__ = [
    "ARCHITECTURES", "build", "save_checkpoint", "load_checkpoint", "DigitsCNN", "RancerMLP", "CifarResNet",
    "cifar_resnet18",
    "NormalizeLayer", "normalization", "resnet50",
]


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


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-50 (He et al. 2016) with random weights; never downloads anything."""
    from torchvision.models import resnet50 as torchvision_resnet50

    return torchvision_resnet50(weights=None, num_classes=num_classes)


def cifar_resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs, the RANCER thesis's CIFAR-10 base classifier (Rumezhak 2022,
    Sec. 5.3.1): torchvision's resnet18 with the CIFAR stem of the DDS/ANCER code bases — a 3x3,
    stride-1 first convolution and no max-pool — so that 32x32 images keep 32x32 feature maps in
    the first stage. Random weights; nothing is downloaded."""
    from torchvision.models import resnet18 as torchvision_resnet18

    net = torchvision_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


ARCHITECTURES = {
    "digits_cnn": DigitsCNN,
    "rancer_mlp": RancerMLP,
    "cifar_resnet20": cifar_resnet20,
    "cifar_resnet110": cifar_resnet110,
    "resnet50": resnet50,
    "cifar_resnet18": cifar_resnet18,
}


def build(arch: str, num_classes: int, dataset: str | None = None) -> nn.Module:
    """A freshly initialised base classifier of architecture `arch` with `num_classes` outputs.

    With `dataset` 'cifar10', 'imagenet' or 'imagenette' the result is
    ``nn.Sequential(NormalizeLayer(mean, std), net)`` and takes [0, 1] pixels; with None, 'digits'
    or 'rancer_toy' it is the bare architecture. Weights are drawn from torch's global generator.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    normalization(dataset)  # rejects an unknown dataset before building a large model
    return normalized(ARCHITECTURES[arch](num_classes=int(num_classes)), dataset)


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


def _strip_data_parallel(state: dict) -> dict:
    """Keys of a model saved inside nn.DataParallel ('module.x' or, behind a normalisation layer,
    '1.module.x', as Cohen et al.'s ImageNet checkpoints) without the 'module.' part."""
    pattern = re.compile(r"^(\d+\.)?module\.")
    if not state or not all(isinstance(key, str) and pattern.match(key) for key in state):
        return state
    return {pattern.sub(r"\1", key): value for key, value in state.items()}


def load_checkpoint(
    path, num_classes: int, arch: str | None = None, device=None, dataset: str | None = None
) -> tuple[nn.Module, dict]:
    """(model in eval mode on `device`, checkpoint dict) from a checkpoint file.

    The model is rebuilt by ``build(arch, num_classes, dataset)``, so a checkpoint saved with
    dataset 'cifar10' (or 'imagenet', 'imagenette') gets that dataset's normalisation layer back
    and computes what the saved model computed. A file holding a bare state_dict needs `arch` (and
    `dataset` when the model was normalised); a full checkpoint's arch and dataset must agree with
    the ones given, and a checkpoint without a dataset (Cohen et al.'s) takes the one given.
    """
    path = Path(path)
    payload = read_torch_dict(path)
    if "state_dict" in payload:
        stored = payload.get("arch")
        if arch is not None and stored is not None and arch != stored:
            raise ValueError(f"checkpoint {path} is a {stored!r} model, but arch {arch!r} was requested")
        stored_dataset = payload.get("dataset")
        if dataset is not None and stored_dataset is not None and dataset != stored_dataset:
            raise ValueError(
                f"checkpoint {path} was trained on {stored_dataset!r}, but dataset {dataset!r} was requested"
            )
        arch, dataset, state = arch or stored, stored_dataset or dataset, payload["state_dict"]
        if arch is None:
            raise ValueError(f"checkpoint {path} does not name its architecture; name it (arch / --arch)")
        payload = {**payload, "arch": arch, "dataset": dataset}
    else:
        if arch is None:
            raise ValueError(f"checkpoint {path} holds a bare state_dict; name its architecture (arch / --arch)")
        state, payload = payload, {"arch": arch, "dataset": dataset, "state_dict": payload}
    model = build(arch, num_classes, dataset)
    state = _strip_data_parallel(state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {path} does not fit architecture {arch!r} for dataset {dataset!r} "
            f"({'with' if normalization(dataset) else 'without'} a normalisation layer): {err}"
        ) from err
    return model.to(torch.device("cpu" if device is None else device)).eval(), payload
