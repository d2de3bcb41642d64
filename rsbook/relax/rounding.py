"""How far the network as run in its own floating-point dtype can be from the real-valued network that
the certificates bound, uniformly over an ε-ball.

The relaxations bound the margins of the exact network (real arithmetic on the network's own weights,
evaluated in float64), but a prediction is made by the network run in its dtype, usually float32: on
the chapter's digits networks the two disagree on a margin by up to 1.9e-5 (logits up to 47). A YES
must hold for the network as run, so a margin bound m_t certifies target t only when
m_t > e_label + e_t, with e a bound on |F_run(x̃) − F(x̃)| per logit over every input x̃ of the ball that
the network can receive (a point representable in its dtype, so the input itself carries no error).

The bound follows the standard model of floating-point dot products (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., Sec. 3.1): an output of a Linear or Conv2d layer with k inputs per output,
computed in any order (blocked, pairwise or with fused multiply-adds) from inputs y′ that carry an
error |y′ − y| ≤ e, satisfies

    |z′ − z| ≤ |W| e + γ_{k+1} (|W| |y′| + |b|),    γ_n = n u / (1 − n u),

with u the unit roundoff of the dtype the layer runs in; ReLU and Flatten are exact and 1-Lipschitz.
The magnitudes |y′| come from interval propagation over the ball (the box around an ℓ₂ ball). Layers run
on a CUDA device with TF32 enabled (torch.backends.cuda.matmul.allow_tf32 / torch.backends.cudnn.allow_tf32)
use TF32's unit roundoff 2⁻¹¹. The model covers IEEE arithmetic in the stated dtype; a convolution
algorithm outside it (e.g. a Winograd or FFT transform) is not covered.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsbook.relax.network import _layers

__all__ = ["unit_roundoff", "gamma", "rounding_bound"]

_TF32_ROUNDOFF = 2.0 ** -11


def unit_roundoff(dtype: torch.dtype, device: torch.device | str = "cpu", kind: str = "matmul") -> float:
    """The unit roundoff u of arithmetic in `dtype` on `device`: finfo(dtype).eps / 2, or TF32's 2⁻¹¹ for
    float32 on CUDA when TF32 is allowed for that kind of layer ('matmul' for Linear, 'conv' for Conv2d)."""
    if not dtype.is_floating_point:
        raise ValueError(f"the network must run in a floating-point dtype, got {dtype}")
    if dtype == torch.float32 and torch.device(device).type == "cuda":
        allowed = torch.backends.cuda.matmul.allow_tf32 if kind == "matmul" else torch.backends.cudnn.allow_tf32
        if allowed:
            return _TF32_ROUNDOFF
    return float(torch.finfo(dtype).eps) / 2


def gamma(n: int, u: float) -> float:
    """γ_n = n u / (1 − n u) (Higham, Lemma 3.1); raises when n u ≥ 1 (no bound)."""
    if n * u >= 1:
        raise ValueError(f"no rounding bound for sums of {n} terms at unit roundoff {u:g}")
    return n * u / (1 - n * u)


def _affine(layer, values: torch.Tensor, weight_of) -> torch.Tensor:
    """The layer's linear part (no bias) applied to a batch `values` with weights weight_of(layer.weight)."""
    weight = weight_of(layer.weight.detach().to("cpu", torch.float64))
    if isinstance(layer, nn.Linear):
        return values @ weight.T
    return F.conv2d(values, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def rounding_bound(net, x, eps: float, norm: str, dtype: torch.dtype | None = None) -> np.ndarray:
    """e (numpy (num_classes,)), with |F_run(x̃)_c − F(x̃)_c| ≤ e_c for every x̃ in the ε-ball around x
    (`norm` 'linf' or 'l2') that is representable in the network's dtype, F_run the network `net` (a
    torch.nn.Sequential of Linear / ReLU / Flatten / Conv2d) run in its own dtype on its own device (or in
    `dtype` on the CPU) and F the same network in real arithmetic (module docstring). x: one input,
    without a batch dimension."""
    parameter = next(net.parameters())
    dtype, device = (parameter.dtype, parameter.device) if dtype is None else (dtype, torch.device("cpu"))
    centre = torch.as_tensor(x).detach().to("cpu", torch.float64)[None]
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    radius = torch.full_like(centre, float(eps))  # the ℓ∞ ball, or the box around the ℓ₂ ball
    error = torch.zeros_like(centre)
    for layer in _layers(net):
        if isinstance(layer, nn.ReLU):
            low, high = torch.relu(centre - radius), torch.relu(centre + radius)
            centre, radius = (high + low) / 2, (high - low) / 2
        elif isinstance(layer, nn.Flatten):
            centre, radius, error = centre.flatten(1), radius.flatten(1), error.flatten(1)
        else:
            bias = (torch.zeros(()) if layer.bias is None else layer.bias.detach().to("cpu", torch.float64))
            if isinstance(layer, nn.Linear):
                fan_in, kind = layer.in_features, "matmul"
            else:
                bias = bias.reshape(-1, 1, 1) if bias.dim() else bias
                fan_in, kind = layer.in_channels // layer.groups * math.prod(layer.kernel_size), "conv"
            u = unit_roundoff(dtype, device, kind)
            magnitude = centre.abs() + radius + error  # ≥ |y′| over the ball
            propagated = _affine(layer, error, torch.abs)
            computed = _affine(layer, magnitude, torch.abs) + bias.abs()
            error = propagated + gamma(fan_in + 1, u) * computed
            centre = _affine(layer, centre, lambda w: w) + bias
            radius = _affine(layer, radius, torch.abs)
    # the float64 evaluation of this bound rounds too: a relative allowance far above its error
    return (error[0].reshape(-1) * (1 + 1e-6)).numpy()
