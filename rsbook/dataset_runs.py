"""CERTIFY or PREDICT every selected example of a dataset into a resumable log.

Examples are selected as in the authors' certify.py: index i is used when i % skip == 0 and
(max_index < 0 or i < max_index). Each example gets its own noise streams, seeded from (seed, i)
(rsbook.streams: 'select' and 'estimate' for CERTIFY, 'predict' for PREDICT), so a row does not
depend on which process or which resume computed it. Rows are appended and
flushed one by one; rerunning the same command skips the rows already in the log, and rerunning
with a larger max_index appends only the missing ones. Each log has its own manifest,
`<log>.manifest.json` (rsbook.logs.begin_log), so several logs and a training run can share a folder;
a log is immutable: resuming it with other parameters is refused, naming them.

Under torch.distributed (e.g. `torchrun --nproc_per_node=K -m rsbook certify ...`) rank r takes
every K-th example still missing, writes it to the shard `<log>.part<r>`, and rank 0 merges the
shards into the log in index order: the same rows as a single process, for the same seed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from rsbook import streams
from rsbook._checks import check_alpha, check_max_index, check_output_path, check_positive_int, check_seed
from rsbook.logs import LogWriter, begin_log, finish_log, read_log, write_log
from rsbook.progress import track
from rsbook.sequential_grid import check_radii, grid_plan
from rsbook.smooth import Smooth

__all__ = ["selected_indices", "certify_dataset", "certify_radius_dataset", "certify_grid_dataset", "grid_stream_key",
           "predict_dataset", "merge_parts"]


def selected_indices(length: int, skip: int = 1, max_index: int = -1) -> list[int]:
    """Indices i < length with i % skip == 0 and, when max_index >= 0, i < max_index (-1: no limit)."""
    skip = check_positive_int(skip, "skip")
    max_index = check_max_index(max_index)
    stop = length if max_index < 0 else min(length, max_index)
    return list(range(0, stop, skip))


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _part_paths(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.name}.part*"))


def merge_parts(out, kind: str) -> Path:
    """Fold the per-rank shards `out.part<rank>` of a distributed run into the log `out`: rows of
    the log and of every shard (torn last lines dropped), one per example, in index order, written
    atomically; the shards are then removed. A no-op when there are none."""
    out = Path(out)
    parts = _part_paths(out)
    if not parts:
        return out
    frames = []
    for path in ([out] if out.exists() else []) + parts:
        LogWriter(path, kind).close()  # repairs a torn last line
        frames.append(read_log(path, kind))
    merged = pd.concat(frames, ignore_index=True).drop_duplicates("idx").sort_values("idx", kind="stable")
    write_log(out, merged, kind)
    for path in parts:
        path.unlink()
    return out


def _broadcast_error(error: BaseException | None, world: int) -> BaseException | None:
    if world == 1:
        return error
    message = [None if error is None else f"{type(error).__name__}: {error}"]
    torch.distributed.broadcast_object_list(message, src=0)
    if message[0] is None:
        return None
    return error if error is not None else RuntimeError(f"rank 0 could not start the run: {message[0]}")


def _run(kind: str, smooth: Smooth, dataset, out, parameters: dict, seed: int, skip: int, max_index: int,
         indices, progress: bool, clock, step):
    out = check_output_path(out, "out", folder=False)
    seed = check_seed(seed)
    skip, max_index = check_positive_int(skip, "skip"), check_max_index(max_index)
    chosen = selected_indices(len(dataset), skip, max_index) if indices is None else list(indices)
    identity = {**parameters, "kind": kind, "sigma": smooth.sigma, "skip": skip, "log": out.name}
    rank, world = _rank_world()
    error = None
    if rank == 0:
        try:
            begin_log(out, identity, seed=seed, device=smooth.device, max_index=max_index)
            merge_parts(out, kind)
        except Exception as err:  # every rank must learn of it, or the others wait forever
            error = err
    error = _broadcast_error(error, world)
    if error is not None:
        raise error
    done = set(read_log(out, kind)["idx"]) if world > 1 and out.exists() else set()
    target = out if world == 1 else out.with_name(f"{out.name}.part{rank}")
    with LogWriter(target, kind) as writer:
        todo = [i for i in chosen if i not in done and i not in writer.done][rank::world]
        for idx in track(todo, f"{kind} {out.name}" + (f" [rank {rank}]" if world > 1 else ""), unit="example",
                         disable=not progress, position=rank):
            x, label = dataset[idx]
            start = clock()
            prediction, radius, *samples = step(x, idx, int(label))
            elapsed = clock() - start
            writer.write(idx, label, prediction, int(prediction == label), elapsed, radius=radius,
                         samples=samples[0] if samples else None)
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        merge_parts(out, kind)
        finish_log(out)
    if world > 1:
        torch.distributed.barrier()
    return out


def certify_dataset(smooth: Smooth, dataset, out, *, n0: int, n: int, alpha: float, batch_size: int,
                    skip: int = 1, max_index: int = -1, seed: int = 0, indices=None, parameters: dict | None = None,
                    progress: bool = True, clock=time.perf_counter) -> Path:
    """Run Smooth.certify (Cohen et al. 2019, Sec. 3.2.2) on the selected examples of `dataset`
    (a sequence of (x, label)), appending `idx label predict radius correct time` rows to `out`,
    with its manifest `<log>.manifest.json` beside it. `indices` overrides the selection (e.g. one
    shard per rank). `parameters` are recorded in the manifest (dataset, checkpoint, ...); resuming a
    log written with other parameters raises ValueError naming them, while other logs and a training
    run may share the folder. `progress`: a bar on a terminal, plain lines otherwise
    (rsbook.progress.track). Returns the log's path."""
    recorded = {**(parameters or {}), "n0": check_positive_int(n0, "n0"), "n": check_positive_int(n, "n"),
                "alpha": check_alpha(alpha), "batch": check_positive_int(batch_size, "batch_size")}
    return _run("certify", smooth, dataset, out, recorded, seed, skip, max_index, indices, progress, clock,
                lambda x, idx, label: smooth.certify(x, n0, n, alpha, batch_size,
                                              *streams.certify_generators(seed, idx, device=smooth.device)))


def certify_radius_dataset(smooth: Smooth, dataset, out, *, radius: float, n0: int, n_max: int, alpha: float,
                           batch_size: int, method: str = "betting", stop_if_wrong: bool = False, skip: int = 1,
                           max_index: int = -1, seed: int = 0, indices=None, parameters: dict | None = None,
                           progress: bool = True, clock=time.perf_counter, **options) -> Path:
    """Is each selected example robust at `radius`? certify_grid_dataset with the one radius (a sequential test
    with the guarantee of CERTIFY; rsbook.sequential): `idx label predict radius correct time samples` rows,
    predict c_A and radius the requested one where certified, ABSTAIN (-1) and 0 where not."""
    from rsbook.sequential import certify_threshold

    if certify_threshold(radius, smooth.sigma) >= 1:  # checks radius too
        raise ValueError(f"radius {radius!r} cannot be certified at sigma {smooth.sigma!r}: Phi(radius / sigma) "
                         "rounds to 1")
    return certify_grid_dataset(smooth, dataset, out, radii=[float(radius)], n0=n0, n_max=n_max, alpha=alpha,
                                batch_size=batch_size, method=method, stop_if_wrong=stop_if_wrong, skip=skip,
                                max_index=max_index, seed=seed,
                                indices=indices, parameters=parameters, progress=progress, clock=clock, **options)


def grid_stream_key(radii) -> str:
    """The key of an example's estimation stream ('estimate', idx, key) for a grid of radii: 'radius=<r>' for
    one radius (the single-radius logs of earlier versions), 'radii=<r1>,<r2>,...' for several."""
    radii = check_radii(radii)
    return f"radius={radii[0]!r}" if len(radii) == 1 else "radii=" + ",".join(repr(r) for r in radii)


def certify_grid_dataset(smooth: Smooth, dataset, out, *, radii, n0: int, n_max: int, alpha: float,
                         batch_size: int, method: str = "betting", stop_if_wrong: bool = False, skip: int = 1,
                         max_index: int = -1, seed: int = 0, indices=None, parameters: dict | None = None,
                         progress: bool = True, clock=time.perf_counter, **options) -> Path:
    """At which radii of the grid is each selected example certified? Smooth.certify_grid (one stream and one
    sequential test for every radius, valid for all of them at once with probability >= 1 - alpha;
    rsbook.sequential_grid) on every selected example, appending `idx label predict radius correct time samples`
    rows to `out`: predict is c_A and radius the largest certified radius of the grid where the smallest one is
    certified, ABSTAIN (-1) and 0 where not; samples counts the draws, n0 included. Certified accuracy at a
    radius r of the grid is then the share of rows with correct == 1 and radius >= r
    (rsbook.analysis.certified_accuracy reads a sequential log so).

    stop_if_wrong: stop an example whose selected class differs from its label after the n0 selection draws
    (its row abstains): it cannot count towards certified accuracy at any radius, so the table is the same and
    its draws are saved (rows then no longer tell abstentions from wrong predictions).

    The top class comes from CERTIFY's selection stream ('select', idx), so it is the c_A of certify_dataset
    with the same seed; the estimation draws from ('estimate', idx, grid_stream_key(radii)), a stream of their
    own. Resumable and torchrun-sharded as certify_dataset; `options` go to rsbook.sequential.plan (futility,
    prior, first, growth) and are recorded in the manifest."""
    from rsbook.sequential import METHODS

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    radii = check_radii(radii)
    if not isinstance(stop_if_wrong, bool):
        raise ValueError(f"stop_if_wrong must be True or False, got {stop_if_wrong!r}")
    recorded = {**(parameters or {}), ("radius" if len(radii) == 1 else "radii"): radii[0] if len(radii) == 1
                else list(radii), "n0": check_positive_int(n0, "n0"), "n_max": check_positive_int(n_max, "n_max"),
                "alpha": check_alpha(alpha), "batch": check_positive_int(batch_size, "batch_size"), "method": method,
                **({"stop_if_wrong": True} if stop_if_wrong else {}), **options}
    grid_plan(radii, smooth.sigma, alpha, n_max, method, batch_size, **options)  # refuses bad options up front
    key = grid_stream_key(radii)

    def step(x, idx, label):
        select = streams.generator(seed, "select", idx, device=smooth.device)
        estimate = streams.generator(seed, "estimate", idx, key, device=smooth.device)
        return smooth.certify_grid(x, radii, n0, n_max, alpha, batch_size, select, method=method,
                                   estimate_generator=estimate, label=label if stop_if_wrong else None, **options)

    return _run("sequential", smooth, dataset, out, recorded, seed, skip, max_index, indices, progress, clock, step)


def predict_dataset(smooth: Smooth, dataset, out, *, n: int, alpha: float, batch_size: int, skip: int = 1,
                    max_index: int = -1, seed: int = 0, indices=None, parameters: dict | None = None,
                    progress: bool = True, clock=time.perf_counter) -> Path:
    """Run Smooth.predict (Cohen et al. 2019, Sec. 3.2.1) on the selected examples, appending
    `idx label predict correct time` rows to `out`; see certify_dataset."""
    recorded = {**(parameters or {}), "n": check_positive_int(n, "n"), "alpha": check_alpha(alpha),
                "batch": check_positive_int(batch_size, "batch_size")}
    return _run("predict", smooth, dataset, out, recorded, seed, skip, max_index, indices, progress, clock,
                lambda x, idx, label: (smooth.predict(x, n, alpha, batch_size,
                                               generator=streams.generator(seed, "predict", idx,
                                                                           device=smooth.device)), None))
