"""Compare's inputs: measure records from feature files (measured here with
:func:`ncli.measure.record.measure_file`), from files of ``ncli measure --json`` lines (used as
they are; nothing is measured again), or from those lines on stdin (``-``); their order and
their grouping by file.

``by="run"``: one column per run, ordered by the epoch (stored, else the number a file name
tells: ``ckpt_20.h5``), then step, then the file names in natural order, then the order given.
``by="layer"``: the runs of one file's layers side by side (the progressive-collapse view),
one group per file, groups ordered as runs are.

JSON lines are read in blocks and a line longer than ``MAX_LINE_BYTES`` is refused before it is
held in memory (``compare /dev/zero`` is an error, not an exhausted machine). Pipes and
devices (``<(ncli measure ... --json)``) are read as JSON lines, never opened as HDF5.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from typing import IO, Iterable

from ncli.compare import SCHEMA
from ncli.console import note
from ncli.errors import InputError, UsageError
from ncli.features.epochs import FROM_FILE_NAME, epoch_from_name, natural_key
from ncli.features.schema import HDF5_SIGNATURE
from ncli.measure.record import validate_record

STDIN = "-"
MAX_LINE_BYTES = 256 << 20  # far above any measure record (a --per-class record of 100k classes is ~30 MiB)


@dataclass
class Run:
    """One column of the comparison: a measure record and where it came from."""

    record: dict
    source: str  # the input as given ("-" for stdin)
    position: int  # order given, over all inputs


@dataclass
class LoadOptions:
    split: str | None = None  # None: "train" for HDF5 inputs, anything for records
    global_mean: str | None = None  # None: "class" for HDF5 inputs, anything for records
    by: str = "run"  # "run" | "layer"
    chunk_rows: int | None = None
    allow_external: bool = False  # feature files: read what HDF5 keeps in other files
    min_per_class: int | None = None  # for HDF5 inputs; records must have been measured with it
    ood: str | None = None  # likewise
    per_class: bool = False  # feature files: per-class rows and class cosines (compare --plot-per-class)


def parse_records(text: str, source: str) -> list[dict]:
    """Measure records from JSON lines (blank lines skipped). A line holding an
    ``ncli compare --json`` object contributes its runs, so compare output can be fed back."""
    name = "stdin" if source == STDIN else source
    out: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        where = f"{name} line {lineno}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            snippet = line if len(line) <= 40 else line[:37] + "..."
            raise InputError(f"{where}: not JSON ({exc.__class__.__name__}: {exc}) in {snippet!r}") from None
        except RecursionError:
            raise InputError(f"{where}: not an ncli measure record (JSON nested too deeply to read)") from None
        if isinstance(obj, dict) and obj.get("schema") == SCHEMA and isinstance(obj.get("runs"), list):
            for i, rec in enumerate(obj["runs"]):
                out.append(validate_record(rec, f"{where}, runs[{i}]"))
            continue
        out.append(validate_record(obj, where))
    if not out:
        raise InputError(f"{name}: no ncli measure records (expected the lines of `ncli measure --json`)")
    return out


def _looks_hdf5(head: bytes) -> bool:
    return head.startswith(HDF5_SIGNATURE)


def read_bounded(stream, name: str) -> bytes:
    """All bytes of a binary ``stream``; InputError as soon as one line exceeds MAX_LINE_BYTES."""
    blocks: list[bytes] = []
    line = 0  # bytes of the line being read
    while True:
        block = stream.read(1 << 20)
        if not block:
            return b"".join(blocks)
        first = block.find(b"\n")
        if first < 0:
            line += len(block)
        elif line + first > MAX_LINE_BYTES:
            line += first
        else:
            line = len(block) - block.rfind(b"\n") - 1
        if line > MAX_LINE_BYTES:
            raise InputError(f"{name}: a line longer than {MAX_LINE_BYTES >> 20} MiB; expected `ncli measure --json` lines")
        blocks.append(block)


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{name}: neither an HDF5 feature file nor `ncli measure --json` lines (binary, not UTF-8)") from None


def _measure(path: str, opts: LoadOptions) -> list[dict]:
    from ncli.measure import record

    split = opts.split or "train"
    global_mean = opts.global_mean or "class"
    layers: list[str | None] = [None]
    if opts.by == "layer":
        # the stored layers in forward order (as recorded at extraction), then the penultimate features
        layers = [*record.list_layers(path, split, allow_external=opts.allow_external), None]
    return [
        record.measure_file(
            path, split=split, global_mean=global_mean, layer=layer, chunk_rows=opts.chunk_rows,
            min_per_class=opts.min_per_class, ood=opts.ood, allow_external=opts.allow_external,
            per_class=opts.per_class, class_cosines=opts.per_class,
        )
        for layer in layers
    ]


def read_input(source: str, opts: LoadOptions, stdin: IO | None = None) -> list[dict]:
    """The records of one input (a feature file, a JSON-lines file, or ``-``)."""
    if source == STDIN:
        if stdin is None:
            import sys

            stdin = sys.stdin
        if hasattr(stdin, "isatty") and stdin.isatty():
            raise UsageError("'-' reads `ncli measure --json` lines from stdin, but stdin is a terminal; pipe them in")
        raw = read_bounded(stdin.buffer, "stdin") if hasattr(stdin, "buffer") else stdin.read()
        if isinstance(raw, bytes):
            if _looks_hdf5(raw[:8]):
                raise InputError("stdin: holds an HDF5 file; give feature files by path, not on stdin")
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"stdin: not UTF-8 text ({exc}); expected `ncli measure --json` lines") from None
        return parse_records(raw, STDIN)

    try:
        mode = os.stat(source).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{source}: is a directory (give feature files or a file of `ncli measure --json` lines)")
        if stat.S_ISREG(mode):  # pipes and devices are read as JSON lines, never opened as HDF5
            with open(source, "rb") as fh:
                head = fh.read(8)
            if _looks_hdf5(head):
                return _measure(source, opts)
            import h5py  # HDF5 files may start with a user block; the signature is then further in

            try:
                if h5py.is_hdf5(source):
                    return _measure(source, opts)
            except (OSError, RuntimeError):
                pass
        with open(source, "rb") as fh:
            text = _decode(read_bounded(fh, source), source)
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read ({exc.strerror or exc})") from None
    records = parse_records(text, source)
    _check_options(records, source, opts)
    return records


def _check_options(records: list[dict], source: str, opts: LoadOptions) -> None:
    """--split / --global-mean / --min-per-class / --ood asked explicitly must match how given
    records were measured."""
    for rec in records:
        if opts.split is not None and rec.get("train_split", "train") != opts.split:
            raise UsageError(
                f"{source}: record of {rec['file']} was measured with --split {rec.get('train_split', 'train')}, "
                f"not {opts.split}; measure again or drop --split"
            )
        if opts.global_mean is not None and rec.get("global_mean") != opts.global_mean:
            raise UsageError(
                f"{source}: record of {rec['file']} was measured with --global-mean {rec.get('global_mean')}, "
                f"not {opts.global_mean}; measure again or drop --global-mean"
            )
        if opts.min_per_class is not None and rec.get("min_per_class") != opts.min_per_class:
            raise UsageError(
                f"{source}: record of {rec['file']} was measured with --min-per-class {rec.get('min_per_class')}, "
                f"not {opts.min_per_class}; measure again or drop --min-per-class"
            )
        ood = (rec.get("ood") or {}).get("split")
        if opts.ood is not None and ood != opts.ood:
            raise UsageError(
                f"{source}: record of {rec['file']} was measured with --ood {ood}, not {opts.ood}; "
                "measure again or drop --ood"
            )


def load_runs(inputs: Iterable[str], opts: LoadOptions | None = None, stdin: IO | None = None) -> list[Run]:
    """All runs of all inputs, in the order given."""
    opts = opts or LoadOptions()
    inputs = list(inputs)
    if not inputs:
        raise UsageError("compare needs at least one INPUT (feature files, `ncli measure --json` lines, or - for stdin)")
    if inputs.count(STDIN) > 1:
        raise UsageError("'-' (stdin) may be given only once")
    runs: list[Run] = []
    for source in inputs:
        records = read_input(source, opts, stdin=stdin)
        if source == STDIN:
            _check_options(records, source, opts)
        for rec in records:
            runs.append(Run(rec, source, len(runs)))
    _epochs_from_names(runs)
    return runs


def with_epoch_from_name(rec: dict) -> dict | None:
    """``rec`` with the epoch its file name tells (``epoch_source: "file name"`` after
    ``epoch``), or None when it stores one or the name tells none."""
    if rec.get("epoch") is not None:
        return None
    epoch = epoch_from_name(rec["file"])
    if epoch is None:
        return None
    out: dict = {}
    for key, value in rec.items():
        out[key] = epoch if key == "epoch" else value
        if key == "epoch":
            out["epoch_source"] = FROM_FILE_NAME
    if "epoch" not in out:
        out.update(epoch=epoch, epoch_source=FROM_FILE_NAME)
    return out


def _epochs_from_names(runs: list[Run]) -> None:
    """Runs that store no epoch take the one their file name tells (one note on stderr)."""
    inferred = []
    for run in runs:
        rec = with_epoch_from_name(run.record)
        if rec is not None:
            run.record = rec
            inferred.append(run)
    if inferred:
        shown = ", ".join(f"{run.record['file']}: {run.record['epoch']}" for run in inferred[:3])
        more = f", ... ({len(inferred)} runs)" if len(inferred) > 3 else ""
        note(f"no epoch stored; taken from the file names ({shown}{more}); their rows say epoch_source '{FROM_FILE_NAME}'")


def _position_key(rec: dict) -> tuple:
    epoch, step = rec.get("epoch"), rec.get("step")
    return (epoch is None, epoch if epoch is not None else 0, step is None, step if step is not None else 0,
            natural_key(rec["file"]))


def order_runs(runs: list[Run], order: str = "epoch") -> list[Run]:
    """``epoch``: by epoch (stored, else read from the file name), then step, then the file
    names in natural order (ep5 before ep20), then the order given (runs without an epoch
    last). ``given``: as given."""
    if order == "given":
        return list(runs)
    if order != "epoch":
        raise ValueError(f"order must be 'epoch' or 'given', not {order!r}")
    return sorted(runs, key=lambda run: (*_position_key(run.record), run.position))


@dataclass
class Group:
    """The runs of one file, side by side (``--by layer``)."""

    file: str
    runs: list[Run] = field(default_factory=list)


def group_by_file(runs: list[Run], order: str = "epoch") -> list[Group]:
    """Groups of one file's runs, groups ordered like runs. Layers in forward order: by the
    ``layer_depth`` ncli extract records, then the runs without one (the penultimate features,
    or files that record no depth) in the order given."""
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(run.record["file"], Group(run.record["file"])).runs.append(run)
    out = list(groups.values())
    for group in out:
        group.runs.sort(key=lambda run: (run.record.get("layer_depth") is None, run.record.get("layer_depth") or 0))
    if order == "epoch":
        out.sort(key=lambda group: (*_position_key(group.runs[0].record), group.runs[0].position))
    return out
