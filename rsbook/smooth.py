"""The Gaussian-smoothed classifier g(x) = argmax_c P(f(x + eps) = c), eps ~ N(0, sigma^2 I), with the
Monte Carlo PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter 2019 (Sec. 3.2, App. C).

The sampling loop stays on the device: noise is drawn in place into one reused buffer, the base
classifier's predictions are counted with `torch.bincount` on the device, and each call makes one
device-to-host transfer, at the end.
"""

from __future__ import annotations

import warnings

import torch

from rsbook._checks import (
    check_alpha,
    check_generator,
    check_num_classes,
    check_positive_int,
    check_sigma,
)
from rsbook.bounds import certified_gap
from rsbook.sequential import certify_radius as sequential_certify
from rsbook.sequential_grid import certify_grid as sequential_grid
from rsbook.stats import binomial_pvalue, clopper_pearson_lower

__all__ = ["ABSTAIN", "Smooth", "autocast_agreement", "largest_batch_size"]

_NOT_FINITE = "x must be finite: it holds NaN or infinite values"
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

ABSTAIN = -1
"""The class PREDICT and CERTIFY return when they decline to answer (the authors' logs write -1)."""


class Smooth:
    """A smoothed classifier around `base_classifier`.

    base_classifier: callable mapping a batch of shape (B, *x.shape) to logits of shape
        (B, num_classes); f(x) is the argmax. A `torch.nn.Module` should be in eval mode.
    num_classes: number of classes (>= 2).
    sigma: noise standard deviation, in the units of x (pixel space [0, 1] for images).
    device: where sampling runs; defaults to the CPU. Inputs are moved there.
    precision: 'fp32' (default), or 'bf16' / 'fp16' to run the base classifier under
        torch.autocast (opt-in speed on GPUs). The certificates then hold for the base classifier
        as it runs in that precision; `autocast_agreement` measures how often its top-1 agrees
        with fp32 on the same noisy samples.
    channels_last: keep 4-D noise batches (and an nn.Module base classifier, converted in place)
        in channels_last memory format, which convolutions prefer on recent GPUs.
    """

    def __init__(self, base_classifier, num_classes: int, sigma: float, device=None, precision: str = "fp32",
                 channels_last: bool = False):
        if not callable(base_classifier):
            raise ValueError(f"base_classifier must be callable, got {type(base_classifier).__name__}")
        check_num_classes(num_classes)
        if precision not in _AUTOCAST:
            raise ValueError(f"precision must be one of {sorted(_AUTOCAST)}, got {precision!r}")
        self.base_classifier = base_classifier
        self.num_classes = int(num_classes)
        self.sigma = check_sigma(sigma)
        self.device = torch.device("cpu" if device is None else device)
        self.precision = precision
        self.channels_last = bool(channels_last)
        if self.channels_last and isinstance(base_classifier, torch.nn.Module):
            base_classifier.to(memory_format=torch.channels_last)
        if isinstance(base_classifier, torch.nn.Module) and base_classifier.training:
            warnings.warn(
                "base_classifier is in training mode; batch-norm and dropout then make f depend on "
                "the batch. Call .eval() before smoothing.",
                stacklevel=2,
            )

    def predict(self, x, n: int, alpha: float, batch_size: int, generator=None) -> int:
        """PREDICT (Cohen et al. 2019, Sec. 3.2.1): the top class of n noisy samples, or ABSTAIN.

        Returns c_A only if the two-sided binomial test of n_A ~ Bin(n_A + n_B, 1/2) rejects at
        level alpha, so that the returned class differs from g(x) with probability at most alpha
        (Proposition 1). x: one example of any shape.
        """
        x, finite = self._validate(x, generator, alpha, batch_size, n=n)
        with torch.inference_mode():
            counts = self._count(x, n, batch_size, generator)
            top = torch.topk(counts, 2)
            n_a, n_b, c_a = self._to_host([top.values[0], top.values[1], top.indices[0]], finite)
        if binomial_pvalue(n_a, n_b) > alpha:
            return ABSTAIN
        return int(c_a)

    def certify(self, x, n0: int, n: int, alpha: float, batch_size: int, generator=None,
                estimate_generator=None):
        """CERTIFY (Cohen et al. 2019, Sec. 3.2.2): returns (prediction, radius) or (ABSTAIN, 0.0).

        Guesses c_A from n0 samples, then draws n fresh samples and takes the one-sided (1 - alpha)
        Clopper-Pearson lower bound p_A on P(f(x + eps) = c_A). It abstains unless the radius
        sigma * Phi^-1(p_A) is positive (`rsbook.bounds.certified_gap`: p_A > 1/2), else it returns c_A
        with that radius (Theorem 1 with p_B = 1 - p_A). With probability at least 1 - alpha, a
        returned class is g(x') for every ||x' - x||_2 < radius (Proposition 2).

        generator draws the n0 selection samples; estimate_generator the n estimation samples. When
        estimate_generator is None the estimation draws continue the selection stream (disjoint
        draws, as in the authors' code); pipelines pass the two streams of
        `rsbook.streams.certify_generators`.
        """
        x, finite = self._validate(x, generator, alpha, batch_size, n0=n0, n=n)
        check_generator(estimate_generator, self.device)
        estimate_generator = generator if estimate_generator is None else estimate_generator
        with torch.inference_mode():
            c_hat = self._count(x, n0, batch_size, generator).argmax()
            n_a = self._count(x, n, batch_size, estimate_generator)[c_hat]
            c_hat, n_a = self._to_host([c_hat, n_a], finite)
        p_a = clopper_pearson_lower(n_a, n, alpha)
        gap = certified_gap(p_a)
        if gap is None:
            return ABSTAIN, 0.0
        return int(c_hat), self.sigma * gap

    def certify_radius(self, x, radius: float, n0: int, n_max: int, alpha: float, batch_size: int, generator=None,
                       method: str = "betting", estimate_generator=None, **options):
        """Is g robust at `radius` around x? CERTIFY's question at one radius, decided sequentially
        (rsbook.sequential.certify_radius): returns (prediction, certified, samples).

        As in CERTIFY (Cohen et al. 2019, Sec. 3.2.2) n0 selection samples (from `generator`) guess c_A; then
        fresh samples (from `estimate_generator`, else continuing `generator`) are drawn, in looks of at most
        batch_size, until the test certifies p_A >= Phi(radius / sigma), stops for futility, or has drawn n_max.
        prediction is c_A when certified, else ABSTAIN; samples counts every draw of the call, n0 included.

        Guarantee (Theorem 1 with p_B = 1 - p_A, and Ville's inequality or the union bound over the looks): with
        probability at least 1 - alpha, a certified prediction is g(x') for every ||x' - x||_2 < radius.
        `options` go to rsbook.sequential.plan (futility, prior, first, growth).
        """
        c_hat, draw = self._selected(x, n0, n_max, alpha, batch_size, generator, estimate_generator)
        with torch.inference_mode():
            result = sequential_certify(draw, radius, self.sigma, alpha, n_max, batch_size, method, **options)
        prediction = int(c_hat) if result.certified else ABSTAIN
        return prediction, result.certified, n0 + result.samples

    def certify_grid(self, x, radii, n0: int, n_max: int, alpha: float, batch_size: int, generator=None,
                     method: str = "betting", estimate_generator=None, label: int | None = None, **options):
        """At which radii of the grid is g robust around x? A table row of CERTIFY decided from one stream
        (rsbook.sequential_grid.certify_grid): returns (prediction, radius, samples).

        n0 selection samples (from `generator`) guess c_A as CERTIFY does; then fresh samples (from
        `estimate_generator`, else continuing `generator`) are drawn in looks of at most batch_size until every
        radius is certified or stopped, or n_max are drawn. prediction is c_A when at least the smallest radius
        is certified, else ABSTAIN; radius is the largest certified radius of the grid (0.0 when none, or when
        only radius 0 is certified); samples counts every draw, n0 included.

        label: the true class, when known: if c_A differs from it, no certificate can count towards certified
        accuracy, so the call stops after the n0 selection samples and returns (ABSTAIN, 0.0, n0).

        Guarantee (Theorem 1 with p_B = 1 - p_A, simultaneously over the grid): with probability at least
        1 - alpha, a returned prediction is g(x') for every ||x' - x||_2 < r at every certified radius r.
        `options` go to rsbook.sequential.plan (futility, prior, first, growth).
        """
        c_hat, draw = self._selected(x, n0, n_max, alpha, batch_size, generator, estimate_generator)
        if label is not None and int(c_hat) != int(label):
            return ABSTAIN, 0.0, n0
        with torch.inference_mode():
            result = sequential_grid(draw, radii, self.sigma, alpha, n_max, batch_size, method, **options)
        return (int(c_hat) if result.any else ABSTAIN), result.radius, n0 + result.samples

    def _selected(self, x, n0: int, n_max: int, alpha: float, batch_size: int, generator, estimate_generator):
        """CERTIFY's selection for the sequential tests: (c_A from n0 samples of `generator`, draw) with draw(k)
        the top-class hits among k fresh samples of `estimate_generator` (else continuing `generator`). Checks the
        arguments first (ValueError naming the bad one)."""
        x, finite = self._validate(x, generator, alpha, batch_size, n0=n0, n_max=n_max)
        check_generator(estimate_generator, self.device)
        estimate_generator = generator if estimate_generator is None else estimate_generator
        with torch.inference_mode():
            c_hat = self._to_host([self._count(x, n0, batch_size, generator).argmax()], finite)[0]

        def draw(k):
            return int(self._count(x, k, batch_size, estimate_generator)[c_hat])

        return c_hat, draw

    def sample_counts(self, x, num: int, batch_size: int, generator=None) -> torch.Tensor:
        """Class counts of f over `num` noisy copies of x: an int64 tensor of shape (num_classes,),
        on the device (the SampleUnderNoise of Cohen et al., App. C)."""
        x, finite = self._validate(x, generator, None, batch_size, num=num)
        with torch.inference_mode():
            counts = self._count(x, num, batch_size, generator)
        if finite is not None:
            self._to_host([], finite)
        return counts

    def _validate(self, x, generator, alpha, batch_size, **counts):
        """Check the arguments of a call (ValueError naming the bad one); return _prepare(x)."""
        for name, value in counts.items():
            check_positive_int(value, name)
        if alpha is not None:
            check_alpha(alpha)
        check_positive_int(batch_size, "batch_size")
        check_generator(generator, self.device)
        return self._prepare(x)

    def _prepare(self, x):
        """x on the sampling device, and None if x was checked finite on the host, else a device
        flag that `_to_host` checks with the results, to keep one transfer per call."""
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        finite = None
        if x.device.type == "cpu":
            if not bool(torch.isfinite(x).all()):
                raise ValueError(_NOT_FINITE)
        else:
            finite = torch.isfinite(x).all()
        return x.to(self.device), finite

    @staticmethod
    def _to_host(values, finite) -> list[int]:
        if finite is not None:
            values = [*values, finite.to(torch.long)]
        host = torch.stack(values).tolist()
        if finite is not None and not host.pop():
            raise ValueError(_NOT_FINITE)
        return host

    def _noise_buffer(self, x: torch.Tensor, size: int) -> torch.Tensor:
        layout = torch.channels_last if self.channels_last and x.dim() == 3 else torch.contiguous_format
        return torch.empty((size, *x.shape), dtype=x.dtype, device=self.device, memory_format=layout)

    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """The base classifier's top-1 on a batch, validated, in the configured precision."""
        dtype = _AUTOCAST[self.precision]
        if dtype is None:
            logits = self.base_classifier(batch)
        else:
            with torch.autocast(self.device.type, dtype=dtype):
                logits = self.base_classifier(batch)
        if logits.shape != (batch.shape[0], self.num_classes):
            raise ValueError(
                f"base_classifier must map a batch of shape {tuple(batch.shape)} to logits of shape "
                f"({batch.shape[0]}, {self.num_classes}); it returned {tuple(logits.shape)}"
            )
        return logits.argmax(dim=1)

    def _count(self, x: torch.Tensor, num: int, batch_size: int, generator) -> torch.Tensor:
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=self.device)
        buffer = self._noise_buffer(x, min(batch_size, num))
        remaining = num
        while remaining > 0:
            batch = buffer[: min(batch_size, remaining)]
            batch.normal_(0.0, self.sigma, generator=generator)
            batch.add_(x)
            counts += torch.bincount(self.classify(batch), minlength=self.num_classes)
            remaining -= batch.shape[0]
        return counts


def autocast_agreement(smooth: Smooth, x, num: int, batch_size: int, generator=None) -> float:
    """Fraction of `num` noisy copies of x on which the base classifier's top-1 under
    `smooth.precision` equals its top-1 in fp32, on the very same noise (1.0 for 'fp32')."""
    num = check_positive_int(num, "num")
    batch_size = check_positive_int(batch_size, "batch_size")
    x, _ = smooth._prepare(x)
    reference = Smooth(smooth.base_classifier, smooth.num_classes, smooth.sigma, smooth.device,
                       channels_last=smooth.channels_last)
    agree = torch.zeros((), dtype=torch.long, device=smooth.device)
    buffer = smooth._noise_buffer(x, min(batch_size, num))
    remaining = num
    with torch.inference_mode():
        while remaining > 0:
            batch = buffer[: min(batch_size, remaining)]
            batch.normal_(0.0, smooth.sigma, generator=generator)
            batch.add_(x)
            agree += (smooth.classify(batch) == reference.classify(batch)).sum()
            remaining -= batch.shape[0]
    return int(agree) / num


def largest_batch_size(smooth: Smooth, example_shape, start: int = 256, limit: int = 1 << 16) -> int:
    """The largest power-of-two multiple of `start` (at most `limit`) whose noisy batch the base
    classifier evaluates on `smooth.device` without running out of memory: a batch size tuned to
    the accelerator's memory. On the CPU, where memory does not fail this way, it returns `start`."""
    start = check_positive_int(start, "start")
    limit = check_positive_int(limit, "limit")
    if smooth.device.type == "cpu":
        return start
    best, size = None, start
    x = torch.zeros(tuple(example_shape), device=smooth.device)
    with torch.inference_mode():
        while size <= limit:
            try:
                smooth.classify(smooth._noise_buffer(x, size).normal_())
            except torch.OutOfMemoryError:
                break
            finally:
                if smooth.device.type == "cuda":
                    torch.cuda.empty_cache()
            best, size = size, size * 2
    if best is None:
        raise ValueError(f"even a batch of start={start} examples of shape {tuple(example_shape)} runs out of "
                         f"memory on {smooth.device}")
    return best
