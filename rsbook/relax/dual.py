"""The closed-form dual bound of Wong & Kolter (2018) and layer-wise intermediate bounds.

The LP slides ("Robust Training via Duality"): any feasible point α′ of the dual of the "Overall LP"
gives a lower bound g_θ(α′) on its minimum, with no optimisation and differentiable in θ. Wong &
Kolter (2018, Theorem 1) pick the point in closed form. Written as a backward pass: start from the
specification c (for the margin of class c* over t, c = e_c* − e_t), set λ = W_Lᵀ c, and for each
hidden layer replace λ_j y_j by a linear function of x̂_j that bounds it from below over the
relaxation, using for an unstable ReLU (l_j < 0 < u_j) the slope s_j = u_j / (u_j − l_j) both for
the lower line y ≥ s x̂ (a convex combination of y ≥ 0 and y ≥ x̂) and for the upper line
y ≤ s (x̂ − l) (the triangle's top edge), so that λ_j y_j ≥ s_j λ_j x̂_j − [λ_j]⁻ s_j l_j; a stable
ReLU is the identity (l ≥ 0) or zero (u ≤ 0). At the input, min over the ball of λ₀ᵀ x̃ is
λ₀ᵀ x − ε‖λ₀‖₁ (ℓ∞) or λ₀ᵀ x − ε‖λ₀‖₂ (ℓ₂; Wong et al. 2018, "Scaling provable adversarial
defenses"). The result is the dual objective at a dual-feasible point of the LP with the same
intermediate bounds, hence ≤ the LP's minimum (weak duality).

`dual_margins` is the one backward pass of every linear bound here: with other lower slopes
a ∈ [0, 1] (the lower line y ≥ a x̂ stays a convex combination of y ≥ 0 and y ≥ x̂, the point stays
dual-feasible) it is CROWN or α-CROWN (rsbook.relax.crown), and with split constraints and their
multipliers it bounds a branch-and-bound domain (rsbook.relax.bab).

`intermediate_bounds` computes the pre-activation bounds [l⁽ⁱ⁾, u⁽ⁱ⁾] layer by layer: by interval
propagation ('ibp'), by this dual bound applied to ±e_j at every neuron of the layer ('dual', as
Wong & Kolter do), or by the element-wise intersection of both ('ibp+dual').
All functions are batched, run in the network's dtype and are differentiable in the weights.
"""

from __future__ import annotations

import torch

from rsbook.relax.interval import _eps, ball_term, first_layer_bounds, interval_step
from rsbook.relax.network import AffineNetwork

__all__ = ["BOUND_KINDS", "relu_slopes", "dual_margins", "intermediate_bounds"]

BOUND_KINDS = ("ibp", "dual", "ibp+dual")


def relu_slopes(lower: torch.Tensor, upper: torch.Tensor):
    """(s, unstable) of the triangle relaxation: s = 1 where l ≥ 0 (active), 0 where u ≤ 0
    (inactive), u / (u − l) where l < 0 < u (unstable, then also the mask)."""
    unstable = (lower < 0) & (upper > 0)
    denominator = torch.where(unstable, upper - lower, torch.ones_like(upper))
    slope = torch.where(unstable, upper / denominator, (lower >= 0).to(upper.dtype))
    return slope, unstable


def dual_margins(network: AffineNetwork, x: torch.Tensor, eps, norm: str, spec: torch.Tensor, bounds: list,
                 depth: int | None = None, lower_slopes: list | None = None, splits: list | None = None,
                 betas: list | None = None, trace: list | None = None, return_input: bool = False,
                 relaxation: list | None = None):
    """Wong & Kolter's lower bound (B, K) on spec @ x̂⁽ᵈᵉᵖᵗʰ⁾ over the ε-ball around each row of x, or,
    with `lower_slopes`, the same backward pass with other lower lines (CROWN, rsbook.relax.crown).

    spec: (K, n_depth) or (B, K, n_depth); bounds: pre-activation bounds (l, u), each (B, n_i), of the
    hidden layers 1..depth-1; depth: the affine layer whose output is bounded (default L, the logits).

    lower_slopes: one entry per hidden layer i = 1..depth-1, None (the slope u/(u − l) of the upper
    line, Wong & Kolter) or a tensor broadcastable to (B, K, n_i): the slope a of the lower line
    y ≥ a x̂ of each unstable neuron, per specification row. Any a ∈ [0, 1] gives a valid line (a convex
    combination of y ≥ 0 and y ≥ x̂), so the result is a lower bound for any slopes: they are clamped
    to [0, 1] here, and the value returned is the bound at the clamped slopes. Stable neurons ignore
    them (their ReLU is exact).

    splits, betas (branch and bound, β-CROWN's idea, Wang et al. 2021): per hidden layer, splits[i] a
    (B, n_i) tensor of signs σ ∈ {−1, 0, +1} (+1: the domain requires x̂ ≥ 0, −1: x̂ ≤ 0, 0: no
    split) and betas[i] ≥ 0 broadcastable to (B, K, n_i); the term −β σ x̂ (≤ 0 on the domain) is
    added to the objective, so the value bounds the minimum over the domain {σ x̂ ≥ 0} for any β ≥ 0
    (clamped at 0 here), provided `bounds` hold on that domain.

    trace: a list that receives, per hidden layer from the last one down, the coefficients (B, K, n_i)
    of its post-activations y⁽ⁱ⁾ in the bound (branching scores). return_input: also return the
    coefficients (B, K, n_0) of the input x̃, whose minimiser over the ball is the bound's worst point.
    relaxation: relu_slopes of every entry of bounds, when the caller has them (repeated evaluations).
    """
    depth = network.depth if depth is None else depth
    batch = x.shape[0]
    lam = spec @ network.weights[depth - 1]
    const = spec @ network.biases[depth - 1]
    if lam.dim() == 2:
        lam, const = lam.expand(batch, *lam.shape), const.expand(batch, *const.shape)
    for i in range(depth - 2, -1, -1):
        if trace is not None:
            trace.append(lam)
        lower, upper = bounds[i]
        slope, unstable = relu_slopes(lower, upper) if relaxation is None else relaxation[i]
        offset = (-slope * lower * unstable).unsqueeze(1)  # −s l ≥ 0 on unstable neurons, 0 elsewhere
        const = const + (lam.clamp(max=0) * offset).sum(-1)
        chosen = None if lower_slopes is None else lower_slopes[i]
        if chosen is None:
            mu = lam * slope.unsqueeze(1)
        else:
            below = torch.where(unstable.unsqueeze(1), chosen.clamp(0.0, 1.0), slope.unsqueeze(1))
            mu = torch.where(lam >= 0, lam * below, lam * slope.unsqueeze(1))
        if splits is not None and betas is not None and betas[i] is not None:
            mu = mu - betas[i].clamp(min=0.0) * splits[i].to(mu.dtype).unsqueeze(1)
        const = const + mu @ network.biases[i]
        lam = mu @ network.weights[i]
    const = const + (lam @ x.unsqueeze(-1)).squeeze(-1)
    value = const - ball_term(lam, _eps(eps, x), norm)
    return (value, lam) if return_input else value


def intermediate_bounds(network: AffineNetwork, x: torch.Tensor, eps, norm: str, kind: str = "dual") -> list:
    """Pre-activation bounds [(l⁽ⁱ⁾, u⁽ⁱ⁾)] of the hidden layers i = 1..L-1, each (B, n_i).

    kind: 'ibp' (interval propagation), 'dual' (Wong & Kolter's layer-wise dual bounds: the bounds of
    layer i use the dual bounds of the layers before it), or 'ibp+dual' (the element-wise
    intersection of the 'ibp' and the 'dual' bounds, so that it lies inside each of them; an LP with
    these bounds is then at least as tight as both the interval and the dual margin bounds). The
    first layer is exact in all three."""
    if kind not in BOUND_KINDS:
        raise ValueError(f"kind must be one of {BOUND_KINDS}, got {kind!r}")
    if network.hidden == 0:
        return []
    if kind == "ibp+dual":
        return [(torch.maximum(li, ld), torch.minimum(ui, ud)) for (li, ui), (ld, ud) in
                zip(intermediate_bounds(network, x, eps, norm, "ibp"), intermediate_bounds(network, x, eps, norm, "dual"))]
    bounds = [first_layer_bounds(network, x, eps, norm)]
    for i in range(1, network.hidden):
        if kind == "ibp":
            bounds.append(interval_step(network.weights[i], network.biases[i], *bounds[-1]))
        else:
            n = network.weights[i].shape[0]
            eye = torch.eye(n, dtype=x.dtype, device=x.device)
            both = dual_margins(network, x, eps, norm, torch.cat([eye, -eye]), bounds, depth=i + 1)
            bounds.append((both[:, :n], -both[:, n:]))
    return bounds
