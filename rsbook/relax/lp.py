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

The value an LP returns is never the solver's primal objective (which can exceed the minimum by the
solver's tolerances: Clarabel's ℓ₂ objectives exceeded their dual by up to 3.4e-7). It is the
Lagrangian dual function at the solver's multipliers, re-evaluated in float64 (`dual_value`): keep
the ball, the box l ≤ x̂ ≤ u and 0 ≤ y ≤ max(u, 0) (implied by the constraints) as the domain,
dualize every other constraint with the multipliers the solver returned (inequality multipliers
clipped at 0), and minimise the Lagrangian over the domain in closed form. By weak duality that is a
lower bound on the LP's minimum for *any* multipliers, accurate or not (Neumaier & Shcherbina 2004,
"Safe bounds in linear and mixed-integer linear programming"); with the optimal ones it equals the
minimum. A rounding allowance for the float64 evaluation itself is subtracted. Every MILP is solved
cold (cvxpy's default warm start handed HiGHS the previous solve's point, which made a MILP return
−7.6e-5 where the exact minimum was +4.0e-5).
"""

from __future__ import annotations

import math
import warnings

import cvxpy as cp
import numpy as np

from rsbook.relax.network import AffineNetwork

__all__ = ["RelaxedProblem", "SolverError", "SOLVERS", "LP_OPTIONS", "MILP_OPTIONS", "box_minimum", "ball_minimum"]

_UNIT_ROUNDOFF = 2.0 ** -53  # float64

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
        self._weights, self._biases = weights[:depth], biases[:depth]
        self._dualized = []  # per hidden layer: the constraints whose multipliers enter `dual_value`
        y = self.x_tilde
        for i in range(depth - 1):
            n = dims[i + 1]
            x_hat = cp.Variable(n, name=f"x_hat{i + 1}")
            affine = x_hat == weights[i] @ y + biases[i]
            lower, upper = cp.Parameter(n, name=f"l{i + 1}"), cp.Parameter(n, name=f"u{i + 1}")
            post = cp.Variable(n, name=f"y{i + 1}")
            above = post >= x_hat
            constraints += [affine, post >= 0, above, x_hat >= lower, x_hat <= upper]
            if self.big_m:
                active = cp.Variable(n, boolean=self.integer, name=f"a{i + 1}")
                tops = [post <= x_hat - lower + cp.multiply(lower, active), post <= cp.multiply(upper, active)]
                constraints += tops
                if not self.integer:
                    constraints += [active >= 0, active <= 1]
                self.active.append(active)
            else:
                slope, offset = cp.Parameter(n, name=f"s{i + 1}"), cp.Parameter(n, name=f"t{i + 1}")
                tops = [post <= cp.multiply(slope, x_hat) + offset]
                constraints += tops
                self.slope.append(slope)
                self.offset.append(offset)
            self._dualized.append((affine, above, tops))
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

        The LP's value is a rigorous lower bound on its minimum: the dual function at the solver's
        multipliers, re-evaluated in float64 (`dual_value`; equal to the minimum up to the solver's
        accuracy, never above it). The MILP's is HiGHS's lower bound on the minimum from a cold solve
        (the branch-and-bound dual bound, equal to the incumbent's value within the 1e-9 gap; exact up
        to HiGHS's feasibility tolerances, not re-evaluated). x̃ is the minimiser's input (an LP argmin,
        a perturbed instance the slides feed back to the network).
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
                value = self.problem.solve(solver=self.solver, warm_start=False, **options)
        except cp.error.SolverError as err:
            raise SolverError(f"{self.solver} failed on the {'MILP' if self.integer else 'relaxation'}: {err}",
                              "solver_error") from err
        self.solves += 1
        status = self.problem.status
        if status != cp.OPTIMAL or value is None or not np.isfinite(value):
            raise SolverError(f"{self.solver} returned status {status!r} on the "
                              f"{'MILP' if self.integer else 'relaxation'} (ε = {float(eps):g}); no bound", status)
        if not self.integer:
            value = self.dual_value()
        elif self.active:  # without binaries HiGHS solves an LP and sets no MIP bound
            info = self.problem.solver_stats.extra_stats
            offset = value - info.objective_function_value
            value = min(value, info.mip_dual_bound + offset)
        return float(value), np.asarray(self.x_tilde.value, dtype=float).copy()

    def dual_value(self) -> float:
        """A rigorous lower bound on the minimum of the relaxation (LP; also the big-M LP with
        a ∈ [0, 1]) at the current parameter values, from the multipliers of the last solve.

        Lagrangian of min d·(W_D y_{D-1} + b_D) with y_0 = x̃, multipliers ν_i (free) of
        x̂_i − W_i y_{i−1} − b_i = 0, λ_i ≥ 0 of x̂_i − y_i ≤ 0, and μ_i ≥ 0 of the upper constraints
        (triangle: y_i − s_i x̂_i − t_i ≤ 0; big-M: y_i − x̂_i + l_i − l_i a_i ≤ 0 and y_i − u_i a_i ≤ 0),
        minimised over the domain D = ball × Π [l_i, u_i] × Π [0, max(u_i, 0)] (× [0, 1] for a), which
        every feasible point lies in: weak duality makes the result ≤ the minimum for any ν, λ, μ.
        Evaluated in float64; the allowance subtracted bounds the evaluation's own rounding error
        (2 γ_K times the sum of the magnitudes of every term, γ_K = K u / (1 − K u) with u = 2⁻⁵³ and
        K at least the length of any chain of sums the evaluation makes)."""
        weights, biases, depth = self._weights, self._biases, self.depth
        x, eps = self.x.value, float(self.eps.value)
        direction = self.direction.value
        coefficient = direction @ weights[-1]  # of y_{D-1}
        magnitude = np.abs(direction) @ np.abs(weights[-1])
        constant, size = float(direction @ biases[-1]), float(np.abs(direction) @ np.abs(biases[-1]))
        for i in range(depth - 2, -1, -1):
            affine, above, tops = self._dualized[i]
            nu = np.asarray(affine.dual_value, dtype=float).reshape(-1)
            lam = np.clip(np.asarray(above.dual_value, dtype=float).reshape(-1), 0.0, None)
            mus = [np.clip(np.asarray(top.dual_value, dtype=float).reshape(-1), 0.0, None) for top in tops]
            lower, upper = self.lower[i].value, self.upper[i].value
            # y_i: the coefficient carried down from above, then the multipliers of its own constraints
            coef_y = coefficient - lam + sum(mus)
            mag_y = magnitude + lam + sum(mus)
            ceiling = np.maximum(upper, 0.0)
            constant += box_minimum(coef_y, 0.0, ceiling)
            size += float(mag_y @ ceiling)
            if self.big_m:
                coef_x = nu + lam - mus[0]
                mag_x = np.abs(nu) + lam + mus[0]
                coef_a = -lower * mus[0] - upper * mus[1]
                constant += float(lower @ mus[0]) + box_minimum(coef_a, 0.0, 1.0)
                size += 2 * float(np.abs(lower) @ mus[0]) + float(np.abs(upper) @ mus[1])
            else:
                slope, offset = self.slope[i].value, self.offset[i].value
                coef_x = nu + lam - slope * mus[0]
                mag_x = np.abs(nu) + lam + np.abs(slope) * mus[0]
                constant -= float(offset @ mus[0])
                size += float(np.abs(offset) @ mus[0])
            constant += box_minimum(coef_x, lower, upper)
            size += float(mag_x @ np.maximum(np.abs(lower), np.abs(upper)))
            constant -= float(nu @ biases[i])
            size += float(np.abs(nu) @ np.abs(biases[i]))
            coefficient, magnitude = -nu @ weights[i], np.abs(nu) @ np.abs(weights[i])
        constant += ball_minimum(coefficient, x, eps, self.norm)
        size += float(magnitude @ np.abs(x)) + eps * float(magnitude.sum() if self.norm == "linf"
                                                           else np.linalg.norm(magnitude))
        longest = len(x) + sum(len(b) for b in biases) + 10 * depth  # ≥ the length of any chain of sums
        gamma = longest * _UNIT_ROUNDOFF / (1 - longest * _UNIT_ROUNDOFF)
        return constant - 2 * gamma * size


def box_minimum(coefficient: np.ndarray, lower, upper) -> float:
    """min over lower ≤ z ≤ upper (element-wise) of coefficient · z."""
    coefficient = np.asarray(coefficient, dtype=float)
    lower, upper = np.broadcast_to(lower, coefficient.shape), np.broadcast_to(upper, coefficient.shape)
    return float(np.where(coefficient > 0, coefficient * lower, coefficient * upper).sum())


def ball_minimum(coefficient: np.ndarray, x: np.ndarray, eps: float, norm: str) -> float:
    """min over ‖z − x‖ ≤ ε of coefficient · z: c·x − ε‖c‖₁ (ℓ∞ ball) or c·x − ε‖c‖₂ (ℓ₂ ball)."""
    coefficient = np.asarray(coefficient, dtype=float)
    spread = np.abs(coefficient).sum() if norm == "linf" else np.linalg.norm(coefficient)
    return float(coefficient @ np.asarray(x, dtype=float) - eps * spread)
