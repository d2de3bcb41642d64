"""What the base classifier returns, logits or probabilities, and the guard against a softmax applied twice.

DDS, ANCER and RANCER optimise sigma on E_A and E_B, the two largest Monte Carlo averages of the class
probabilities softmax(f(x + noise)), and RANCER's rotation comes from the Hessian of the cross-entropy
loss of f at x (thesis eq. 3.6, 4.7, Algorithm 2). Both read f's outputs as logits. A model that already
ends in a softmax (the DDS/ANCER authors' released CIFAR-10 ResNet-18 ends in nn.Softmax) would then be
smoothed twice, silently: softmax of probabilities is flattened towards uniform, E_A - E_B shrinks, and
the optimised sigma changes (on digits, issue 20 measured a geometric-mean sigma ratio of 2.23 instead of
1.79).

So every optimiser takes `outputs`: "logits" (the default; log-probabilities, e.g. a final log-softmax,
are logits too) or "probabilities" (rows in [0, 1] summing to 1, used as they are), and every batch the
model returns is checked against it: with outputs="logits" a batch whose every row already lies in
[0, 1] and sums to 1 (within `probability_tolerance`) is refused, naming the argument to pass; with
outputs="probabilities" a batch that is not such rows is refused too. CERTIFY (anisotropic.certify)
counts the argmax of f, which no monotone final layer changes, and needs neither.
"""

from __future__ import annotations

import torch

__all__ = ["OUTPUTS", "check_outputs", "probability_tolerance", "are_probabilities", "to_probabilities",
           "to_log_probabilities"]

OUTPUTS = ("logits", "probabilities")


def check_outputs(outputs) -> str:
    """`outputs` must name what the model returns: 'logits' or 'probabilities'."""
    if outputs not in OUTPUTS:
        raise ValueError(f"outputs must be 'logits' (the model returns logits or log-probabilities) or "
                         f"'probabilities' (its rows are in [0, 1] and sum to 1, e.g. it ends in a softmax), "
                         f"got {outputs!r}")
    return outputs


def probability_tolerance(dtype: torch.dtype) -> float:
    """How far from 1 a row of probabilities computed in `dtype` may sum (and below 0 or above 1 an entry
    may lie): 1e-3, or 4 units in the last place of 1 for the half-precision types (fp16 4e-3, bf16 3e-2)."""
    return max(1e-3, 4 * torch.finfo(dtype).eps)


def are_probabilities(raw: torch.Tensor) -> bool:
    """Whether every row of `raw` (shape (N, K), K classes in the last dimension) is a probability vector:
    entries in [0, 1] and a sum of 1, within probability_tolerance(raw.dtype)."""
    values = raw.detach()
    tolerance = probability_tolerance(values.dtype)
    inside = bool(((values >= -tolerance) & (values <= 1 + tolerance)).all())
    return inside and bool(((values.sum(dim=-1) - 1).abs() <= tolerance).all())


def _checked(raw: torch.Tensor, outputs: str) -> torch.Tensor:
    probabilities = are_probabilities(raw)
    if outputs == "logits" and probabilities:
        raise ValueError("the model's outputs already are probabilities (every row of the batch lies in [0, 1] and "
                         "sums to 1), so a softmax would be applied twice and sigma optimised for a flattened "
                         "classifier: pass outputs='probabilities' (or remove the model's final softmax)")
    if outputs == "probabilities" and not probabilities:
        raise ValueError("outputs='probabilities', but the model's outputs are not probabilities (some row of the "
                         "batch leaves [0, 1] or does not sum to 1): pass outputs='logits' for a model that returns "
                         "logits or log-probabilities")
    return raw


def to_probabilities(raw: torch.Tensor, outputs: str = "logits") -> torch.Tensor:
    """Class probabilities from a batch of model outputs `raw` (N, K): softmax(raw) for outputs='logits',
    raw itself for 'probabilities', after the check against `outputs` (ValueError naming the argument).
    Differentiable."""
    raw = _checked(raw, check_outputs(outputs))
    return torch.softmax(raw, dim=-1) if outputs == "logits" else raw


def to_log_probabilities(raw: torch.Tensor, outputs: str = "logits") -> torch.Tensor:
    """log of to_probabilities(raw, outputs), computed stably (log_softmax for logits; for probabilities,
    log of the entries clamped away from 0, so that a vanishing probability keeps a finite gradient)."""
    raw = _checked(raw, check_outputs(outputs))
    if outputs == "logits":
        return torch.log_softmax(raw, dim=-1)
    return torch.log(raw.clamp_min(torch.finfo(raw.dtype).tiny))
