"""The pictures of the LP slides ("Robustness Certification via Convex Relaxation") on a network with
two inputs and two outputs: the image of the input ball under the network — non-convex — against
its convex outer bounds (Wong & Kolter 2018, Fig. 1, "the convex outer adversarial polytope").

For a direction d of the output plane (a linear function of the logits z), the relaxation's support
value min over the relaxed set of d · z is an LP (rsbook.relax.lp with objective d on the logits) or,
for the dual bound, Wong & Kolter's closed form with specification d. Every direction gives a half-plane d · z ≥ value that
contains the true image; intersecting the half-planes of many directions traces the outer polygon.
The interval bounds give a box (the bounds of each logit).
"""

from __future__ import annotations

import numpy as np
import torch

from rsbook.relax.certify import Certifier
from rsbook.relax.dual import dual_margins
from rsbook.relax.interval import interval_margins

__all__ = ["ball_grid", "halfplane_polygon", "output_polytope", "widest_unstable", "decision_grid", "instructive_point"]


def ball_grid(x, eps: float, norm: str = "linf", points: int = 101) -> np.ndarray:
    """A grid of points of the 2-D ε-ball around x: points × points on the square (ℓ∞), the ones
    inside the disc (ℓ₂). Shape (M, 2)."""
    x = np.asarray(x, dtype=float).reshape(-1)
    if x.shape != (2,):
        raise ValueError(f"x must be a point of the plane (2 coordinates), got shape {x.shape}")
    axis = np.linspace(-eps, eps, points)
    offsets = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    if norm == "l2":
        offsets = offsets[np.linalg.norm(offsets, axis=1) <= eps * (1 + 1e-12)]
    return x + offsets


def halfplane_polygon(directions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Vertices (k, 2) of {z : d_k · z ≥ v_k for all k}, for directions sorted by angle and dense
    enough that consecutive half-planes meet at the polygon's vertices (closed: last = first)."""
    directions, values = np.asarray(directions, float), np.asarray(values, float)
    vertices = []
    for k in range(len(directions)):
        a = np.stack([directions[k], directions[(k + 1) % len(directions)]])
        vertices.append(np.linalg.solve(a, [values[k], values[(k + 1) % len(values)]]))
    vertices.append(vertices[0])
    return np.asarray(vertices)


def output_polytope(net, x, eps: float, norm: str = "linf", directions: int = 72, points: int = 101,
                    bounds: str = "ibp+dual", label: int | None = None) -> dict:
    """The true image of the ε-ball around a 2-D point x under a network with two outputs, and its
    outer bounds, in the plane (margin z_c − z_t, sum z_0 + z_1) of the logits, where c = `label`
    (default: the network's prediction at x) and t the other class: the prediction is certified
    exactly when a set stays right of the vertical line margin = 0, and its leftmost point is the
    method's lower bound on the worst-case margin.

    Returns {"image": (M, 2) coordinates of the images of a grid of the ball (ball_grid), "lp":
    polygon of the LP relaxation, "dual": polygon of Wong & Kolter's bound (both with intermediate
    bounds `bounds`), "box": [[low, high] of the margin, [low, high] of the sum] from interval
    propagation, "bounds": the intermediate bounds used, "label": c}. Polygons from `directions`
    equally spaced directions (halfplane_polygon)."""
    certifier = Certifier(net, (2,))
    if certifier.num_classes != 2:
        raise ValueError(f"net must have two outputs, got {certifier.num_classes}")
    x = torch.as_tensor(x, dtype=torch.float64).reshape(2)
    with torch.no_grad():
        label = int(certifier.network.forward(x[None]).argmax()) if label is None else int(label)
    transform = np.array([[1.0, -1.0] if label == 0 else [-1.0, 1.0], [1.0, 1.0]])
    grid = ball_grid(x.numpy(), eps, norm, points)
    with torch.no_grad():
        image = certifier.network.forward(torch.as_tensor(grid)).numpy() @ transform.T
    intermediate = certifier.bounds(x, eps, norm, bounds)
    angles = np.linspace(0, 2 * np.pi, directions, endpoint=False)
    unit = np.stack([np.cos(angles), np.sin(angles)], 1)
    on_logits = unit @ transform  # d · (T z) = (Tᵀ d) · z
    problem = certifier.problem(norm, "lp")
    lp_values = np.array([problem.solve(x.numpy(), eps, intermediate, d)[0] for d in on_logits])
    torch_bounds = [(torch.as_tensor(lo)[None], torch.as_tensor(up)[None]) for lo, up in intermediate]
    with torch.no_grad():
        dual_values = dual_margins(certifier.network, x[None], eps, norm, torch.as_tensor(on_logits),
                                   torch_bounds)[0].numpy()
        interval = [(torch.as_tensor(lo)[None], torch.as_tensor(up)[None])
                    for lo, up in certifier.bounds(x, eps, norm, "ibp")]
        box_spec = torch.as_tensor(np.concatenate([transform, -transform])[[0, 2, 1, 3]])
        box = interval_margins(certifier.network, x[None], eps, norm, box_spec, interval)[0].numpy()
    return {"image": image, "lp": halfplane_polygon(unit, lp_values), "dual": halfplane_polygon(unit, dual_values),
            "box": np.array([[box[0], -box[1]], [box[2], -box[3]]]), "bounds": intermediate, "label": label}


def widest_unstable(bounds: list) -> tuple[int, int, float, float]:
    """(layer, neuron, l, u) of the unstable ReLU (l < 0 < u) with the widest interval, layers counted
    from 1; ValueError when every ReLU is stable."""
    best = None
    for layer, (lower, upper) in enumerate(bounds, start=1):
        lower, upper = np.asarray(lower).reshape(-1), np.asarray(upper).reshape(-1)
        for j in np.flatnonzero((lower < 0) & (upper > 0)):
            if best is None or upper[j] - lower[j] > best[3] - best[2]:
                best = (layer, int(j), float(lower[j]), float(upper[j]))
    if best is None:
        raise ValueError("every ReLU is stable over this ball: there is no triangle to draw")
    return best


def decision_grid(net, points, margin: float = 0.3, resolution: int = 200) -> dict:
    """The network's predicted class on a resolution × resolution grid covering `points` (N, 2) plus
    `margin`: {"x", "y": (resolution, resolution) coordinates, "prediction": classes}."""
    points = np.asarray(points, dtype=float)
    low, high = points.min(0) - margin, points.max(0) + margin
    xs, ys = np.meshgrid(np.linspace(low[0], high[0], resolution), np.linspace(low[1], high[1], resolution))
    grid = torch.as_tensor(np.stack([xs.ravel(), ys.ravel()], 1), dtype=next(net.parameters()).dtype)
    with torch.no_grad():
        prediction = net(grid).argmax(1).numpy().reshape(xs.shape)
    return {"x": xs, "y": ys, "prediction": prediction}


def instructive_point(net, dataset, eps: float, norm: str = "linf", candidates: int = 40,
                      bounds: str = "ibp+dual") -> int:
    """The index, among the first `candidates` examples of a 2-D dataset that the network classifies
    correctly and whose ε-ball leaves at least one ReLU unstable (else there is nothing to relax), of
    the one that best shows the price of the relaxation: the exact (MILP) worst-case margin is
    positive but the LP's lower bound is not, with the largest gap; failing that, the one with the
    smallest positive exact margin; failing that, the first such example."""
    certifier = Certifier(net, (2,))
    best, fallback, first = None, None, None
    for idx in range(min(candidates, len(dataset))):
        x, label = dataset[idx]
        if bool(certifier.misclassified(torch.as_tensor(x)[None], int(label))[0]):
            continue
        resolved = certifier.bounds(x, eps, norm, bounds)
        if not any(np.any((np.asarray(lo) < 0) & (np.asarray(up) > 0)) for lo, up in resolved):
            continue
        first = idx if first is None else first
        lp = float(np.min(certifier.margin_lower_bounds(x, int(label), eps, norm, "lp", resolved)))
        exact = float(np.min(certifier.margin_lower_bounds(x, int(label), eps, norm, "milp", resolved)))
        if exact > 0 >= lp and (best is None or exact - lp > best[1]):
            best = (idx, exact - lp)
        if exact > 0 and (fallback is None or exact < fallback[1]):
            fallback = (idx, exact)
    for choice in (best, fallback):
        if choice is not None:
            return int(choice[0])
    if first is None:
        raise ValueError(f"none of the first {candidates} examples is classified correctly with an unstable ReLU "
                         f"in its ball of radius {eps:g}; raise candidates or eps")
    return int(first)
