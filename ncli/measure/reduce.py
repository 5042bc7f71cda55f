"""Combining accumulators (:class:`ncli.measure.accumulator.Accumulator`): ``merge`` in one
process, ``all_reduce`` over ``torch.distributed``.

Both add the statistics of the pass in progress. Before pass 2 the class counts and sums of
every split are added. After it, the accumulators must have frozen the same model — the same
class sums bit for bit, which ``all_reduce`` of pass 1 guarantees — and the decision counts and
within-class sums are added. ``all_reduce`` gathers every rank's statistics (in chunks, so
memory stays bounded) and adds them in rank order 0, 1, …, K−1 on every rank: each rank ends
with the same bits, whatever the timing of the processes.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ncli.errors import UsageError
from ncli.measure.statistics import ClassStatistics, SplitStatistics

CHUNK_VALUES = 4 << 20  # values gathered per collective call (× world size in memory)
CONFIG = ("num_classes", "train_split", "global_mean", "nc1_method", "min_per_class")
INT_COUNTERS = ("num_samples", "net_correct", "ncc_correct", "disagree")


def _digest(*arrays) -> str | None:
    if all(a is None for a in arrays):
        return None
    h = hashlib.sha256()
    for a in arrays:
        h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _pass1_digest(acc) -> str:
    parts = []
    for name in sorted(acc.class_stats):
        parts += [np.frombuffer(name.encode(), np.uint8), acc.class_stats[name].counts, acc.class_stats[name].sums]
    return _digest(*parts) or ""


def _config(acc) -> dict:
    return {key: getattr(acc, key) for key in CONFIG} | {"classifier": _digest(acc.W, acc.b)}


def merge_into(acc, other) -> None:
    if type(other) is not type(acc):
        raise UsageError(f"merge(): expected an Accumulator, not {type(other).__name__}")
    mine, theirs = _config(acc), _config(other)
    for key in mine:
        if mine[key] != theirs[key]:
            what = "the classifier" if key == "classifier" else key
            raise UsageError(f"merge(): the accumulators differ in {what}" + ("" if key == "classifier" else f" ({mine[key]!r} vs {theirs[key]!r})"))
    if acc.dim is not None and other.dim is not None and acc.dim != other.dim:
        raise UsageError(f"merge(): the accumulators' features differ in p ({acc.dim} vs {other.dim})")
    acc._flush()
    other._flush()
    if (acc.model is None) != (other.model is None):
        raise UsageError(
            "merge(): one accumulator is in pass 1 (update), the other in pass 2 (evaluate); merge the class sums "
            "before evaluate(), then copy() the merged accumulator for each worker of pass 2"
        )
    acc.dim = acc.dim if acc.dim is not None else other.dim
    if acc.model is None:
        for name, stats in other.class_stats.items():
            mine = acc.class_stats.setdefault(name, ClassStatistics(stats.counts.shape[0], acc.dim))
            if mine.counts.shape != stats.counts.shape:
                raise UsageError(f"merge(): split {name!r} was fed with labels to one accumulator, without to the other")
            mine.merge(stats)
        return
    if _pass1_digest(acc) != _pass1_digest(other):
        raise UsageError(
            "merge(): the accumulators froze different models (their class sums differ); merge (or all_reduce) "
            "pass 1 first and copy() the result for each worker before evaluate()"
        )
    for name, result in other.results.items():
        mode = other.decisions[name]
        if acc.decisions.setdefault(name, mode) != mode:
            raise UsageError(f"merge(): split {name!r} was decided by {acc.decisions[name]} in one, by {mode} in the other")
        acc.results.setdefault(name, SplitStatistics(acc.model.num_classes, result.has_classifier,
                                                     within=result.within)).merge(result)


# -- torch.distributed ------------------------------------------------------------------------


def all_reduce(acc, group=None) -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        raise UsageError("all_reduce() needs PyTorch (torch.distributed)") from None
    if not (dist.is_available() and dist.is_initialized()):
        raise UsageError("all_reduce() needs an initialised torch.distributed process group (torchrun, then init_process_group)")
    phase = 1 if acc.model is None else 2
    error = None
    if phase in acc.reduced:
        error = UsageError(f"all_reduce(): pass {phase} is already summed over the processes")
    else:
        try:
            acc._flush()
        except Exception as exc:  # told to every rank, so that none waits for this one
            error = exc
    meta = {"error": None if error is None else str(error), "phase": phase, "dim": acc.dim, **_config(acc)}
    meta["pass1"] = _pass1_digest(acc) if phase == 2 else None
    meta["splits"] = ({name: int(s.counts.shape[0]) for name, s in acc.class_stats.items()} if phase == 1
                      else dict(acc.decisions))
    world = dist.get_world_size(group)
    metas: list = [None] * world
    dist.all_gather_object(metas, meta, group=group)
    if error is not None:
        raise error
    _agree(metas)
    dims = {m["dim"] for m in metas if m["dim"] is not None}
    if not dims:
        acc.reduced.add(phase)
        return  # no rank has seen a batch
    acc.dim = dims.pop()
    if phase == 1:
        rows = {}
        for m in metas:
            for name, size in m["splits"].items():
                rows.setdefault(name, size)
        for name in sorted(rows):
            acc.class_stats.setdefault(name, ClassStatistics(rows[name], acc.dim))
        stats = [acc.class_stats[name] for name in sorted(rows)]
        counts = _sum_in_rank_order(np.concatenate([s.counts for s in stats]), group, world)
        sums = _sum_in_rank_order(np.concatenate([s.sums.ravel() for s in stats]), group, world)
        at = 0
        for s in stats:  # each split's C rows (1 for a split fed without labels)
            size = s.counts.shape[0]
            s.counts[...] = counts[at:at + size]
            s.sums[...] = sums[at * acc.dim:(at + size) * acc.dim].reshape(s.sums.shape)
            at += size
    else:
        modes = {}
        for m in metas:
            for name, mode in m["splits"].items():
                modes.setdefault(name, mode)
        for name in sorted(modes):
            acc.decisions.setdefault(name, modes[name])
            acc.results.setdefault(name, SplitStatistics(acc.model.num_classes, modes[name] != "none",
                                                         within=name == acc.train_split))
        _reduce_results(acc, [acc.results[name] for name in sorted(modes)], group, world)
    acc.reduced.add(phase)


def _agree(metas: list[dict]) -> None:
    """The same check on every rank (every rank sees every rank's metadata): raise if the
    ranks' accumulators cannot be summed."""
    failed = [(rank, m["error"]) for rank, m in enumerate(metas) if m["error"] is not None]
    if failed:
        raise UsageError(f"all_reduce(): rank {failed[0][0]} failed: {failed[0][1]}")
    first = metas[0]
    for rank, m in enumerate(metas[1:], start=1):
        for key in ("phase", *CONFIG, "classifier", "pass1"):
            if m[key] != first[key]:
                what = {"phase": "the pass (update/evaluate)", "classifier": "the classifier",
                        "pass1": "the frozen model (all_reduce pass 1 before evaluate())"}.get(key, key)
                raise UsageError(f"all_reduce(): rank {rank} differs from rank 0 in {what}")
    dims = {m["dim"] for m in metas if m["dim"] is not None}
    if len(dims) > 1:
        raise UsageError(f"all_reduce(): the ranks' features differ in p ({', '.join(map(str, sorted(dims)))})")
    if first["phase"] == 1:
        rows: dict = {}
        for m in metas:
            for name, size in m["splits"].items():
                if rows.setdefault(name, size) != size:
                    raise UsageError(f"all_reduce(): split {name!r} was fed with labels on one rank, without on another")
    if first["phase"] == 2:
        seen: dict = {}
        for m in metas:
            for name, mode in m["splits"].items():
                if seen.setdefault(name, mode) != mode:
                    raise UsageError(f"all_reduce(): split {name!r} was decided by {seen[name]} on one rank, by {mode} on another")


def _reduce_results(acc, results: list[SplitStatistics], group, world: int) -> None:
    ints = np.concatenate(
        [np.concatenate([[getattr(r, key) for key in INT_COUNTERS], r.class_counts, r.disagree_per_class]).astype(np.int64)
         for r in results]
    )
    ints = _sum_in_rank_order(ints, group, world)
    measured = acc.model.num_classes  # the classes kept by a selection (--min-per-class)
    size = len(INT_COUNTERS) + 2 * measured
    for i, r in enumerate(results):
        part = ints[i * size:(i + 1) * size]
        for j, key in enumerate(INT_COUNTERS):
            setattr(r, key, int(part[j]))
        r.class_counts = part[len(INT_COUNTERS):len(INT_COUNTERS) + measured].copy()
        r.disagree_per_class = part[len(INT_COUNTERS) + measured:].copy()
    train = acc.results.get(acc.train_split)
    if train is None:
        return
    scatter = acc.method == "scatter"
    within = train.scatter if scatter else train.proj_ss
    if within is None:
        within = np.zeros((acc.dim, acc.dim) if scatter else acc.model.basis.U.shape[1])
    floats = _sum_in_rank_order(np.concatenate([train.ss_within, within.ravel()]), group, world)
    train.ss_within = floats[:measured].copy()
    total = floats[measured:].reshape(within.shape).copy()
    train.scatter, train.proj_ss = (total, None) if scatter else (None, total)


def _sum_in_rank_order(values: np.ndarray, group, world: int) -> np.ndarray:
    """Σ over ranks of ``values`` (the same shape on every rank), added in rank order."""
    import torch
    import torch.distributed as dist

    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":  # NCCL-only groups move CUDA tensors
        device = torch.device("cuda", torch.cuda.current_device())
    out = np.empty_like(values)
    for lo in range(0, values.size, CHUNK_VALUES):
        part = torch.from_numpy(np.ascontiguousarray(values[lo:lo + CHUNK_VALUES])).to(device)
        gathered = [torch.empty_like(part) for _ in range(world)]
        dist.all_gather(gathered, part, group=group)
        total = gathered[0].clone()
        for other in gathered[1:]:
            total += other
        out[lo:lo + CHUNK_VALUES] = total.cpu().numpy()
    return out
