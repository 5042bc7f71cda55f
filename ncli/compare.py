"""Compare runs: load measure records (from feature files or ``ncli measure --json`` lines),
order them, and render the comparison as a table, one JSON object or tidy CSV rows.

An input is a feature file (HDF5, detected by its signature bytes, measured here with
:func:`ncli.measure.measure_file`), a file of JSON lines written by ``ncli measure --json``
(records are used as they are; nothing is measured again), or ``-`` for those lines on stdin.

``by="run"``: one column per run, ordered by the stored epoch, then step, then the order given.
``by="layer"``: the runs of one file's layers side by side (the progressive-collapse view),
one group per file, groups ordered as runs are.

No CLI and no matplotlib here (the command is :mod:`ncli.commands_compare`, the figure
:mod:`ncli.plot`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable

from rich.table import Table

from ncli.errors import InputError, UsageError
from ncli.features.schema import HDF5_SIGNATURE
from ncli.console import fmt
from ncli.measure.render import _clean, run_label_parts

SCHEMA = "ncli.compare/1"
MEASURE_SCHEMA = "ncli.measure/1"
STDIN = "-"

#: per-split numbers of a record, as they appear in the table and the CSV
SPLIT_KEYS = ("num_samples", "accuracy", "ncc_accuracy", "ncc_disagreement")

#: metrics that need no classifier: the rows of the by-layer view
LAYER_METRICS = (
    "nc1",
    "nc1_trace_ratio",
    "cdnv",
    "equinorm_means",
    "equiangular_means",
    "maxangle_means",
    "etf_distance_means",
)
LAYER_SPLIT_KEYS = ("ncc_accuracy",)

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


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


def _is_int_or_none(v) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _is_number_or_none(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def validate_record(obj, where: str) -> dict:
    """Check that ``obj`` is a measure record (schema ncli.measure/1); ``where`` names it."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: not an ncli measure record (a JSON {type(obj).__name__}, expected an object)")
    schema = obj.get("schema")
    if schema != MEASURE_SCHEMA:
        got = "no 'schema' key" if schema is None else f"schema {schema!r}"
        raise InputError(f"{where}: not an ncli measure record ({got}; expected {MEASURE_SCHEMA!r})")
    if not isinstance(obj.get("file"), str):
        raise InputError(f"{where}: measure record without a 'file' string")
    for key in ("epoch", "step"):
        if not _is_int_or_none(obj.get(key)):
            raise InputError(f"{where}: measure record: {key!r} must be an integer or null, not {obj.get(key)!r}")
    for key in ("layer", "train_split", "global_mean"):
        if not (obj.get(key) is None or isinstance(obj.get(key), str)):
            raise InputError(f"{where}: measure record: {key!r} must be a string or null, not {obj.get(key)!r}")
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise InputError(f"{where}: measure record without a 'metrics' object")
    for k, v in metrics.items():
        if not _is_number_or_none(v):
            raise InputError(f"{where}: measure record: metric {k!r} is {v!r}, not a number or null")
    splits = obj.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise InputError(f"{where}: measure record without a 'splits' object")
    for s, d in splits.items():
        if not isinstance(d, dict):
            raise InputError(f"{where}: measure record: split {s!r} is not an object")
        for k in SPLIT_KEYS:
            if not _is_number_or_none(d.get(k)):
                raise InputError(f"{where}: measure record: split {s!r} {k!r} is {d.get(k)!r}, not a number or null")
    return obj


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


def _measure(path: str, opts: LoadOptions) -> list[dict]:
    from ncli.measure.record import list_layers, measure_file

    split = opts.split or "train"
    gm = opts.global_mean or "class"
    layers: list[str | None] = [None]
    if opts.by == "layer":
        # the stored layers in file order, then the penultimate features (the deepest)
        layers = [*list_layers(path, split), None]
    return [
        measure_file(path, split=split, global_mean=gm, layer=lay, chunk_rows=opts.chunk_rows) for lay in layers
    ]


def read_input(source: str, opts: LoadOptions, stdin: IO | None = None) -> list[dict]:
    """The records of one input (a feature file, a JSON-lines file, or ``-``)."""
    if source == STDIN:
        if stdin is None:
            import sys

            stdin = sys.stdin
        if hasattr(stdin, "isatty") and stdin.isatty():
            raise UsageError("'-' reads `ncli measure --json` lines from stdin, but stdin is a terminal; pipe them in")
        raw = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read()
        if isinstance(raw, bytes):
            if _looks_hdf5(raw[:8]):
                raise InputError("stdin: holds an HDF5 file; give feature files by path, not on stdin")
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"stdin: not UTF-8 text ({exc}); expected `ncli measure --json` lines") from None
        return parse_records(raw, STDIN)

    p = Path(source)
    if not p.exists():
        raise InputError(f"{source}: no such file")
    if p.is_dir():
        raise InputError(f"{source}: is a directory (give feature files or a file of `ncli measure --json` lines)")
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise InputError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if _looks_hdf5(head):
        return _measure(source, opts)
    try:
        import h5py  # HDF5 files may start with a user block; the signature is then further in

        if h5py.is_hdf5(source):
            return _measure(source, opts)
    except OSError:
        pass
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(
            f"{source}: neither an HDF5 feature file nor `ncli measure --json` lines (binary, not UTF-8)"
        ) from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read ({exc.strerror or exc})") from None
    records = parse_records(text, source)
    _check_options(records, source, opts)
    return records


def _check_options(records: list[dict], source: str, opts: LoadOptions) -> None:
    """--split / --global-mean asked explicitly must match how given records were measured."""
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
    return runs


# ---------------------------------------------------------------------------------------
# Ordering and grouping
# ---------------------------------------------------------------------------------------


def _position_key(rec: dict) -> tuple:
    e, s = rec.get("epoch"), rec.get("step")
    return (e is None, e if e is not None else 0, s is None, s if s is not None else 0)


def order_runs(runs: list[Run], order: str = "epoch") -> list[Run]:
    """``epoch``: by stored epoch, then step, then the order given (runs without an epoch
    last). ``given``: as given."""
    if order == "given":
        return list(runs)
    if order != "epoch":
        raise ValueError(f"order must be 'epoch' or 'given', not {order!r}")
    return sorted(runs, key=lambda r: (*_position_key(r.record), r.position))


@dataclass
class Group:
    """The runs of one file, side by side (``--by layer``)."""

    file: str
    runs: list[Run] = field(default_factory=list)


def group_by_file(runs: list[Run], order: str = "epoch") -> list[Group]:
    """Groups of one file's runs (layers in the order given), groups ordered like runs."""
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(run.record["file"], Group(run.record["file"])).runs.append(run)
    out = list(groups.values())
    if order == "epoch":
        out.sort(key=lambda g: (*_position_key(g.runs[0].record), g.runs[0].position))
    return out


# ---------------------------------------------------------------------------------------
# Rows, trend, sparkline
# ---------------------------------------------------------------------------------------


def split_names(records: list[dict]) -> list[str]:
    """Union of the split names, train split first, then in first-seen order."""
    names: list[str] = []
    for rec in records:
        for s in rec["splits"]:
            if s not in names:
                names.append(s)
    train = records[0].get("train_split") if records else None
    if train in names:
        names.remove(train)
        names.insert(0, train)
    return names


def row_keys(records: list[dict], by: str = "run") -> list[tuple[str, str | None, str]]:
    """The table's rows as (label, split or None, key): metrics, then per-split numbers."""
    rows: list[tuple[str, str | None, str]] = []
    if by == "layer":
        for k in LAYER_METRICS:
            rows.append((k, None, k))
        for s in split_names(records):
            for k in LAYER_SPLIT_KEYS:
                rows.append((f"{s} {k}", s, k))
        return rows
    seen: list[str] = []
    for rec in records:
        for k in rec["metrics"]:
            if k not in seen:
                seen.append(k)
    rows = [(k, None, k) for k in seen]
    for s in split_names(records):
        for k in SPLIT_KEYS:
            if k == "num_samples":
                continue
            rows.append((f"{s} {k}", s, k))
    return rows


def value_of(rec: dict, split: str | None, key: str):
    if split is None:
        return rec["metrics"].get(key)
    return rec["splits"].get(split, {}).get(key)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def trend_ratio(values: list) -> float | None:
    """last / first over the runs; None when either is missing or the first is 0."""
    if len(values) < 2:
        return None
    first, last = values[0], values[-1]
    if not (_finite(first) and _finite(last)) or first == 0:
        return None
    return last / first


def sparkline(values: list) -> str:
    """One block character per value (space for a missing one). Log scale when all values
    are positive and span a decade or more, so that a collapse reads as a slope."""
    finite = [float(v) for v in values if _finite(v)]
    if not finite:
        return " " * len(values)
    lo, hi = min(finite), max(finite)
    use_log = lo > 0 and hi / lo >= 10

    def t(v: float) -> float:
        return math.log10(v) if use_log else v

    tlo, thi = t(lo), t(hi)
    out = []
    for v in values:
        if not _finite(v):
            out.append(" ")
        elif thi == tlo:
            out.append(SPARK_BLOCKS[len(SPARK_BLOCKS) // 2 - 1])
        else:
            i = int(round((t(float(v)) - tlo) / (thi - tlo) * (len(SPARK_BLOCKS) - 1)))
            out.append(SPARK_BLOCKS[i])
    return "".join(out)


def fmt_trend(ratio: float | None) -> str:
    return "—" if ratio is None else f"×{fmt(float(ratio))}"


def common_folder(records: list[dict]) -> str | None:
    """The folder all runs' files share (shown once above the table), or None."""
    dirs = {os.path.dirname(r["file"]) for r in records}
    if len(dirs) != 1:
        return None
    (d,) = dirs
    return d or None


def run_label(rec: dict, by: str = "run", folder: str | None = None) -> str:
    if by == "layer":
        return rec.get("layer") or "features"
    name = rec["file"]
    if folder is not None and os.path.dirname(name) == folder:
        name = os.path.basename(name)
    return "\n".join(run_label_parts(rec, name=name, with_layer=(by == "run_layer")))


def _run_label_mode(records: list[dict]) -> str:
    """Show the layer in run headers when one file contributes several runs (layers)."""
    files = [r["file"] for r in records]
    return "run_layer" if len(set(files)) < len(files) else "run"


# ---------------------------------------------------------------------------------------
# Table, JSON, CSV
# ---------------------------------------------------------------------------------------


def table_heading(records: list[dict], by: str = "run") -> str | None:
    """The line printed above a table: the file of a by-layer group, or the runs' folder."""
    if by == "layer":
        return run_label(records[0], "run").replace("\n", "  ") + ": layers, input → output"
    folder = common_folder(records)
    return f"runs in {folder}{os.sep}" if folder else None


def _table_cells(records: list[dict], by: str, sparklines: bool) -> tuple[list[str], list[list[str]]]:
    """Headers and string rows of the comparison: metric, one column per run, trend."""
    mode = by if by == "layer" else _run_label_mode(records)
    folder = common_folder(records)
    headers = ["metric", *[run_label(rec, mode, folder) for rec in records]]
    headers.append("trend" if sparklines else "trend\nfirst→last")
    rows = []
    for label, split, key in row_keys(records, by):
        values = [value_of(r, split, key) for r in records]
        trend = fmt_trend(trend_ratio(values))
        if sparklines:
            trend = f"{sparkline(values)} {trend}"
        rows.append([label, *[fmt(v) for v in values], trend])
    return headers, rows


def _make_table(headers: list[str], rows: list[list[str]], cols: list[int]) -> Table:
    table = Table()
    for j in cols:
        justify = "right" if 0 < j < len(headers) - 1 else "left"
        table.add_column(headers[j], justify=justify, no_wrap=True)
    for row in rows:
        table.add_row(*[row[j] for j in cols])
    return table


def compare_table(records: list[dict], *, by: str = "run", sparklines: bool = False) -> Table:
    """Rows = metrics (then per-split numbers), columns = runs (or layers), then the trend.
    Run headers are file names relative to the runs' common folder (:func:`table_heading`)."""
    return compare_tables(records, by=by, sparklines=sparklines)[0]


def compare_tables(
    records: list[dict], *, by: str = "run", sparklines: bool = False, width: int | None = None
) -> list[Table]:
    """The comparison as one table, or, when ``width`` (a terminal's) is too narrow for it,
    as several tables of consecutive runs (each with the metric column; the trend column in
    the last), so that no number is ever cut. ``width=None`` (pipes): always one table."""
    from rich.cells import cell_len

    headers, rows = _table_cells(records, by, sparklines)
    n = len(headers)
    # a column takes its widest line + 2 padding + 1 border; the table 1 more border
    col_w = [max(cell_len(line) for cell in [headers[j], *[r[j] for r in rows]] for line in cell.split("\n")) + 3 for j in range(n)]
    if width is None or 1 + sum(col_w) <= width:
        return [_make_table(headers, rows, list(range(n)))]
    pages: list[list[int]] = []
    page: list[int] = []
    used = 1 + col_w[0]
    for j in range(1, n - 1):
        room = width - (col_w[-1] if j == n - 2 else 0)
        if page and used + col_w[j] > room:
            pages.append(page)
            page, used = [], 1 + col_w[0]
        page.append(j)
        used += col_w[j]
    if page and used + col_w[-1] > width:
        pages.append(page)
        page = []
    pages.append(page)
    out = []
    for k, page in enumerate(pages):
        cols = [0, *page] + ([n - 1] if k == len(pages) - 1 else [])
        out.append(_make_table(headers, rows, cols))
    return out


def trends(records: list[dict], by: str = "run") -> dict:
    """{row label: last/first ratio} for the JSON output."""
    return {label: trend_ratio([value_of(r, s, k) for r in records]) for label, s, k in row_keys(records, by)}


def compare_object(runs: list[Run], *, by: str = "run", order: str = "epoch") -> dict:
    """The ``ncli.compare/1`` object: the runs' measure records in order, plus trends."""
    obj: dict = {"schema": SCHEMA, "by": by, "order": order}
    if by == "layer":
        groups = group_by_file(runs, order)
        obj["runs"] = [r.record for g in groups for r in g.runs]
        obj["groups"] = [
            {
                "file": g.file,
                "layers": [run_label(r.record, "layer") for r in g.runs],
                "trend": trends([r.record for r in g.runs], "layer"),
            }
            for g in groups
        ]
    else:
        records = [r.record for r in runs]
        obj["runs"] = records
        obj["trend"] = trends(records, "run")
    return obj


def compare_json(obj: dict) -> str:
    """One line of strict, deterministic JSON at full float precision."""
    return json.dumps(_clean(obj), allow_nan=False, ensure_ascii=False)


CSV_COLUMNS = ("run", "epoch", "step", "layer", "split", "metric", "value")


def _csv_value(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return repr(v)  # shortest round-trip representation: full precision
    return v


def csv_rows(records: list[dict]) -> list[dict]:
    """Tidy long rows: one per (run, split, metric). Metrics of the class statistics carry the
    split they come from (the train split); per-split numbers carry their split. The headline
    ``ncc_disagreement`` is the test split's row (the train split's when there is no test)."""
    rows = []
    for rec in records:
        base = {"run": rec["file"], "epoch": rec.get("epoch"), "step": rec.get("step"), "layer": rec.get("layer")}
        train = rec.get("train_split", "train")
        for k, v in rec["metrics"].items():
            if k == "ncc_disagreement":
                continue  # = the per-split row below
            rows.append({**base, "split": train, "metric": k, "value": v})
        for s, d in rec["splits"].items():
            for k in SPLIT_KEYS:
                if k in d:
                    rows.append({**base, "split": s, "metric": k, "value": d[k]})
    return rows


def compare_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in csv_rows(records):
        w.writerow({k: ("" if row[k] is None else _csv_value(row[k])) for k in CSV_COLUMNS})
    return buf.getvalue()


def check_plot_path(path: str | os.PathLike, force: bool) -> Path:
    """Fail before any work when ``--plot`` cannot be written as asked."""
    from ncli.outputs import check_output_path

    out = Path(path)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--plot {path}: the file name must end in .png, .pdf or .svg")
    return check_output_path(out, force)
