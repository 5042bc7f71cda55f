"""torchrun shards: which rows each rank extracts, where it writes them, and how rank 0
assembles OUT from them (each shard checked: it exists, belongs to this run, and holds exactly
its rows with /split/index equal to them, so the shards cover 0..N-1 once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ncli.errors import InputError
from ncli.features.schema import attr_int, attr_str
from ncli.outputs import TEMP_PREFIX, fitted_name

COPY_BYTES = 32 << 20  # rows copied per read during assembly


def share(num_samples: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``start..stop-1`` of a split for ``rank``: a contiguous block of whole batches of
    the single-process run (batch boundaries at multiples of ``batch_size``), sizes within one
    batch of each other. A rank may get none when a split has fewer batches than ranks."""
    nb = -(-num_samples // batch_size)
    b0, b1 = nb * rank // world_size, nb * (rank + 1) // world_size
    return min(num_samples, b0 * batch_size), min(num_samples, b1 * batch_size)


def shard_dir(out: Path, run_id: str) -> Path:
    """This run's shards: ``.ncli-tmp-shards-<run id>-<OUT name>/`` next to OUT."""
    return fitted_name(out, f"{TEMP_PREFIX}shards-{run_id}-")  # shortened to the file system's name limit


def shard_path(out: Path, run_id: str, rank: int, world_size: int) -> Path:
    """Each rank writes in a folder of its own: a FeatureWriter removes the temporary files of
    writers whose process is gone from its folder, and another node's pid is never alive here."""
    folder = shard_dir(out, run_id) / f"rank{rank}-of-{world_size}"
    return fitted_name(folder / "shard.h5", "", f"{out.stem}.rank{rank}-of-{world_size}.h5")


def remove_shards(out: Path, run_id: str, rank: int, world_size: int, everything: bool) -> None:
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


def assemble(job, run_id: str, world_size: int, backend: str) -> int:
    """Rank 0: check every shard and copy their rows, in index order, into OUT (atomic)."""
    import h5py

    from ncli.features.writer import FeatureWriter

    out = job.out
    files = []
    try:
        stats = []
        for r in range(world_size):
            path = shard_path(out, run_id, r, world_size)
            if not path.exists():
                raise InputError(
                    f"{path}: the shard of rank {r} of {world_size} is missing although the rank reported success "
                    f"(is {out.parent.resolve()} on a filesystem every node shares?); nothing written to {out}"
                )
            try:
                f = h5py.File(path, "r")
            except OSError as exc:
                raise InputError(f"{path}: the shard of rank {r} cannot be read ({exc}); nothing written to {out}") from None
            files.append(f)
            shard_attrs = f.attrs
            got = (
                attr_str(shard_attrs.get("ncli_shard_run")), attr_int(shard_attrs.get("ncli_shard_rank")),
                attr_int(shard_attrs.get("ncli_shard_world_size")),
            )
            if got != (run_id, r, world_size):
                raise InputError(
                    f"{path}: not the shard of rank {r} of this run (run {got[0]}, rank {got[1]} of {got[2]}); nothing written to {out}"
                )
            if attr_str(shard_attrs.get("source_checkpoint_sha256")) != job.attrs.get("source_checkpoint_sha256"):
                raise InputError(f"{path}: rank {r} read a different checkpoint (sha256 differs); nothing written to {out}")
            stats.append(
                (
                    float(shard_attrs.get("max_reconstruction_error", 0.0)), float(shard_attrs.get("max_abs_logit", 0.0)),
                    int(shard_attrs.get("nonfinite_feature_rows", 0)),
                )
            )
        attrs = dict(
            job.attrs,
            world_size=world_size,
            distributed=f"torchrun: {world_size} processes ({backend}), each a contiguous block of batches, assembled by rank 0",
        )
        nonfinite = sum(s[2] for s in stats)
        total = 0
        with FeatureWriter(
            out, num_classes=job.num_classes, force=job.options.force, attrs=attrs, compression=job.options.compression,
            layer_attrs=job.extractor.layer_attrs,
        ) as writer:
            writer.set_classifier(job.weight, job.bias)
            if job.class_names is not None:
                writer.set_class_names(job.class_names)
            for s in job.sources:
                layers = None
                for r, f in enumerate(files):
                    lo, hi = share(s.num_samples, job.batch_size, r, world_size)
                    total += _copy_split(writer, f, files[r].filename, s.split, r, lo, hi, out)
                    if hi > lo:
                        names = sorted(f[s.split]["layers"]) if "layers" in f[s.split] else []
                        if layers is None:
                            layers = names
                        elif names != layers:
                            raise InputError(f"{f.filename}: split {s.split!r} stores layers {names}, rank 0 stored {layers}")
            writer.set_attrs(
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


def _copy_split(writer, shard, fname: str, split: str, rank: int, lo: int, hi: int, out: Path) -> int:
    n = hi - lo
    group = shard.get(split)
    have = 0 if group is None or "labels" not in group else int(group["labels"].shape[0])
    if have != n:
        raise InputError(
            f"{fname}: the shard of rank {rank} holds {have} rows of split {split!r}, expected {n} "
            f"(rows {lo}..{hi - 1}); nothing written to {out}"
        )
    if n == 0:
        return 0
    for key in ("features", "logits", "index"):
        if key not in group or group[key].shape[0] != n:
            raise InputError(f"{fname}: /{split}/{key} missing or of the wrong length; nothing written to {out}")
    lnames = sorted(group["layers"]) if "layers" in group else []
    row_bytes = group["features"].shape[1] * group["features"].dtype.itemsize + group["logits"].shape[1] * 4 + 16
    row_bytes += sum(int(np.prod(group["layers"][x].shape[1:])) * group["layers"][x].dtype.itemsize for x in lnames)
    step = max(1, COPY_BYTES // row_bytes)
    for a in range(0, n, step):
        b = min(n, a + step)
        idx = group["index"][a:b]
        if not np.array_equal(idx, np.arange(lo + a, lo + b)):
            bad = int(np.argmax(idx != np.arange(lo + a, lo + b)))
            raise InputError(
                f"{fname}: split {split!r} row {a + bad} has index {int(idx[bad])}, expected {lo + a + bad}: "
                f"the shards do not cover the rows exactly once; nothing written to {out}"
            )
        writer.append(
            split, features=group["features"][a:b], labels=group["labels"][a:b], logits=group["logits"][a:b], index=idx,
            layers={x: group["layers"][x][a:b] for x in lnames} or None,
        )
    return n
