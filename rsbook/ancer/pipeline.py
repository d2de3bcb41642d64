"""The RANCER thesis's experiment as a resumable library call (Rumezhak 2022, Sec. 5.5-5.7).

`run_methods` certifies a set of inputs with the four methods of Tables 5.1-5.6:

  Fixed      Cohen et al.'s CERTIFY at one global sigma (a ball)
  Isotropic  DDS: sigma optimised per input (rsbook.ancer.anisotropic.optimize_isotropic), then CERTIFY (a ball)
  ANCER      diagonal sigma optimised from the DDS sigma (optimize_ancer): an axis-aligned ellipsoid
  RANCER     rotated sigma from the DDS sigma and the Hessian's eigenvectors (optimize_rancer): a
             rotated ellipsoid

in chunks of `chunk_size` inputs, into a run folder root/anisotropic/<label>-<digest> with one TSV per
method (one row per input, appended as it is certified) and one file per method and chunk holding the
optimised parameters (sigma, rotation) and the optimisation trace. Re-running the call with the same
parameters resumes: finished chunks are read back, a chunk whose parameters are on disk is only
certified. Every chunk's optimisation draws from the stream (seed, 'optimise', method, chunk start)
and every input's certification from the streams (seed, 'select' / 'estimate', method, index)
(rsbook.streams), so a resumed run writes the same rows and the noise that chose sigma is never the
noise that certifies it. `AnisotropicRun` reads the results back, builds the certified regions and applies
memory-based certification (rsbook.ancer.memory).

Under torch.distributed (a process group of K > 1 processes, rsbook.distributed) the chunks still
having work are dealt out whole, rank r taking every K-th of them (pending[r::K]), so every chunk's
optimisation and every input's certification draw from the same streams as with one process: K
processes write the rows one process writes. Each rank appends its rows to its own shard
`<method>.tsv.part<r>` and writes its chunks' parameter files (distinct per chunk, written
atomically); after a barrier rank 0 folds the shards into `<method>.tsv` in input order and removes
them. Rank 0 alone begins and finishes the manifest, and a refusal there is raised on every rank.
Resuming: shards left by a killed run hold finished rows (the streams make them the rows a rerun
would write), so rank 0 folds them in before the work is dealt out, whatever the number of
processes now.

The image run also has a command line, `python -m rsbook.ancer.pipeline certify-image ...` (main),
under `torchrun --standalone --nproc_per_node=K -m rsbook.ancer.pipeline -- certify-image ...` one
process per device: it loads a trained checkpoint, draws the test inputs image_experiment draws
(image_examples) and calls run_methods, so the chapter's own call later finds every chunk done.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rsbook import distributed, streams
from rsbook._checks import (
    check_alpha,
    check_checkpoint,
    check_num_classes,
    check_output_path,
    check_positive_int,
    check_seed,
    check_sigma,
)
from rsbook._io import atomic_write
from rsbook.ancer.anisotropic import (
    ABSTAIN,
    certify,
    check_options,
    optimize_ancer,
    optimize_isotropic,
    optimize_rancer,
)
from rsbook.ancer.curvature import Rotation
from rsbook.ancer.memory import (
    MEMORY_STATUSES,
    Region,
    memory_certify,
    region_conflicts,
)
from rsbook.ancer.metrics import accuracy_table, acr_table, average_radius_improvement
from rsbook.logs import ResultsTable, begin_run, finish_manifest, fold_shards, run_folder, table_keys
from rsbook.progress import track

__all__ = ["METHODS", "RESULT_COLUMNS", "CONFIG", "cpu_threads", "run_methods", "AnisotropicRun",
           "thesis_config", "thesis_settings", "toy_experiment", "released_toy", "image_experiment",
           "image_examples", "processing_order", "pick_examples", "soundness_table", "IMAGE_SETTINGS",
           "image_run_folder", "certify_image", "main"]

CONFIG = "tarasrumezhak/RANCER/pipeline_2D/config.json"
"""The authors' released hyper-parameters of the thesis's 2-D pipeline (a pinned artifact)."""

METHODS = ("Fixed", "Isotropic", "ANCER", "RANCER")
RESULT_COLUMNS = ("idx", "label", "prediction", "correct", "p_a_lower", "gap", "radius", "proxy_radius", "sigma_min",
                  "sigma_max", "sigma_geometric_mean", "optimize_seconds", "certify_seconds")


@contextmanager
def cpu_threads(count: int | None):
    """Run the body with torch limited to `count` CPU threads (None: leave the setting alone), then
    restore it. Small models on a busy CPU run several times faster on one thread than on two that
    wait for each other at every operation."""
    if count is None:
        yield
        return
    check_positive_int(count, "num_threads")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _chunk_path(folder: Path, method: str, start: int) -> Path:
    return folder / "parameters" / f"{method}-{start:06d}.pt"


def _optimize(method: str, model, x, iso_sigma, settings: dict, generator):
    if method == "Isotropic":
        return optimize_isotropic(model, x, settings["sigma0"], generator=generator, **settings["iso"])
    if method == "ANCER":
        return optimize_ancer(model, x, iso_sigma, generator=generator, **settings["ancer"])
    return optimize_rancer(model, x, iso_sigma, generator=generator, **settings["rancer"])


def _chunk_parameters(folder, method, start, model, x, settings, seed, device) -> dict:
    """The optimised parameters of one chunk: read back if on disk, else computed and saved."""
    path = _chunk_path(folder, method, start)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=False)
    if method == "Fixed":
        saved = {"sigma": torch.full((len(x),), float(settings["fixed_sigma"])), "rotation": None, "trace": None,
                 "eigenvalues": None, "optimize_seconds": 0.0}
    else:
        iso = None
        if method in ("ANCER", "RANCER"):
            iso = torch.load(_chunk_path(folder, "Isotropic", start), map_location="cpu",
                             weights_only=False)["sigma"].to(device)
        _sync(device)
        started = time.perf_counter()
        result = _optimize(method, model, x, iso, settings, streams.generator(seed, "optimise", method, start,
                                                                               device=device))
        _sync(device)
        elapsed = time.perf_counter() - started
        saved = {"sigma": result.sigma.cpu(), "rotation": None if result.rotation is None else result.rotation.state(),
                 "eigenvalues": None if result.eigenvalues is None else result.eigenvalues.cpu(),
                 "trace": {name: values for name, values in result.trace.items()}, "optimize_seconds": elapsed}
    with atomic_write(path, "wb") as out:
        torch.save(saved, out)
    return saved


def _chunk_todo(folder, start, stop, method, done, indices) -> list | None:
    """The positions of start..stop-1 that `method` has still to certify (keys not in `done`), or None
    when the method has nothing to do in the chunk (Isotropic also needs its parameters on disk, which
    ANCER and RANCER start from)."""
    todo = [p for p in range(start, stop) if int(indices[p]) not in done]
    if not todo and (method != "Isotropic" or _chunk_path(folder, method, start).exists()):
        return None
    return todo


def _run_chunk(folder, start, stop, methods, tables, model, inputs, labels, indices, settings, *, num_classes, n0,
               n, alpha, batch_size, seed, device):
    """Optimise (or read back) and certify the inputs start..stop-1 with every method."""
    x = inputs[start:stop]
    for method in methods:
        todo = _chunk_todo(folder, start, stop, method, tables[method].done, indices)
        if todo is None:
            continue
        saved = _chunk_parameters(folder, method, start, model, x, settings, seed, device)
        rotation = None if saved["rotation"] is None else Rotation.from_state(saved["rotation"], device)
        rows = []
        for position in todo:
            local = position - start
            sigma = saved["sigma"][local].to(device)
            one_rotation = None if rotation is None else rotation[local]
            select, estimate = streams.certify_generators(seed, method, int(indices[position]), device=device)
            _sync(device)
            started = time.perf_counter()
            result = certify(model, inputs[position], float(sigma) if sigma.dim() == 0 else sigma, one_rotation,
                             num_classes=num_classes, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                             generator=select, estimate_generator=estimate)
            _sync(device)
            flat = sigma.double().reshape(-1)
            rows.append({"idx": int(indices[position]), "label": int(labels[position]),
                         "prediction": result.prediction, "correct": int(result.prediction == labels[position]),
                         "p_a_lower": result.p_a_lower, "gap": result.gap, "radius": result.radius,
                         "proxy_radius": result.proxy_radius, "sigma_min": float(flat.min()),
                         "sigma_max": float(flat.max()), "sigma_geometric_mean": float(torch.exp(flat.log().mean())),
                         "optimize_seconds": saved["optimize_seconds"] / len(x),
                         "certify_seconds": time.perf_counter() - started})
        tables[method].append(rows)


def _fold_shards(folder: Path, methods, indices) -> None:
    """Fold the shards <method>.tsv.part<rank> of a distributed run into <method>.tsv in input order
    (rsbook.logs.fold_shards: one row per input, torn last lines dropped, shards removed)."""
    position = {int(idx): p for p, idx in enumerate(indices)}
    for method in methods:
        fold_shards(folder / f"{method}.tsv", RESULT_COLUMNS, order=lambda idx: position.get(idx, len(position)))


def _begin(folder: Path, parameters: dict, seed, device, methods, indices, starts, chunk_size: int) -> list[int]:
    """Rank 0's start of a run: begin (or resume) the manifest, repair each method's table and fold in
    the shards a killed distributed run left; return the starts of the chunks that still have work."""
    begin_run(folder, parameters, seed=seed, device=device)
    for method in methods:
        ResultsTable(folder / f"{method}.tsv", RESULT_COLUMNS)  # creates it, or drops a torn last row
    _fold_shards(folder, methods, indices)
    done = {m: table_keys(folder / f"{m}.tsv", RESULT_COLUMNS) for m in methods}
    return [start for start in starts
            if any(_chunk_todo(folder, start, min(start + chunk_size, len(indices)), m, done[m], indices) is not None
                   for m in methods)]


def _finish(folder: Path, methods, indices) -> None:
    _fold_shards(folder, methods, indices)
    finish_manifest(folder)


def _parameters(model_id: str, num_classes: int, indices, labels, *, fixed_sigma, sigma0, iso, ancer, rancer, n0, n,
                alpha, batch_size, chunk_size) -> tuple[dict, dict]:
    """(the optimisers' settings, the parameters run_methods records and its run folder's digest covers)."""
    settings = {"fixed_sigma": float(fixed_sigma), "sigma0": float(sigma0), "iso": dict(iso), "ancer": dict(ancer),
                "rancer": dict(rancer)}
    if "clip_sigma" in settings["rancer"]:
        settings["rancer"]["clip_sigma"] = tuple(settings["rancer"]["clip_sigma"])
    parameters = {"model": model_id, "num_classes": int(num_classes), **settings, "n0": int(n0), "n": int(n),
                  "alpha": float(alpha), "batch_size": int(batch_size), "chunk_size": int(chunk_size),
                  "indices": [int(i) for i in indices], "labels": [int(v) for v in labels]}
    return settings, parameters


def _check_run(root, label, methods, *, num_classes, fixed_sigma, sigma0, iso, ancer, rancer, n0, n, alpha,
               batch_size, chunk_size, seed, num_threads) -> None:
    """run_methods's arguments, checked before its run folder is begun (ValueError naming the bad one)."""
    check_output_path(root, "root", folder=True)
    if not isinstance(label, str) or label in ("", ".", "..") or Path(label).name != label:
        raise ValueError(f"label must be a plain name for the run folder (no path separators), got {label!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {list(METHODS)}, got {list(methods)!r}")
    check_num_classes(num_classes)
    check_sigma(fixed_sigma, "fixed_sigma"), check_sigma(sigma0, "sigma0")
    for name, method, options in (("iso", "Isotropic", iso), ("ancer", "ANCER", ancer), ("rancer", "RANCER", rancer)):
        if method in methods:
            try:
                check_options(method, dict(options))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{name}, the {method} optimiser's settings: {err}") from None
    check_positive_int(n0, "n0"), check_positive_int(n, "n"), check_alpha(alpha)
    check_positive_int(batch_size, "batch_size"), check_positive_int(chunk_size, "chunk_size"), check_seed(seed)
    if num_threads is not None:
        check_positive_int(num_threads, "num_threads")


def run_methods(root, label: str, model, inputs, labels, *, num_classes: int, fixed_sigma: float, sigma0: float,
                iso: dict, ancer: dict, rancer: dict, n0: int, n: int, alpha: float, batch_size: int,
                indices=None, chunk_size: int = 64, seed: int = 0, methods=METHODS, model_id: str = "",
                device=None, num_threads: int | None = None, progress: bool = False) -> "AnisotropicRun":
    """Optimise and certify `inputs` (shape (N, *input_shape), true `labels` (N,)) with each method of
    `methods` (a subset of METHODS, in that order; ANCER and RANCER need Isotropic), resumably.

    fixed_sigma: Fixed's sigma. sigma0: DDS's initial sigma. iso, ancer, rancer: keyword arguments of
    optimize_isotropic / optimize_ancer / optimize_rancer (iterations, learning_rate, num_samples,
    kappa, clip_sigma, rank, ...). n0, n, alpha, batch_size: CERTIFY's. indices: dataset indices of
    the inputs (the idx column; default 0..N-1). model_id: names the model in the run's parameters
    (e.g. its checkpoint path), so another model gets another run folder.
    Optimisation time per input is the chunk's time divided by its size (the optimisers work on a
    whole chunk at once); certification time is measured per input. num_threads: torch CPU threads
    while it runs (see cpu_threads; None leaves the setting alone).
    Under a torch.distributed process group every rank calls it with the same arguments and gets the
    chunks pending[rank::world] (see the module docstring; a CUDA device is the rank's own GPU,
    rsbook.distributed.local_device); every rank returns once the folded tables are on disk.
    Every argument (each optimiser's settings included: anisotropic.check_options) is checked before the
    run folder is begun: a refused one (ValueError naming it) leaves nothing behind.
    """
    _check_run(root, label, list(methods), num_classes=num_classes, fixed_sigma=fixed_sigma, sigma0=sigma0, iso=iso,
               ancer=ancer, rancer=rancer, n0=n0, n=n, alpha=alpha, batch_size=batch_size, chunk_size=chunk_size,
               seed=seed, num_threads=num_threads)
    device = distributed.local_device(device)
    methods = [m for m in METHODS if m in methods]
    if any(m in methods for m in ("ANCER", "RANCER")) and "Isotropic" not in methods:
        raise ValueError("methods ANCER and RANCER start from the Isotropic (DDS) sigma: include 'Isotropic'")
    inputs = torch.as_tensor(inputs).to(device)
    labels = np.asarray(labels, dtype=int)
    indices = np.arange(len(inputs)) if indices is None else np.asarray(indices, dtype=int)
    if not len(inputs) == len(labels) == len(indices):
        raise ValueError(f"inputs, labels and indices must have the same length, got {len(inputs)}, {len(labels)}, "
                         f"{len(indices)}")
    settings, parameters = _parameters(model_id, num_classes, indices, labels, fixed_sigma=fixed_sigma, sigma0=sigma0,
                                       iso=iso, ancer=ancer, rancer=rancer, n0=n0, n=n, alpha=alpha,
                                       batch_size=batch_size, chunk_size=chunk_size)
    folder = run_folder(root, "anisotropic", label, {**parameters, "seed": int(seed)})
    rank, world = distributed.rank_world()
    starts = list(range(0, len(inputs), int(chunk_size)))
    pending = distributed.on_rank_zero(_begin, folder, parameters, seed, device, methods, indices, starts,
                                       int(chunk_size))
    if world == 1:
        tables = {m: ResultsTable(folder / f"{m}.tsv", RESULT_COLUMNS) for m in methods}
    else:  # rows go to this rank's shards; the folded tables tell what is done
        tables = {m: ResultsTable(folder / f"{m}.tsv.part{rank}", RESULT_COLUMNS) for m in methods}
        for method in methods:
            tables[method].done |= table_keys(folder / f"{method}.tsv", RESULT_COLUMNS)
    with cpu_threads(num_threads):
        for start in track(pending[rank::world], label if world == 1 else f"{label} [rank {rank}]", unit="chunk",
                           disable=not progress, position=rank if world > 1 else None):
            _run_chunk(folder, start, min(start + int(chunk_size), len(inputs)), methods, tables, model, inputs, labels,
                       indices, settings, num_classes=num_classes, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                       seed=seed, device=device)
    distributed.barrier()  # every shard complete before rank 0 folds them
    distributed.on_rank_zero(_finish, folder, methods, indices)  # and no rank returns before the tables are whole
    return AnisotropicRun(folder, inputs.cpu(), methods, chunk_size=int(chunk_size))


@dataclass
class AnisotropicRun:
    """The results of run_methods in `folder`: per-method results frames, the optimised parameters,
    the certified regions, memory-based certification and the thesis's tables."""

    folder: Path
    inputs: torch.Tensor
    methods: list
    chunk_size: int

    def __post_init__(self):
        self._memory: dict = {}

    def results(self, method: str) -> pd.DataFrame:
        """The method's rows (RESULT_COLUMNS), in input order (whatever order a resumed run appended them in)."""
        frame = pd.read_csv(self.folder / f"{method}.tsv", sep="\t")
        indices = json.loads((self.folder / "manifest.json").read_text())["parameters"]["indices"]
        position = {int(idx): p for p, idx in enumerate(indices)}
        if sorted(frame["idx"].map(position).tolist()) != list(range(len(indices))):
            raise ValueError(f"{self.folder / f'{method}.tsv'} does not hold one row per input; rerun run_methods "
                             "with the same arguments to complete it")
        return frame.iloc[np.argsort(frame["idx"].map(position).to_numpy())].reset_index(drop=True)

    def all_results(self, memory: bool = False, order=None) -> dict:
        """{method: results frame}, before or (memory=True) after memory-based certification in `order`."""
        return {m: (self.with_memory(m, order)[0] if memory else self.results(m)) for m in self.methods}

    def _chunk(self, method: str, start: int) -> dict:
        return torch.load(_chunk_path(self.folder, method, start), map_location="cpu", weights_only=False)

    def _chunks(self, method: str) -> list[dict]:
        return [self._chunk(method, start) for start in range(0, len(self.inputs), self.chunk_size)]

    def parameters(self, method: str) -> tuple[torch.Tensor, Rotation | None]:
        """(sigma of every input, stacked; the batch of rotations or None)."""
        chunks = self._chunks(method)
        sigma = torch.cat([c["sigma"] for c in chunks])
        if chunks[0]["rotation"] is None:
            return sigma, None
        rotations = [Rotation.from_state(c["rotation"]) for c in chunks]
        return sigma, Rotation(torch.cat([r.reflectors for r in rotations]), torch.cat([r.tau for r in rotations]),
                               torch.cat([r.signs for r in rotations]))

    def trace(self, method: str, positions) -> pd.DataFrame:
        """The optimisation traces (rsbook.ancer.anisotropic.TRACE_QUANTITIES per iteration) of the inputs at
        `positions`, long format with a `position` column."""
        frames, chunks = [], {}
        for position in positions:
            start = position - position % self.chunk_size
            if start not in chunks:
                chunks[start] = self._chunk(method, start)
            chunk = chunks[start]
            local = position - start
            columns = {name: values[:, local].numpy() for name, values in chunk["trace"].items()}
            steps = len(next(iter(columns.values())))
            frames.append(pd.DataFrame({"iteration": np.arange(steps), "position": position, **columns}))
        return pd.concat(frames, ignore_index=True)

    def regions(self, method: str) -> list:
        """The certified region of every input (rsbook.ancer.memory.Region; None where CERTIFY abstained)."""
        frame = self.results(method)
        sigma, rotation = self.parameters(method)
        regions = []
        for position, row in enumerate(frame.itertuples()):
            if row.prediction == ABSTAIN:
                regions.append(None)
                continue
            scale = sigma[position].double().reshape(-1).numpy()
            scale = float(scale[0]) if scale.size == 1 else scale
            regions.append(Region(self.inputs[position].double().reshape(-1).numpy(), int(row.prediction),
                                  float(row.gap), scale, None if rotation is None else rotation[position]))
        return regions

    def with_memory(self, method: str, order=None) -> tuple[pd.DataFrame, list, float]:
        """Memory-based certification (Algorithm 1) of the method's regions in `order` (positions; default
        input order): (results frame with prediction, correct, radius and proxy_radius after memory plus
        the memory status, the final regions, seconds it took)."""
        key = (method, None if order is None else tuple(int(i) for i in order))
        if key not in self._memory:
            regions = self.regions(method)
            started = time.perf_counter()
            final, memory = memory_certify(regions, order)
            self._memory[key] = (final, memory, time.perf_counter() - started)
        final, memory, elapsed = self._memory[key]
        frame = self.results(method)
        out = frame.copy()
        out["prediction"] = memory["prediction"].to_numpy()
        out["correct"] = (out["prediction"] == out["label"]).astype(int)
        out["radius"] = memory["radius"].to_numpy()
        out["proxy_radius"] = memory["proxy_radius"].to_numpy()
        out["memory_status"] = memory["status"].to_numpy()
        return out, final, elapsed

    def tables(self, radii, memory: bool = True, order=None, rename: dict | None = None) -> dict:
        """The thesis's tables on this run: 'radius' and 'proxy' (certified accuracy by radius and by proxy
        radius, Tables 5.1/5.3 and 5.2/5.4) and 'acr' (Table 5.5); `rename` maps method names to the
        table's row names (e.g. {'Isotropic': 'DDS'} for Tables 5.3-5.5)."""
        results = {(rename or {}).get(m, m): frame for m, frame in self.all_results(memory, order).items()}
        return {"radius": accuracy_table(results, radii, "radius"), "proxy": accuracy_table(results, radii,
                                                                                             "proxy_radius"),
                "acr": acr_table(results)}

    def improvement(self, method: str = "RANCER", reference: str = "ANCER", memory: bool = True, order=None) -> dict:
        """ARI and proxy ARI of `method` over `reference` (Sec. 5.2, 5.6)."""
        ours = self.with_memory(method, order)[0] if memory else self.results(method)
        theirs = self.with_memory(reference, order)[0] if memory else self.results(reference)
        return {"ARI": average_radius_improvement(ours, theirs, "radius"),
                "ARI_proxy": average_radius_improvement(ours, theirs, "proxy_radius")}

    def timing(self, order=None) -> pd.DataFrame:
        """Mean seconds per input for each method: optimisation, certification, memory-based
        certification, and the total of the pipeline (ANCER and RANCER include the DDS step they start from)."""
        rows = {}
        for method in self.methods:
            frame = self.results(method)
            _, _, memory_seconds = self.with_memory(method, order)
            rows[method] = {"optimize": float(frame["optimize_seconds"].mean()),
                            "certify": float(frame["certify_seconds"].mean()),
                            "memory": memory_seconds / len(frame)}
        for method in ("ANCER", "RANCER"):
            if method in rows and "Isotropic" in rows:
                rows[method]["optimize"] += rows["Isotropic"]["optimize"]
        table = pd.DataFrame(rows).T
        table["total"] = table.sum(axis=1)
        table.index.name, table.columns.name = "method", "seconds per input"
        return table


# ------------------------------------------------------------------------------ experiment set-ups


def thesis_config() -> dict:
    """The thesis's 2-D pipeline hyper-parameters, config.json of tarasrumezhak/RANCER (fetched and
    verified against its pinned SHA-256): initial_theta, iso_learning_rate, iso_iterations,
    iso_num_samples, rancer_learning_rate, rancer_iterations, rancer_num_samples,
    rancer_regularization_weight, alpha, N, N0, ..."""
    from rsbook.published import fetch

    return json.loads(fetch(CONFIG).read_text())


_CONFIG_KEYS = ("initial_theta", "iso_learning_rate", "iso_iterations", "iso_num_samples", "rancer_learning_rate",
                "rancer_iterations", "rancer_num_samples", "rancer_regularization_weight", "alpha", "N", "N0")


def thesis_settings(config: dict, overrides: dict | None = None, clip_sigma=(0.15, 0.15), rank=None,
                    batch_size: int = 10000) -> dict:
    """Keyword arguments of run_methods from the thesis's config.json names, with `overrides` (same
    names) replacing some: fixed_sigma and sigma0 = initial_theta; iso = iso_learning_rate /
    iso_iterations / iso_num_samples; ancer and rancer = rancer_learning_rate / rancer_iterations /
    rancer_num_samples / rancer_regularization_weight (kappa; ANCER's settings, which the authors' 2-D
    pipeline also uses for ANCER), plus RANCER's clip_sigma and rank; n0 = N0, n = N, alpha."""
    merged = {**config, **(overrides or {})}
    unknown = sorted(set(overrides or {}) - set(_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"overrides may only name {_CONFIG_KEYS}, got {unknown}")
    missing = [k for k in _CONFIG_KEYS if k not in merged]
    if missing:
        raise ValueError(f"config lacks {missing}")
    volume = {"iterations": int(merged["rancer_iterations"]), "learning_rate": float(merged["rancer_learning_rate"]),
              "num_samples": int(merged["rancer_num_samples"]), "kappa": float(merged["rancer_regularization_weight"])}
    return {"fixed_sigma": float(merged["initial_theta"]), "sigma0": float(merged["initial_theta"]),
            "iso": {"iterations": int(merged["iso_iterations"]), "learning_rate": float(merged["iso_learning_rate"]),
                    "num_samples": int(merged["iso_num_samples"])},
            "ancer": dict(volume), "rancer": {**volume, "clip_sigma": tuple(clip_sigma), "rank": rank},
            "n0": int(merged["N0"]), "n": int(merged["N"]), "alpha": float(merged["alpha"]),
            "batch_size": int(batch_size)}


def toy_experiment(kind: str, n_points: int, n_classes: int, *, test_fraction: float = 0.2, epochs: int = 1000,
                   seed: int = 0) -> dict:
    """A seeded toy set (rsbook.ancer.toy.make_toy), split, and the thesis's shallow classifier trained on
    its training part (seconds; deterministic, so it is recomputed rather than stored). Returns
    {model, train: (points, labels), test: (points, labels), model_id}."""
    from rsbook.ancer.toy import make_toy, train_test_split, train_toy_classifier

    points, labels = make_toy(kind, n_points, n_classes, seed=seed)
    train, test = train_test_split(points, labels, test_fraction, seed=seed)
    model = train_toy_classifier(*train, n_classes, epochs=epochs, seed=seed)
    return {"model": model, "train": train, "test": test,
            "model_id": f"toy2d:{kind}:{n_points}:{n_classes}:{test_fraction}:{epochs}:{seed}"}


def released_toy(skip: int = 1) -> dict:
    """The thesis's released 2-D test set (236 points, every `skip`-th kept) and its released
    Linear(2, 3) -> tanh -> Linear(3, 2) classifier. Returns {model, test: (points, labels), indices, model_id}."""
    from rsbook.data import load_dataset
    from rsbook.models import load_checkpoint
    from rsbook.published import fetch

    name = "tarasrumezhak/RANCER/pipeline_2D/weights/model_weights.pth"
    model, _ = load_checkpoint(fetch(name), 2, arch="rancer_mlp")
    data = load_dataset("rancer_toy", "test")
    indices = np.arange(0, len(data), int(skip))
    return {"model": model, "test": (data.x[indices].numpy(), data.labels[indices].numpy()), "indices": indices,
            "model_id": name}


def _draw_examples(dataset: str, num_examples: int, seed: int):
    """(the test split of `dataset`, the indices of `num_examples` inputs drawn uniformly without
    replacement from the stream (seed, 'subsample', 'examples'), in index order)."""
    from rsbook.data import load_dataset

    data = load_dataset(dataset, "test")
    count = min(int(num_examples), len(data))
    return data, np.sort(streams.numpy_generator(seed, "subsample", "examples").choice(len(data), count, replace=False))


def image_examples(checkpoint, dataset: str, arch: str | None, num_examples: int, *, seed: int = 0,
                   device=None) -> dict:
    """The trained classifier in `checkpoint` (rsbook.models.load_checkpoint; `arch`, when given, must
    be the checkpoint's) and `num_examples` test inputs of `dataset` drawn uniformly without
    replacement from the stream (seed, 'subsample', 'examples'), in index order (also the memory
    order). Returns {model, test: (inputs, labels), indices, model_id (the checkpoint)}."""
    from rsbook.data import num_classes
    from rsbook.models import load_checkpoint

    check_positive_int(num_examples, "num_examples"), check_seed(seed)
    check_checkpoint(checkpoint)
    model, _ = load_checkpoint(checkpoint, num_classes(dataset), arch=arch, device=device, dataset=dataset)
    data, indices = _draw_examples(dataset, num_examples, seed)
    inputs = torch.stack([data[int(i)][0] for i in indices])
    labels = np.array([data[int(i)][1] for i in indices])
    return {"model": model, "test": (inputs, labels), "indices": indices, "model_id": str(checkpoint)}


def image_run_folder(root, dataset: str, checkpoint, num_examples: int, settings: dict, *, chunk_size: int = 64,
                     seed: int = 0, label: str | None = None) -> Path:
    """The run folder run_methods writes for the image run of image_examples(checkpoint, dataset, ...,
    num_examples, seed=seed) with run_methods's keyword `settings` (IMAGE_SETTINGS), found without
    loading the model (the test labels are read)."""
    from rsbook.data import num_classes

    data, indices = _draw_examples(dataset, num_examples, seed)
    labels = [data[int(i)][1] for i in indices]
    _, parameters = _parameters(str(checkpoint), num_classes(dataset), indices, labels, chunk_size=chunk_size,
                                **settings)
    return run_folder(root, "anisotropic", label or dataset, {**parameters, "seed": int(seed)})


def image_experiment(root, dataset: str, arch: str, train_sigma: float, epochs: int, num_examples: int, *,
                     seed: int = 0, device=None, num_threads: int | None = None, **train_kwargs) -> dict:
    """Train (resumably, rsbook.train.train_models) a base classifier on `dataset` with Gaussian
    noise train_sigma and draw `num_examples` test inputs (image_examples). arch 'cifar_resnet18' is
    the thesis's ResNet-18 (rsbook.models). num_threads: torch CPU threads while training (see
    cpu_threads). Returns {model, test: (inputs, labels), indices, model_id (the checkpoint)}."""
    from rsbook.train import train_models

    with cpu_threads(num_threads):
        checkpoint = train_models(root, dataset, arch, [train_sigma], epochs=epochs, seed=seed, device=device,
                                  **train_kwargs)[float(train_sigma)]
    return image_examples(checkpoint, dataset, arch, num_examples, seed=seed, device=device)


def processing_order(count: int, seed=None):
    """The order in which memory-based certification processes the inputs: None (their given order)
    when seed is None, else a seeded random permutation of range(count)."""
    return None if seed is None else streams.numpy_generator(seed, "subsample", "order").permutation(int(count))


def pick_examples(run: "AnisotropicRun", count: int, methods=("Isotropic", "ANCER", "RANCER")) -> list[int]:
    """Positions of `count` inputs to draw: among those every method in `methods` certified correctly,
    the ones whose RANCER region is most elongated (largest max/min sigma), a property of the
    results, not a choice by hand."""
    frames = [run.results(m) for m in methods]
    ok = np.logical_and.reduce([f["correct"].to_numpy() == 1 for f in frames])
    reference = run.results("RANCER") if "RANCER" in run.methods else frames[-1]
    elongation = (reference["sigma_max"] / reference["sigma_min"]).to_numpy()
    candidates = np.flatnonzero(ok)
    chosen = candidates[np.argsort(-elongation[candidates], kind="stable")[:count]]
    return sorted(int(c) for c in chosen)


def soundness_table(run: "AnisotropicRun", order=None) -> pd.DataFrame:
    """Per method: pairs of certified regions of different classes that intersect before and after
    memory-based certification (rsbook.ancer.memory.region_conflicts), and how many inputs memory kept,
    shrank or abstained on."""
    rows = {}
    for method in run.methods:
        frame, final, _ = run.with_memory(method, order)
        counts = frame["memory_status"].value_counts()
        rows[method] = {"conflicts before memory": len(region_conflicts(run.regions(method))),
                        "conflicts after memory": len(region_conflicts(final)),
                        **{status: int(counts.get(status, 0)) for status in MEMORY_STATUSES}}
    table = pd.DataFrame(rows).T
    table.index.name = "method"
    return table


# ------------------------------------------------------------------------------------ command line

IMAGE_SETTINGS = ("fixed_sigma", "sigma0", "iso", "ancer", "rancer", "n0", "n", "alpha", "batch_size")
"""The keys of certify-image's --settings: run_methods's keyword settings (the chapter's image_settings)."""


def _command_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rsbook.ancer.pipeline",
                                     description="The ANCER chapter's image run (run_methods); under `torchrun "
                                     "--nproc_per_node=K -m rsbook.ancer.pipeline -- certify-image ...`, its chunks "
                                     "shared among K processes.")
    commands = parser.add_subparsers(dest="command", required=True)
    image = commands.add_parser("certify-image", help="optimise sigma and CERTIFY the drawn test inputs with each "
                                "method into the run folder run_methods uses (resumable), printing it")
    image.add_argument("--checkpoint", required=True, type=Path, help="the trained classifier (`rsbook train`)")
    image.add_argument("--dataset", required=True, help="dataset name (rsbook.data.DATASETS)")
    image.add_argument("--arch", help="architecture, checked against the checkpoint's (default: the checkpoint's)")
    image.add_argument("--num-examples", type=int, required=True, help="test inputs drawn (image_examples)")
    image.add_argument("--settings", required=True,
                       help=f"run_methods's settings as a JSON object with keys {', '.join(IMAGE_SETTINGS)}")
    image.add_argument("--chunk-size", type=int, default=64, help="inputs optimised together (default 64)")
    image.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                       help="methods to run (default: all four)")
    image.add_argument("--seed", type=int, default=0, help="seed of the drawing, the optimisation and CERTIFY")
    image.add_argument("--label", help="the run folder's label (default: the dataset)")
    image.add_argument("--root", required=True, type=Path, help="runs root: the run folder is "
                       "<root>/anisotropic/<label>-<digest>")
    image.add_argument("--device", default="cpu", help="torch device (default cpu; cuda: one GPU per process)")
    image.add_argument("--num-threads", type=int, help="torch CPU threads (default: leave torch's setting)")
    image.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")
    return parser


def _image_settings(text: str) -> dict:
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--settings must be a JSON object, got {text!r} ({err})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--settings must be a JSON object with keys {list(IMAGE_SETTINGS)}, got {text!r}")
    missing, unknown = [k for k in IMAGE_SETTINGS if k not in settings], sorted(set(settings) - set(IMAGE_SETTINGS))
    if missing or unknown:
        raise ValueError(f"--settings must have exactly the keys {list(IMAGE_SETTINGS)}"
                         + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
    return settings


def certify_image(checkpoint, dataset: str, num_examples: int, settings: dict, *, root, arch: str | None = None,
                  chunk_size: int = 64, methods=METHODS, seed: int = 0, label: str | None = None, device=None,
                  num_threads: int | None = None, progress: bool = False) -> "AnisotropicRun":
    """The chapter's in-process image run as one call: image_examples(checkpoint, ...) then run_methods
    into root/anisotropic/<label>-<digest> with model_id the checkpoint, so the chapter's own call with the
    same settings finds the same run folder (finished once its manifest.json has its end time)."""
    from rsbook.data import num_classes

    device = distributed.local_device(device)
    data = image_examples(checkpoint, dataset, arch, num_examples, seed=seed, device=device)
    run = run_methods(root, label or dataset, data["model"], *data["test"], indices=data["indices"],
                      num_classes=num_classes(dataset), model_id=data["model_id"], chunk_size=chunk_size, seed=seed,
                      methods=methods, device=device, num_threads=num_threads, progress=progress, **settings)
    return run


def main(argv=None) -> int:
    """`python -m rsbook.ancer.pipeline certify-image --checkpoint CKPT --dataset D --num-examples N
    --settings JSON --root ROOT [--chunk-size --seed --label --methods --device --num-threads]`:
    certify_image from the command line, printing the run folder. Under `torchrun --nproc_per_node=K -m
    rsbook.ancer.pipeline -- certify-image ...` the processes join a process group
    (rsbook.distributed.join; gloo on the CPU, NCCL with cuda:LOCAL_RANK per process) and share the
    chunks (run_methods). A refused input (a missing checkpoint, bad --settings) exits with status 2 and
    one line `rsbook.ancer certify-image: error: ...` on standard error (naming the flag, or the key of
    --settings), having written nothing."""
    args = vars(_command_parser().parse_args(argv))
    command = args.pop("command")
    flags = distributed.command_flags(args, **{key: f"{key} (in --settings)" for key in IMAGE_SETTINGS})

    def work():
        settings = _image_settings(args.pop("settings"))
        return certify_image(args.pop("checkpoint"), args.pop("dataset"), args.pop("num_examples"), settings,
                             **args).folder

    return distributed.run_command(f"rsbook.ancer {command}", args["device"], work, flags)


if __name__ == "__main__":
    import sys

    sys.exit(main())
