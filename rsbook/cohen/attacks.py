"""Empirical tightness of the certified radius: a projected-gradient (PGD) l2 attack on the
smoothed classifier (Cohen, Rosenfeld & Kolter 2019, Sec. 4 "Empirical tightness of bound", App. J.3).

The protocol of Sec. 4: CERTIFY each example; when it is correct and certified at radius R, look for
a perturbation delta with ||delta||_2 <= 1.5 R (and <= 2 R) such that the smoothed classifier g,
estimated with PREDICT, returns another class at x + delta. Cohen et al. report 17% (1.5 R) and 53%
(2 R) success on ImageNet at sigma = 0.25. Nothing can succeed inside R itself (Theorem 1), except
through PREDICT's own error rate alpha (Proposition 1).

The attack ascends a Monte Carlo estimate of the loss of the smoothed soft classifier
G(x) = E_eps[softmax(f(x + eps))], eps ~ N(0, sigma^2 I), that is of -log G_y(x + delta) (the
SmoothAdv objective of Salman et al. 2019, "Provably Robust Deep Learning via Adversarially Trained
Smoothed Classifiers", Sec. 3), with the l2 steepest-ascent step of Madry et al. 2018 / Kolter & Madry
2018: the gradient is normalised to unit l2 norm and scaled by the step size, then delta is projected
back onto the constraint set. Cohen et al.'s own objective (App. J.3, Eq. 39, after Li et al. 2018)
is the average of the per-sample cross-entropy, E_eps[-log softmax_y(f(x + delta + eps))]; it is
available as objective="loss". Why the averaged softmax is the default: the gradient of the averaged
loss is (1/m) sum_i -grad p_i / p_i, which gives most weight to the noisy copies that f already
misclassifies (small p_i), copies that no longer need pushing; the gradient of -log(mean_i p_i) is
proportional to -sum_i grad p_i, which weighs every copy by how much it moves the vote that g counts.
Cohen et al. themselves note (App. J.3) that Eq. 39 "is not actually the attack objective of
interest", and Salman et al. find the averaged-softmax attack stronger.
"""

from __future__ import annotations

import math
import numbers

import pandas as pd
import torch
import torch.nn.functional as F

from rsbook import streams
from rsbook._checks import (
    check_alpha,
    check_clip,
    check_finite_real,
    check_generator,
    check_model,
    check_positive_int,
    check_seed,
    check_sigma,
)
from rsbook.attacks import STEP_SIZE_FACTOR
from rsbook.progress import track
from rsbook.smooth import ABSTAIN, Smooth

__all__ = ["ATTACK_COLUMNS", "OBJECTIVES", "attack_certified", "attack_certify_log", "smoothed_pgd"]

OBJECTIVES = ("softmax", "loss")
"""'softmax': -log of the noise-averaged softmax of the label (Salman et al. 2019, the default);
'loss': the noise-averaged cross-entropy (Cohen et al. 2019, App. J.3, Eq. 39)."""

ATTACK_COLUMNS = ("idx", "label", "radius", "multiplier", "epsilon", "adv_predict", "success")
"""Columns of attack_certify_log's result: one row per (example, multiplier)."""


def _check_label(label) -> int:
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, numbers.Integral) or label < 0:
        raise ValueError(f"label must be a non-negative integer class, got {label!r}")
    return int(label)


def _check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return objective


def _prepare_x(x, clip) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    x = x.detach().clone()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite: it holds NaN or infinite values")
    if clip is not None and not bool(((x >= clip[0]) & (x <= clip[1])).all()):
        raise ValueError(f"x must lie inside the clip box {clip}")
    return x


def _ascent_direction(model, x, delta, label, sigma, num_noise, batch_size, objective, generator):
    """The gradient with respect to delta of the Monte Carlo attack objective over `num_noise` noisy
    copies of x + delta, evaluated in chunks of `batch_size` copies (same direction as one batch).

    'softmax': grad of -log sum_i p_y,i = -logsumexp_i(log_softmax_y,i), equal to the gradient of
    -log(mean_i p_y,i), the loss of the smoothed soft classifier. It is computed from log_softmax
    and combined across chunks by an online log-sum-exp, so that a p_y that rounds to 1 in float32
    still gives a non-zero gradient (softmax-then-log, as in Salman et al.'s code, would not).
    'loss': grad of sum_i cross_entropy_i.
    """
    total = torch.zeros_like(delta)
    running = None  # log-sum-exp of log p_y over the chunks seen so far ('softmax')
    remaining = num_noise
    while remaining > 0:
        k = min(batch_size, remaining)
        noise = torch.randn((k, *x.shape), generator=generator, dtype=x.dtype, device=x.device).mul_(sigma)
        d = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x + d + noise)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != k:
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(
                    f"model must map a batch of shape {(k, *x.shape)} to logits of shape ({k}, num_classes); "
                    f"it returned {shape}"
                )
            if label >= logits.shape[1]:
                raise ValueError(f"label {label} is not a class of a model with {logits.shape[1]} outputs")
            log_p = F.log_softmax(logits, dim=1)[:, label]
            if objective == "softmax":
                chunk_lse = torch.logsumexp(log_p, dim=0)
                (grad,) = torch.autograd.grad(-chunk_lse, d)  # ascent on -log sum_i p_y,i
            else:
                (grad,) = torch.autograd.grad(-log_p.sum(), d)  # ascent on sum_i CE_i
        if objective == "softmax":
            chunk_lse = chunk_lse.detach()
            if running is None:
                running, total = chunk_lse, grad
            else:
                merged = torch.logaddexp(running, chunk_lse)
                total = total * torch.exp(running - merged) + grad * torch.exp(chunk_lse - merged)
                running = merged
        else:
            total = total + grad
        remaining -= k
    return total


def smoothed_pgd(model, x, label, sigma: float, epsilon: float, *, steps: int = 20, step_size: float | None = None,
                 num_noise: int = 32, clip=None, generator=None, batch_size: int | None = None,
                 objective: str = "softmax") -> torch.Tensor:
    """l2 PGD against the smoothed classifier around x (Cohen et al. 2019, App. J.3; Salman et al. 2019).

    Starting from delta = 0, each of `steps` iterations draws `num_noise` fresh noise vectors
    eps_i ~ N(0, sigma^2 I), estimates the gradient g of the attack objective at x + delta (see
    `objective` and the module docstring), takes the steepest-ascent step
    delta <- delta + step_size * g / ||g||_2, and projects: first onto the box x + delta in clip
    (when given), then onto the l2 ball ||delta||_2 <= epsilon by rescaling. Rescaling a box-feasible
    delta towards 0 keeps it box-feasible (x is inside the box), so the result lies in both sets.
    A zero gradient (a flat objective) is replaced by a random direction drawn from `generator`.
    Returns the last iterate.

    model: differentiable callable mapping a batch of shape (k, *x.shape) to logits (k, num_classes);
        a torch.nn.Module should be in eval mode. Its parameters' .grad are left untouched.
    x: one example, any shape, on the device where the attack runs. label: its true class.
    sigma: the smoothing noise level (> 0). epsilon: the l2 budget (>= 0), in the units of x.
    steps: PGD iterations (>= 1). step_size: default 2.5 * epsilon / steps (STEP_SIZE_FACTOR).
    num_noise: noise samples m per gradient estimate (>= 1). batch_size: copies per forward pass
        (default num_noise, i.e. one pass per step). clip: None (unbounded, e.g. 2-D toy data) or
        (low, high), e.g. (0, 1) for images. generator: a torch.Generator on x's device; the result is
        a deterministic function of its state. objective: 'softmax' (default) or 'loss' (OBJECTIVES).

    Returns delta, a tensor with x's shape, dtype and device, with ||delta||_2 <= epsilon (up to
    float rounding) and, when clip is given, low <= x + delta <= high.
    """
    check_model(model)
    label = _check_label(label)
    sigma = check_sigma(sigma)
    epsilon = check_finite_real(epsilon, "epsilon", minimum=0.0, strict=False)
    steps = check_positive_int(steps, "steps")
    num_noise = check_positive_int(num_noise, "num_noise")
    batch_size = num_noise if batch_size is None else check_positive_int(batch_size, "batch_size")
    objective = _check_objective(objective)
    clip = check_clip(clip)
    if step_size is None:
        step_size = STEP_SIZE_FACTOR * epsilon / steps
    else:
        step_size = check_finite_real(step_size, "step_size", minimum=0.0, strict=True)
    x = _prepare_x(x, clip)
    check_generator(generator, x.device)

    delta = torch.zeros_like(x)
    if epsilon == 0.0:
        return delta
    for _ in range(steps):
        grad = _ascent_direction(model, x, delta, label, sigma, num_noise, batch_size, objective, generator)
        norm = float(grad.norm())  # one host sync per step, against one forward/backward of m copies
        if not math.isfinite(norm):
            raise ValueError("the attack objective's gradient is not finite; does the model return finite logits?")
        if norm == 0.0:
            grad = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            norm = float(grad.norm())
        delta = delta + grad * (step_size / norm)
        if clip is not None:
            delta = (x + delta).clamp_(clip[0], clip[1]) - x
        delta = delta * torch.clamp(epsilon / delta.norm(), max=1.0)  # a zero delta: epsilon / 0 = inf -> 1
    return delta.detach()


def _check_multipliers(multipliers) -> tuple[float, ...]:
    try:
        values = tuple(multipliers)
    except TypeError:
        raise ValueError(f"multipliers must be a sequence of numbers > 0, got {multipliers!r}") from None
    if not values:
        raise ValueError("multipliers must not be empty")
    checked = tuple(check_finite_real(m, "multipliers", minimum=0.0, strict=True) for m in values)
    if len(set(checked)) != len(checked):
        raise ValueError(f"multipliers must be distinct, got {multipliers!r}")
    return checked


def _attack_one(smooth: Smooth, model, x, label, radius, multipliers, n_predict, alpha, batch_size, steps,
                num_noise, clip, objective, generator):
    """[(multiplier, epsilon, g's PREDICT at x + delta)] for one certified example."""
    x = _prepare_x(x, clip).to(smooth.device)
    results = []
    for multiplier in multipliers:
        epsilon = multiplier * radius
        delta = smoothed_pgd(model, x, label, smooth.sigma, epsilon, steps=steps, num_noise=num_noise, clip=clip,
                             generator=generator, batch_size=batch_size, objective=objective)
        prediction = smooth.predict(x + delta, n_predict, alpha, batch_size, generator=generator)
        results.append((multiplier, epsilon, prediction))
    return results


def attack_certified(smooth: Smooth, model, x, label, radius: float, multipliers=(1.5, 2.0), *, n_predict: int,
                     alpha: float, batch_size: int, steps: int, num_noise: int, clip=None, generator=None,
                     objective: str = "softmax") -> dict[float, bool]:
    """The empirical-tightness test of Cohen et al. 2019 (Sec. 4) for one example certified at `radius`.

    For each multiplier, runs smoothed_pgd with epsilon = multiplier * radius (noise level
    smooth.sigma, default step size 2.5 epsilon / steps), then estimates g(x + delta) with
    smooth.predict(n_predict, alpha, batch_size). The attack succeeds when PREDICT returns a class other
    than `label`; an abstention is not a success. PREDICT errs with probability at most alpha
    (Proposition 1), so a success inside the certified radius (multiplier < 1) has probability at most
    alpha when the certificate holds.

    model: the differentiable base classifier (None: smooth.base_classifier). x: one example; it is
    moved to smooth.device, where `generator` must live. batch_size: copies per forward pass, for both
    the attack's gradient estimate and PREDICT. The multipliers are attacked in order, drawing from one
    generator, so the result is a deterministic function of its state.

    Returns {multiplier: success}.
    """
    if not isinstance(smooth, Smooth):
        raise ValueError(f"smooth must be an rsbook.smooth.Smooth, got {type(smooth).__name__}")
    model = smooth.base_classifier if model is None else model
    label = _check_label(label)
    radius = check_finite_real(radius, "radius", minimum=0.0, strict=True)
    multipliers = _check_multipliers(multipliers)
    n_predict = check_positive_int(n_predict, "n_predict")
    alpha = check_alpha(alpha)
    results = _attack_one(smooth, model, x, label, radius, multipliers, n_predict, alpha, batch_size, steps,
                          num_noise, check_clip(clip), _check_objective(objective), generator)
    return {m: prediction != ABSTAIN and prediction != label for m, _, prediction in results}


def attack_certify_log(smooth: Smooth, model, dataset, log: pd.DataFrame, multipliers=(1.5, 2.0), *, n_predict: int,
                       alpha: float, batch_size: int, steps: int, num_noise: int, clip=None, seed: int = 0,
                       max_examples: int | None = None, objective: str = "softmax",
                       progress: bool = True) -> pd.DataFrame:
    """Cohen et al. 2019, Sec. 4, over a dataset: attack every correctly certified example of a certify log.

    log: a certify log as returned by rsbook.logs.read_certify_log (columns idx, label, predict,
    radius, correct); the rows with correct == 1 and radius > 0 are attacked, in log order, at most
    `max_examples` of them (None: all). dataset: the sequence of (x, label) the log was computed on;
    each row's label must match dataset[idx]. Each example draws from its own stream,
    rsbook.streams.generator(seed, 'attack', idx), so a row does not depend on which others were
    attacked, and never from the noise that certified it (the certify run's 'select' and 'estimate'
    streams), even with the same seed. Other arguments: see attack_certified.

    Returns a DataFrame with columns ATTACK_COLUMNS, one row per (example, multiplier): idx, label,
    the certified radius, multiplier, epsilon = multiplier * radius, adv_predict (PREDICT at
    x + delta, -1 for ABSTAIN) and success (adv_predict is a class other than label). The success
    rate per multiplier is `frame.groupby("multiplier")["success"].mean()`.
    """
    if not isinstance(smooth, Smooth):
        raise ValueError(f"smooth must be an rsbook.smooth.Smooth, got {type(smooth).__name__}")
    model = smooth.base_classifier if model is None else model
    missing = [c for c in ("idx", "label", "radius", "correct") if c not in getattr(log, "columns", ())]
    if missing:
        raise ValueError(f"log must be a certify log DataFrame; it lacks columns {missing}")
    multipliers = _check_multipliers(multipliers)
    n_predict = check_positive_int(n_predict, "n_predict")
    alpha = check_alpha(alpha)
    check_positive_int(batch_size, "batch_size")
    check_positive_int(steps, "steps")
    check_positive_int(num_noise, "num_noise")
    clip = check_clip(clip)
    objective = _check_objective(objective)
    seed = check_seed(seed)
    if max_examples is not None:
        max_examples = check_positive_int(max_examples, "max_examples")

    chosen = log[(log["correct"] == 1) & (log["radius"] > 0)]
    if max_examples is not None:
        chosen = chosen.iloc[:max_examples]
    rows = []
    for idx, label, radius in track(list(zip(chosen["idx"], chosen["label"], chosen["radius"])), "attack",
                                    unit="example", disable=not progress):
        idx, label, radius = int(idx), int(label), float(radius)
        x, true_label = dataset[idx]
        if int(true_label) != label:
            raise ValueError(f"log row idx {idx} has label {label}, but dataset[{idx}] has label {int(true_label)}; "
                             "is this the dataset the log was certified on?")
        generator = streams.generator(seed, "attack", idx, device=smooth.device)
        for multiplier, epsilon, prediction in _attack_one(
                smooth, model, x, label, radius, multipliers, n_predict, alpha, batch_size, steps, num_noise,
                clip, objective, generator):
            rows.append((idx, label, radius, multiplier, epsilon, int(prediction),
                         prediction != ABSTAIN and prediction != label))
    frame = pd.DataFrame(rows, columns=list(ATTACK_COLUMNS))
    return frame.astype({"idx": "int64", "label": "int64", "radius": float, "multiplier": float,
                         "epsilon": float, "adv_predict": "int64", "success": bool})
