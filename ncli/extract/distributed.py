"""``ncli extract`` under torchrun: every process extracts a disjoint share, rank 0 assembles.

    torchrun --nproc_per_node K -m ncli extract CKPT --data ... -o OUT.h5

torchrun starts K copies of the same command and tells each who it is through the
environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). With WORLD_SIZE > 1:

1. Every rank joins a process group (gloo; on CUDA ``cpu:gloo,cuda:nccl``: the only messages
   are small Python objects, which go over gloo, NCCL is there for CUDA tensors) and receives
   rank 0's run id. Then it does the single-process setup, the OUT check (``--force``)
   first. The ranks agree: if any rank failed, every rank stops (phase "setup").
2. Each rank extracts its share of each split and writes it, through FeatureWriter (temp +
   rename), to a shard in a folder next to OUT:
   ``.ncli-tmp-shards-<run id>-<OUT name>/rank<r>-of-<K>/<OUT stem>.rank<r>-of-<K>.h5``.
   The share is a contiguous block of whole batches of the single-process run (``share``):
   every rank computes exactly the batches the single-process run computes, so the
   features are bitwise the same, and there is no sampler padding to remove (a
   DistributedSampler would deal rows round-robin and pad the last round, changing every
   batch's composition). The ranks agree again (phase "extract").
3. Rank 0 checks every shard (it exists, belongs to this run, holds exactly its rows with
   /split/index equal to them, so the shards cover 0..N-1 once), and copies the rows, in
   index order, through a FeatureWriter into OUT: a self-contained format-1 file that
   appears atomically. A missing or incomplete shard is an error (never fill values). The
   ranks agree a last time (phase "assemble"); shards are removed on success and on failure.

A failure on any rank makes every rank exit non-zero: the failing rank prints its error,
rank 0 prints it too (naming the rank); ranks with nothing new to say exit quietly.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from ncli.errors import EnvironmentProblem, InputError, NcliError, UsageError
from ncli.features.schema import attr_int, attr_str
from ncli.outputs import TEMP_PREFIX

DEFAULT_TIMEOUT_S = 4 * 3600  # how long a rank waits for the others at a sync point
COPY_BYTES = 32 << 20  # rows copied per read during assembly


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int


def world_from_env(environ=None) -> World | None:
    """The torchrun world described by the environment, or None for a single process."""
    env = os.environ if environ is None else environ
    raw = env.get("WORLD_SIZE")
    if raw is None:
        return None
    try:
        k = int(raw)
    except ValueError:
        raise UsageError(f"WORLD_SIZE={raw!r} in the environment is not an integer") from None
    if k <= 1:
        return None
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
    if missing:
        raise EnvironmentProblem(
            f"WORLD_SIZE={k} but {', '.join(missing)} not set: start distributed extraction with "
            f"`torchrun --nproc_per_node {k} -m ncli extract ...`, or unset WORLD_SIZE"
        )
    try:
        rank, local = int(env["RANK"]), int(env["LOCAL_RANK"])
    except ValueError:
        raise UsageError(f"RANK={env['RANK']!r} / LOCAL_RANK={env['LOCAL_RANK']!r}: not integers") from None
    if not 0 <= rank < k:
        raise UsageError(f"RANK={rank} outside 0..{k - 1} (WORLD_SIZE={k})")
    return World(rank, k, local)


def share(num_samples: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``start..stop-1`` of a split for ``rank``: a contiguous block of whole batches of
    the single-process run (batch boundaries at multiples of ``batch_size``), sizes within one
    batch of each other. A rank may get none when a split has fewer batches than ranks."""
    nb = -(-num_samples // batch_size)
    b0, b1 = nb * rank // world_size, nb * (rank + 1) // world_size
    return min(num_samples, b0 * batch_size), min(num_samples, b1 * batch_size)


def shard_dir(out: Path, run_id: str) -> Path:
    """This run's shards: ``.ncli-tmp-shards-<run id>-<OUT name>/`` next to OUT."""
    return out.with_name(f"{TEMP_PREFIX}shards-{run_id}-{out.name}")


def shard_path(out: Path, run_id: str, rank: int, world_size: int) -> Path:
    """Each rank writes in a folder of its own: a FeatureWriter removes the temporary files of
    writers whose process is gone from its folder, and another node's pid is never alive here."""
    return shard_dir(out, run_id) / f"rank{rank}-of-{world_size}" / f"{out.stem}.rank{rank}-of-{world_size}.h5"


def _remove_shards(out: Path, run_id: str, rank: int, world_size: int, everything: bool) -> None:
    """Remove this rank's shard (and, for rank 0 at the end, the run's whole shard folder)."""
    import shutil

    mine = shard_path(out, run_id, rank, world_size)
    try:
        mine.unlink(missing_ok=True)
        mine.parent.rmdir()
    except OSError:
        pass
    if everything:
        shutil.rmtree(shard_dir(out, run_id), ignore_errors=True)


class RankFailed(NcliError):
    """Another rank failed (rank 0 reports it with the rank's message and exit code)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class PeerFailed(RankFailed):
    """Another rank failed and has reported it; the CLI exits with the code, printing nothing."""


def _status(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, NcliError):
        return exc.exit_code, str(exc)
    return 1, f"internal error: {type(exc).__name__}: {exc} (run `ncli --debug ...` for the traceback)"


class _Interrupted(KeyboardInterrupt):
    pass


def _on_sigterm(signum, frame):  # torchrun stops workers with SIGTERM (e.g. after Ctrl-C)
    raise _Interrupted()


class _Group:
    """Agreement between ranks at the end of each phase."""

    def __init__(self, world: World):
        import torch.distributed as dist

        self.dist, self.world = dist, world

    def agree(self, phase: str, error: BaseException | None) -> None:
        """All ranks exchange their outcome; if any failed, raise on every rank."""
        mine = None if error is None else _status(error)
        got: list = [None] * self.world.world_size
        try:
            self.dist.all_gather_object(got, mine)
        except Exception as exc:
            raise EnvironmentProblem(
                f"rank {self.world.rank}: lost contact with the other torchrun processes during {phase} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); another rank probably died"
            ) from None
        failed = [(r, st) for r, st in enumerate(got) if st is not None]
        if not failed:
            return
        r0, (code0, msg0) = failed[0]
        k = self.world.world_size
        me = self.world.rank
        if error is not None:
            # print my own error unless a lower rank failed with the same message (rank 0 always prints)
            if me == 0 or me == r0 or all(st[1] != mine[1] for r, st in failed if r < me):
                raise error
            raise PeerFailed(f"rank {me} of {k}: rank {r0} failed: {msg0}", code0)
        if me == 0:
            more = f" ({len(failed) - 1} more rank(s) failed)" if len(failed) > 1 else ""
            raise RankFailed(f"rank {r0} of {k} failed during {phase}: {msg0}{more}", code0)
        raise PeerFailed(f"rank {me} of {k}: rank {r0} failed during {phase}: {msg0}", code0)


def _wants_cuda(spec: str | None) -> bool:
    import torch

    spec = (spec or "auto").strip().lower()
    return torch.cuda.is_available() and (spec == "auto" or spec.startswith("cuda"))


def _rank_device(spec: str | None, world: World) -> str:
    """Under torchrun each process uses its own GPU: cuda:LOCAL_RANK."""
    import torch

    s = (spec or "auto").strip().lower()
    if s.startswith("cuda:"):
        raise UsageError(
            f"--device {spec}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda "
            "(CUDA_VISIBLE_DEVICES chooses the GPUs)"
        )
    if s in ("cuda", "auto") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if world.local_rank >= n:
            raise EnvironmentProblem(
                f"rank {world.rank} has LOCAL_RANK {world.local_rank} but this node has {n} CUDA device(s); "
                f"use --nproc_per_node {n} or fewer"
            )
        return f"cuda:{world.local_rank}"
    return s


def extract_distributed(world: World, checkpoint, output, data, options: dict, *, compression, progress, flush_rows) -> Path:
    """Join (or reuse, when the caller already initialised one) the process group and run the
    three phases; see the module docstring."""
    import threading

    import torch
    import torch.distributed as dist

    own_group = not dist.is_initialized()
    if own_group:
        cuda = _wants_cuda(options.get("device"))
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        if cuda and world.local_rank < torch.cuda.device_count():
            torch.cuda.set_device(world.local_rank)
        timeout = timedelta(seconds=float(os.environ.get("NCLI_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        try:
            dist.init_process_group(backend=backend, timeout=timeout)
        except Exception as exc:
            raise EnvironmentProblem(
                f"rank {world.rank} of {world.world_size}: cannot join the torchrun process group ({backend}): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
    else:  # called from a program that already runs under torchrun with its own group
        backend = str(dist.get_backend())
        if dist.get_world_size() != world.world_size or dist.get_rank() != world.rank:
            raise EnvironmentProblem(
                f"the initialised process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
                f"RANK={world.rank}, WORLD_SIZE={world.world_size}"
            )
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return _run(world, backend, checkpoint, output, data, options, compression, progress, flush_rows)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)
        if own_group:
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def _run(world: World, backend: str, checkpoint, output, data, options, compression, progress, flush_rows) -> Path:
    import torch.distributed as dist

    from ncli.extract import run as R

    group = _Group(world)
    lead = world.rank == 0
    k = world.world_size
    token = [secrets.token_hex(8) if lead else None]
    try:
        dist.broadcast_object_list(token, src=0)
    except Exception as exc:
        raise EnvironmentProblem(
            f"rank {world.rank} of {k}: cannot reach rank 0 ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    run_id = token[0]
    out = Path(output)
    mine = shard_path(out, run_id, world.rank, k)
    job = None
    t0 = time.perf_counter()
    try:
        # -- phase 1: setup (the OUT check first, on every rank) --------------------------
        err = None
        try:
            opts = dict(options, device=_rank_device(options.get("device"), world))
            job = R.setup(checkpoint, output, data, verbose=lead, **opts)
            if lead and progress:
                R.device_note(options.get("device"), job.dev)
        except BaseException as exc:
            err = exc
        group.agree("setup", err)

        # -- phase 2: each rank writes its shard -----------------------------------------
        ranges = {s.split: share(s.num_samples, job.bs, world.rank, k) for s in job.sources}
        try:
            mine.parent.mkdir(parents=True, exist_ok=True)
            R.write_rows(
                job, mine, ranges, force=True, compression=compression, progress=lead and progress,
                flush_rows=flush_rows, num_workers=options.get("num_workers", 0),
                extra_attrs={
                    "ncli_shard_run": run_id, "ncli_shard_rank": world.rank, "ncli_shard_world_size": k,
                    "ncli_shard_rows": json.dumps(ranges, sort_keys=True),
                },
                progress_label=f" (rank 0 of {k})" if k > 1 else "",
            )
            err = None
        except BaseException as exc:
            err = exc
        group.agree("extract", err)

        # -- phase 3: rank 0 assembles OUT from the shards --------------------------------
        err = None
        total = 0
        if lead:
            try:
                total = assemble(job, run_id, k, backend, force=options.get("force", False), compression=compression)
            except BaseException as exc:
                err = exc
        group.agree("assemble", err)
        if lead and progress:
            elapsed = time.perf_counter() - t0
            R.summary(job, total, elapsed, extra=f" ({k} torchrun processes)")
        return out
    finally:
        _remove_shards(out, run_id, world.rank, k, everything=lead)
        if job is not None:
            job.close()


def assemble(job, run_id: str, world_size: int, backend: str, *, force: bool, compression) -> int:
    """Rank 0: check every shard and copy their rows, in index order, into OUT (atomic)."""
    import h5py

    from ncli.features.writer import FeatureWriter

    out = job.out
    k = world_size
    files = []
    try:
        stats = []
        for r in range(k):
            p = shard_path(out, run_id, r, k)
            if not p.exists():
                raise InputError(
                    f"{p}: the shard of rank {r} of {k} is missing although the rank reported success "
                    f"(is {out.parent.resolve()} on a filesystem every node shares?); nothing written to {out}"
                )
            try:
                f = h5py.File(p, "r")
            except OSError as exc:
                raise InputError(f"{p}: the shard of rank {r} cannot be read ({exc}); nothing written to {out}") from None
            files.append(f)
            a = f.attrs
            got = (attr_str(a.get("ncli_shard_run")), attr_int(a.get("ncli_shard_rank")), attr_int(a.get("ncli_shard_world_size")))
            if got != (run_id, r, k):
                raise InputError(
                    f"{p}: not the shard of rank {r} of this run (run {got[0]}, rank {got[1]} of {got[2]}); nothing written to {out}"
                )
            if attr_str(a.get("source_checkpoint_sha256")) != job.attrs.get("source_checkpoint_sha256"):
                raise InputError(f"{p}: rank {r} read a different checkpoint (sha256 differs); nothing written to {out}")
            stats.append(
                (float(a.get("max_reconstruction_error", 0.0)), float(a.get("max_abs_logit", 0.0)), int(a.get("nonfinite_feature_rows", 0)))
            )
        attrs = dict(
            job.attrs,
            world_size=k,
            distributed=f"torchrun: {k} processes ({backend}), each a contiguous block of batches, assembled by rank 0",
        )
        nonfinite = sum(s[2] for s in stats)
        total = 0
        with FeatureWriter(out, num_classes=job.num_classes, force=force, attrs=attrs, compression=compression) as w:
            w.set_classifier(job.weight, job.bias)
            if job.class_names is not None:
                w.set_class_names(job.class_names)
            for s in job.sources:
                layers = None
                for r, f in enumerate(files):
                    lo, hi = share(s.num_samples, job.bs, r, k)
                    total += _copy_split(w, f, files[r].filename, s.split, r, lo, hi, out)
                    if hi > lo:
                        names = sorted(f[s.split]["layers"]) if "layers" in f[s.split] else []
                        if layers is None:
                            layers = names
                        elif names != layers:
                            raise InputError(f"{f.filename}: split {s.split!r} stores layers {names}, rank 0 stored {layers}")
            w.set_attrs(
                max_reconstruction_error=max(s[0] for s in stats),
                max_abs_logit=max(s[1] for s in stats),
                nonfinite_feature_rows=int(nonfinite),
            )
        if nonfinite:
            from ncli.console import note

            note(f"{out}: {nonfinite} rows of features contain NaN or Inf (the model produced them)")
        return total
    finally:
        for f in files:
            try:
                f.close()
            except Exception:
                pass


def _copy_split(w, f, fname: str, split: str, rank: int, lo: int, hi: int, out: Path) -> int:
    n = hi - lo
    g = f.get(split)
    have = 0 if g is None or "labels" not in g else int(g["labels"].shape[0])
    if have != n:
        raise InputError(
            f"{fname}: the shard of rank {rank} holds {have} rows of split {split!r}, expected {n} "
            f"(rows {lo}..{hi - 1}); nothing written to {out}"
        )
    if n == 0:
        return 0
    for key in ("features", "logits", "index"):
        if key not in g or g[key].shape[0] != n:
            raise InputError(f"{fname}: /{split}/{key} missing or of the wrong length; nothing written to {out}")
    lnames = sorted(g["layers"]) if "layers" in g else []
    row_bytes = g["features"].shape[1] * g["features"].dtype.itemsize + g["logits"].shape[1] * 4 + 16
    row_bytes += sum(int(np.prod(g["layers"][x].shape[1:])) * g["layers"][x].dtype.itemsize for x in lnames)
    step = max(1, COPY_BYTES // row_bytes)
    for a in range(0, n, step):
        b = min(n, a + step)
        idx = g["index"][a:b]
        if not np.array_equal(idx, np.arange(lo + a, lo + b)):
            bad = int(np.argmax(idx != np.arange(lo + a, lo + b)))
            raise InputError(
                f"{fname}: split {split!r} row {a + bad} has index {int(idx[bad])}, expected {lo + a + bad}: "
                f"the shards do not cover the rows exactly once; nothing written to {out}"
            )
        w.append(
            split, features=g["features"][a:b], labels=g["labels"][a:b], logits=g["logits"][a:b], index=idx,
            layers={x: g["layers"][x][a:b] for x in lnames} or None,
        )
    return n

