"""Interval bound propagation (IBP): element-wise bounds on every pre-activation over the ε-ball.

The LP slides write [l⁽ˡ⁾, u⁽ˡ⁾] for "the element-wise lower and upper bounds on the ReLU input at
layer l" that the triangle relaxation needs. The simplest valid ones come from interval arithmetic:
an affine map sends the box with centre c and radius r to the box with centre W c + b and radius
|W| r (the tightest box around the image), and ReLU is monotone, so [l, u] ↦ [ReLU(l), ReLU(u)]. The
first layer is exact for both balls: W x̃ + b over ‖x̃ − x‖∞ ≤ ε spans W x + b ± ε ‖W_j‖₁ row-wise,
over ‖x̃ − x‖₂ ≤ ε it spans W x + b ± ε ‖W_j‖₂ (Hölder).

All functions are batched (x of shape (B, n_0)), run in the network's dtype and are differentiable.
"""

from __future__ import annotations

import torch

from rsbook.relax.network import AffineNetwork

__all__ = ["NORMS", "first_layer_bounds", "interval_step", "interval_bounds", "interval_margins", "ball_term"]

NORMS = ("linf", "l2")


def _eps(eps, x: torch.Tensor) -> torch.Tensor:
    """eps as a (B, 1) tensor."""
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    return eps.reshape(-1, 1).expand(x.shape[0], 1) if eps.dim() <= 1 else eps


def ball_term(coefficients: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """max over ‖δ‖ ≤ ε of a·δ for each row a of `coefficients` (…, n): ε‖a‖₁ for the ℓ∞ ball and
    ε‖a‖₂ for the ℓ₂ ball (the dual norms). eps broadcasts against the leading dimensions."""
    if norm == "linf":
        return eps * coefficients.abs().sum(-1)
    return eps * coefficients.norm(dim=-1)


def first_layer_bounds(network: AffineNetwork, x: torch.Tensor, eps, norm: str):
    """Exact bounds (l, u), each (B, n_1), of x̂⁽¹⁾ = W_1 x̃ + b_1 over the ε-ball around x."""
    centre = x @ network.weights[0].T + network.biases[0]
    radius = ball_term(network.weights[0], _eps(eps, x), norm)
    return centre - radius, centre + radius


def interval_step(weight: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
    """Bounds of W y + b for y = ReLU(x̂) with x̂ in [lower, upper] (the previous pre-activation box)."""
    y_low, y_high = torch.relu(lower), torch.relu(upper)
    centre, radius = (y_high + y_low) / 2, (y_high - y_low) / 2
    mid = centre @ weight.T + bias
    spread = radius @ weight.abs().T
    return mid - spread, mid + spread


def interval_bounds(network: AffineNetwork, x: torch.Tensor, eps, norm: str) -> list:
    """IBP bounds [(l⁽ⁱ⁾, u⁽ⁱ⁾)] of the pre-activations of the hidden layers i = 1..L-1 (each (B, n_i))."""
    if network.hidden == 0:
        return []
    bounds = [first_layer_bounds(network, x, eps, norm)]
    for i in range(1, network.hidden):
        bounds.append(interval_step(network.weights[i], network.biases[i], *bounds[-1]))
    return bounds


def interval_margins(network: AffineNetwork, x: torch.Tensor, eps, norm: str, spec: torch.Tensor,
                     bounds: list) -> torch.Tensor:
    """Lower bounds (B, K) on spec @ logits over the ball, from the box of the last hidden layer.

    The last affine layer is folded into the specification (C W_L, C b_L) before the box is used,
    which is never looser than bounding each logit and subtracting: min over the box of a linear
    function is exact. spec: (K, n_L) or (B, K, n_L); bounds: the pre-activation bounds of every
    hidden layer (interval_bounds or tighter ones)."""
    weight, bias = network.weights[-1], network.biases[-1]
    folded_w, folded_b = spec @ weight, spec @ bias  # (…, K, n_{L-1}), (…, K)
    if network.hidden == 0:  # linear network: exact over the ball
        value = folded_w @ x.unsqueeze(-1) if folded_w.dim() == 3 else (x @ folded_w.T).unsqueeze(-1)
        return value.squeeze(-1) + folded_b - ball_term(folded_w, _eps(eps, x), norm)
    lower, upper = bounds[-1]
    y_low, y_high = torch.relu(lower), torch.relu(upper)
    centre, radius = ((y_high + y_low) / 2).unsqueeze(-1), ((y_high - y_low) / 2).unsqueeze(-1)
    return ((folded_w @ centre).squeeze(-1) - (folded_w.abs() @ radius).squeeze(-1)) + folded_b
