"""Projected gradient descent (PGD) on a base classifier (Madry et al. 2018): the empirical upper bound
on robust accuracy that the LP chapter (a NO needs a counterexample) and FaRS (Table 2) set against
their certificates. The attacks on a *smoothed* classifier (Cohen et al. 2019, Sec. 4) are in
rsbook.cohen.attacks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rsbook._checks import (
    check_clip,
    check_finite_real,
    check_generator,
    check_model,
    check_positive_int,
)

__all__ = ["NORMS", "STEP_SIZE_FACTOR", "pgd"]

NORMS = ("linf", "l2")

STEP_SIZE_FACTOR = 2.5
"""Default step size = 2.5 * epsilon / steps: the Madry-lab rule of thumb (the `robustness` library
of Engstrom et al. 2019, after Madry et al. 2018), long enough for the iterates to cross the ball and
come back. Salman et al.'s attacks.py uses 2 * epsilon / steps."""


def pgd(model, x, labels, epsilon: float, *, norm: str = "linf", steps: int = 40, step_size: float | None = None,
        clip=None, random_start: bool = True, generator=None) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy of a base classifier (Madry et al. 2018), a batch at a time.

    x: a batch (B, ...); labels: (B,) true classes. Each step moves every example by step_size along
    sign(grad) (norm='linf') or grad / ||grad||_2 (norm='l2'), then projects onto the epsilon-ball
    around its x (and into the clip box, e.g. (0, 1) for images). With random_start the search
    begins at a uniform point of the box / a random point of the l2 ball (drawn from `generator`).
    Default step_size: 2.5 * epsilon / steps. Returns x_adv with ||x_adv - x|| <= epsilon in `norm`.
    The attack gives an upper bound on robust accuracy: a certificate that holds must never be beaten.
    """
    check_model(model)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    epsilon = check_finite_real(epsilon, "epsilon", minimum=0.0, strict=False)
    steps = check_positive_int(steps, "steps")
    clip = check_clip(clip)
    step_size = STEP_SIZE_FACTOR * epsilon / steps if step_size is None else \
        check_finite_real(step_size, "step_size", minimum=0.0, strict=True)
    x = torch.as_tensor(x).detach()
    labels = torch.as_tensor(labels, device=x.device).long()
    if x.dim() < 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"x must be a batch (B, ...) and labels of shape (B,), got {tuple(x.shape)} and "
                         f"{tuple(labels.shape)}")
    check_generator(generator, x.device)
    if epsilon == 0.0:
        return x.clone()

    def project(delta):
        if norm == "linf":
            delta = delta.clamp(-epsilon, epsilon)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            delta = delta * torch.clamp(epsilon / norms, max=1.0)
        if clip is not None:
            delta = (x + delta).clamp(clip[0], clip[1]) - x
        return delta

    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        delta = project(noise * epsilon)
    else:
        delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x + delta), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
        if norm == "linf":
            direction = grad.sign()
        else:
            direction = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        delta = project(delta.detach() + step_size * direction)
    return (x + delta).detach()
