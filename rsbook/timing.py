"""Wall-clock timing of work on a torch device: `timed(function, device)` waits for the device's queued kernels
before and after the call (`synchronize`), so a GPU's asynchronous launches are counted. Used by the FaRS speed
measurement and by the book's throughput benchmark (rsbook.book.throughput)."""

from __future__ import annotations

import time

import torch

__all__ = ["synchronize", "timed"]


def synchronize(device) -> None:
    """Wait for queued kernels on `device` (a no-op on the CPU), so wall-clock times are honest."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device) -> float:
    """Seconds one call of `function()` takes on `device`, kernels included."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start
