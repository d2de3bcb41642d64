"""Per-channel standardisation as the first layer of a model (Cohen et al. 2019, App. J.2).

Gaussian noise is added to the input in pixel space ([0, 1]) and only then standardised, so that
sigma and every certified radius are measured in pixel units. That is why the standardisation lives
inside the model instead of in the data pipeline.

A normalised model is ``nn.Sequential(NormalizeLayer(mean, std), net)``, exactly the layout of the
authors' code base (locuslab/smoothing, ``architectures.get_architecture``). The layer's mean and std
are non-persistent buffers: they follow ``.to(device)`` but are not written to the state_dict, so a
state_dict holds only the net's weights under ``1.<name>`` keys, as in the authors' checkpoints, and
the statistics are rebuilt from the dataset name when a checkpoint is loaded.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NormalizeLayer", "NORMALIZATION", "normalization", "normalized"]

#: Per-channel (mean, std) of the datasets whose models standardise their input, in pixel units.
#: CIFAR-10 and ImageNet values are those of Cohen et al.'s ``datasets.py``; Imagenette, a 10-class
#: ImageNet subset, uses the ImageNet statistics. Datasets mapped to None get no normalisation.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "digits": None,
    "rancer_toy": None,
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenette": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class NormalizeLayer(nn.Module):
    """x -> (x - mean[c]) / std[c] for each channel c of a batch x of shape (B, C, ...).

    mean, std: C floats each (std > 0), in the units of x (pixel values in [0, 1]).
    Output has the shape and dtype of x.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() == 0 or mean.shape != std.shape:
            raise ValueError(f"mean and std must hold one value per channel, got {mean.numel()} and {std.numel()}")
        if not torch.all(std > 0):
            raise ValueError(f"std must be > 0 for every channel, got {std.tolist()}")
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.mean.numel()
        if x.dim() < 2 or x.shape[1] != channels:
            raise ValueError(f"NormalizeLayer expects a batch of shape (B, {channels}, ...), got {tuple(x.shape)}")
        shape = (1, channels) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.tolist()]}, std={[round(v, 4) for v in self.std.tolist()]}"


def normalization(dataset: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of `dataset`, or None when its models take raw input (None, digits, rancer_toy)."""
    if dataset is None:
        return None
    if dataset not in NORMALIZATION:
        raise ValueError(f"dataset must be None or one of {sorted(NORMALIZATION)}, got {dataset!r}")
    return NORMALIZATION[dataset]


def normalized(net: nn.Module, dataset: str | None) -> nn.Module:
    """``nn.Sequential(NormalizeLayer(mean, std), net)`` with `dataset`'s statistics, or `net` itself
    when the dataset needs none. The result takes [0, 1] pixels."""
    stats = normalization(dataset)
    return net if stats is None else nn.Sequential(NormalizeLayer(*stats), net)
