"""1-Lipschitz (in l2) building blocks and backbones, and empirical checks of Lipschitz constants.

SDP-based Lipschitz layers (SLL; Araujo, Havens, Delattre, Allauzen & Hu 2023, "A unified algebraic
perspective on Lipschitz neural networks", Thm. 3; FaRS seed eq. (1)):

    h(x) = x - 2 W T^-1 relu(W^T x + b),   T = diag_i( sum_j |W^T W|_ij q_j / q_i ),  q_i > 0.

For every W, b and q > 0, T - W^T W is positive semidefinite (a q-weighted Gershgorin bound), and
that is all Thm. 3 needs for h to be 1-Lipschitz in l2. W is a dense matrix (SLLLinear) or a
convolution (SLLConv2d); q is learned in log space (q = exp(log_q)). A small epsilon is added to T
before inverting it, which only enlarges T and keeps the guarantee.

Almost-orthogonal layers (AOL; Prach & Lampert 2022, "Almost-orthogonal layers for efficient
general-purpose Lipschitz networks", Thm. 1): x -> P D x with D = diag_i( sum_j |P^T P|_ij )^-1/2 has
spectral norm <= 1 for every P (exactly orthogonal, i.e. norm-preserving, when the columns of P are
orthonormal). They change the dimension (first and last layers).

Convolutions (kernel size k odd, stride 1, same-size output) take zero padding (the default, as in
Araujo et al.'s code) or circular padding. With circular padding the operator's Gram matrix is exactly
block-circulant: each entry is a sum of entries of the kernels' full cross-correlation, so the
q-weighted row sums are bounded by the l1 norms of those correlations (`_kernel_gram_l1`) at every
image size. A zero-padded convolution on an H x W image is a compression R A' E of the circular one
on the (H + k - 1) x (W + k - 1) image (E embeds the input in the centre, an isometry; R keeps the
centre of the output, a projection), so A A^T = R A' E E^T A'^T R^T <= R A' A'^T R^T <= T in the
semidefinite order (T is the same for every pixel) and the same T serves; the AOL bound carries over
likewise (D is per channel, so it commutes with E: D A^T A D <= E^T D A'^T A' D E <= I).

Norm-preserving (isometric) and non-expansive reshaping layers that keep the constant at 1:
  ChannelPad        appends zero channels: an isometry (||pad(x) - pad(y)|| = ||x - y||).
  SpaceToDepth      torch.nn.PixelUnshuffle: a permutation of coordinates, an isometry.
  nn.Flatten        an isometry.
  LipschitzAvgPool2d  sum over non-overlapping k x k windows divided by k (k times the average pool):
                    1-Lipschitz by Cauchy-Schwarz (|sum of k^2 values| / k <= l2 norm of the window),
                    norm-preserving on inputs constant on each window. The plain average pool is
                    1/k-Lipschitz and would shrink every radius by k; overlapping windows or max-pooling
                    over overlapping windows would not be 1-Lipschitz in general.
A composition of 1-Lipschitz maps is 1-Lipschitz, so every backbone of `sll_backbone` is.

The checks (`jacobian_spectral_norm`, `max_jacobian_norm`, `adversarial_lipschitz_ratio`) estimate the
constant from below: power iteration on the Jacobian at given points, and gradient ascent on
||f(x) - f(y)|| / ||x - y|| over pairs. A value above 1 refutes 1-Lipschitzness.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from rsbook._checks import check_positive_int

__all__ = ["SLLLinear", "SLLConv2d", "AOLLinear", "AOLConv2d", "ChannelPad", "SpaceToDepth", "LipschitzAvgPool2d",
           "SLLBackbone", "sll_backbone", "BACKBONE_DEFAULTS", "PADDINGS", "conv2d", "conv2d_transpose",
           "circular_conv2d", "circular_conv2d_transpose",
           "jacobian_spectral_norm", "jacobian_spectral_norms", "max_jacobian_norm", "adversarial_lipschitz_ratio"]

T_EPSILON = 1e-6
"""Added to T (SLL) and to the AOL row sums before inverting: enlarging them keeps the guarantee."""


def _safe_inverse(t: torch.Tensor) -> torch.Tensor:
    """1 / (t + T_EPSILON): t >= 0 here, so this is finite and never larger than 1 / t."""
    return 1.0 / (t + T_EPSILON)


def _check_odd_kernel(kernel_size) -> int:
    kernel_size = check_positive_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (a centred, same-size convolution), got {kernel_size}")
    return kernel_size


PADDINGS = ("zeros", "circular")
"""Padding modes of the convolutional layers; both keep the guarantees (module docstring)."""


def _check_padding(padding_mode) -> str:
    if padding_mode not in PADDINGS:
        raise ValueError(f"padding_mode must be one of {PADDINGS}, got {padding_mode!r}")
    return padding_mode


def conv2d(x: torch.Tensor, kernel: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """A x: the centred, stride-1 cross-correlation of a batch x (B, C_in, H, W) with `kernel`
    (C_out, C_in, k, k), k odd, zero or circular padding: output (B, C_out, H, W)."""
    if padding_mode == "circular":
        return circular_conv2d(x, kernel)
    return F.conv2d(x, kernel, padding=kernel.shape[-1] // 2)


def conv2d_transpose(u: torch.Tensor, kernel: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """A^T u for the A of conv2d: (B, C_out, H, W) -> (B, C_in, H, W)."""
    if padding_mode == "circular":
        return circular_conv2d_transpose(u, kernel)
    return F.conv_transpose2d(u, kernel, padding=kernel.shape[-1] // 2)


def circular_conv2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The circular ('wrap-around') cross-correlation A x of a batch x (B, C_in, H, W) with `kernel`
    (C_out, C_in, k, k), k odd, centred: output (B, C_out, H, W)."""
    pad = kernel.shape[-1] // 2
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="circular")
    return F.conv2d(x, kernel)


def circular_conv2d_transpose(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """A^T u for the A of circular_conv2d: the circular cross-correlation with the kernel flipped in
    space and with input and output channels swapped. u: (B, C_out, H, W) -> (B, C_in, H, W)."""
    return circular_conv2d(u, kernel.transpose(0, 1).flip(-1, -2))


def _kernel_gram_l1(kernel: torch.Tensor) -> torch.Tensor:
    """|K K^T| summed over spatial offsets: an (C_out, C_out) matrix whose (i, j) entry is the l1 norm
    of the full cross-correlation of output filters i and j. For a circular convolution A with kernel K,
    sum over the (j, p') columns of |(A A^T)_{(i,p),(j,p')}| <= sum_j entry (i, j) at every pixel p."""
    k = kernel.shape[-1]
    return F.conv2d(kernel, kernel, padding=k - 1).abs().sum(dim=(-2, -1))


class SLLLinear(nn.Module):
    """Dense SLL layer, R^features -> R^features (Araujo et al. 2023, Thm. 3; FaRS eq. (1)):

        h(x) = x - 2 W T^-1 relu(W^T x + b),  T_ii = sum_j |W^T W|_ij exp(log_q_j - log_q_i) (+ T_EPSILON),

    with W of shape (features, inner_features) (stored as `weight`, (inner_features, features), so that
    F.linear(x, weight) = W^T x). 1-Lipschitz in l2 for all parameter values.
    Input and output: (B, features).
    """

    def __init__(self, features: int, inner_features: int | None = None):
        super().__init__()
        self.features = check_positive_int(features, "features")
        self.inner_features = features if inner_features is None else check_positive_int(inner_features,
                                                                                         "inner_features")
        self.weight = nn.Parameter(torch.empty(self.inner_features, self.features))
        self.bias = nn.Parameter(torch.empty(self.inner_features))
        self.log_q = nn.Parameter(torch.zeros(self.inner_features))
        nn.init.xavier_normal_(self.weight)
        bound = 1.0 / math.sqrt(self.features)
        nn.init.uniform_(self.bias, -bound, bound)

    def t_inverse(self) -> torch.Tensor:
        """diag(T)^-1 as a vector of length inner_features."""
        gram = (self.weight @ self.weight.T).abs()  # |W^T W|, (inner, inner)
        ratio = torch.exp(self.log_q[None, :] - self.log_q[:, None])  # q_j / q_i
        return _safe_inverse((gram * ratio).sum(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(F.linear(x, self.weight, self.bias)) * self.t_inverse()
        return x - 2.0 * hidden @ self.weight

    def extra_repr(self) -> str:
        return f"features={self.features}, inner_features={self.inner_features}"


class SLLConv2d(nn.Module):
    """Convolutional SLL layer on (B, channels, H, W) (Araujo et al. 2023, Thm. 3 with W a convolution):

        h(x) = x - 2 A^T T^-1 relu(A x + b),

    A the convolution channels -> inner_channels with a kernel_size x kernel_size kernel K (stride 1,
    zero or circular padding), T_ii = sum_j ||corr(K_i, K_j)||_1 exp(log_q_j - log_q_i) (+ T_EPSILON), the
    same for every pixel. This T dominates A A^T for both paddings (module docstring), so h is
    1-Lipschitz in l2 for all parameter values and every H, W. Output shape = input shape.
    """

    def __init__(self, channels: int, inner_channels: int | None = None, kernel_size: int = 3,
                 padding_mode: str = "zeros"):
        super().__init__()
        self.padding_mode = _check_padding(padding_mode)
        self.channels = check_positive_int(channels, "channels")
        self.inner_channels = channels if inner_channels is None else check_positive_int(inner_channels,
                                                                                         "inner_channels")
        self.kernel_size = _check_odd_kernel(kernel_size)
        self.kernel = nn.Parameter(torch.empty(self.inner_channels, self.channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.inner_channels))
        self.log_q = nn.Parameter(torch.zeros(self.inner_channels))
        nn.init.xavier_normal_(self.kernel)
        bound = 1.0 / math.sqrt(self.channels * kernel_size ** 2)
        nn.init.uniform_(self.bias, -bound, bound)

    def t_inverse(self) -> torch.Tensor:
        """diag(T)^-1 per inner channel, a vector of length inner_channels."""
        ratio = torch.exp(self.log_q[None, :] - self.log_q[:, None])
        return _safe_inverse((_kernel_gram_l1(self.kernel) * ratio).sum(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SLLConv2d expects a batch of shape (B, {self.channels}, H, W), got {tuple(x.shape)}")
        hidden = torch.relu(conv2d(x, self.kernel, self.padding_mode) + self.bias.view(1, -1, 1, 1))
        hidden = hidden * self.t_inverse().view(1, -1, 1, 1)
        return x - 2.0 * conv2d_transpose(hidden, self.kernel, self.padding_mode)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inner_channels={self.inner_channels}, kernel_size={self.kernel_size}, "
                f"padding_mode={self.padding_mode}")


class AOLLinear(nn.Module):
    """AOL-rescaled dense layer R^in_features -> R^out_features (Prach & Lampert 2022, Thm. 1).

    y = P D x + b with D = diag(sum_j |P^T P|_ij)^-1/2 when out_features >= in_features; when
    out_features < in_features the Gram on the smaller side is used, y = D' P x + b with
    D' = diag(sum_j |P P^T|_ij)^-1/2 (Thm. 1 applied to P^T; ||D' P|| = ||P^T D'||). Either way the map
    has spectral norm <= 1, and it is an isometry on the span of the input when P's columns (rows) are
    orthonormal, which is how P is initialised. Input (B, in_features), output (B, out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.orthogonal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def scaled_weight(self) -> torch.Tensor:
        """The effective matrix, P D or D' P, of spectral norm <= 1."""
        p = self.weight
        if self.out_features >= self.in_features:
            return p * _safe_inverse((p.T @ p).abs().sum(dim=1)).sqrt()[None, :]
        return p * _safe_inverse((p @ p.T).abs().sum(dim=1)).sqrt()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.scaled_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class AOLConv2d(nn.Module):
    """AOL-rescaled convolution in_channels -> out_channels (Prach & Lampert 2022, Thm. 1 in its
    convolutional form): y = A(D x) + b, A the stride-1 convolution with kernel P (zero or circular padding),
    D_c = (sum_c' ||corr(P_:c, P_:c')||_1)^-1/2 per input channel. Spectral norm <= 1 for every image
    size and both paddings (module docstring). kernel_size 1 gives a 1-Lipschitz channel mixing (a
    pixel-wise AOLLinear)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True,
                 padding_mode: str = "zeros"):
        super().__init__()
        self.padding_mode = _check_padding(padding_mode)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = _check_odd_kernel(kernel_size)
        self.kernel = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        if out_channels >= in_channels and kernel_size > 1:
            nn.init.dirac_(self.kernel)  # starts as a channel padding: an isometry
        else:
            nn.init.orthogonal_(self.kernel)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def input_scale(self) -> torch.Tensor:
        """D as a vector of length in_channels."""
        gram = _kernel_gram_l1(self.kernel.transpose(0, 1))  # (in, in): correlations of the input slices
        return _safe_inverse(gram.sum(dim=1)).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"AOLConv2d expects a batch of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        y = conv2d(x * self.input_scale().view(1, -1, 1, 1), self.kernel, self.padding_mode)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding_mode={self.padding_mode}")


class ChannelPad(nn.Module):
    """Append zero channels: (B, in_channels, ...) -> (B, out_channels, ...), out_channels >= in_channels.
    An isometry: ||pad(x) - pad(y)||_2 = ||x - y||_2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        if out_channels < in_channels:
            raise ValueError(f"out_channels must be >= in_channels ({in_channels}), got {out_channels}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.out_channels - self.in_channels
        if extra == 0:
            return x
        return torch.cat([x, x.new_zeros((x.shape[0], extra, *x.shape[2:]))], dim=1)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


class SpaceToDepth(nn.PixelUnshuffle):
    """(B, C, H, W) -> (B, C f^2, H / f, W / f) by moving each f x f block into channels
    (torch.nn.PixelUnshuffle): a permutation of the coordinates, hence an isometry."""

    def __init__(self, factor: int):
        super().__init__(check_positive_int(factor, "factor"))


class LipschitzAvgPool2d(nn.Module):
    """Sum over non-overlapping k x k windows divided by k, i.e. k times AvgPool2d(k): 1-Lipschitz in l2
    (Cauchy-Schwarz on each window), and norm-preserving on inputs constant over each window.
    H and W must be multiples of k (no window is dropped or padded)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        if x.dim() != 4 or x.shape[-1] % k or x.shape[-2] % k:
            raise ValueError(f"LipschitzAvgPool2d({k}) needs (B, C, H, W) with H and W multiples of {k}, "
                             f"got {tuple(x.shape)}")
        return F.avg_pool2d(x, k) * k

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


BACKBONE_DEFAULTS = {
    "stem_unshuffle": 1,  # space-to-depth factor applied to the input (an isometry)
    "stem": "pad",  # 'pad': zero channel padding (isometry) | 'aol': an AOLConv2d 3x3
    "widths": [16, 32],  # channels of each convolutional stage
    "depths": [2, 2],  # SLLConv2d layers per stage
    "inner_factor": 1.0,  # inner channels of an SLLConv2d = round(inner_factor * width)
    "padding": "zeros",  # padding of every convolution: 'zeros' | 'circular' (both 1-Lipschitz)
    "downsample": "unshuffle",  # between stages: 'unshuffle' (SpaceToDepth(2)) | 'pool' (LipschitzAvgPool2d(2))
    "linear_depth": 1,  # SLLLinear layers after flattening
    "linear_inner": 256,  # inner features of each SLLLinear
    "embedding_dim": 64,  # output dimension (an AOLLinear from the flattened features)
}


class SLLBackbone(nn.Sequential):
    """A 1-Lipschitz (l2) feature extractor e: x -> z, built by `sll_backbone`. Every layer is one of
    SpaceToDepth, ChannelPad, AOLConv2d, SLLConv2d, LipschitzAvgPool2d, nn.Flatten, SLLLinear, AOLLinear,
    each 1-Lipschitz, so ||e(x) - e(y)||_2 <= ||x - y||_2 (`lipschitz_constant`). `config` holds the
    input shape and the architecture, enough to rebuild it."""

    lipschitz_constant = 1.0

    def __init__(self, layers, config: dict):
        super().__init__(*layers)
        self.config = dict(config)


def _check_config(input_shape, config: dict) -> tuple[tuple[int, int, int], dict]:
    unknown = sorted(set(config) - set(BACKBONE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown backbone option(s) {unknown}; options: {sorted(BACKBONE_DEFAULTS)}")
    cfg = {**BACKBONE_DEFAULTS, **config}
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape!r}")
    widths, depths = list(cfg["widths"]), list(cfg["depths"])
    if not widths or len(widths) != len(depths):
        raise ValueError(f"widths and depths must be non-empty lists of equal length, got {widths} and {depths}")
    for w in widths:
        check_positive_int(w, "widths")
    for d in depths:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 0:
            raise ValueError(f"depths must hold integers >= 0, got {depths}")
    if cfg["downsample"] not in ("unshuffle", "pool"):
        raise ValueError(f"downsample must be 'unshuffle' or 'pool', got {cfg['downsample']!r}")
    _check_padding(cfg["padding"])
    if cfg["stem"] not in ("pad", "aol"):
        raise ValueError(f"stem must be 'pad' or 'aol', got {cfg['stem']!r}")
    factor = 2 ** (len(widths) - 1) * check_positive_int(cfg["stem_unshuffle"], "stem_unshuffle")
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(f"input height and width {shape[1:]} must be multiples of {factor} "
                         f"(stem_unshuffle x 2^(stages - 1))")
    if not (isinstance(cfg["inner_factor"], numbers.Real) and cfg["inner_factor"] > 0):
        raise ValueError(f"inner_factor must be a number > 0, got {cfg['inner_factor']!r}")
    if isinstance(cfg["linear_depth"], bool) or not isinstance(cfg["linear_depth"], numbers.Integral) \
            or cfg["linear_depth"] < 0:
        raise ValueError(f"linear_depth must be an integer >= 0, got {cfg['linear_depth']!r}")
    check_positive_int(cfg["linear_inner"], "linear_inner")
    check_positive_int(cfg["embedding_dim"], "embedding_dim")
    return shape, cfg


def sll_backbone(input_shape, **config) -> SLLBackbone:
    """A 1-Lipschitz SLL backbone for inputs of shape (channels, height, width); options and defaults
    in BACKBONE_DEFAULTS. Layout:

      SpaceToDepth(stem_unshuffle) -> ChannelPad or AOLConv2d 3x3 to widths[0]
      for each stage s: depths[s] x SLLConv2d(widths[s], inner_factor * widths[s]);
          between stages: SpaceToDepth(2) or LipschitzAvgPool2d(2), then ChannelPad to widths[s+1]
          when it has more channels, else a 1x1 AOLConv2d
      Flatten -> linear_depth x SLLLinear(flat, linear_inner) -> AOLLinear(flat, embedding_dim)

    Every convolution uses `padding` ('zeros' or 'circular'). Every layer is 1-Lipschitz in l2 (module
    docstring), so the backbone is. Returns an SLLBackbone
    whose `config` records input_shape and the options.
    """
    (channels, height, width), cfg = _check_config(input_shape, config)
    layers: list[nn.Module] = []
    if cfg["stem_unshuffle"] > 1:
        layers.append(SpaceToDepth(cfg["stem_unshuffle"]))
        channels, height, width = (channels * cfg["stem_unshuffle"] ** 2, height // cfg["stem_unshuffle"],
                                   width // cfg["stem_unshuffle"])
    widths = [int(w) for w in cfg["widths"]]
    padding = cfg["padding"]
    layers.append(ChannelPad(channels, widths[0]) if cfg["stem"] == "pad" and widths[0] >= channels
                  else AOLConv2d(channels, widths[0], 3, padding_mode=padding))
    channels = widths[0]
    for stage, (width_s, depth) in enumerate(zip(widths, cfg["depths"])):
        if stage > 0:
            if cfg["downsample"] == "unshuffle":
                layers.append(SpaceToDepth(2))
                channels *= 4
            else:
                layers.append(LipschitzAvgPool2d(2))
            height, width = height // 2, width // 2
            layers.append(ChannelPad(channels, width_s) if width_s >= channels
                          else AOLConv2d(channels, width_s, 1, padding_mode=padding))
            channels = width_s
        inner = max(1, round(cfg["inner_factor"] * width_s))
        layers.extend(SLLConv2d(width_s, inner, 3, padding_mode=padding) for _ in range(int(depth)))
    flat = channels * height * width
    layers.append(nn.Flatten())
    layers.extend(SLLLinear(flat, int(cfg["linear_inner"])) for _ in range(int(cfg["linear_depth"])))
    layers.append(AOLLinear(flat, int(cfg["embedding_dim"])))
    return SLLBackbone(layers, {"input_shape": [int(v) for v in input_shape], **cfg})


# ------------------------------------------------------------------------------------------- checks

def jacobian_spectral_norms(f, xs, iterations: int = 50, generator=None) -> torch.Tensor:
    """Largest singular value of the Jacobian of f at each input of the batch xs (N, ...), by power
    iteration on J^T J with forward- and reverse-mode products (torch.func.jvp / vjp), all examples at
    once. f maps a batch to a batch and must treat examples independently (row i of f(X) depends on
    X_i only: true of every layer here, which use no batch statistics). Each value is a lower bound on
    f's l2 Lipschitz constant (exact for a linear f after enough iterations). generator: seeds the
    random start. Returns a float tensor (N,)."""
    iterations = check_positive_int(iterations, "iterations")
    xs = torch.as_tensor(xs).detach()
    if xs.dim() < 2:
        raise ValueError(f"xs must be a batch (N, ...), got shape {tuple(xs.shape)}")
    tiny = torch.finfo(xs.dtype).tiny

    def unit(v):
        return v / v.flatten(1).norm(dim=1).clamp_min(tiny).view(-1, *[1] * (v.dim() - 1))

    v = unit(torch.randn(xs.shape, generator=generator, dtype=xs.dtype, device=xs.device))
    estimate = torch.zeros(xs.shape[0], dtype=xs.dtype, device=xs.device)
    for _ in range(iterations):
        _, jv = torch.func.jvp(f, (xs,), (v,))
        jv = jv.detach()
        estimate = torch.maximum(estimate, jv.flatten(1).norm(dim=1))
        _, pullback = torch.func.vjp(f, xs)
        (w,) = pullback(jv)
        v = unit(w.detach())
    _, jv = torch.func.jvp(f, (xs,), (v,))
    return torch.maximum(estimate, jv.detach().flatten(1).norm(dim=1))


def jacobian_spectral_norm(f, x, iterations: int = 50, generator=None) -> float:
    """jacobian_spectral_norms at one input x (any shape); f maps a batch (1, *x.shape) to a batch."""
    return float(jacobian_spectral_norms(f, torch.as_tensor(x).unsqueeze(0), iterations, generator)[0])


def max_jacobian_norm(f, xs, iterations: int = 50, generator=None) -> float:
    """max over the inputs xs (a batch (N, ...)) of the Jacobian spectral norm of f
    (jacobian_spectral_norms; f must treat examples independently)."""
    return float(jacobian_spectral_norms(f, xs, iterations, generator).max())


def adversarial_lipschitz_ratio(f, x, y=None, steps: int = 200, lr: float = 0.01, generator=None) -> float:
    """The largest ||f(x') - f(y')||_2 / ||x' - y'||_2 found by Adam ascent on the log-ratio over pairs
    started at the batches x and y (N, ...) (y = x + small random offsets when None), examples taken
    separately; every iterate is evaluated, and the maximum over pairs and steps is returned. A value
    above 1 (beyond float rounding) proves that f is not 1-Lipschitz in l2."""
    steps = check_positive_int(steps, "steps")
    x = torch.as_tensor(x).detach().clone()
    if y is None:
        y = x + 1e-2 * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    y = torch.as_tensor(y).detach().clone()
    if x.shape != y.shape or x.dim() < 2:
        raise ValueError(f"x and y must be batches of the same shape (N, ...), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    x.requires_grad_(True)
    y.requires_grad_(True)
    optimizer = torch.optim.Adam([x, y], lr=lr)
    best = 0.0
    for _ in range(steps + 1):
        with torch.enable_grad():
            out = (f(x) - f(y)).flatten(1).norm(dim=1)
            inp = (x - y).flatten(1).norm(dim=1)
            ratio = out / inp.clamp_min(torch.finfo(x.dtype).tiny)
            valid = inp > 0
            if bool(valid.any()):
                best = max(best, float(ratio[valid].detach().max()))
            loss = -torch.log(ratio[valid].clamp_min(torch.finfo(x.dtype).tiny)).sum()
            optimizer.zero_grad()
            loss.backward()
        optimizer.step()
    return best
