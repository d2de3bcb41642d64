"""The authors' released model checkpoints, read from $RSBOOK_MODELS in the authors' own layout.

Which documents released their models, and where they live (README, "Released models"):

- Cohen et al. 2019 (locuslab/smoothing, "download our models ... move the directory models into the root"): the
  `models/` folder of their archive, which $RSBOOK_MODELS points at:
      cifar10/resnet110/noise_{0.12,0.25,0.50,1.00}/checkpoint.pth.tar
      imagenet/resnet50/noise_{0.25,0.50,1.00}/checkpoint.pth.tar
  each a dict {epoch, arch, state_dict, optimizer} written by their train.py; the model is
  Sequential(NormalizeLayer, net) (keys `1.<name>`), the ImageNet net inside nn.DataParallel (keys
  `1.module.<name>`). rsbook.models.load_checkpoint reads this layout (with the dataset named).
- The DDS / ANCER authors link CIFAR-10 and ImageNet models in a Google Drive folder whose file names and noise
  levels no text of theirs lists, and the RANCER thesis does not say which it used: they are not registered
  here (a user may still certify such a file through the library, with an architecture that matches it).
- FaRS: its repository trains its linear head on a backbone checkpoint it does not publish; nothing to register.

`RELEASED` lists what is registered; `find` gives the entry of a (dataset, arch, noise), `path` its file when
present, and `problems` checks a file without building the model: it loads with weights_only=True, and compares
the state_dict's keys and tensor shapes (after nn.DataParallel's `module.`) with the architecture's, which also
checks the number of classes (the last layer's shape). Nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENV", "ReleasedModel", "RELEASED", "models_dir", "find", "path", "problems", "describe"]

ENV = "RSBOOK_MODELS"


@dataclass(frozen=True)
class ReleasedModel:
    """One released checkpoint: `document` (rsbook.published's key), the `dataset` and rsbook architecture
    `arch` it is for, the training noise `noise`, its `relative` path under $RSBOOK_MODELS (the authors' own
    layout) and `source`, where the authors link it."""

    document: str
    dataset: str
    arch: str
    noise: float
    relative: str
    source: str

    @property
    def name(self) -> str:
        return f"{self.document}: {self.arch} on {self.dataset}, σ = {self.noise:g}"


_COHEN = "the models/ folder of the archive linked from github.com/locuslab/smoothing's README"
RELEASED: tuple[ReleasedModel, ...] = tuple(
    [ReleasedModel("cohen", "cifar10", "cifar_resnet110", noise, f"cifar10/resnet110/noise_{noise:.2f}/checkpoint.pth.tar",
                   _COHEN) for noise in (0.12, 0.25, 0.50, 1.00)]
    + [ReleasedModel("cohen", "imagenet", "resnet50", noise, f"imagenet/resnet50/noise_{noise:.2f}/checkpoint.pth.tar",
                     _COHEN) for noise in (0.25, 0.50, 1.00)])
"""Every registered released model (module docstring)."""


def models_dir() -> Path | None:
    """$RSBOOK_MODELS as a Path, or None when unset. Raises FileNotFoundError when it is set but not a folder."""
    value = os.environ.get(ENV)
    if not value:
        return None
    folder = Path(value)
    if not folder.is_dir():
        raise FileNotFoundError(f"{ENV}={value} is not a folder (expected the authors' released models in their "
                                "layout, e.g. cifar10/resnet110/noise_0.25/checkpoint.pth.tar)")
    return folder


def find(dataset: str, arch: str, noise: float) -> ReleasedModel | None:
    """The registered release of `arch` trained at `noise` on `dataset`, or None."""
    for model in RELEASED:
        if (model.dataset, model.arch) == (dataset, arch) and abs(model.noise - float(noise)) < 1e-9:
            return model
    return None


def path(dataset: str, arch: str, noise: float, root: Path | str | None = None) -> Path | None:
    """The file of the registered release of (dataset, arch, noise) under `root` (default $RSBOOK_MODELS) when it
    exists, else None (no such release, no folder, or no file there: the model is then trained)."""
    model = find(dataset, arch, noise)
    folder = models_dir() if root is None else Path(root)
    if model is None or folder is None:
        return None
    file = folder / model.relative
    return file if file.exists() else None


def describe(dataset: str, arch: str, noise: float, root: Path | str | None = None) -> str:
    """Where the model of (dataset, arch, noise) will come from, in words: the authors' file, or trained here."""
    model = find(dataset, arch, noise)
    file = path(dataset, arch, noise, root)
    if file is not None:
        return f"the authors' ({model.document}) {file}"
    if model is None:
        return "trained here (no released model of this architecture, dataset and noise)"
    folder = models_dir() if root is None else root
    return f"trained here ({ENV} {'is not set' if folder is None else f'has no {model.relative}'})"


def problems(model: ReleasedModel, file: Path | str) -> list[str]:
    """What is wrong with `file` as the release `model` ([] when nothing): unreadable or not a dict (loaded on the
    CPU with weights_only=True), no state_dict, another arch recorded, or state_dict keys or tensor shapes that
    differ from rsbook.models.build(arch, classes, dataset)'s (nn.DataParallel's `module.` removed) — a wrong number
    of classes shows as the last layer's shape. The model is built on the meta device: nothing is allocated."""
    import torch

    from rsbook import data
    from rsbook._io import read_torch_dict
    from rsbook.models import _strip_data_parallel, build, normalization

    file = Path(file)
    try:
        payload = read_torch_dict(file)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        return [f"{file} holds no state_dict (keys: {sorted(map(str, payload))[:8]})"]
    found = []
    if payload.get("arch") not in (None, model.arch):
        found.append(f"{file} records arch {payload.get('arch')!r}, expected {model.arch!r}")
    with torch.device("meta"):  # the bare net; a normalised model holds it as `1` behind NormalizeLayer's buffers
        expected = build(model.arch, data.num_classes(model.dataset)).state_dict()
    if normalization(model.dataset) is not None:
        expected = {f"1.{key}": value for key, value in expected.items()}
    state = _strip_data_parallel(state)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        found.append(f"{file}: state_dict keys differ from {model.arch}'s ({len(missing)} missing, e.g. "
                     f"{missing[:3]}; {len(extra)} unexpected, e.g. {extra[:3]})")
    shapes = [f"{key} {tuple(state[key].shape)} (expected {tuple(value.shape)})" for key, value in expected.items()
              if key in state and hasattr(state[key], "shape") and tuple(state[key].shape) != tuple(value.shape)]
    if shapes:
        found.append(f"{file}: tensor shapes differ from {model.arch} with {data.num_classes(model.dataset)} classes: "
                     + "; ".join(shapes[:3]) + (f" and {len(shapes) - 3} more" if len(shapes) > 3 else ""))
    return found
