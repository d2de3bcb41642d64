"""Margin lower bounds and YES / MAYBE / NO certificates of a ReLU network (LP slides, "Certification
via Convex Relaxation").

For the class c* = `label` and every target t ≠ c*, m*_t = min over the ε-ball of F(x̃)_c* − F(x̃)_t
is the worst-case margin ("Recall: Exact Certification"); each method returns a lower bound m_t:

  'ibp'          interval bound propagation, the last layer folded into the margin (rsbook.relax.interval)
  'dual'         Wong & Kolter's closed-form dual bound (rsbook.relax.dual)
  'crown'        CROWN: the same backward pass with the adaptive lower slopes (rsbook.relax.crown)
  'alpha-crown'  α-CROWN: lower slopes optimised per neuron and target (rsbook.relax.crown)
  'lp'           the "Overall LP" with the triangle relaxation (rsbook.relax.lp), HiGHS / Clarabel
  'milp'         the exact mixed-integer program (ℓ∞ only), HiGHS: m_t = m*_t

and, for answers only (`certify`, `decide`), 'bab': branch and bound on ReLU splits with α,β-CROWN
bounds per domain (rsbook.relax.bab), complete up to its node and time limits.

The answers (slides, "Now we allow the following answers"): YES when every m_t > 0 (no point of the
ball is classified other than c*); NO when a point of the ball is found that the real network does
not classify as c* — x itself, the relaxation's argmin x̃ (slides, "Intermediate Summary"), or a PGD
attack (rsbook.attacks.pgd); MAYBE otherwise. With `label` the network's prediction at x these are
the slides' answers; with the true label, YES certifies a correct and robust prediction.

Every NO comes with a verified witness (`Certifier.witness`, the one check all three sources go
through): the candidate is projected onto the ball (clipped to [x − ε, x + ε] for ℓ∞, δ rescaled to
norm ε for ℓ₂ when it lies outside; the solvers' argmins lie outside by their feasibility tolerance,
and a float32 cast can push a point out again), shrunk towards x until it lies inside the ball both
in float64 (the exact value of the point the network sees) and in the network's dtype, and then run
through the network in its own dtype; only if that gives a class other than c* is the answer NO,
otherwise the candidate is dropped (MAYBE, or the next candidate). The ball is the whole threat
model: no input-domain box (e.g. [0, 1] pixels) constrains the LP, the MILP or the attack, so none
constrains the witness either.

A YES holds for the network as it runs, in its own dtype (usually float32), not only for its exact
real-valued version that the bounds are about: target t counts as proved only when its bound exceeds
`Certifier.thresholds`, the bound e_label + e_t on how far the run network's margin can be from the
exact one anywhere in the ball (rsbook.relax.rounding), plus the same bound for float64 arithmetic
(the certificate's own), plus MILP_TOLERANCE for the MILP (whose value is exact only up to HiGHS's
feasibility tolerances). IBP, the dual bound and the LP are rigorous: the LP's value is re-evaluated
from its dual multipliers (rsbook.relax.lp), never taken from the solver's primal objective.

Intermediate bounds given by the caller as (l, u) pairs are trusted: the margin bounds, and every
answer, hold only if they bound the pre-activations over the whole ball. They are checked only at x
itself (a necessary condition); bounds computed here (INTERMEDIATE) are sound.

Ordering. With the same intermediate bounds B, ibp, dual, crown and alpha-crown are each ≤ lp (the
last three are the LP's dual objective at dual-feasible points, weak duality; the LP contains the
box of the last hidden layer that IBP minimises over), and lp ≤ milp = m*_t. The LP only gains from
tighter bounds (its feasible set shrinks), so with every method on its default bounds
(DEFAULT_BOUNDS: 'alpha-crown' bounds lie inside the 'ibp', 'dual' and 'crown' ones) this gives,
per target (tested):

    ibp, dual, crown  ≤  alpha-crown  ≤  lp  ≤  milp = m*_t        (ibp ≤ alpha-crown: see below)

crown ≤ alpha-crown and dual ≤ alpha-crown hold because alpha-crown on its default bounds reports the
maximum of its optimised bound and of CROWN's and the dual bound on their own bounds (all sound).
Not ordered in general, and found both ways by the tests: ibp against dual, ibp against crown, and
dual against crown (the adaptive slope is a heuristic: neither it nor u/(u − l) is better for every
neuron). ibp ≤ alpha-crown does not hold in general either; ibp ≤ lp does. The slides' construction,
the LP on interval bounds, is `bounds='ibp'`.

The LP and MILP are built once per (network, norm, method) as parametrized cvxpy problems and
re-solved for every input, radius and target (`Certifier`, cached per network by the module-level
functions); `Certifier(..., cache=False)` rebuilds them for every solve (to measure the difference).
"""

from __future__ import annotations

import math
import numbers
import weakref

import numpy as np
import torch

from rsbook._checks import check_positive_int
from rsbook.attacks import pgd
from rsbook.relax import bab
from rsbook.relax.crown import KINDS, crown_margins, layer_bounds, optimise_bound
from rsbook.relax.dual import dual_margins
from rsbook.relax.interval import NORMS, interval_margins
from rsbook.relax.lp import RelaxedProblem, SolverError
from rsbook.relax.network import AffineNetwork, affine_network, network_fingerprint
from rsbook.relax.rounding import rounding_bound

__all__ = ["METHODS", "DECISIONS", "CHEAP", "GUARANTEED", "INTERMEDIATE", "DEFAULT_BOUNDS", "ANSWERS", "MILP_TOLERANCE",
           "Certifier", "certifier", "margin_lower_bounds", "certify", "ball_distance", "SolverError"]

METHODS = ("ibp", "dual", "crown", "alpha-crown", "lp", "milp")
"""The margin lower bounds, cheapest first."""
DECISIONS = (*METHODS, "bab")
"""The methods that answer YES / MAYBE / NO: every margin bound, and branch and bound."""
CHEAP = ("ibp", "dual", "crown", "alpha-crown")
"""The bounds computed in closed form or by a few gradient steps, with no solver."""
GUARANTEED = (("dual", "alpha-crown"), ("crown", "alpha-crown"), ("ibp", "lp"), ("dual", "lp"), ("crown", "lp"),
              ("alpha-crown", "lp"), ("lp", "milp"))
"""The pairs (a, b) with a ≤ b on every target when every method uses its DEFAULT_BOUNDS (module
docstring); ibp, dual and crown are not ordered among themselves, nor ibp against alpha-crown."""
INTERMEDIATE = (*KINDS, "lp")
"""Where the pre-activation bounds come from: 'ibp', 'dual', 'ibp+dual' (rsbook.relax.dual), 'crown',
'alpha-crown' (rsbook.relax.crown; inside the 'ibp', 'dual' and 'crown' bounds) or 'lp' (the
'alpha-crown' bounds of each layer tightened by solving the LP of the layers before it for every
unstable neuron, min and max)."""
DEFAULT_BOUNDS = {"ibp": "ibp", "dual": "dual", "crown": "crown", "alpha-crown": "alpha-crown", "lp": "alpha-crown",
                  "milp": "alpha-crown", "bab": "alpha-crown"}
"""Each method's intermediate bounds: the cheap ones their own (as their papers define them), the LP, the
MILP and branch and bound the tightest cheap ones, α-CROWN's."""
ANSWERS = ("YES", "MAYBE", "NO")
MILP_TOLERANCE = 1e-6
"""How far above the rounding threshold (Certifier.thresholds) a MILP bound must lie to count as
positive: HiGHS's MILP value is exact only up to its feasibility tolerances (1e-7 per constraint) and is
not re-evaluated (the LP's value is, rsbook.relax.lp)."""
SHRINK = 1e-7
"""First relative step by which `Certifier.witness` shrinks a projected candidate towards x when it
rounds outside the ball (doubled at each further try)."""
_SHRINK_TRIES = 24  # SHRINK · 2^23 < 1: the last try still keeps the candidate's direction
_MEMO = 64  # intermediate bounds and α-CROWN margins kept per Certifier


def ball_distance(point, x, norm: str) -> float:
    """‖point − x‖ in `norm` ('linf' or 'l2'), computed in float64 on the CPU (any shapes with the
    same number of entries)."""
    norm = _check_norm(norm)
    delta = torch.as_tensor(point).detach().to("cpu", torch.float64).reshape(-1) - \
        torch.as_tensor(x).detach().to("cpu", torch.float64).reshape(-1)
    return _norm(delta, norm)


def _norm(delta: torch.Tensor, norm: str) -> float:
    if delta.numel() == 0:
        return 0.0
    return float(delta.abs().max() if norm == "linf" else torch.linalg.vector_norm(delta))


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_method(method: str, norm: str, allowed: tuple = METHODS) -> str:
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")
    if method == "milp" and norm != "linf":
        raise ValueError("method 'milp' is exact for the ℓ∞ ball only (norm='linf')")
    return method


class Certifier:
    """Certificates for one network on inputs of one shape.

    net: a torch.nn.Sequential of Linear, ReLU, Flatten, Conv2d (rsbook.relax.network); it is
    converted once, in float64. input_shape: the shape of one input x (e.g. (1, 8, 8)).
    cache: keep each compiled LP / MILP and re-solve it (True), or build and compile a new one for
    every solve, i.e. every input, radius and target (False; to measure what DPP saves).
    The network must not change while the Certifier is in use; the module-level functions
    (`certifier`) build a new one when its weights do.
    """

    def __init__(self, net, input_shape, cache: bool = True):
        self.net = net
        network = affine_network(net, input_shape)  # on the CPU: the solvers and the bounds run there
        self.network = AffineNetwork(tuple(w.cpu() for w in network.weights), tuple(b.cpu() for b in network.biases),
                                     network.input_shape)
        self.input_shape = self.network.input_shape
        self.fingerprint = network_fingerprint(net)
        self.cache = bool(cache)
        self._problems: dict = {}
        self._memory: dict = {}
        self.num_classes = self.network.num_classes

    # ------------------------------------------------------------------ inputs
    def _x(self, x) -> torch.Tensor:
        x = torch.as_tensor(x).detach().to("cpu", torch.float64)
        if tuple(x.shape) != tuple(self.input_shape):
            raise ValueError(f"x must have shape {tuple(self.input_shape)}, got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x must be finite: it holds NaN or infinite values")
        return x.reshape(1, -1)

    def _label(self, label) -> int:
        if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < self.num_classes:
            raise ValueError(f"label must be a class in 0..{self.num_classes - 1}, got {label!r}")
        return int(label)

    def _spec(self, label: int) -> torch.Tensor:
        """Rows e_label − e_t for every t (the row t = label is zero)."""
        spec = -torch.eye(self.num_classes, dtype=torch.float64)
        spec[:, label] += 1.0
        return spec

    def problem(self, norm: str, method: str, depth: int | None = None) -> RelaxedProblem:
        """The parametrized LP ('lp') or MILP ('milp') for `norm`, compiled at its first solve and kept
        (a fresh one each call when cache=False)."""
        depth = self.network.depth if depth is None else depth
        key = (norm, method, depth)
        if not self.cache or key not in self._problems:
            built = RelaxedProblem(self.network, norm, integer=method == "milp", depth=depth)
            if not self.cache:
                return built
            self._problems[key] = built
        return self._problems[key]

    # ------------------------------------------------------------------ bounds
    def forget(self):
        """Drop the memoised intermediate bounds and α-CROWN margins (e.g. to time a method from scratch)."""
        self._memory.clear()

    def _memo(self, key, compute):
        """compute(), kept for the last _MEMO keys (the same input, radius and kind asked again by several
        methods, e.g. an LP after α-CROWN on the same bounds)."""
        if key in self._memory:
            self._memory[key] = self._memory.pop(key)
            return self._memory[key]
        value = self._memory[key] = compute()
        while len(self._memory) > _MEMO:
            self._memory.pop(next(iter(self._memory)))
        return value

    def _layer_bounds(self, xt: torch.Tensor, eps: float, norm: str, kind: str) -> list:
        """Bounds of `kind` (crown.KINDS) as torch pairs (1, n_i), memoised per input, radius, norm."""
        def compute():
            references = None
            if kind == "alpha-crown":
                references = [self._layer_bounds(xt, eps, norm, k) for k in ("ibp", "dual", "crown")]
            with torch.no_grad():
                return layer_bounds(self.network, xt, eps, norm, kind, references)
        return self._memo(("bounds", xt.numpy().tobytes(), eps, norm, kind), compute)

    def bounds(self, x, eps: float, norm: str = "linf", kind: str = "ibp", time_limit: float | None = None) -> list:
        """Pre-activation bounds [(l, u)] (numpy, one pair per hidden layer) over the ε-ball around x.
        kind: one of INTERMEDIATE."""
        norm, eps = _check_norm(norm), _check_eps(eps)
        if kind not in INTERMEDIATE:
            raise ValueError(f"bounds must be one of {INTERMEDIATE} or a list of (l, u) pairs, got {kind!r}")
        xt = self._x(x)

        def compute():
            start = self._layer_bounds(xt, eps, norm, "alpha-crown" if kind == "lp" else kind)
            bounds = [(lo[0].numpy().copy(), up[0].numpy().copy()) for lo, up in start]
            return self._tighten(xt[0].numpy(), eps, norm, bounds, time_limit) if kind == "lp" else bounds
        kept = self._memo(("numpy", xt.numpy().tobytes(), eps, norm, kind), compute)
        return [(lower.copy(), upper.copy()) for lower, upper in kept]

    def _tighten(self, x: np.ndarray, eps: float, norm: str, bounds: list, time_limit) -> list:
        """Layer by layer from the second hidden layer: min and max of every unstable pre-activation
        over the LP of the layers before it (with the already tightened bounds)."""
        for i in range(1, len(bounds)):
            lower, upper = bounds[i][0].copy(), bounds[i][1].copy()
            problem = self.problem(norm, "lp", depth=i + 1)
            for j in np.flatnonzero((lower < 0) & (upper > 0)):
                unit = np.zeros(len(lower))
                unit[j] = 1.0
                low, _ = problem.solve(x, eps, bounds, unit, time_limit)
                high, _ = problem.solve(x, eps, bounds, -unit, time_limit)
                lower[j], upper[j] = max(lower[j], low), min(upper[j], -high)
            bounds[i] = (lower, np.maximum(upper, lower))
        return bounds

    def _resolve_bounds(self, x, eps, norm, method, bounds, time_limit) -> list:
        if bounds is None:
            bounds = DEFAULT_BOUNDS[method]
        if isinstance(bounds, str):
            return self.bounds(x, eps, norm, bounds, time_limit)
        bounds = [(np.asarray(lo, dtype=float).reshape(-1), np.asarray(up, dtype=float).reshape(-1))
                  for lo, up in bounds]
        dims = self.network.dims[1:-1]
        if len(bounds) != len(dims) or any(lo.shape != (n,) or up.shape != (n,) for (lo, up), n in zip(bounds, dims)):
            raise ValueError(f"bounds must hold one (l, u) pair per hidden layer with sizes {list(dims)}")
        with torch.no_grad():  # valid bounds contain the pre-activations at x itself (a necessary check)
            xt = self._x(x)
            for i, (lower, upper) in enumerate(bounds, start=1):
                value = self.network.forward(xt, upto=i)[0].numpy()
                if np.any(value < lower - 1e-9) or np.any(value > upper + 1e-9):
                    raise ValueError(f"bounds of hidden layer {i} do not contain its pre-activations at x, so they "
                                     "cannot hold over the ball")
        return bounds

    def _cheap_margins(self, xt: torch.Tensor, eps: float, norm: str, label: int, method: str, kind,
                       resolved: list) -> np.ndarray:
        """The bound of a CHEAP method for every target (numpy (num_classes,), the label's entry unused)
        with the resolved intermediate bounds. 'alpha-crown' on its own kind of bounds (kind
        'alpha-crown') is the maximum of its optimised bound and of CROWN's and the dual bound on their
        own kinds of bounds (all sound; module docstring); it is memoised per input, radius and label."""
        spec = self._spec(label)
        torch_bounds = [(torch.as_tensor(lo)[None], torch.as_tensor(up)[None]) for lo, up in resolved]
        if method == "alpha-crown":
            def compute():
                value = optimise_bound(self.network, xt, eps, norm, spec, torch_bounds).value[0].numpy()
                if kind == "alpha-crown":
                    with torch.no_grad():
                        for other, bound in (("crown", crown_margins), ("dual", dual_margins)):
                            own = self._layer_bounds(xt, eps, norm, other)
                            value = np.maximum(value, bound(self.network, xt, eps, norm, spec, own)[0].numpy())
                return value
            if isinstance(kind, str):
                return self._memo(("alpha", xt.numpy().tobytes(), eps, norm, label, kind), compute)
            return compute()
        bound = {"ibp": interval_margins, "dual": dual_margins, "crown": crown_margins}[method]
        with torch.no_grad():
            return bound(self.network, xt, eps, norm, spec, torch_bounds)[0].numpy()

    def margin_lower_bounds(self, x, label, eps, norm: str = "linf", method: str = "lp", bounds=None,
                            targets=None, time_limit: float | None = None, return_argmin: bool = False):
        """Lower bounds m_t (numpy (num_classes,), +inf at `label`) on min over the ε-ball of
        F(x̃)_label − F(x̃)_t. See the module docstring for the methods; `bounds` is the kind of
        intermediate bounds (INTERMEDIATE; default DEFAULT_BOUNDS[method]) or a precomputed list of
        (l, u) pairs, which is trusted: the result is a lower bound only if they hold over the whole
        ball (they are checked at x only). targets: only these classes (the others are NaN). With return_argmin (lp and
        milp) also {t: x̃_t}, the minimisers' inputs with x's shape. Raises SolverError when a solver
        returns no optimal solution."""
        norm, eps = _check_norm(norm), _check_eps(eps)
        method = _check_method(method, norm)
        label = self._label(label)
        xt = self._x(x)
        kind = DEFAULT_BOUNDS[method] if bounds is None else bounds
        bounds = self._resolve_bounds(x, eps, norm, method, bounds, time_limit)
        targets = [t for t in range(self.num_classes) if t != label] if targets is None else \
            [self._label(t) for t in targets if int(t) != label]
        result = np.full(self.num_classes, np.nan)
        result[label] = np.inf
        argmins = {}
        spec = self._spec(label)
        if method in CHEAP:
            result[targets] = self._cheap_margins(xt, eps, norm, label, method, kind, bounds)[targets]
        else:
            for t in targets:
                problem = self.problem(norm, method)  # cached, or a fresh one per solve with cache=False
                result[t], argmin = problem.solve(xt[0].numpy(), eps, bounds, spec[t].numpy(), time_limit)
                argmins[t] = argmin.reshape(self.input_shape)
        return (result, argmins) if return_argmin else result

    # ------------------------------------------------------------------ answers
    def misclassified(self, points: torch.Tensor, label: int) -> torch.Tensor:
        """Whether the real network (as given, in its own dtype) classifies each point other than label."""
        parameter = next(self.net.parameters())
        with torch.no_grad():
            return (self.net(points.to(parameter.device, parameter.dtype)).argmax(1) != label).cpu()

    def witness(self, candidate, x, label, eps, norm: str = "linf"):
        """A verified counterexample built from `candidate`, or None (slides, "Intermediate Summary": a
        NO needs a point of the ε-ball that the network misclassifies). Every NO of this class goes
        through here: x itself, an LP / MILP argmin x̃, a PGD example.

        candidate: any point with x's number of entries. It is projected onto the ball around x —
        clipped to [x − ε, x + ε] (ℓ∞), its offset rescaled to norm ε when longer (ℓ₂); a point already
        inside is kept as it is — and cast to the network's dtype; while the result lies outside the
        ball, the offset is shrunk towards x by a factor 1 − SHRINK · 2^k (k = 0, 1, …).

        Guarantee when a point w is returned: w lies in the ball by each of three checks — ‖w − x‖ ≤ ε
        in float64 on the exact values the network sees, the same for the float64 point before the
        cast, and ‖w − x‖ ≤ ε computed in the network's dtype — and the network, run on w in its own
        dtype, gives a class other than label. w is a float64 numpy array of x's shape whose entries
        are exactly representable in the network's dtype. None: no such point was found (for instance
        the candidate is misclassified only outside the ball), so the candidate refutes nothing."""
        label, norm, eps = self._label(label), _check_norm(norm), _check_eps(eps)
        centre = self._x(x)[0]
        point = torch.as_tensor(candidate).detach().to("cpu", torch.float64).reshape(-1)
        if point.numel() != centre.numel():
            raise ValueError(f"candidate must have {centre.numel()} entries like x, got {point.numel()}")
        if not bool(torch.isfinite(point).all()):
            return None
        delta = point - centre
        if norm == "linf":
            delta = delta.clamp(-eps, eps)
        elif _norm(delta, norm) > eps:
            delta = delta * (eps / _norm(delta, norm))
        if _norm(point - centre, norm) > eps:
            point = centre + delta
        dtype = next(self.net.parameters()).dtype
        for k in range(_SHRINK_TRIES + 1):
            if k:
                delta = delta * (1.0 - SHRINK * 2.0 ** (k - 1))
                point = centre + delta
            cast = point.to(dtype)
            if _inside(point, cast, centre, eps, norm):
                break
        else:
            return None
        if not bool(self.misclassified(cast.reshape(1, *self.input_shape), label)[0]):
            return None
        return cast.to(torch.float64).reshape(self.input_shape).numpy()

    def attack_witness(self, x, label, eps, norm: str, steps: int = 40, restarts: int = 1, generator=None):
        """A verified witness (`witness`) from x itself or, failing that, from PGD
        (rsbook.attacks.pgd, `restarts` random starts of `steps` steps, drawn from `generator`), or
        None. steps = 0 or eps = 0: only x is tried."""
        label, norm, eps = self._label(label), _check_norm(norm), _check_eps(eps)
        restarts = check_positive_int(restarts, "restarts")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        found = self.witness(x, x, label, eps, norm)
        if found is not None or eps == 0 or steps == 0:
            return found
        parameter = next(self.net.parameters())
        start = torch.as_tensor(x).to(parameter.device, parameter.dtype)
        batch = start[None].expand(restarts, *start.shape).contiguous()
        labels = torch.full((restarts,), label, dtype=torch.long, device=parameter.device)
        adversarial = pgd(self.net, batch, labels, eps, norm=norm, steps=steps, random_start=True,
                          generator=generator)
        wrong = self.misclassified(adversarial, label)
        for candidate in adversarial[wrong.to(adversarial.device)]:
            found = self.witness(candidate, x, label, eps, norm)
            if found is not None:
                return found
        return None

    def attack(self, x, label, eps, norm: str, steps: int = 40, restarts: int = 1, generator=None) -> bool:
        """Whether x itself or PGD (`restarts` random starts of `steps` steps, drawn from `generator`)
        gives a verified witness (`attack_witness`, `witness`): a point of the ε-ball that the network
        classifies other than label. steps = 0: only x is checked."""
        return self.attack_witness(x, label, eps, norm, steps, restarts, generator) is not None

    def thresholds(self, x, label, eps, norm: str = "linf", method: str = "lp") -> np.ndarray:
        """Per target t (numpy (num_classes,), NaN at label): how far above 0 a margin bound must lie for
        the network as run to keep `label` over t everywhere in the ball — e_label + e_t for the network
        in its own dtype and again for float64 (rsbook.relax.rounding.rounding_bound; the second covers the
        certificate's own float64 arithmetic), plus MILP_TOLERANCE for method 'milp'."""
        norm, eps = _check_norm(norm), _check_eps(eps)
        label = self._label(label)
        point = self._x(x).reshape(self.input_shape)
        error = rounding_bound(self.net, point, eps, norm) + rounding_bound(self.net, point, eps, norm,
                                                                           dtype=torch.float64)
        result = error + error[label] + (MILP_TOLERANCE if method == "milp" else 0.0)
        result[label] = np.nan
        return result

    def decide(self, x, label, eps, norm: str = "linf", method: str = "lp", bounds=None,
               time_limit: float | None = None, tolerance: float | None = None, node_limit: int | None = None):
        """The relaxation's part of an answer, without an attack: (answer, margin, point) with answer
        'YES' (every target's bound > its threshold; point None), 'NO' (x, or the argmin x̃ of a target
        whose bound is not above its threshold, gives a verified witness; point is that witness, see
        `witness`) or 'MAYBE' (point: that x̃ as the solver returned it, unchecked, or None); margin is
        the smallest margin bound found (−inf when x itself is the witness). The thresholds are
        `thresholds` (the network's rounding as run, so that a YES holds for the network in its own
        dtype); a number `tolerance` replaces them for every target. method: one of DECISIONS.

        time_limit: seconds per solver call for 'lp' and 'milp' (SolverError when reached), the whole
        search's seconds for 'bab' (MAYBE when reached, like its node_limit, the number of branch and
        bound domains bounded; rsbook.relax.bab, defaults bab.NODE_LIMIT and no time limit).

        Cheaper bounds screen the targets: with the intermediate bounds B the method uses, the interval,
        dual and CROWN bounds with the same B, and α-CROWN's (on B, or on its own kind when B is
        α-CROWN's: module docstring), are ≤ the LP's, and the LP's is ≤ the MILP's, so a target they
        already prove needs no LP (and no MILP); branch and bound starts from them. The remaining targets
        are solved lowest bound first, and the first that is not above its threshold decides (MAYBE or
        NO) without solving the others."""
        norm, eps = _check_norm(norm), _check_eps(eps)
        method = _check_method(method, norm, DECISIONS)
        label = self._label(label)
        found = self.witness(x, x, label, eps, norm)
        if found is not None:
            return "NO", -np.inf, found
        xt = self._x(x)
        kind = DEFAULT_BOUNDS[method] if bounds is None else bounds
        resolved = self._resolve_bounds(x, eps, norm, method, bounds, None if method == "bab" else time_limit)
        needed = self.thresholds(x, label, eps, norm, method) if tolerance is None else \
            np.full(self.num_classes, float(tolerance))
        others = [t for t in range(self.num_classes) if t != label]
        if method in CHEAP:
            margins = self._cheap_margins(xt, eps, norm, label, method, kind, resolved)
            proved = all(margins[t] > needed[t] for t in others)
            return ("YES" if proved else "MAYBE"), float(np.min(margins[others])), None
        best = np.full(self.num_classes, -np.inf)
        best[label] = np.inf
        for cheap in CHEAP:
            if all(best[t] > needed[t] for t in others):
                break
            best = np.maximum(best, self._cheap_margins(xt, eps, norm, label, cheap, kind, resolved))
        open_targets = sorted((t for t in others if not best[t] > needed[t]), key=lambda t: best[t])
        if method == "bab":
            return bab.search(self, x, label, eps, norm, open_targets, best, needed, resolved,
                              node_limit=node_limit, time_limit=time_limit)
        for level in ["lp", "milp"] if method == "milp" else ["lp"]:
            for t in sorted((t for t in others if not best[t] > needed[t]), key=lambda t: best[t]):
                value, argmins = self.margin_lower_bounds(x, label, eps, norm, level, resolved, targets=[t],
                                                          time_limit=time_limit, return_argmin=True)
                best[t] = max(best[t], value[t])
                if not best[t] > needed[t]:
                    found = self.witness(argmins[t], x, label, eps, norm)
                    if found is not None:
                        return "NO", float(best[t]), found  # x̃, projected into the ball, is a real counterexample
                    if level == method:
                        return "MAYBE", float(best[t]), argmins[t]
        return "YES", float(np.min(best[others])), None

    def certify(self, x, label, eps, norm: str = "linf", method: str = "lp", bounds=None, attack_steps: int = 40,
                attack_restarts: int = 1, generator=None, time_limit: float | None = None,
                tolerance: float | None = None, return_witness: bool = False, node_limit: int | None = None):
        """'YES' | 'MAYBE' | 'NO' for the ε-ball around x (module docstring): `decide` (method one of
        DECISIONS; time_limit and node_limit as there), then, when it is MAYBE, PGD with attack_steps (0:
        no attack) and attack_restarts from `generator`.

        Guarantee: a YES means that the network run in its own dtype classifies every point of the ball
        it can receive as label (margins above `thresholds`; with caller-supplied intermediate bounds, if
        those hold over the ball). A NO always has a verified witness (`witness`; slides, "Intermediate
        Summary"): a point w with ‖w − x‖ ≤ ε, checked in float64 and in the network's dtype, that the
        network run in its own dtype classifies other than label. With return_witness, returns
        (answer, w), w (a float64 numpy array of x's shape) for a NO and None otherwise.
        Raises SolverError (never an answer) when a solver fails or reaches time_limit ('lp', 'milp';
        branch and bound answers MAYBE instead)."""
        answer, _, point = self.decide(x, label, eps, norm, method, bounds, time_limit, tolerance, node_limit)
        found = point if answer == "NO" else None
        if answer == "MAYBE" and attack_steps:
            found = self.attack_witness(x, label, eps, norm, attack_steps, attack_restarts, generator)
            answer = "NO" if found is not None else answer
        return (answer, found) if return_witness else answer


def _inside(point: torch.Tensor, cast: torch.Tensor, centre: torch.Tensor, eps: float, norm: str) -> bool:
    """Whether the float64 point, and its cast to the network's dtype, lie in the ball around centre
    (float64): ‖point − centre‖ ≤ ε and ‖cast − centre‖ ≤ ε in float64, and ‖cast − centre‖ ≤ ε
    computed in the cast's dtype (centre and ε rounded to it)."""
    if _norm(point - centre, norm) > eps or _norm(cast.to(torch.float64) - centre, norm) > eps:
        return False
    native = cast - centre.to(cast.dtype)
    if native.numel() == 0:
        return True
    length = native.abs().max() if norm == "linf" else torch.linalg.vector_norm(native)
    return bool(length <= torch.tensor(eps, dtype=cast.dtype))


_CERTIFIERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def certifier(net, input_shape) -> Certifier:
    """The cached Certifier of `net` for inputs of `input_shape`, rebuilt when the weights changed
    (compared by network_fingerprint), so the compiled problems are reused across calls."""
    shape = tuple(int(s) for s in input_shape)
    per_net = _CERTIFIERS.setdefault(net, {})
    found = per_net.get(shape)
    if found is None or network_fingerprint(net) != found.fingerprint:
        found = per_net[shape] = Certifier(net, shape)
    return found


def margin_lower_bounds(net, x, label, eps, norm: str = "linf", method: str = "lp", bounds=None,
                        time_limit: float | None = None) -> np.ndarray:
    """For each target t ≠ label, a lower bound on min over the ε-ball of f_label(x̃) − f_t(x̃) (numpy
    (num_classes,), +inf at label). method: 'ibp' | 'dual' | 'crown' | 'alpha-crown' | 'lp' | 'milp' (ℓ∞
    only); norm: 'linf' | 'l2'; bounds: the intermediate bounds (Certifier.margin_lower_bounds; default
    DEFAULT_BOUNDS[method], for the LP and MILP α-CROWN's, `bounds='ibp'` the slides' LP). The LP / MILP
    is compiled once per (network, norm, method) and re-solved for later inputs, radii and targets."""
    return certifier(net, torch.as_tensor(x).shape).margin_lower_bounds(x, label, eps, norm, method, bounds,
                                                                       time_limit=time_limit)


def certify(net, x, label, eps, norm: str = "linf", method: str = "lp", bounds=None, attack_steps: int = 40,
            generator=None, time_limit: float | None = None, return_witness: bool = False,
            node_limit: int | None = None):
    """'YES' | 'MAYBE' | 'NO' (Certifier.certify) with the network's cached Certifier; method one of
    DECISIONS ('bab': branch and bound, MAYBE at node_limit domains or time_limit seconds). A NO always
    has a verified witness: a point of the ε-ball (checked in float64 and in the network's dtype) that
    the network misclassifies (Certifier.witness); return_witness: return (answer, witness or None)."""
    return certifier(net, torch.as_tensor(x).shape).certify(x, label, eps, norm, method, bounds,
                                                            attack_steps=attack_steps, generator=generator,
                                                            time_limit=time_limit, return_witness=return_witness,
                                                            node_limit=node_limit)
