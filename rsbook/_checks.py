"""Argument validation shared by the library: each check raises ValueError naming the argument."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch


def check_alpha(alpha, name: str = "alpha") -> float:
    """alpha must be a real number strictly between 0 and 1."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


def check_sigma(sigma, name: str = "sigma") -> float:
    """A noise level must be a finite real number > 0."""
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, numbers.Real)
        or not math.isfinite(sigma)
        or sigma <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def check_positive_int(value, name: str) -> int:
    """A sample count or batch size must be an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_counts(k, n):
    """Binomial counts: integers with n >= 1 and 0 <= k <= n (broadcast together)."""
    k_arr = np.asarray(k)
    n_arr = np.asarray(n)
    for name, arr in (("k", k_arr), ("n", n_arr)):
        if arr.dtype == bool or not np.all(np.isfinite(arr)) or np.any(np.mod(arr, 1) != 0):
            raise ValueError(f"{name} must hold integer counts, got {arr!r}")
    if np.any(n_arr < 1):
        raise ValueError(f"n must be >= 1, got {n!r}")
    if np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError(f"k must satisfy 0 <= k <= n, got k={k!r}, n={n!r}")
    return k_arr.astype(np.int64), n_arr.astype(np.int64)


def check_probability(p, name: str) -> np.ndarray:
    """Probabilities: finite values in [0, 1]."""
    arr = np.asarray(p, dtype=float)
    if np.any(~np.isfinite(arr)) or np.any((arr < 0) | (arr > 1)):
        raise ValueError(f"{name} must lie in [0, 1], got {p!r}")
    return arr


def check_nonnegative_int(value, name: str) -> int:
    """An integer >= 0 (a Python or numpy integer; not a bool), e.g. a count of worker processes."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_seed(seed, name: str = "seed") -> int:
    """A seed must be an integer >= 0 (a Python or numpy integer; not a bool)."""
    return check_nonnegative_int(seed, name)


def check_max_index(max_index, name: str = "max_index") -> int:
    """The end of an example selection (rsbook.dataset_runs.selected_indices): -1 for every example, else
    an index >= 0 to stop before."""
    if isinstance(max_index, bool) or not isinstance(max_index, numbers.Integral) or max_index < -1:
        raise ValueError(f"{name} must be -1 (every example) or an index >= 0 to stop before, got {max_index!r}")
    return int(max_index)


def check_device(device, name: str = "device") -> torch.device:
    """A torch device this machine has: a device string or torch.device ('cpu', 'cuda', 'cuda:1', ...);
    a CUDA device needs torch.cuda.is_available() and, with an index, that many GPUs. Returns it parsed."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {device!r}, but torch sees no CUDA device on this machine "
                             "(torch.cuda.is_available() is False): use 'cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{name} is {device!r}, but this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), numbered from 0")
    return parsed


def check_output_path(path, name: str, folder: bool):
    """Where a run writes: a folder (folder=True) or a file, which must not exist as the other kind, and
    whose nearest existing ancestor must be a folder (so that it can be created). Returns it as a Path;
    checked before anything is written."""
    from pathlib import Path

    path = Path(path)
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{name} must be a {kind} path, but {path} exists and is a {'file' if folder else 'folder'}")
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(f"{name} {path} cannot be created: {ancestor} is a file, not a folder")
            break
    return path


def check_choice(value, choices, name: str):
    """One of `choices` (e.g. a dataset or architecture name); ValueError listing them otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_num_classes(num_classes, name: str = "num_classes") -> int:
    """A classifier's number of classes must be an integer >= 2."""
    if check_positive_int(num_classes, name) < 2:
        raise ValueError(f"{name} must be >= 2, got {num_classes!r}")
    return int(num_classes)


def check_finite_real(value, name: str, *, minimum: float, strict: bool) -> float:
    """A finite real number >= minimum (> minimum when strict)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < minimum or (strict and value == minimum)):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_radii(radii, name: str = "radii") -> list[float]:
    """One or more radii, each a finite number >= 0, as floats in the order given (ValueError naming `name`)."""
    items = np.atleast_1d(np.asarray(radii, dtype=object)).tolist() if not isinstance(radii, str) else [radii]
    values = [check_finite_real(r, name, minimum=0, strict=False) for r in items]
    if not values:
        raise ValueError(f"{name} must hold at least one radius")
    return values


def check_clip(clip):
    """None, or a box (low, high) of two finite numbers with low < high; returned as floats."""
    if clip is None:
        return None
    try:
        low, high = clip
    except (TypeError, ValueError):
        raise ValueError(f"clip must be None or a pair (low, high), got {clip!r}") from None
    for value in (low, high):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"clip must hold two finite numbers, got {clip!r}")
    if not low < high:
        raise ValueError(f"clip must satisfy low < high, got {clip!r}")
    return float(low), float(high)


def check_generator(generator, device) -> None:
    """A torch.Generator (or None) on the same kind of device as the sampling: torch draws from a CUDA
    generator only into CUDA tensors."""
    if generator is not None and torch.device(generator.device).type != torch.device(device).type:
        raise ValueError(f"generator lives on {generator.device}, but sampling runs on {device}; "
                         "create it with torch.Generator(device=...) on the sampling device")


def check_model(model, what: str = "attacking") -> None:
    """A callable base classifier; a torch module in training mode gets a warning (batch-norm and
    dropout would make f depend on the batch)."""
    if not callable(model):
        raise ValueError(f"model must be callable, got {type(model).__name__}")
    if isinstance(model, torch.nn.Module) and model.training:
        warnings.warn(f"model is in training mode; batch-norm and dropout then make f depend on the batch. "
                      f"Call .eval() before {what}.", stacklevel=3)


def check_checkpoint(checkpoint, name: str = "checkpoint") -> None:
    """A trained checkpoint file that exists; FileNotFoundError saying how to make one otherwise (checked
    before a run writes anything)."""
    from pathlib import Path

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"{name} {checkpoint} does not exist (train it first, e.g. `rsbook train`)")
