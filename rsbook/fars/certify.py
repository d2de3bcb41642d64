"""FaRS: certification in the embedding space of a 1-Lipschitz backbone (Ghazanfari, "FaRS: Fast
Randomized Smoothing", Sec. 2).

The classifier is f = l o e, with e a backbone that is 1-Lipschitz in l2 (rsbook.fars.lipschitz) and l a
small head. Proposition 1: a radius r certified for the head at z = e(x) is certified for f at x,
since ||e(x + delta) - e(x)||_2 <= ||delta||_2. More generally an L-Lipschitz backbone carries a
radius r in embedding space to r / L in input space (`carry_radius`).

Certificates of the head, all in embedding space:

* `margin_radius` / `linear_certify`: a single linear head l(z) = W z + b predicts c = argmax_j l_j(z);
  its decision region is the polyhedron {z' : (w_c - w_j)^T z' + b_c - b_j >= 0 for all j}. The
  distance from z to the complement (a union of half-spaces) is the smallest distance to one of them:

      R(z) = min_{j != c} ((w_c - w_j)^T z + b_c - b_j) / ||w_c - w_j||_2,

  exact (no larger radius is certifiable, no sampling, no failure probability). The seed's text
  (Sec. 2.2, "One-Layer Linear Module") instead ranks the per-class scores (w_j^T z + b_j) / ||w_j||_2
  and takes the difference of the top two (`per_class_radius`); that is neither a lower bound nor the
  distance to the boundary, because the boundary between classes c and j has normal w_c - w_j, not w_c
  or w_j. It is implemented only to show how it differs.

* Sparsemax (`sparsemax`, Martins & Astudillo 2016, the projection the seed defines in Sec. 2.2):
  sparsemax is order-preserving (p_i = max(v_i - tau, 0) with one tau for all i), so for a
  deterministic head argmax sparsemax(l(z)) = argmax l(z) and its exact radius is `margin_radius`
  again: a deterministic sparsemax can neither add nor remove certified accuracy. What sparsemax does
  change is a *smoothed soft* classifier. The seed says only that, "as employed in [3]" (Delattre et al.
  2023), sparsemax is applied before the argmax; smoothing the soft sparsemax head in the embedding space is
  our choice of how to certify it: with
  h(z) = sparsemax(l(z), r) / r in the probability simplex and H(z) = E[h(z + eps)], eps ~ N(0, sigma^2 I),
  z -> sigma Phi^-1(H_c(z)) is 1-Lipschitz for each c (the Lipschitz lemma in Appendix A of Salman et
  al. 2019; Levine et al. 2019), hence if H_A(z) >= p_A > 1/2 the class A stays the argmax of H within
  radius sigma Phi^-1(p_A).
  `SparsemaxSmooth.certify` estimates a lower confidence bound p_A on H_A from n Monte Carlo samples
  with the empirical Bernstein bound of Maurer & Pontil 2009 (Thm. 4) or Hoeffding's inequality. This
  is the "sparsemax" variant of the book's FaRS chapter.

* A deeper head: Cohen et al.'s CERTIFY (rsbook.smooth.Smooth) applied to the head at z, the seed's
  "Multi-Layer Linear Module" (its future work).

Training with a margin (Tsuzuku, Sato & Sugiyama 2018): `margin_logits` adds a margin to every
non-target logit before the cross-entropy, either a constant (their sqrt(2) L eps) or, for a linear
head, the exact pairwise form eps ||w_y - w_j||_2 whose satisfaction means margin_radius > eps.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from rsbook._checks import (
    check_alpha,
    check_generator,
    check_num_classes,
    check_positive_int,
    check_sigma,
)
from rsbook.bounds import certified_gap
from rsbook.smooth import ABSTAIN

__all__ = ["sparsemax", "margin_radius", "linear_certify", "per_class_radius", "nearest_boundary_point",
           "carry_radius", "margin_logits", "hoeffding_lower", "empirical_bernstein_lower", "BOUNDS",
           "SparsemaxSmooth", "SmoothedSparsemaxModel", "MLPHead", "FaRS", "build_head"]

BOUNDS = ("bernstein", "hoeffding")
"""Lower confidence bounds on the mean of a [0, 1]-valued variable (SparsemaxSmooth.certify)."""


def _check_positive_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _as_float_tensor(value, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite: it holds NaN or infinite values")
    return tensor


def sparsemax(z, r: float = 1.0, dim: int = -1) -> torch.Tensor:
    """Euclidean projection of z onto the scaled simplex {p : p >= 0, sum(p) = r} along `dim`
    (Martins & Astudillo 2016, Alg. 1 with the simplex scaled by r; FaRS Sec. 2.2).

    p_i = max(z_i - tau, 0), with tau = (sum_{j <= k} z_(j) - r) / k and k the largest index such that
    r + k z_(k) > sum_{j <= k} z_(j) (z_(1) >= z_(2) >= ... sorted). The output sums to r, is
    differentiable almost everywhere (autograd gives the exact Jacobian off the kinks), preserves the
    order of the entries, and sparsemax(z, r) = r * sparsemax(z / r, 1).
    z: a tensor (or array) of any shape; r: a finite number > 0.
    """
    z = _as_float_tensor(z, "z")
    r = _check_positive_real(r, "r")
    if z.dim() == 0:
        raise ValueError("z must have at least one dimension")
    return _sparsemax(z, r, dim)


def _sparsemax(z: torch.Tensor, r: float, dim: int = -1) -> torch.Tensor:
    """sparsemax without argument checks (no host synchronisation), for sampling loops."""
    moved = z.movedim(dim, -1)
    ordered, _ = torch.sort(moved, dim=-1, descending=True)
    cumulative = ordered.cumsum(dim=-1)
    k = torch.arange(1, moved.shape[-1] + 1, dtype=moved.dtype, device=moved.device)
    support = (r + k * ordered > cumulative).sum(dim=-1, keepdim=True)  # >= 1: k = 1 always qualifies
    tau = (cumulative.gather(-1, support - 1) - r) / support.to(moved.dtype)
    return torch.clamp(moved - tau, min=0.0).movedim(-1, dim)


def _linear_inputs(z, weight, bias):
    z = _as_float_tensor(z, "z").to(torch.float64)
    weight = _as_float_tensor(weight, "weight").to(torch.float64)
    if weight.dim() != 2 or weight.shape[0] < 2:
        raise ValueError(f"weight must be a (num_classes >= 2, features) matrix, got shape {tuple(weight.shape)}")
    single = z.dim() == 1
    z = z.unsqueeze(0) if single else z
    if z.dim() != 2 or z.shape[1] != weight.shape[1]:
        raise ValueError(f"z must have shape ({weight.shape[1]},) or (B, {weight.shape[1]}), got "
                         f"{tuple(z.shape) if not single else tuple(z.shape[1:])}")
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    bias = _as_float_tensor(bias, "bias").to(torch.float64)
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return z.to(weight.device), weight, bias, single


def linear_certify(z, weight, bias=None):
    """Exact l2 certificate of the linear head l(z) = W z + b at z (module docstring):
    returns (prediction, radius) with prediction = argmax_j l_j(z) and

        radius = min_{j != c} ((w_c - w_j)^T z + b_c - b_j) / ||w_c - w_j||_2,

    so that argmax l(z') = c for every ||z' - z||_2 < radius, and some z' at distance radius (plus any
    epsilon) is classified otherwise. A class j with w_j = w_c never overtakes c when b_c > b_j (its
    term is +inf); a tie for the top logit gives radius 0. Computed in float64.
    z: (features,) or (B, features); weight: (num_classes, features); bias: (num_classes,) or None.
    prediction: int64 tensor (B,) (a 0-d tensor for a single z); radius: float64 tensor of the same shape.
    """
    z, weight, bias, single = _linear_inputs(z, weight, bias)
    logits = z @ weight.T + bias
    prediction = logits.argmax(dim=1)
    gap = logits.gather(1, prediction[:, None]) - logits  # (B, C), >= 0
    distance = (weight[:, None, :] - weight[None, :, :]).norm(dim=-1)[prediction]  # ||w_c - w_j||, (B, C)
    ratio = torch.where(distance > 0, gap / distance.clamp_min(torch.finfo(torch.float64).tiny),
                        torch.where(gap > 0, torch.inf, 0.0))
    ratio = ratio.scatter(1, prediction[:, None], torch.inf)  # j != c
    radius = ratio.min(dim=1).values
    return (prediction[0], radius[0]) if single else (prediction, radius)


def margin_radius(z, weight, bias=None) -> torch.Tensor:
    """The exact l2 radius of linear_certify: min_{j != c} ((w_c - w_j)^T z + b_c - b_j) / ||w_c - w_j||_2
    at c = argmax (W z + b). Shape () for one z, (B,) for a batch; float64."""
    return linear_certify(z, weight, bias)[1]


def per_class_radius(z, weight, bias=None):
    """The multi-class margin as the seed's text states it (Sec. 2.2, "One-Layer Linear Module"): per-class
    scores s_j = (w_j^T z + b_j) / ||w_j||_2 (the binary distance formula applied to each class), and the
    score difference between the predicted class c = argmax_j (w_j^T z + b_j) and the best other class,
    max(s_c - max_{j != c} s_j, 0). When the scores rank c first (they need not: the scores divide each
    logit by a different norm) this is the text's "difference between the highest-scoring label and the
    second one". Returns (prediction, radius) like linear_certify.

    NOT a certificate: the boundary between classes c and j is {z : (w_c - w_j)^T z + b_c - b_j = 0},
    with normal w_c - w_j, so its distance is (l_c - l_j) / ||w_c - w_j||_2, not s_c - s_j. The value can
    exceed the exact margin_radius (an over-claim: nearest_boundary_point gives a point inside the
    claimed ball where the prediction changes) or fall short of it. Compare with margin_radius.
    """
    z, weight, bias, single = _linear_inputs(z, weight, bias)
    logits = z @ weight.T + bias
    prediction = logits.argmax(dim=1)
    scores = logits / weight.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    own = scores.gather(1, prediction[:, None])[:, 0]
    others = scores.scatter(1, prediction[:, None], -torch.inf).max(dim=1).values
    radius = (own - others).clamp_min(0.0)
    return (prediction[0], radius[0]) if single else (prediction, radius)


def nearest_boundary_point(z, weight, bias=None, overshoot: float = 1e-6) -> torch.Tensor:
    """The point z + (R + overshoot) u, with R = margin_radius and u the unit normal towards the closest
    competing half-space: the linear head's prediction there is no longer c (ties aside, whenever R is
    finite). A witness that no radius larger than R can be certified. Same shape as z; float64."""
    z, weight, bias, single = _linear_inputs(z, weight, bias)
    prediction, radius = linear_certify(z, weight, bias)
    logits = z @ weight.T + bias
    gap = logits.gather(1, prediction[:, None]) - logits
    distance = (weight[:, None, :] - weight[None, :, :]).norm(dim=-1)[prediction]
    ratio = torch.where(distance > 0, gap / distance.clamp_min(torch.finfo(torch.float64).tiny), torch.inf)
    ratio = ratio.scatter(1, prediction[:, None], torch.inf)
    closest = ratio.argmin(dim=1)
    normal = weight[prediction] - weight[closest]  # (B, d): the direction that decreases l_c - l_j fastest
    unit = normal / normal.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    point = z - (radius + overshoot)[:, None] * unit
    return point[0] if single else point


def carry_radius(radius, lipschitz: float = 1.0):
    """A radius certified in embedding space, carried to input space through a backbone that is
    `lipschitz`-Lipschitz in l2: ||e(x + delta) - e(x)|| <= L ||delta||, so ||delta|| < r / L keeps
    e(x + delta) inside the certified ball (FaRS Proposition 1 for L = 1: the radius is unchanged)."""
    lipschitz = _check_positive_real(lipschitz, "lipschitz")
    return radius / lipschitz


def margin_logits(logits: torch.Tensor, labels: torch.Tensor, margin: float, weight: torch.Tensor | None = None):
    """Lipschitz-margin training (Tsuzuku, Sato & Sugiyama 2018): add a margin to every
    non-target logit before the cross-entropy, so that training pushes the target logit above the
    others by at least that margin.

    weight None: the constant margin `margin` (Tsuzuku et al. use sqrt(2) L eps for an L-Lipschitz
    network and target radius eps). weight the (num_classes, features) matrix of a linear head on a
    1-Lipschitz backbone: logit j gets margin * ||w_y - w_j||_2, so a correct prediction on the
    margin-shifted logits means margin_radius > margin (the exact pairwise form; sqrt(2) ||W||_2 bounds
    every ||w_y - w_j||_2). logits: (B, C); labels: (B,) int64. Returns the shifted logits (B, C).
    """
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (B, C) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    others = 1.0 - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    if weight is None:
        return logits + margin * others
    if weight.dim() != 2 or weight.shape[0] != logits.shape[1]:
        raise ValueError(f"weight must be ({logits.shape[1]}, features), got {tuple(weight.shape)}")
    distance = (weight[labels][:, None, :] - weight[None, :, :]).norm(dim=-1)  # (B, C), 0 at j = y
    return logits + margin * distance * others


# ------------------------------------------------------------------ confidence bounds for [0, 1] means

def hoeffding_lower(mean, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower confidence bound on E[X] for n i.i.d. X in [0, 1] with sample mean
    `mean` (Hoeffding 1963): mean - sqrt(log(1 / alpha) / (2 n))."""
    n = check_positive_int(n, "n")
    alpha = check_alpha(alpha)
    return float(mean) - math.sqrt(math.log(1.0 / alpha) / (2.0 * n))


def empirical_bernstein_lower(mean, variance, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower confidence bound on E[X] for n >= 2 i.i.d. X in [0, 1] with sample
    mean `mean` and unbiased sample variance `variance` (Maurer & Pontil 2009, Thm. 4):

        mean - sqrt(2 variance log(2 / alpha) / n) - 7 log(2 / alpha) / (3 (n - 1)).

    Much tighter than Hoeffding when the variance is small (e.g. a sparsemax output that is often 1)."""
    n = check_positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be >= 2 for the empirical Bernstein bound, got {n}")
    alpha = check_alpha(alpha)
    variance = max(float(variance), 0.0)
    log_term = math.log(2.0 / alpha)
    return float(mean) - math.sqrt(2.0 * variance * log_term / n) - 7.0 * log_term / (3.0 * (n - 1))


class SparsemaxSmooth:
    """The smoothed sparsemax head H(z) = E[sparsemax(head(z + eps), r) / r], eps ~ N(0, sigma^2 I)
    (our choice of certifying the seed's "sparsemax before the argmax", after its ref. [3], Delattre et al. 2023:
    smoothing in the embedding space; module docstring).

    head: callable mapping (B, features) to logits (B, num_classes) (a Module in eval mode).
    sigma: noise level in embedding units. r: the simplex scale of sparsemax (the seed's r); small r
    makes h close to the one-hot argmax, large r close to an affine function of the logits.
    device: where sampling runs (default CPU).
    """

    def __init__(self, head, num_classes: int, sigma: float, r: float = 1.0, device=None):
        if not callable(head):
            raise ValueError(f"head must be callable, got {type(head).__name__}")
        check_num_classes(num_classes)
        self.head, self.num_classes = head, int(num_classes)
        self.sigma = check_sigma(sigma)
        self.r = _check_positive_real(r, "r")
        self.device = torch.device("cpu" if device is None else device)

    def _prepare(self, z):
        z = _as_float_tensor(z, "z")
        if z.dim() != 1:
            raise ValueError(f"z must be one embedding of shape (features,), got {tuple(z.shape)}")
        return z.to(self.device)

    def soft_outputs(self, batch: torch.Tensor) -> torch.Tensor:
        """h on a batch of embeddings: sparsemax(head(batch), r) / r, rows in the probability simplex."""
        logits = self.head(batch)
        if logits.shape != (batch.shape[0], self.num_classes):
            raise ValueError(f"head must map ({batch.shape[0]}, features) to ({batch.shape[0]}, {self.num_classes}), "
                             f"it returned {tuple(logits.shape)}")
        return _sparsemax(logits, self.r) / self.r

    def moments(self, z, num: int, batch_size: int, generator=None):
        """(mean, unbiased variance) over `num` noisy copies z + eps of h's outputs, each a float64
        tensor (num_classes,) on the host. The sampling loop stays on the device."""
        num = check_positive_int(num, "num")
        batch_size = check_positive_int(batch_size, "batch_size")
        check_generator(generator, self.device)
        z = self._prepare(z)
        total = torch.zeros(self.num_classes, dtype=torch.float64, device=self.device)
        squares = torch.zeros_like(total)
        buffer = torch.empty((min(batch_size, num), z.shape[0]), dtype=z.dtype, device=self.device)
        remaining = num
        with torch.inference_mode():
            while remaining > 0:
                batch = buffer[: min(batch_size, remaining)]
                batch.normal_(0.0, self.sigma, generator=generator).add_(z)
                h = self.soft_outputs(batch).to(torch.float64)
                total += h.sum(dim=0)
                squares += (h * h).sum(dim=0)
                remaining -= batch.shape[0]
        mean = (total / num).cpu()
        variance = ((squares - num * mean.to(self.device) ** 2) / max(num - 1, 1)).clamp_min(0.0).cpu()
        return mean, variance

    def predict(self, z, num: int, batch_size: int, generator=None) -> int:
        """argmax of the Monte Carlo mean of h over `num` noisy copies (no abstention): an estimate of
        the smoothed classifier argmax_c H_c(z)."""
        return int(self.moments(z, num, batch_size, generator)[0].argmax())

    def certify(self, z, n0: int, n: int, alpha: float, batch_size: int, generator=None, bound: str = "bernstein",
                estimate_generator=None):
        """CERTIFY for the smoothed soft classifier: guess c_A = argmax of the mean of h over n0 samples;
        from n fresh samples take a one-sided (1 - alpha) lower bound p_A on H_{c_A}(z) (`bound`:
        'bernstein' (Maurer & Pontil 2009, Thm. 4; needs n >= 2) or 'hoeffding'). If p_A <= 1/2 return
        (ABSTAIN, 0.0) (the library's one rule, rsbook.bounds.certified_gap), else (c_A, sigma Phi^-1(p_A)).
        Since sum_c H_c = 1, H_{c_A} > 1/2 makes c_A the argmax, and sigma Phi^-1(H_c) is 1-Lipschitz
        (Salman et al. 2019, App. A), so with probability >= 1 - alpha argmax H(z') = c_A for all
        ||z' - z||_2 < radius. generator draws the n0 selection samples and estimate_generator the n
        estimation samples (None: they continue the selection stream), as in rsbook.smooth.Smooth.certify."""
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
        alpha = check_alpha(alpha)
        n = check_positive_int(n, "n")
        if bound == "bernstein" and n < 2:
            raise ValueError(f"n must be >= 2 for the empirical Bernstein bound, got {n}")
        c_hat = int(self.moments(z, n0, batch_size, generator)[0].argmax())
        mean, variance = self.moments(z, n, batch_size, generator if estimate_generator is None else estimate_generator)
        if bound == "bernstein":
            p_a = empirical_bernstein_lower(mean[c_hat], variance[c_hat], n, alpha)
        else:
            p_a = hoeffding_lower(mean[c_hat], n, alpha)
        gap = certified_gap(min(p_a, 1.0))
        if gap is None:
            return ABSTAIN, 0.0
        return c_hat, self.sigma * gap


class SmoothedSparsemaxModel(nn.Module):
    """x -> log of a Monte Carlo estimate of H(e(x)) (SparsemaxSmooth) with `num_noise` fresh noise
    draws per call: the differentiable target of an attack on the smoothed sparsemax classifier
    (the cross-entropy of these 'logits' is -log H_y, the objective of Salman et al. 2019).
    Probabilities are clamped at `floor` before the log. Randomness comes from `generator`."""

    def __init__(self, backbone, head, sigma: float, num_noise: int, r: float = 1.0, generator=None,
                 floor: float = 1e-12):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.sigma, self.r = check_sigma(sigma), _check_positive_real(r, "r")
        self.num_noise = check_positive_int(num_noise, "num_noise")
        self.generator, self.floor = generator, float(floor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone(x)
        noise = torch.randn((z.shape[0], self.num_noise, z.shape[1]), generator=self.generator, dtype=z.dtype,
                            device=z.device) * self.sigma
        probabilities = _sparsemax(self.head(z[:, None, :] + noise), self.r).mean(dim=1) / self.r
        return torch.log(probabilities.clamp_min(self.floor))


class MLPHead(nn.Sequential):
    """A deeper head: Linear -> ReLU (for each hidden width) -> Linear(num_classes). No closed-form
    certificate; certified by smoothing in the embedding space (rsbook.smooth.Smooth)."""

    def __init__(self, in_features: int, hidden, num_classes: int):
        widths = [check_positive_int(in_features, "in_features"), *[check_positive_int(h, "hidden") for h in hidden]]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], check_positive_int(num_classes, "num_classes")))
        super().__init__(*layers)


def build_head(in_features: int, num_classes: int, hidden=()) -> nn.Module:
    """nn.Linear(in_features, num_classes) when `hidden` is empty (the FaRS one-layer head, certified in
    closed form), else MLPHead(in_features, hidden, num_classes)."""
    hidden = list(hidden or [])
    if not hidden:
        return nn.Linear(check_positive_int(in_features, "in_features"), check_positive_int(num_classes, "num_classes"))
    return MLPHead(in_features, hidden, num_classes)


class FaRS(nn.Module):
    """f = head o backbone (FaRS Sec. 2.1, Figure 2a). `backbone` must be 1-Lipschitz in l2 (e.g.
    rsbook.fars.lipschitz.sll_backbone) for radii certified on the head to hold at x (Proposition 1);
    its `lipschitz_constant` attribute (default 1.0) is used by `carry_radius`."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    @property
    def lipschitz_constant(self) -> float:
        return float(getattr(self.backbone, "lipschitz_constant", 1.0))

    @property
    def is_linear(self) -> bool:
        """True when the head is one nn.Linear (closed-form certificate)."""
        return isinstance(self.head, nn.Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def certify_linear(self, x: torch.Tensor):
        """(prediction, input-space radius) of linear_certify at z = backbone(x) for a batch x, carried
        through the backbone's Lipschitz constant."""
        if not self.is_linear:
            raise ValueError("certify_linear needs a single linear head; certify a deeper head by smoothing")
        with torch.inference_mode():
            z = self.backbone(x)
        prediction, radius = linear_certify(z, self.head.weight.detach(), self.head.bias.detach()
                                            if self.head.bias is not None else None)
        return prediction, carry_radius(radius, self.lipschitz_constant)
