"""A ReLU network as the alternating affine / ReLU chain the relaxations work on.

The document's networks (LP slides, "Recall: Exact Certification") are
x̂⁽ˡ⁾ = W_l y⁽ˡ⁻¹⁾ + b_l for l = 1..L and y⁽ˡ⁾ = ReLU(x̂⁽ˡ⁾) for l = 1..L-1, with y⁽⁰⁾ = x̃ and
logits x̂⁽ᴸ⁾. `affine_network` turns a `torch.nn.Sequential` of Linear, ReLU, Flatten and Conv2d
into that form: a Conv2d becomes its dense matrix (the convolution applied to the identity basis),
Flatten only changes the shape, consecutive affine layers are multiplied together (no ReLU
between them), and consecutive ReLUs collapse (ReLU∘ReLU = ReLU). Anything else is rejected.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AffineNetwork", "affine_network", "SUPPORTED_LAYERS", "network_fingerprint"]

SUPPORTED_LAYERS = (nn.Linear, nn.ReLU, nn.Flatten, nn.Conv2d)


@dataclass(frozen=True)
class AffineNetwork:
    """x ↦ W_L ReLU(… ReLU(W_1 x + b_1) …) + b_L on flattened inputs.

    weights[i]: (n_{i+1}, n_i) tensor, biases[i]: (n_{i+1},), i = 0..L-1; dims = (n_0, …, n_L);
    input_shape: the shape of one input before flattening. `hidden` = L - 1 ReLU layers."""

    weights: tuple
    biases: tuple
    input_shape: tuple

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def hidden(self) -> int:
        return len(self.weights) - 1

    @property
    def dims(self) -> tuple:
        return (int(self.weights[0].shape[1]), *(int(w.shape[0]) for w in self.weights))

    @property
    def num_classes(self) -> int:
        return int(self.weights[-1].shape[0])

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Logits (or, with `upto` = i, the pre-activations x̂⁽ⁱ⁾) of a batch x of shape (B, n_0)."""
        upto = self.depth if upto is None else upto
        y = x
        for i in range(upto):
            y = y @ self.weights[i].T + self.biases[i]
            if i < upto - 1:
                y = torch.relu(y)
        return y

    def numpy(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(weights, biases) as float64 numpy arrays, detached."""
        return ([w.detach().cpu().double().numpy() for w in self.weights],
                [b.detach().cpu().double().numpy() for b in self.biases])


def _check_shape(shape) -> tuple:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"input_shape must be a tuple of positive ints, got {shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a tuple of positive ints, got {shape!r}")
    return shape


def _layers(net) -> list:
    if not isinstance(net, nn.Sequential):
        raise ValueError(f"net must be a torch.nn.Sequential of {[c.__name__ for c in SUPPORTED_LAYERS]}, "
                         f"got {type(net).__name__}")
    out = []
    for layer in net:
        if isinstance(layer, nn.Sequential):
            out += _layers(layer)
        elif isinstance(layer, SUPPORTED_LAYERS):
            out.append(layer)
        else:
            raise ValueError(f"net holds a {type(layer).__name__} layer; the relaxations support only "
                             f"{', '.join(c.__name__ for c in SUPPORTED_LAYERS)} (nested nn.Sequential is flattened)")
    return out


def _conv_dense(layer: nn.Conv2d, shape: tuple, dtype) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """The convolution as (W (n_out, n_in), b (n_out,), output shape), differentiable in its weights."""
    if len(shape) != 3 or shape[0] != layer.in_channels:
        raise ValueError(f"Conv2d with {layer.in_channels} input channels needs an input of shape (C, H, W) with "
                         f"C = {layer.in_channels}, got {shape}")
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str) and layer.padding != "valid":
        raise ValueError(f"Conv2d must use numeric zero padding, got padding={layer.padding!r}, "
                         f"padding_mode={layer.padding_mode!r}")
    n_in = math.prod(shape)
    basis = torch.eye(n_in, dtype=dtype, device=layer.weight.device).reshape(n_in, *shape)
    out = F.conv2d(basis, layer.weight.to(dtype), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    out_shape = tuple(out.shape[1:])
    weight = out.reshape(n_in, -1).T
    if layer.bias is None:
        bias = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device)
    else:
        bias = layer.bias.to(dtype).repeat_interleave(out_shape[1] * out_shape[2])
    return weight, bias, out_shape


def affine_network(net, input_shape, dtype=torch.float64, detach: bool = True) -> AffineNetwork:
    """`net` (a torch.nn.Sequential of Linear, ReLU, Flatten, Conv2d; nested Sequentials allowed)
    on inputs of shape `input_shape` as an AffineNetwork.

    dtype: of the returned matrices (float64 by default, for the solvers); detach=False keeps them
    differentiable in the network's parameters (robust training). A Linear layer needs a flat input
    (put nn.Flatten before it); a Conv2d a (C, H, W) one. Raises ValueError naming the first
    unsupported layer or shape mismatch.
    """
    shape = _check_shape(input_shape)
    layers = _layers(net)
    affine: list[list] = []  # [W, b] per affine layer; a ReLU sits between consecutive entries
    pending_relu = False
    for layer in layers:
        if isinstance(layer, nn.ReLU):
            pending_relu = True
            continue
        if isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise ValueError(f"Flatten must flatten every non-batch dimension (start_dim=1, end_dim=-1), "
                                 f"got start_dim={layer.start_dim}, end_dim={layer.end_dim}")
            shape = (math.prod(shape),)
            continue
        if isinstance(layer, nn.Linear):
            if len(shape) != 1 or shape[0] != layer.in_features:
                raise ValueError(f"Linear({layer.in_features}, {layer.out_features}) needs a flat input of "
                                 f"{layer.in_features} features, got shape {shape}; put nn.Flatten before it")
            weight = layer.weight.to(dtype)
            bias = (torch.zeros(layer.out_features, dtype=dtype, device=weight.device) if layer.bias is None
                    else layer.bias.to(dtype))
            shape = (layer.out_features,)
        else:
            weight, bias, shape = _conv_dense(layer, shape, dtype)
        if pending_relu or not affine:
            if pending_relu and not affine:  # a ReLU on the input: an identity affine map first
                n = weight.shape[1]
                affine.append([torch.eye(n, dtype=dtype, device=weight.device),
                               torch.zeros(n, dtype=dtype, device=weight.device)])
            affine.append([weight, bias])
        else:  # two affine maps with no ReLU between: compose them
            prev_w, prev_b = affine[-1]
            affine[-1] = [weight @ prev_w, weight @ prev_b + bias]
        pending_relu = False
    if not affine:
        raise ValueError("net has no Linear or Conv2d layer")
    if pending_relu:  # logits = ReLU(...): an identity map after the last ReLU
        n = affine[-1][0].shape[0]
        affine.append([torch.eye(n, dtype=dtype, device=affine[-1][0].device),
                       torch.zeros(n, dtype=dtype, device=affine[-1][0].device)])
    if detach:
        affine = [[w.detach(), b.detach()] for w, b in affine]
    return AffineNetwork(tuple(w for w, _ in affine), tuple(b for _, b in affine), _check_shape(input_shape))


def network_fingerprint(net) -> str:
    """SHA-256 of the network's layer types and parameter values: changes when the weights do."""
    digest = hashlib.sha256()
    for name, module in net.named_modules():
        digest.update(f"{name}:{type(module).__name__};".encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
