"""A complete verifier: branch and bound on ReLU splits with α,β-CROWN bounds (Certifier.decide's 'bab').

For one target t the question is whether the worst-case margin m*_t (rsbook.relax.certify) lies above
its threshold. A *domain* is the ε-ball restricted by split constraints on some unstable ReLUs: σ = +1
(x̂ ≥ 0, the neuron is active) or σ = −1 (x̂ ≤ 0, inactive). Branch and bound (Bunel et al. 2018,
"A Unified View of Piecewise Linear Neural Network Verification") keeps the domains whose lower bound
is not yet above the threshold, lowest bound first; it splits a batch of them on one unstable neuron
each (the two children cover the parent), bounds every child, and drops those it proves.

What a child's bound is (all of it is sound for the child's domain):
  * the split neuron's bounds are clipped to [0, u] or [l, 0], so its relaxation is exact (y = x̂ or
    y = 0), and the bounds of the later hidden layers are recomputed from the clipped ones (interval
    step and CROWN, rsbook.relax.crown, intersected with the parent's bounds and with every split);
    bounds that cross (l > u) prove the domain empty;
  * the margin bound is α-CROWN's backward pass with the split constraints in the objective (β-CROWN's
    idea, Wang et al. 2021, Sec. 3.1): + Σ β σ x̂ with β ≥ 0, which is ≤ 0 on the domain, the slopes and
    β optimised together by projected gradient (rsbook.relax.crown.optimise_bound), warm-started from
    the parent. The split constraints enter the final bound only; the recomputed intermediate bounds
    use the clipped bounds of the split neurons but no β.
  * a domain with no unstable neuron left is a leaf: the network is affine on it, and the LP with the
    domain's bounds (rsbook.relax.lp; its box l ≤ x̂ ≤ u enforces every split) is its exact minimum,
    re-evaluated rigorously from the dual. Below the threshold, its argmin is a candidate witness.

Counterexamples: PGD (rsbook.attacks.pgd, random starts from the 'attack' stream) before the search,
and the worst point of every child's linear bound (the minimiser over the ball of its input
coefficients), both checked through Certifier.witness, the one check every NO goes through.

Answers: YES when every target's domains are all proved; NO with a verified witness; MAYBE when
`node_limit` domains have been bounded or `time_limit` seconds have passed, or when a leaf's exact
minimum is not above its threshold and its argmin is no witness in the network's dtype (as the MILP
answers MAYBE there). Targets are searched one after another, lowest bound first, with one budget.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch

from rsbook import streams
from rsbook.attacks import pgd
from rsbook.relax.crown import crown_margins, neuron_specification, optimise_bound
from rsbook.relax.dual import dual_margins, relu_slopes
from rsbook.relax.interval import interval_step
from rsbook.relax.lp import SolverError

__all__ = ["NODE_LIMIT", "BATCH", "ITERATIONS", "ATTACK", "search"]

NODE_LIMIT = 4000
"""Default number of domains bounded (over every target of one answer) before the search gives MAYBE."""
BATCH = 64
"""Domains split per round (their children are bounded together, batched)."""
ITERATIONS = 10
"""Projected-gradient steps of α,β-CROWN per child (the root gets rsbook.relax.crown.ALPHA_ITERATIONS)."""
ATTACK = {"steps": 40, "restarts": 4}
"""PGD before the search: steps and random starts."""
_EMPTY = 1e-9  # bounds crossing by more than this (float64 values of order one) prove a domain empty


@dataclass
class _Domain:
    """One domain of the search: its lower bound on the margin, per hidden layer its bounds (n_i,), split
    signs (n_i,) and the α / β that bounded it ((1, n_i) each), and branching scores (n_i,)."""

    value: float
    lower: list
    upper: list
    splits: list
    slopes: list
    betas: list
    scores: list
    unstable: bool = True


def search(certifier, x, label: int, eps: float, norm: str, targets, start, needed, bounds, *,
           node_limit: int | None = None, time_limit: float | None = None, seed: int = 0):
    """(answer, margin, point) of branch and bound (module docstring) for `targets`, the targets not yet
    proved, with `start` their lower bounds so far (numpy (num_classes,)), `needed` the thresholds a bound
    must exceed, `bounds` the intermediate bounds over the ball (numpy pairs). answer 'YES' (point None;
    margin the smallest lower bound over the proved domains and start), 'NO' (point a verified witness)
    or 'MAYBE' (point None). node_limit: domains bounded before MAYBE (default NODE_LIMIT); time_limit:
    seconds before MAYBE (default none); seed: the PGD stream ('attack', 'bab')."""
    started = time.perf_counter()
    node_limit = NODE_LIMIT if node_limit is None else int(node_limit)
    if node_limit < 1:
        raise ValueError(f"node_limit must be an integer >= 1, got {node_limit!r}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be a number of seconds > 0, got {time_limit!r}")
    margins = np.asarray(start, dtype=float).copy()
    others = [t for t in range(certifier.num_classes) if t != label]
    if not targets:
        return "YES", float(np.min(margins[others])), None
    found = _attack(certifier, x, label, eps, norm, seed)
    if found is not None:
        return "NO", float(np.min(margins[others])), found
    budget = {"nodes": node_limit, "deadline": None if time_limit is None else started + time_limit}
    for target in targets:
        outcome, value, point = _tree(certifier, x, label, target, eps, norm, float(needed[target]),
                                      float(margins[target]), bounds, budget)
        margins[target] = value
        if outcome != "YES":
            return outcome, float(np.min(margins[others])), point
    return "YES", float(np.min(margins[others])), None


def _attack(certifier, x, label: int, eps: float, norm: str, seed: int):
    """A verified witness from PGD, or None."""
    if eps == 0:
        return None
    parameter = next(certifier.net.parameters())
    centre = torch.as_tensor(x).to(parameter.device, parameter.dtype)
    batch = centre[None].expand(ATTACK["restarts"], *centre.shape).contiguous()
    labels = torch.full((ATTACK["restarts"],), label, dtype=torch.long, device=parameter.device)
    generator = streams.generator(seed, "attack", "bab", device=parameter.device)
    found = pgd(certifier.net, batch, labels, eps, norm=norm, steps=ATTACK["steps"], random_start=True,
                generator=generator)
    return _first_witness(certifier, found, x, label, eps, norm)


def _first_witness(certifier, candidates, x, label, eps, norm):
    """The first verified witness among candidate points (rows) that the network misclassifies, or None."""
    if not len(candidates):
        return None
    wrong = certifier.misclassified(candidates.reshape(len(candidates), *certifier.input_shape), label)
    for candidate in candidates[wrong.to(candidates.device)]:
        found = certifier.witness(candidate, x, label, eps, norm)
        if found is not None:
            return found
    return None


def _remaining(budget) -> float | None:
    return None if budget["deadline"] is None else budget["deadline"] - time.perf_counter()


def _tree(certifier, x, label: int, target: int, eps: float, norm: str, needed: float, start: float, bounds,
          budget):
    """('YES' | 'NO' | 'MAYBE', lower bound on m*_target, witness or None) for one target."""
    network = certifier.network
    centre = certifier._x(x)
    spec = torch.zeros(1, network.num_classes, dtype=torch.float64)
    spec[0, label], spec[0, target] = 1.0, -1.0
    root = _Domain(start, [torch.as_tensor(lo).clone() for lo, _ in bounds],
                   [torch.as_tensor(up).clone() for _, up in bounds],
                   [torch.zeros(len(lo), dtype=torch.int8) for lo, _ in bounds], None, None, None)
    children = _bound(network, centre, eps, norm, spec, [root], certifier, root=True)
    proved_low = np.inf
    heap, order = [], itertools.count()
    while True:
        outcome = _settle(certifier, x, label, target, eps, norm, needed, children, heap, order, budget)
        if outcome[0] != "open":
            return outcome
        proved_low = min(proved_low, outcome[1])
        if not heap:
            return "YES", proved_low, None  # +inf when every domain was empty
        low = heap[0][0]
        remaining = _remaining(budget)
        if budget["nodes"] <= 0 or (remaining is not None and remaining <= 0):
            return "MAYBE", min(low, proved_low), None
        parents = [heapq.heappop(heap)[2] for _ in range(min(BATCH, len(heap), max(budget["nodes"] // 2, 1)))]
        children = _bound(network, centre, eps, norm, spec, _split(parents), certifier)


def _settle(certifier, x, label, target, eps, norm, needed, bounded, heap, order, budget):
    """Sort bounded children: a verified witness among their worst points ends the search; proved children
    are dropped, leaves solved by the LP, the rest pushed on the heap. Returns ('open', the lowest bound
    among the proved) or a final (answer, bound, witness)."""
    children, points = bounded
    budget["nodes"] -= len(children)
    found = _first_witness(certifier, points, x, label, eps, norm)
    if found is not None:
        return "NO", min(child.value for child in children), found
    proved_low = np.inf
    for child in children:
        if child.value > needed:
            proved_low = min(proved_low, child.value)
            continue
        if not child.unstable:
            outcome = _leaf(certifier, x, label, target, eps, norm, needed, child, budget)
            if outcome[0] != "YES":
                return outcome
            proved_low = min(proved_low, outcome[1])
            continue
        heapq.heappush(heap, (child.value, next(order), child))
    return "open", proved_low, None


def _leaf(certifier, x, label, target, eps, norm, needed, child, budget):
    """A domain with every ReLU stable: the LP on its bounds is its exact minimum."""
    direction = np.zeros(certifier.num_classes)
    direction[label], direction[target] = 1.0, -1.0
    bounds = [(lo.numpy(), up.numpy()) for lo, up in zip(child.lower, child.upper)]
    remaining = _remaining(budget)
    if remaining is not None and remaining <= 0:
        return "MAYBE", child.value, None
    try:
        value, argmin = certifier.problem(norm, "lp").solve(certifier._x(x)[0].numpy(), eps, bounds, direction,
                                                            remaining)
    except SolverError:
        return "MAYBE", child.value, None  # no rigorous value (e.g. the time limit): nothing proved
    value = max(value, child.value)
    if value > needed:
        return "YES", value, None
    found = certifier.witness(argmin, x, label, eps, norm)
    return ("NO", value, found) if found is not None else ("MAYBE", value, None)


def _split(parents: list) -> list:
    """Two children per parent, on its unstable, unsplit neuron of highest score: one with x̂ ≥ 0 (lower
    bound clipped to 0), one with x̂ ≤ 0 (upper bound clipped to 0)."""
    children = []
    for parent in parents:
        flat = torch.cat(parent.scores)
        layer_of = torch.cat([torch.full((len(s),), i) for i, s in enumerate(parent.scores)])
        index = int(torch.argmax(flat))
        layer = int(layer_of[index])
        neuron = index - sum(len(s) for s in parent.scores[:layer])
        for sign in (1, -1):
            lower, upper = [lo.clone() for lo in parent.lower], [up.clone() for up in parent.upper]
            splits = [s.clone() for s in parent.splits]
            if sign > 0:
                lower[layer][neuron] = 0.0
            else:
                upper[layer][neuron] = 0.0
            splits[layer][neuron] = sign
            children.append(_Domain(parent.value, lower, upper, splits, parent.slopes, parent.betas, None))
    return children


def _apply_splits(lower, upper, splits):
    return (torch.where(splits > 0, lower.clamp(min=0.0), lower), torch.where(splits < 0, upper.clamp(max=0.0), upper))


def _bound(network, centre, eps, norm, spec, domains, certifier, root: bool = False) -> list:
    """Bound every domain (batched): later layers' bounds from the clipped ones, then α,β-CROWN on the
    margin. Returns ([the domains with their value, slopes, betas, scores], the worst points (D', n_0) of
    the non-empty ones' linear bounds)."""
    count = len(domains)
    x = centre.expand(count, centre.shape[-1])
    with torch.no_grad():
        lower = [torch.stack([d.lower[i] for d in domains]) for i in range(network.hidden)]
        upper = [torch.stack([d.upper[i] for d in domains]) for i in range(network.hidden)]
        splits = [torch.stack([d.splits[i] for d in domains]) for i in range(network.hidden)]
        if not root:
            for i in range(1, network.hidden):
                low, high = interval_step(network.weights[i], network.biases[i], lower[i - 1], upper[i - 1])
                lower[i], upper[i] = torch.maximum(lower[i], low), torch.minimum(upper[i], high)
                columns = torch.nonzero(((lower[i] < 0) & (upper[i] > 0)).any(0)).reshape(-1)
                if len(columns):
                    rows = neuron_specification(lower[i].shape[-1], columns, x.dtype, x.device)
                    both = crown_margins(network, x, eps, norm, rows, list(zip(lower[:i], upper[:i])), depth=i + 1)
                    k = len(columns)
                    lower[i][:, columns] = torch.maximum(lower[i][:, columns], both[:, :k])
                    upper[i][:, columns] = torch.minimum(upper[i][:, columns], -both[:, k:])
                lower[i], upper[i] = _apply_splits(lower[i], upper[i], splits[i])
        empty = torch.zeros(count, dtype=torch.bool)
        for lo, up in zip(lower, upper):
            empty |= (lo > up + _EMPTY * (1 + up.abs())).any(1)
        upper = [torch.maximum(lo, up) for lo, up in zip(lower, upper)]  # crossing by rounding only: widen
    bounds = list(zip(lower, upper))
    warm = None if root else [torch.stack([d.slopes[i] for d in domains]) for i in range(network.hidden)]
    betas = None if root else [torch.stack([d.betas[i] for d in domains]) for i in range(network.hidden)]
    found = optimise_bound(network, x, eps, norm, spec, bounds, slopes=warm, splits=splits, betas=betas,
                           optimise_betas=True, **({} if root else {"iterations": ITERATIONS}))
    with torch.no_grad():
        trace = []
        _, coefficients = dual_margins(network, x, eps, norm, spec, bounds, lower_slopes=found.slopes, splits=splits,
                                       betas=found.betas, trace=trace, return_input=True)
        trace = trace[::-1]
        points = _worst_points(centre, coefficients[:, 0], eps, norm)
        scores, unstable = [], torch.zeros(count, dtype=torch.bool)
        for i in range(network.hidden):  # |coefficient of y| × the triangle's height, on unstable neurons
            slope, open_ = relu_slopes(lower[i], upper[i])
            height = torch.where(open_, -slope * lower[i], torch.zeros_like(lower[i]))
            scores.append(torch.where(open_, trace[i][:, 0].abs() * height + 1e-12 * (upper[i] - lower[i]),
                                      torch.full_like(lower[i], -np.inf)))
            unstable |= open_.any(1)
        values = torch.maximum(found.value[:, 0], torch.tensor([d.value for d in domains], dtype=torch.float64))
        values = torch.where(empty, torch.full_like(values, np.inf), values).tolist()
    out = [_Domain(values[k], [lo[k] for lo in lower], [up[k] for up in upper], [s[k] for s in splits],
                   [s[k] for s in found.slopes], [b[k] for b in found.betas], [s[k] for s in scores], bool(unstable[k]))
           for k in range(count)]
    return out, points[~empty]


def _worst_points(centre, coefficients, eps: float, norm: str) -> torch.Tensor:
    """The minimisers over the ball of c · x̃ for each row c of coefficients (D, n_0)."""
    if norm == "linf":
        return centre - eps * torch.sign(coefficients)
    length = coefficients.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return centre - eps * coefficients / length
