"""The "Overall LP" of the LP slides (triangle relaxation of each ReLU) and the exact MILP, as
parametrized cvxpy problems built once and re-solved per input, radius, bound set and target.

Variables: the perturbed input x̃, the pre-activations x̂⁽ˡ⁾ = W_l y⁽ˡ⁻¹⁾ + b_l (one equality
each, so every weight appears once in the constraint matrix) and the post-activations y⁽ˡ⁾ of the
hidden layers; the logits stay an expression of the last y. Constraints per hidden
neuron, with pre-activation bounds [l, u] (LP slides, "Convex ReLU Relaxation: Formal Definition"):

    LP (triangle):  y ≥ 0,  y ≥ x̂,  y ≤ s ⊙ x̂ + t,  l ≤ x̂ ≤ u
    MILP (exact):   y ≥ 0,  y ≥ x̂,  y ≤ x̂ − l ⊙ (1 − a),  y ≤ u ⊙ a,  l ≤ x̂ ≤ u,  a ∈ {0, 1}

with s = u/(u − l), t = −u l/(u − l) on unstable neurons (the triangle's top edge), s = 1, t = 0 on
active ones (y = x̂) and s = t = 0 on inactive ones (y = 0). The MILP's constraints force
y = ReLU(x̂) exactly for every neuron whose bounds are valid (big-M with M from the bounds); relaxing
a ∈ {0, 1} to a ∈ [0, 1] gives the triangle back (the slides' note). The box l ≤ x̂ ≤ u holds for
every real point, so adding it keeps the relaxation valid and makes it monotone in the bounds.

The ball: x − ε ≤ x̃ ≤ x + ε (ℓ∞, an LP solved with HiGHS) or ‖x̃ − x‖₂ ≤ ε (ℓ₂, a second-order
cone program solved with Clarabel). The objective is d · x̂⁽ᵈᵉᵖᵗʰ⁾ for a parameter vector d: the
margin e_c* − e_t of the logits, or ±e_j of an intermediate neuron (LP bound tightening).

x, ε, l, u, s, t and d are cvxpy Parameters entering affinely or multiplied by a parameter-free
expression, so the problem is DPP (disciplined parametrized programming): cvxpy compiles it to the
solver's standard form once and later solves only substitute the new parameter values.
"""

from __future__ import annotations

import math
import warnings

import cvxpy as cp
import numpy as np

from rsbook.relax.network import AffineNetwork

__all__ = ["RelaxedProblem", "SolverError", "SOLVERS", "LP_OPTIONS", "MILP_OPTIONS"]

SOLVERS = {"linf": cp.HIGHS, "l2": cp.CLARABEL}
"""The solver for each ball: HiGHS for the ℓ∞ LP and MILP, Clarabel for the ℓ₂ second-order cone."""

LP_OPTIONS = {cp.HIGHS: {"highs_options": {"simplex_strategy": 4}}, cp.CLARABEL: {}}
"""HiGHS's primal simplex (strategy 4) solved the digits MLP's LPs about three times faster than its
default dual simplex when this module was written (8 ms against 25 ms per solve, 2 CPU cores);
Clarabel runs with its defaults."""

MILP_OPTIONS = {"highs_options": {"mip_rel_gap": 1e-9, "mip_abs_gap": 1e-9, "presolve": "off"}}
"""Branch and bound runs to a relative and absolute gap of 1e-9, so the MILP value is the exact
minimum up to HiGHS's feasibility tolerance (1e-7). HiGHS's presolve is off: on these problems its
sub-MIP probing cost more than it saved."""


class SolverError(RuntimeError):
    """The solver did not return an optimal solution (infeasible, unbounded, a time limit, a numerical
    failure): no bound, hence no certificate. `status` holds cvxpy's status string."""

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status


class RelaxedProblem:
    """The parametrized LP (integer=False) or MILP (integer=True) of `network` over the ball of `norm`,
    whose objective is a linear function of the pre-activations of affine layer `depth` (default the
    logits).

    network: an AffineNetwork (rsbook.relax.network); its matrices are constants of the problem.
    big_m: use the MILP's big-M constraints (default: integer); big_m=True with integer=False is the
    MILP with a ∈ [0, 1], which the slides note is the triangle LP again.
    Solve with `solve(x, eps, bounds, direction)`; the first solve compiles, later ones reuse it.
    """

    def __init__(self, network: AffineNetwork, norm: str = "linf", integer: bool = False, depth: int | None = None,
                 big_m: bool | None = None):
        if norm not in SOLVERS:
            raise ValueError(f"norm must be one of {tuple(SOLVERS)}, got {norm!r}")
        if integer and norm != "linf":
            raise ValueError("the exact MILP is available for the ℓ∞ ball only (norm='linf'); an ℓ₂ ball would "
                             "make it a mixed-integer second-order cone program")
        depth = network.depth if depth is None else int(depth)
        if not 1 <= depth <= network.depth:
            raise ValueError(f"depth must lie in 1..{network.depth}, got {depth}")
        self.norm, self.integer, self.depth = norm, bool(integer), depth
        self.big_m = self.integer if big_m is None else bool(big_m)
        self.solver = SOLVERS[norm]
        weights, biases = network.numpy()
        dims = network.dims
        self.x = cp.Parameter(dims[0], name="x")
        self.eps = cp.Parameter(nonneg=True, name="eps")
        self.x_tilde = cp.Variable(dims[0], name="x_tilde")
        if norm == "linf":
            constraints = [self.x_tilde <= self.x + self.eps, self.x_tilde >= self.x - self.eps]
        else:
            constraints = [cp.norm(self.x_tilde - self.x, 2) <= self.eps]
        self.lower, self.upper, self.slope, self.offset, self.active = [], [], [], [], []
        y = self.x_tilde
        for i in range(depth - 1):
            n = dims[i + 1]
            x_hat = cp.Variable(n, name=f"x_hat{i + 1}")
            constraints.append(x_hat == weights[i] @ y + biases[i])
            lower, upper = cp.Parameter(n, name=f"l{i + 1}"), cp.Parameter(n, name=f"u{i + 1}")
            post = cp.Variable(n, name=f"y{i + 1}")
            constraints += [post >= 0, post >= x_hat, x_hat >= lower, x_hat <= upper]
            if self.big_m:
                active = cp.Variable(n, boolean=self.integer, name=f"a{i + 1}")
                constraints += [post <= x_hat - lower + cp.multiply(lower, active), post <= cp.multiply(upper, active)]
                if not self.integer:
                    constraints += [active >= 0, active <= 1]
                self.active.append(active)
            else:
                slope, offset = cp.Parameter(n, name=f"s{i + 1}"), cp.Parameter(n, name=f"t{i + 1}")
                constraints += [post <= cp.multiply(slope, x_hat) + offset]
                self.slope.append(slope)
                self.offset.append(offset)
            self.lower.append(lower)
            self.upper.append(upper)
            y = post
        self.direction = cp.Parameter(dims[depth], name="d")
        self.objective = self.direction @ (weights[depth - 1] @ y + biases[depth - 1])
        self.problem = cp.Problem(cp.Minimize(self.objective), constraints)
        self.solves = 0

    def is_dpp(self) -> bool:
        """Whether cvxpy can compile the problem once for all parameter values."""
        return self.problem.is_dpp()

    def set_parameters(self, x, eps: float, bounds: list, direction):
        """Set x (n_0,), ε, the bounds [(l, u)] of hidden layers 1..depth-1 and the objective d."""
        self.x.value = np.asarray(x, dtype=float).reshape(-1)
        self.eps.value = float(eps)
        if len(bounds) < self.depth - 1:
            raise ValueError(f"bounds must hold (l, u) for the {self.depth - 1} hidden layers, got {len(bounds)}")
        for i in range(self.depth - 1):
            lower, upper = (np.asarray(v, dtype=float).reshape(-1) for v in bounds[i])
            if np.any(lower > upper + 1e-9):
                raise ValueError(f"bounds of layer {i + 1} have l > u")
            upper = np.maximum(upper, lower)
            self.lower[i].value, self.upper[i].value = lower, upper
            if not self.big_m:
                unstable = (lower < 0) & (upper > 0)
                width = np.where(unstable, upper - lower, 1.0)
                slope = np.where(unstable, upper / width, (lower >= 0).astype(float))
                self.slope[i].value = slope
                self.offset[i].value = np.where(unstable, -slope * lower, 0.0)
        self.direction.value = np.asarray(direction, dtype=float).reshape(-1)

    def solve(self, x, eps: float, bounds: list, direction, time_limit: float | None = None):
        """(value, x̃) of min d · x̂⁽ᵈᵉᵖᵗʰ⁾ over the relaxation (LP) or the exact network (MILP).

        The LP's value is its optimum; the MILP's is HiGHS's proven lower bound on the minimum (the
        branch-and-bound dual bound, equal to the incumbent's value within the 1e-9 gap). x̃ is the
        minimiser's input (an LP argmin, a perturbed instance the slides feed back to the network).
        Raises SolverError with the solver status when no optimal solution is returned (including
        'optimal_inaccurate' and a reached time_limit, in seconds)."""
        self.set_parameters(x, eps, bounds, direction)
        options = dict(MILP_OPTIONS if self.integer else LP_OPTIONS[self.solver])
        if time_limit is not None:
            if not (isinstance(time_limit, (int, float)) and math.isfinite(time_limit) and time_limit > 0):
                raise ValueError(f"time_limit must be a number of seconds > 0, got {time_limit!r}")
            if self.solver == cp.HIGHS:
                options["highs_options"] = {**options.get("highs_options", {}), "time_limit": float(time_limit)}
            else:
                options["time_limit"] = float(time_limit)
        try:
            with warnings.catch_warnings():  # cvxpy warns on inaccurate or limited solves: they raise below
                warnings.simplefilter("ignore", UserWarning)
                value = self.problem.solve(solver=self.solver, **options)
        except cp.error.SolverError as err:
            raise SolverError(f"{self.solver} failed on the {'MILP' if self.integer else 'relaxation'}: {err}",
                              "solver_error") from err
        self.solves += 1
        status = self.problem.status
        if status != cp.OPTIMAL or value is None or not np.isfinite(value):
            raise SolverError(f"{self.solver} returned status {status!r} on the "
                              f"{'MILP' if self.integer else 'relaxation'} (ε = {float(eps):g}); no bound", status)
        if self.integer and self.active:  # without binaries HiGHS solves an LP and sets no MIP bound
            info = self.problem.solver_stats.extra_stats
            offset = value - info.objective_function_value
            value = min(value, info.mip_dual_bound + offset)
        return float(value), np.asarray(self.x_tilde.value, dtype=float).copy()
