"""CROWN and α-CROWN: backward linear bounds with adaptive and with optimised lower slopes.

Every bound here is the backward pass of rsbook.relax.dual.dual_margins with other lower lines. An
unstable ReLU (l < 0 < u) is bounded above by the triangle's top edge y ≤ u (x̂ − l) / (u − l) and
below by a line y ≥ a x̂ through the origin; any slope a ∈ [0, 1] gives a valid line (a convex
combination of y ≥ 0 and y ≥ x̂), so the backward pass gives a lower bound on the specification over
the ε-ball for *any* such slopes, and that bound is the dual objective of the "Overall LP" (LP slides,
triangle relaxation) at a dual-feasible point with the same intermediate bounds: never above the LP.

  Wong & Kolter (2018)    a = u / (u − l), the slope of the upper line       (rsbook.relax.dual)
  CROWN (Zhang et al. 2018, Sec. 3.2, "adaptive" lower bound)
                          a = 1 if u > −l else 0: the line of smaller area between y = ReLU(x̂) and
                          the triangle, as auto_LiRPA sets it; every intermediate layer is bounded by
                          CROWN itself (from the CROWN bounds of the layers before it)
  α-CROWN (Xu et al. 2021, "Fast and Complete", Sec. 3.1)
                          a optimised per neuron and per specification row by projected gradient
                          ascent on the bound (Adam, then a projection onto [0, 1]), for the margins
                          and for every intermediate layer's bounds (each neuron's lower and upper
                          bound its own slopes)

The optimisation only chooses which valid bound to report: the value returned is the largest of the
bounds evaluated, each at slopes inside [0, 1] (dual_margins clamps them before it evaluates), so it
is a sound lower bound whatever the optimiser does. It starts from the better, per row, of CROWN's
and Wong & Kolter's slopes, so with the same intermediate bounds α-CROWN ≥ max(CROWN, dual).

`alpha_crown_bounds` builds the α-CROWN intermediate bounds layer by layer and intersects each layer
with the interval, dual and CROWN bounds of the same layer (valid bounds all: their intersection is
valid), so they lie inside every one of those kinds; an LP or MILP on them is at least as tight as
every cheaper method on its own bounds (the LP is monotone in its bounds and lies above each of them
with the same bounds; rsbook.relax.certify states the order).

No randomness: the slopes start at closed-form values. Everything is batched and runs in the
network's dtype (float64 in the certificates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rsbook.relax.dual import dual_margins, intermediate_bounds, relu_slopes
from rsbook.relax.interval import first_layer_bounds, interval_step
from rsbook.relax.network import AffineNetwork

__all__ = ["KINDS", "ALPHA_ITERATIONS", "ALPHA_LR", "adaptive_slopes", "crown_margins", "crown_bounds",
           "OptimisedBound", "optimise_bound", "alpha_crown_bounds", "layer_bounds", "neuron_specification"]

KINDS = ("ibp", "dual", "ibp+dual", "crown", "alpha-crown")
"""The kinds of intermediate bounds computed here (rsbook.relax.dual's three, CROWN's, α-CROWN's)."""
ALPHA_ITERATIONS = 20
"""Projected-gradient steps of α-CROWN per bound (auto_LiRPA's default for its optimised bounds is 20)."""
ALPHA_LR = 0.1
"""Adam's step size on the slopes (auto_LiRPA's default lr_alpha)."""
_BETA1, _BETA2 = 0.9, 0.999  # Adam's moment decays (Kingma & Ba 2015, their defaults)
_STALL, _PATIENCE = 1e-4, 3  # stop early after 3 steps that raise no bound by more than 1e-4 (relative)


def adaptive_slopes(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """CROWN's adaptive lower slope of each ReLU: 1 where u > −l, else 0 (used on unstable neurons only)."""
    return (upper > -lower).to(upper.dtype)


def _slopes(bounds: list, depth: int) -> list:
    return [adaptive_slopes(lower, upper).unsqueeze(1) for lower, upper in bounds[:depth - 1]]


def crown_margins(network: AffineNetwork, x: torch.Tensor, eps, norm: str, spec: torch.Tensor, bounds: list,
                  depth: int | None = None) -> torch.Tensor:
    """CROWN's lower bound (B, K) on spec @ x̂⁽ᵈᵉᵖᵗʰ⁾ over the ε-ball (arguments as dual_margins): the
    backward pass with the adaptive lower slopes. A lower bound whenever `bounds` hold over the ball."""
    depth = network.depth if depth is None else depth
    return dual_margins(network, x, eps, norm, spec, bounds, depth, lower_slopes=_slopes(bounds, depth))


def neuron_specification(n: int, columns: torch.Tensor, dtype, device) -> torch.Tensor:
    """Rows +e_j then −e_j for each j in `columns` (2k, n): lower bounds on both rows give l_j and −u_j."""
    unit = torch.zeros(len(columns), n, dtype=dtype, device=device)
    unit[torch.arange(len(columns), device=device), columns] = 1.0
    return torch.cat([unit, -unit])


def crown_bounds(network: AffineNetwork, x: torch.Tensor, eps, norm: str) -> list:
    """CROWN's pre-activation bounds [(l⁽ⁱ⁾, u⁽ⁱ⁾)] of the hidden layers (each (B, n_i)): the first layer
    exact, every later one by CROWN from the CROWN bounds of the layers before it."""
    if network.hidden == 0:
        return []
    bounds = [first_layer_bounds(network, x, eps, norm)]
    for i in range(1, network.hidden):
        n = network.weights[i].shape[0]
        spec = neuron_specification(n, torch.arange(n, device=x.device), x.dtype, x.device)
        both = crown_margins(network, x, eps, norm, spec, bounds, depth=i + 1)
        bounds.append((both[:, :n], -both[:, n:]))
    return bounds


@dataclass
class OptimisedBound:
    """What optimise_bound found: value (B, K), the largest bound evaluated per row; slopes and betas, per
    hidden layer, the (already projected) parameters that gave it (betas None unless optimised)."""

    value: torch.Tensor
    slopes: list
    betas: list | None


def optimise_bound(network: AffineNetwork, x: torch.Tensor, eps, norm: str, spec: torch.Tensor, bounds: list,
                   depth: int | None = None, *, iterations: int = ALPHA_ITERATIONS, lr: float = ALPHA_LR,
                   slopes: list | None = None, splits: list | None = None, betas: list | None = None,
                   optimise_betas: bool = False) -> OptimisedBound:
    """α-CROWN's lower bound (B, K) on spec @ x̂⁽ᵈᵉᵖᵗʰ⁾ over the ε-ball: the lower slopes of every unstable
    neuron of hidden layers 1..depth-1, one per specification row, maximise the bound by `iterations`
    steps of Adam (Kingma & Ba 2015, step size lr, uphill) each followed by a projection onto [0, 1]
    (Xu et al. 2021, Sec. 3.1).

    slopes: starting slopes per layer (broadcastable to (B, K, n_i)); default, per row, CROWN's
    adaptive slopes or Wong & Kolter's u/(u − l), whichever bound is higher. splits, betas: a branch
    and bound domain (dual_margins); with optimise_betas the multipliers β ≥ 0 are optimised too
    (β-CROWN, Wang et al. 2021), projected onto β ≥ 0.

    The steps stop early when three in a row raise no row's bound by more than 1e-4 (relative).

    Guarantee: `value` is, per row, the maximum of the bounds evaluated at the starting point and after
    every step, each at slopes in [0, 1] and β ≥ 0 (dual_margins clamps before evaluating), hence a lower
    bound whenever `bounds` hold (over the domain, with splits); it is ≥ CROWN's and ≥ Wong & Kolter's
    bound with the same bounds when slopes is None."""
    depth = network.depth if depth is None else depth
    batch, rows = x.shape[0], spec.shape[-2]
    with torch.no_grad():
        if slopes is None:
            adaptive = _slopes(bounds, depth)
            crown = dual_margins(network, x, eps, norm, spec, bounds, depth, adaptive, splits, betas)
            wong = dual_margins(network, x, eps, norm, spec, bounds, depth, None, splits, betas)
            better = (wong > crown).unsqueeze(-1)
            slopes = [torch.where(better, relu_slopes(lower, upper)[0].unsqueeze(1), a)
                      for (lower, upper), a in zip(bounds[:depth - 1], adaptive)]
        params = [s.detach().expand(batch, rows, s.shape[-1]).clone().clamp(0.0, 1.0) for s in slopes]
        if optimise_betas:
            betas = [torch.zeros(batch, rows, lower.shape[-1], dtype=x.dtype, device=x.device) if b is None else
                     b.detach().expand(batch, rows, lower.shape[-1]).clone().clamp(min=0.0)
                     for (lower, _), b in zip(bounds[:depth - 1], betas or [None] * (depth - 1))]
    best_slopes = [p.clone() for p in params]
    best_betas = [b.clone() for b in betas] if optimise_betas else betas
    variables = params + (betas if optimise_betas else [])
    for v in variables:
        v.requires_grad_(True)
    moments = [(torch.zeros_like(v), torch.zeros_like(v)) for v in variables]
    relaxation = [relu_slopes(lower, upper) for lower, upper in bounds[:depth - 1]]
    best, stalled = None, 0
    for step in range(iterations + 1):
        with torch.enable_grad():
            value = dual_margins(network, x, eps, norm, spec, bounds, depth, params, splits, betas,
                                 relaxation=relaxation)
            total = value.sum()
        with torch.no_grad():
            improved = torch.ones_like(value, dtype=torch.bool) if best is None else value > best
            if best is not None:
                gained = float((value.detach() - best).clamp(min=0).max())
                stalled = stalled + 1 if gained <= _STALL * (1 + float(best.abs().max())) else 0
            best = value.detach().clone() if best is None else torch.maximum(best, value.detach())
            mask = improved.unsqueeze(-1)
            for kept, p in zip(best_slopes, params):
                kept.copy_(torch.where(mask, p, kept))
            if optimise_betas:
                for kept, b in zip(best_betas, betas):
                    kept.copy_(torch.where(mask, b, kept))
        if step == iterations or not variables or not total.requires_grad or stalled >= _PATIENCE:
            break
        gradients = torch.autograd.grad(total, variables, allow_unused=True)
        with torch.no_grad():  # one step of Adam (Kingma & Ba 2015) uphill, then the projection
            for k, (v, g, (first, second)) in enumerate(zip(variables, gradients, moments)):
                if g is None:
                    continue
                first.mul_(_BETA1).add_(g, alpha=1 - _BETA1)
                second.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
                unbiased = second / (1 - _BETA2 ** (step + 1))
                v.add_(lr * (first / (1 - _BETA1 ** (step + 1))) / (unbiased.sqrt() + 1e-8))
                if k < len(params):
                    v.clamp_(0.0, 1.0)
                else:
                    v.clamp_(min=0.0)
    return OptimisedBound(best, best_slopes, best_betas if optimise_betas else None)


def _intersect(pairs: list) -> tuple:
    lower = pairs[0][0]
    upper = pairs[0][1]
    for low, high in pairs[1:]:
        lower, upper = torch.maximum(lower, low), torch.minimum(upper, high)
    return lower, upper


def alpha_crown_bounds(network: AffineNetwork, x: torch.Tensor, eps, norm: str, references: list | None = None, *,
                       iterations: int = ALPHA_ITERATIONS, lr: float = ALPHA_LR) -> list:
    """α-CROWN's pre-activation bounds [(l⁽ⁱ⁾, u⁽ⁱ⁾)] of the hidden layers (each (B, n_i)).

    Layer by layer: the first is exact; layer i starts from the intersection of the `references` (lists
    of valid bounds of every layer; default the 'ibp', 'dual' and 'crown' bounds) and of the interval
    step from layer i − 1's α-CROWN bounds; then the lower and the upper bound of every neuron still
    unstable there is optimised over its own slopes (optimise_bound, with the α-CROWN bounds of the
    layers before) and intersected in. The result lies inside every reference, element-wise."""
    if network.hidden == 0:
        return []
    if references is None:
        references = [layer_bounds(network, x, eps, norm, kind) for kind in ("ibp", "dual", "crown")]
    bounds = [_intersect([reference[0] for reference in references])]
    for i in range(1, network.hidden):
        step = interval_step(network.weights[i], network.biases[i], *bounds[-1])
        lower, upper = _intersect([step, *(reference[i] for reference in references)])
        columns = torch.nonzero(((lower < 0) & (upper > 0)).any(0)).reshape(-1)
        if len(columns):
            spec = neuron_specification(lower.shape[-1], columns, x.dtype, x.device)
            value = optimise_bound(network, x, eps, norm, spec, bounds, depth=i + 1, iterations=iterations,
                                   lr=lr).value
            k = len(columns)
            lower, upper = lower.clone(), upper.clone()
            lower[:, columns] = torch.maximum(lower[:, columns], value[:, :k])
            upper[:, columns] = torch.minimum(upper[:, columns], -value[:, k:])
        bounds.append((lower, upper))
    return bounds


def layer_bounds(network: AffineNetwork, x: torch.Tensor, eps, norm: str, kind: str = "crown", references=None,
                 **alpha) -> list:
    """Pre-activation bounds of every hidden layer of `kind` (KINDS): 'ibp', 'dual', 'ibp+dual'
    (rsbook.relax.dual.intermediate_bounds), 'crown' (crown_bounds) or 'alpha-crown'
    (alpha_crown_bounds with `references` and the optimiser's `alpha` settings)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "crown":
        return crown_bounds(network, x, eps, norm)
    if kind == "alpha-crown":
        return alpha_crown_bounds(network, x, eps, norm, references, **alpha)
    return intermediate_bounds(network, x, eps, norm, kind)
