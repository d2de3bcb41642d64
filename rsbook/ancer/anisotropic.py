"""Data-dependent and anisotropic randomized smoothing: DDS, ANCER and RANCER (Rumezhak 2022, Ch. 3-5).

The smoothing noise at an input x is N(0, U diag(sigma)^2 U^T): isotropic (sigma one number, U = I;
Cohen et al. 2019 and DDS, Alfarra et al.), axis-aligned (sigma one number per coordinate, U = I;
ANCER, Eiras et al.) or rotated (sigma per direction of an orthonormal basis U; RANCER, Sec. 4.1).
It is sampled by reparametrisation, noise = U (sigma * eps) with eps ~ N(0, I) (eq. 3.7, 4.2).

Certificate (eq. 3.12, 4.4). Let p_A be a lower confidence bound on P(f(x + noise) = c_A) and p_B =
1 - p_A. Then g(x + delta) = c_A for every delta with

    || diag(sigma)^{-1} U^T delta ||_2 <= gap,   gap = 1/2 (Phi^-1(p_A) - Phi^-1(p_B)) = Phi^-1(p_A):

an ellipsoid with semi-axes sigma_i * gap along the columns of U. It contains the l2 ball of radius
R = min_i sigma_i * gap (the certified radius), and its proxy radius (eq. 3.14) is
R~ = gap * (prod_i sigma_i)^(1/d). Substituting delta = U diag(sigma) u turns the anisotropic
problem into Cohen et al.'s Theorem 1 at sigma = 1 in u-space, which is why the same p_A and
Clopper-Pearson bound serve every method (`certify`).

Optimisation per input (each returns an `Optimization` with the parameters and a trace):
  optimize_isotropic   DDS (eq. 3.6-3.7): K steps of gradient ascent on sigma/2 (Phi^-1(E_A) - Phi^-1(E_B))
  optimize_ancer       ANCER (eq. 3.15): Adam on a diagonal Theta, maximising gap * (prod theta)^(1/d)
                       + kappa * min(theta) * gap, projected onto theta >= theta_iso after every step
  optimize_rancer      RANCER (Algorithm 2): the same objective with rotated noise U (theta * eps), U from
                       the Hessian of the loss (rsbook.ancer.curvature), and sigma clipping (eq. 4.8) into
                       [sigma_iso (1 - lambda_1), sigma_iso (1 + lambda_2)] applied in place after every step
E_A, E_B are the two largest Monte Carlo averages of the softmax over `num_samples` noisy copies,
clamped to [clip, 1 - clip] before Phi^-1 as in the authors' code. The softmax is applied to logits only:
every optimiser takes outputs="logits" (default) or "probabilities" (a model that ends in a softmax, as the
DDS/ANCER authors' released CIFAR-10 ResNet-18 does) and refuses a batch that contradicts it
(rsbook.ancer.outputs), so that no model is smoothed through two softmaxes. `check_options` checks an
optimiser's keyword arguments without a model (what the pipeline does before it begins a run folder).

What the certificates need of the model: eval mode (the optimisers refuse a module in training mode; CERTIFY
certifies f as it runs), inputs in the units sigma is measured in (this project's models take [0, 1] pixels
and normalise inside), and, for the optimisers, outputs as declared by `outputs`. CERTIFY counts argmax f,
which a final softmax leaves alone.

Because sigma depends on x, these certificates are sound only after memory-based certification
(Algorithm 1, rsbook.ancer.memory). The metrics of Sec. 5.2 are in rsbook.ancer.metrics; the whole
public API of the document is importable from rsbook.ancer.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from rsbook._checks import (
    check_alpha,
    check_generator,
    check_num_classes,
    check_positive_int,
    check_sigma,
)
from rsbook.ancer.curvature import Rotation, safe_directions
from rsbook.ancer.outputs import OUTPUTS, check_outputs, to_probabilities
from rsbook.bounds import certified_gap
from rsbook.smooth import ABSTAIN
from rsbook.stats import clopper_pearson_lower

__all__ = ["ABSTAIN", "OUTPUTS", "TRACE_QUANTITIES", "Optimization", "Certificate", "optimize_isotropic",
           "optimize_ancer", "optimize_rancer", "check_options", "sample_noise", "smoothed_probabilities", "proxy_gap",
           "volume_objective", "certify"]

TRACE_QUANTITIES = ("gap", "geometric_mean", "log_volume", "min_sigma", "proxy_radius", "radius", "objective")


@dataclass
class Optimization:
    """The optimised smoothing parameters of a batch of B inputs and how the optimisation went.

    sigma: (B,) for isotropic, (B, *input_shape) for ANCER, (B, d) in the rotated basis for RANCER.
    rotation: the batch of rotations U (RANCER) or None. eigenvalues: (B, k) Hessian eigenvalues
    belonging to U's leading columns (RANCER) or None. trace: quantity -> tensor (iterations, B) of
    the values at each iterate (TRACE_QUANTITIES); `trace_frame` gives it as a long DataFrame.
    """

    sigma: torch.Tensor
    rotation: Rotation | None = None
    eigenvalues: torch.Tensor | None = None
    trace: dict = field(default_factory=dict)

    def trace_frame(self, examples=None) -> pd.DataFrame:
        """Columns iteration, example (position in the batch), and one column per traced quantity."""
        frames = []
        batch = next(iter(self.trace.values())).shape[1] if self.trace else 0
        for b in range(batch) if examples is None else examples:
            columns = {name: values[:, b].numpy() for name, values in self.trace.items()}
            iterations = len(next(iter(columns.values())))
            frames.append(pd.DataFrame({"iteration": np.arange(iterations), "example": b, **columns}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["iteration", "example"])


@dataclass(frozen=True)
class Certificate:
    """What `certify` returns. prediction: c_A or ABSTAIN; p_a_lower: the Clopper-Pearson bound;
    gap = Phi^-1(p_a_lower) (0 when abstaining); radius = min(sigma) * gap; proxy_radius =
    geometric mean of sigma * gap (eq. 3.14)."""

    prediction: int
    p_a_lower: float
    gap: float
    radius: float
    proxy_radius: float


# ------------------------------------------------------------------------------------------ sampling


def _batch(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.dim() < 2:
        raise ValueError(f"x must be a batch of shape (B, *input_shape), got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite: it holds NaN or infinite values")
    return x


def _per_example(value, x: torch.Tensor, name: str) -> torch.Tensor:
    """A positive scalar or (B,) tensor as a float tensor of shape (B,)."""
    tensor = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if tensor.dim() == 0:
        tensor = tensor.expand(len(x))
    if tensor.shape != (len(x),) or not bool(torch.isfinite(tensor).all()) or bool((tensor <= 0).any()):
        raise ValueError(f"{name} must be a number > 0 or a tensor of {len(x)} numbers > 0, got {value!r}")
    return tensor.clone()


def sample_noise(eps: torch.Tensor, sigma: torch.Tensor, rotation: Rotation | None = None) -> torch.Tensor:
    """U (sigma * eps) for standard normal eps of shape (B, S, *input_shape) (eq. 4.2).

    sigma: (B,) isotropic, (B, *input_shape) diagonal, or (B, d) per direction of `rotation`
    (a batch of B rotations of dimension d = prod(input_shape)). Returns eps's shape.
    """
    batch, samples, *shape = eps.shape
    if rotation is not None:
        scaled = eps.reshape(batch, samples, -1) * sigma.reshape(batch, 1, -1)
        return rotation.apply(scaled).reshape(eps.shape)
    if sigma.dim() == 1:
        return eps * sigma.reshape(batch, 1, *([1] * len(shape)))
    return eps * sigma.unsqueeze(1)


def smoothed_probabilities(model, x: torch.Tensor, noise: torch.Tensor, outputs: str = "logits") -> torch.Tensor:
    """psi(x) = mean over the S noise draws of the class probabilities of model(x + noise): shape (B, K) for
    x of shape (B, *input_shape) and noise (B, S, *input_shape) (Algorithm 2's psi). outputs: 'logits'
    (softmax applied; log-probabilities are logits too) or 'probabilities' (used as they are); a batch that
    contradicts it raises ValueError naming the argument (rsbook.ancer.outputs.to_probabilities)."""
    batch, samples = noise.shape[:2]
    raw = model((x.unsqueeze(1) + noise).reshape(batch * samples, *x.shape[1:]))
    return to_probabilities(raw, outputs).reshape(batch, samples, -1).mean(dim=1)


def proxy_gap(probabilities: torch.Tensor, clip: float = 0.001) -> torch.Tensor:
    """1/2 (Phi^-1(E_A) - Phi^-1(E_B)) for the two largest entries E_A >= E_B of each row of
    `probabilities` (B, K), clamped to [clip, 1 - clip] (eq. 3.6, 3.12; the clamp keeps Phi^-1 finite,
    as the authors' L2Certificate.compute_proxy_gap). Differentiable; shape (B,)."""
    top = torch.topk(probabilities, 2, dim=1).values.clamp(clip, 1 - clip)
    return 0.5 * (torch.special.ndtri(top[:, 0]) - torch.special.ndtri(top[:, 1]))


def volume_objective(gap: torch.Tensor, sigma: torch.Tensor, kappa: float) -> dict:
    """ANCER's objective (eq. 3.15 as optimised by Eiras et al.): proxy radius gap * (prod sigma)^(1/d)
    plus kappa * min(sigma) * gap, per example. sigma: (B, ...). Returns the traced quantities."""
    flat = sigma.reshape(len(sigma), -1)
    log_sigma = torch.log(flat)
    geometric = torch.exp(log_sigma.mean(dim=1))
    smallest = flat.min(dim=1).values
    return {"gap": gap, "geometric_mean": geometric, "log_volume": log_sigma.sum(dim=1), "min_sigma": smallest,
            "proxy_radius": gap * geometric, "radius": gap * smallest,
            "objective": gap * geometric + kappa * smallest * gap}


def _record(trace: dict, values: dict):
    for name, value in values.items():
        trace.setdefault(name, []).append(value.detach().to("cpu", torch.float64))


def _finish_trace(trace: dict) -> dict:
    return {name: torch.stack(values) for name, values in trace.items()}


def _check_settings(*, iterations, learning_rate, num_samples, clip, outputs, kappa=None, min_sigma=None,
                    clip_sigma=None, rank=None, exact_limit=None, lanczos_steps=None):
    """The optimisers' settings (each optimiser passes those it has; None: not one of its settings)."""
    check_positive_int(iterations, "iterations")
    check_positive_int(num_samples, "num_samples")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real) or not learning_rate > 0:
        raise ValueError(f"learning_rate must be a number > 0, got {learning_rate!r}")
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not 0 < clip < 0.5:
        raise ValueError(f"clip must lie in (0, 0.5), got {clip!r}")
    check_outputs(outputs)
    if kappa is not None and (isinstance(kappa, bool) or not isinstance(kappa, numbers.Real) or not kappa >= 0):
        raise ValueError(f"kappa must be a number >= 0, got {kappa!r}")
    if min_sigma is not None:
        check_sigma(min_sigma, "min_sigma")
    if clip_sigma is not None:
        try:
            lambda_1, lambda_2 = clip_sigma
            valid = 0 <= lambda_1 < 1 and lambda_2 >= 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(f"clip_sigma must be (lambda_1, lambda_2) with 0 <= lambda_1 < 1 and lambda_2 >= 0, "
                             f"got {clip_sigma!r}")
    for name, value in (("rank", rank), ("exact_limit", exact_limit), ("lanczos_steps", lanczos_steps)):
        if value is not None:
            check_positive_int(value, name)


def check_options(method: str, options: dict) -> None:
    """Check `options`, the keyword arguments of the optimiser of `method` ('Isotropic': optimize_isotropic,
    'ANCER': optimize_ancer, 'RANCER': optimize_rancer) other than the model, inputs, initial sigma and
    generator, without running it: an unknown or missing name and every bad value raise ValueError naming
    it, as the optimiser itself would. rsbook.ancer.pipeline.run_methods checks its settings so before it
    begins a run folder."""
    optimizers = {"Isotropic": optimize_isotropic, "ANCER": optimize_ancer, "RANCER": optimize_rancer}
    if method not in optimizers:
        raise ValueError(f"method must be one of {list(optimizers)}, got {method!r}")
    parameters = inspect.signature(optimizers[method]).parameters
    settable = [name for name, p in parameters.items() if p.kind == p.KEYWORD_ONLY and name not in
                ("generator", "rotation")]
    unknown = sorted(set(options) - set(settable))
    missing = [name for name in settable if parameters[name].default is inspect.Parameter.empty and name not in options]
    if unknown or missing:
        raise ValueError(f"{method} settings take {settable}" + (f"; unknown {unknown}" if unknown else "")
                         + (f"; missing {missing}" if missing else ""))
    _check_settings(**{name: options.get(name, parameters[name].default) for name in settable})


def _check_eval(model):
    """The model, checked to be in eval mode (gradients are taken w.r.t. sigma only, never stored in
    the model's parameters)."""
    if isinstance(model, torch.nn.Module):
        if model.training:
            raise ValueError("model must be in eval mode (call .eval()): batch-norm and dropout make f depend on "
                             "the batch")
    return model


# ------------------------------------------------------------------------------------- optimisation


def optimize_isotropic(model, x, sigma0, *, iterations: int, learning_rate: float, num_samples: int,
                       generator=None, clip: float = 0.001, min_sigma: float = 1e-4,
                       outputs: str = "logits") -> Optimization:
    """DDS (Alfarra et al.; thesis eq. 3.6-3.7): per input, K = `iterations` steps of gradient ascent
    sigma <- sigma + learning_rate * d/dsigma [sigma/2 (Phi^-1(E_A) - Phi^-1(E_B))], the expectations
    estimated with `num_samples` reparametrised draws x + sigma eps per step (fresh each step, from
    `generator`). x: (B, *input_shape); sigma0: initial sigma (number or (B,)). sigma is kept
    >= min_sigma. outputs: what the model returns, 'logits' (default) or 'probabilities' (a model ending
    in a softmax); a batch that contradicts it is refused (rsbook.ancer.outputs). Returns sigma of shape
    (B,) and the trace (the objective is the isotropic radius).
    """
    _check_settings(iterations=iterations, learning_rate=learning_rate, num_samples=num_samples, clip=clip,
                    outputs=outputs, min_sigma=min_sigma)
    model = _check_eval(model)
    x = _batch(x)
    check_generator(generator, x.device)
    sigma = _per_example(sigma0, x, "sigma0").requires_grad_(True)
    trace: dict = {}
    for _ in range(iterations):
        eps = torch.randn((len(x), num_samples, *x.shape[1:]), generator=generator, dtype=x.dtype, device=x.device)
        gap = proxy_gap(smoothed_probabilities(model, x, sample_noise(eps, sigma), outputs), clip)
        radius = sigma * gap
        (grad,) = torch.autograd.grad(radius.sum(), sigma)
        values = volume_objective(gap, sigma[:, None].expand(-1, x[0].numel()), 0.0)  # the ball's sigma per axis
        values["objective"] = radius
        _record(trace, values)
        with torch.no_grad():
            sigma += learning_rate * grad
            sigma.clamp_(min=min_sigma)
    return Optimization(sigma.detach(), trace=_finish_trace(trace))


def _optimize_volume(model, x, theta, lower, upper, rotation, *, iterations, learning_rate, num_samples, kappa,
                     generator, clip, outputs) -> tuple[torch.Tensor, dict]:
    """Adam on theta (a leaf tensor) maximising volume_objective with noise sample_noise(eps, theta,
    rotation); after every step theta is projected in place onto [lower, upper]."""
    theta.requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=learning_rate)
    trace: dict = {}
    for _ in range(iterations):
        eps = torch.randn((len(x), num_samples, *x.shape[1:]), generator=generator, dtype=x.dtype, device=x.device)
        gap = proxy_gap(smoothed_probabilities(model, x, sample_noise(eps, theta, rotation), outputs), clip)
        values = volume_objective(gap, theta, kappa)
        _record(trace, values)
        (grad,) = torch.autograd.grad(-values["objective"].sum(), theta)
        theta.grad = grad
        optimizer.step()
        with torch.no_grad():  # the projection acts on the very tensor Adam updates
            theta.copy_(torch.minimum(torch.maximum(theta, lower), upper))
    return theta.detach(), _finish_trace(trace)


def optimize_ancer(model, x, sigma_iso, *, iterations: int, learning_rate: float, num_samples: int,
                   kappa: float = 2.0, generator=None, clip: float = 0.001, outputs: str = "logits") -> Optimization:
    """ANCER (Eiras et al.; thesis eq. 3.15): per input a diagonal Theta (one sigma per input
    coordinate), initialised at the isotropic sigma_iso (number or (B,), e.g. DDS's result),
    maximising the proxy radius gap * (prod theta)^(1/d) + kappa * min(theta) * gap with Adam
    (`learning_rate`), `num_samples` fresh draws per step, and after every step the projection
    theta >= theta_iso (which keeps min(theta) * gap from falling below the isotropic radius as far
    as the gap holds). outputs: 'logits' (default) or 'probabilities', as in optimize_isotropic. Returns
    sigma of shape (B, *input_shape) and the trace.
    """
    _check_settings(iterations=iterations, learning_rate=learning_rate, num_samples=num_samples, clip=clip,
                    outputs=outputs, kappa=kappa)
    model = _check_eval(model)
    x = _batch(x)
    check_generator(generator, x.device)
    iso = _per_example(sigma_iso, x, "sigma_iso")
    theta = iso.reshape(-1, *([1] * (x.dim() - 1))).expand_as(x).clone()
    lower, upper = theta.clone(), torch.full_like(theta, math.inf)
    sigma, trace = _optimize_volume(model, x, theta, lower, upper, None, iterations=iterations,
                                    learning_rate=learning_rate, num_samples=num_samples, kappa=kappa,
                                    generator=generator, clip=clip, outputs=outputs)
    return Optimization(sigma, trace=trace)


def optimize_rancer(model, x, sigma_iso, *, iterations: int, learning_rate: float, num_samples: int,
                    kappa: float = 2.0, clip_sigma=(0.15, 0.15), rotation: Rotation | None = None,
                    rank: int | None = None, exact_limit: int = 1024, lanczos_steps: int | None = None,
                    generator=None, clip: float = 0.001, outputs: str = "logits") -> Optimization:
    """RANCER (thesis Sec. 4, Algorithm 2): noise U (theta * eps) with U the eigenvectors of the
    Hessian of the loss at x (rsbook.ancer.curvature.safe_directions: exact for d <= exact_limit when
    rank is None, else Lanczos for the `rank` leading directions completed to an orthonormal basis;
    or a given batch `rotation`), theta (B, d) initialised at sigma_iso and optimised with ANCER's
    objective and Adam; after every step the sigma clipping of eq. 4.8,
    theta <- min(max(theta, sigma_iso (1 - lambda_1)), sigma_iso (1 + lambda_2)), clip_sigma =
    (lambda_1, lambda_2), is applied in place to the optimiser's own parameter (lambda_1 = 0 is
    ANCER's projection; lambda_2 = inf removes the upper bound). The default (0.15, 0.15) is the
    band [0.85, 1.15] x sigma_iso of the authors' code. outputs: 'logits' (default) or 'probabilities',
    as in optimize_isotropic, for the smoothing and the Hessian's loss alike. Returns sigma (B, d), the
    rotation, the Hessian eigenvalues and the trace.
    """
    _check_settings(iterations=iterations, learning_rate=learning_rate, num_samples=num_samples, clip=clip,
                    outputs=outputs, kappa=kappa, clip_sigma=clip_sigma, rank=rank, exact_limit=exact_limit,
                    lanczos_steps=lanczos_steps)
    lambda_1, lambda_2 = clip_sigma
    model = _check_eval(model)
    x = _batch(x)
    check_generator(generator, x.device)
    dim = x[0].numel()
    iso = _per_example(sigma_iso, x, "sigma_iso")
    eigenvalues = None
    if rotation is None:
        rotation, eigenvalues = safe_directions(model, x, rank, exact_limit=exact_limit, steps=lanczos_steps,
                                                generator=generator, outputs=outputs)
    elif rotation.batch_shape != (len(x),) or rotation.dim != dim:
        raise ValueError(f"rotation must be a batch of {len(x)} rotations of dimension {dim}, got batch "
                         f"{rotation.batch_shape} of dimension {rotation.dim}")
    rotation = rotation.to(x.device)
    theta = iso[:, None].expand(len(x), dim).clone()
    lower, upper = theta * (1 - lambda_1), theta * (1 + lambda_2)
    sigma, trace = _optimize_volume(model, x, theta, lower, upper, rotation, iterations=iterations,
                                    learning_rate=learning_rate, num_samples=num_samples, kappa=kappa,
                                    generator=generator, clip=clip, outputs=outputs)
    return Optimization(sigma, rotation=rotation, eigenvalues=eigenvalues, trace=trace)


# ------------------------------------------------------------------------------------ certification


def _count(model, x, sigma, rotation, num, batch_size, generator, num_classes) -> torch.Tensor:
    counts = torch.zeros(num_classes, dtype=torch.long, device=x.device)
    remaining = num
    while remaining > 0:
        size = min(batch_size, remaining)
        eps = torch.randn((1, size, *x.shape), generator=generator, dtype=x.dtype, device=x.device)
        noise = sample_noise(eps, sigma.unsqueeze(0), rotation)[0]
        logits = model(x.unsqueeze(0) + noise)
        if logits.shape != (size, num_classes):
            raise ValueError(f"model must map a batch of {size} inputs to logits of shape ({size}, {num_classes}); "
                             f"it returned {tuple(logits.shape)}")
        counts += torch.bincount(logits.argmax(dim=1), minlength=num_classes)
        remaining -= size
    return counts


def _sigma_for_one(sigma, x: torch.Tensor, rotation) -> torch.Tensor:
    """sigma as a float64 tensor: a 0-d one, or of x's shape (axis-aligned), or (d,) with a rotation."""
    if isinstance(sigma, numbers.Real):
        check_sigma(sigma)
        sigma = torch.tensor(float(sigma))
    sigma = torch.as_tensor(sigma, device=x.device).to(torch.float64)
    allowed = [(), (x.numel(),)] if rotation is not None else [(), tuple(x.shape)]
    if tuple(sigma.shape) not in allowed or not bool(torch.isfinite(sigma).all()) or bool((sigma <= 0).any()):
        raise ValueError(f"sigma must be a number > 0 or a tensor of shape {allowed[1]} with entries > 0"
                         f"{' (one per direction of the rotation)' if rotation is not None else ''}, "
                         f"got shape {tuple(sigma.shape)}")
    if rotation is not None and sigma.dim() == 0:
        sigma = sigma.expand(x.numel())
    return sigma


def certify(model, x, sigma, rotation: Rotation | None = None, *, num_classes: int, n0: int, n: int,
            alpha: float, batch_size: int, generator=None, estimate_generator=None) -> Certificate:
    """Cohen et al.'s CERTIFY with the anisotropic gap (thesis eq. 3.12, 4.4) at one input x.

    Noise U diag(sigma) eps: sigma a number (isotropic), a tensor of x's shape (axis-aligned), or
    of shape (d,) with an unbatched `rotation` of dimension d = x.numel(). Guesses c_A from n0
    draws, then draws n fresh ones and takes the one-sided (1 - alpha) Clopper-Pearson lower bound
    p_A (rsbook.stats). Unless p_A > 1/2 it abstains (rsbook.bounds.certified_gap); else, with
    probability >= 1 - alpha over the sampling, g(x + delta) = c_A for all
    ||diag(sigma)^-1 U^T delta|| <= gap = Phi^-1(p_A), hence for ||delta||_2 <= radius = min(sigma) gap.
    proxy_radius = gap * geometric mean of sigma: the radius of the ball of equal volume, a size,
    not an l2 certificate. generator draws the n0 selection samples and estimate_generator the n
    estimation samples (None: they continue the selection stream). sigma must not have been chosen
    with these draws (rsbook.streams gives optimisation its own stream). Only the argmax of the model's
    outputs is counted, so logits and probabilities (a final softmax) certify alike: no `outputs` here.
    """
    check_num_classes(num_classes)
    check_positive_int(n0, "n0")
    check_positive_int(n, "n")
    check_positive_int(batch_size, "batch_size")
    check_alpha(alpha)
    x = _batch(torch.as_tensor(x).unsqueeze(0))[0]
    check_generator(generator, x.device)
    check_generator(estimate_generator, x.device)
    estimate_generator = generator if estimate_generator is None else estimate_generator
    if rotation is not None:
        if rotation.batch_shape != () or rotation.dim != x.numel():
            raise ValueError(f"rotation must be one unbatched rotation of dimension {x.numel()}, got batch "
                             f"{rotation.batch_shape} of dimension {rotation.dim}")
        rotation = Rotation.stack([rotation.to(x.device)])
    sigma = _sigma_for_one(sigma, x, rotation)
    noise_sigma = sigma.to(x.dtype)
    with torch.inference_mode():
        c_hat = int(_count(model, x, noise_sigma, rotation, n0, batch_size, generator, num_classes).argmax())
        n_a = int(_count(model, x, noise_sigma, rotation, n, batch_size, estimate_generator, num_classes)[c_hat])
    p_a = clopper_pearson_lower(n_a, n, alpha)
    gap = certified_gap(p_a)
    if gap is None:
        return Certificate(ABSTAIN, float(p_a), 0.0, 0.0, 0.0)
    flat = sigma.reshape(-1)
    return Certificate(c_hat, float(p_a), gap, float(flat.min()) * gap, float(torch.exp(torch.log(flat).mean())) * gap)
