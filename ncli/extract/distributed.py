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

from ncli.errors import EnvironmentProblem, NcliError, UsageError
from ncli.extract.options import ExtractOptions
from ncli.extract.shards import assemble, remove_shards, shard_path, share
from ncli.extract.targets import create_folder, plan_outputs, report_partial

DEFAULT_TIMEOUT_S = 4 * 3600  # how long a rank waits for the others at a sync point


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


def extract_distributed(world: World, checkpoints, output, data, options: ExtractOptions) -> list[Path]:
    """Join (or reuse, when the caller already initialised one) the process group, check every
    output (``-o FILE`` or ``-o FOLDER/``, as ``ncli.extract.targets`` plans them) and run the
    three phases for each checkpoint in turn; see the module docstring. The first failure stops
    the run (outputs already assembled stay)."""
    import threading

    import torch
    import torch.distributed as dist

    own_group = not dist.is_initialized()
    if own_group:
        cuda = _wants_cuda(options.device)
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
    written: list[Path] = []
    try:
        outs = _planned_outputs(world, checkpoints, output, options)
        for checkpoint, out in zip(checkpoints, outs):
            try:
                written.append(_run(world, backend, checkpoint, out, data, options))
            except BaseException:
                if world.rank == 0:
                    report_partial(written, outs, checkpoint)
                raise
        return written
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)
        if own_group:
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def _planned_outputs(world: World, checkpoints, output, options: ExtractOptions) -> list[Path]:
    """Every rank checks the outputs, rank 0 creates a new output folder (one creator, so the
    note is said once), and the ranks agree before any of them writes there."""
    error, outs = None, []
    try:
        outs, new_folder = plan_outputs(checkpoints, output, options.force)
        if new_folder is not None and world.rank == 0:
            create_folder(new_folder, say=True)
    except BaseException as exc:
        error = exc
    _Group(world).agree("output check", error)
    return outs


def _run(world: World, backend: str, checkpoint, output, data, options: ExtractOptions) -> Path:
    from dataclasses import replace

    import torch.distributed as dist

    from ncli.extract import loop  # loop.write_rows looked up at the call (tests/dist_fault.py wraps it)
    from ncli.extract.devices import device_note
    from ncli.extract.job import say_inferred_epoch, setup

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
            rank_options = replace(options, device=_rank_device(options.device, world))
            job = setup(checkpoint, output, data, rank_options, verbose=lead)
            if lead and options.progress:
                device_note(options.device, job.device)
            if lead and job.attrs.get("epoch_source"):
                say_inferred_epoch(job, several=False)
        except BaseException as exc:
            err = exc
        group.agree("setup", err)

        if options.stats_only:  # two passes, statistics summed over the ranks, rank 0 writes
            from ncli.extract.stats_only import collect

            rows, elapsed = collect(job, progress=lead and options.progress, world=world, agree=group.agree)
            if lead and options.progress:
                loop.summary(job, rows, elapsed, extra=f" (statistics only, {k} torchrun processes)")
            return out

        # -- phase 2: each rank writes its shard -----------------------------------------
        ranges = {s.split: share(s.num_samples, job.batch_size, world.rank, k) for s in job.sources}
        try:
            mine.parent.mkdir(parents=True, exist_ok=True)
            loop.write_rows(
                job, mine, ranges, force=True, progress=lead and options.progress,
                extra_attrs={
                    "ncli_shard_run": run_id, "ncli_shard_rank": world.rank, "ncli_shard_world_size": k,
                    "ncli_shard_rows": json.dumps(ranges, sort_keys=True),
                },
                progress_label=loop.share_label(k),
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
                total = assemble(job, run_id, k, backend)
            except BaseException as exc:
                err = exc
        group.agree("assemble", err)
        if lead and options.progress:
            elapsed = time.perf_counter() - t0
            loop.summary(job, total, elapsed, extra=f" ({k} torchrun processes)")
        return out
    finally:
        remove_shards(out, run_id, world.rank, k, everything=lead)
        if job is not None:
            job.close()
