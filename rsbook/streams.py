"""Every random stream of the library, each with one purpose, made in one place.

A stream is a generator seeded from (seed, purpose, *key) through numpy's SeedSequence: `seed` is the
run's seed, `purpose` says what the draws are for, `key` says for what (an example index, an epoch, a
method name). The purpose is part of the seed, so the noise that chose a quantity can never be
reused to test it: CERTIFY's Clopper-Pearson bound (Cohen et al. 2019, Sec. 3.2.2) needs the
estimation noise independent of the selection noise that picked c_A and of any noise that tuned
sigma (Alfarra et al. 2022's DDS; Rumezhak 2022, Sec. 5.5), and an attack must not replay the noise
of the certificate it attacks.

    select     CERTIFY's n0 draws that guess the top class c_A
    estimate   CERTIFY's n draws behind the lower confidence bound on p_A
    predict    PREDICT's draws (its binomial test)
    optimise   the noise of a per-input sigma optimisation (DDS, ANCER, RANCER)
    attack     random starts and noise of an attack (PGD, smoothed PGD)
    init       a model's initial weights
    shuffle    the order of training examples
    augment    training data augmentation (crops, flips)
    train      the Gaussian noise added to training inputs
    evaluate   the noise of an accuracy measured during training
    subsample  which examples a run takes, and in which order
    data       synthetic data (the toy sets)
    probe      power iterations, timing and other measurements that certify nothing
    simulate   Binomial draws that stand in for a model's noisy samples (replays of released logs)
    randomize  the independent uniform of a randomized test or bound (randomized Clopper-Pearson)

Keys are integers (>= 0) or strings (hashed with SHA-256, so stable across processes).
"""

from __future__ import annotations

import hashlib
import numbers
from contextlib import contextmanager

import numpy as np
import torch

from rsbook._checks import check_seed

__all__ = ["PURPOSES", "stream_seed", "generator", "numpy_generator", "certify_generators", "seed_global",
           "seeded_global"]

PURPOSES = ("select", "estimate", "predict", "optimise", "attack", "init", "shuffle", "augment", "train",
            "evaluate", "subsample", "data", "probe", "simulate", "randomize")
_TAG = 0x5253424F4F4B  # "RSBOOK": keeps these entropy words apart from a bare SeedSequence(seed)


def _word(key) -> int:
    if isinstance(key, str):
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    if isinstance(key, bool) or not isinstance(key, numbers.Integral) or key < 0:
        raise ValueError(f"a stream key must be an integer >= 0 or a string, got {key!r}")
    return int(key)


def stream_seed(seed, purpose: str, *key) -> int:
    """The 63-bit seed of the stream (seed, purpose, *key): equal arguments give equal seeds, and a
    different purpose or key gives another stream (SeedSequence hashes its whole entropy)."""
    seed = check_seed(seed)
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    entropy = [_TAG, seed, PURPOSES.index(purpose), len(key), *(_word(k) for k in key)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(seed, purpose: str, *key, device=None) -> torch.Generator:
    """A torch.Generator on `device` (default CPU) for the stream (seed, purpose, *key)."""
    device = torch.device("cpu" if device is None else device)
    return torch.Generator(device=device).manual_seed(stream_seed(seed, purpose, *key))


def numpy_generator(seed, purpose: str, *key) -> np.random.Generator:
    """A numpy Generator for the stream (seed, purpose, *key)."""
    return np.random.default_rng(stream_seed(seed, purpose, *key))


def certify_generators(seed, *key, device=None) -> tuple[torch.Generator, torch.Generator]:
    """The (select, estimate) pair of streams for one CERTIFY call on the input named by `key`."""
    return (generator(seed, "select", *key, device=device), generator(seed, "estimate", *key, device=device))


def seed_global(seed, purpose: str, *key) -> None:
    """Seed torch's global generator with the stream (seed, purpose, *key), for the draws torch makes
    only from it (module initialisation, torchvision's random transforms)."""
    torch.manual_seed(stream_seed(seed, purpose, *key))


@contextmanager
def seeded_global(seed, purpose: str, *key):
    """`seed_global` for the body only: torch's global generator is restored afterwards."""
    state = torch.random.get_rng_state()
    seed_global(seed, purpose, *key)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
