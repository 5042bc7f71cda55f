"""The comparison as rows: metrics (then per-split numbers) by runs, last/first trends,
sparklines, and rich tables that split over several when a terminal is too narrow (no number
is ever cut). rich is imported only when a table is drawn. Names from records (files, layers,
splits, metric keys) are shown as text: control characters escaped, never read as markup.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from ncli.console import fmt, literal, printable
from ncli.measure.registry import LAYER_METRICS, LAYER_SPLIT_KEYS, SPLIT_ROW_KEYS
from ncli.measure.render import run_label_parts

if TYPE_CHECKING:
    from rich.table import Table

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
CLASSES_MEASURED = "classes_measured"  # a row of its own when some run measured fewer than its C classes


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
    if any(r.get("classes_measured", r.get("num_classes")) != r.get("num_classes") for r in records):
        rows.insert(0, (CLASSES_MEASURED, None, CLASSES_MEASURED))  # --min-per-class left classes out
    for s in split_names(records):
        for k in SPLIT_ROW_KEYS:
            rows.append((f"{s} {k}", s, k))
    return rows


def value_of(rec: dict, split: str | None, key: str):
    if key == CLASSES_MEASURED:
        return rec.get(key, rec.get("num_classes"))
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

    def scaled(v: float) -> float:
        return math.log10(v) if use_log else v

    tlo, thi = scaled(lo), scaled(hi)
    out = []
    for v in values:
        if not _finite(v):
            out.append(" ")
        elif thi == tlo:
            out.append(SPARK_BLOCKS[len(SPARK_BLOCKS) // 2 - 1])
        else:
            level = int(round((scaled(float(v)) - tlo) / (thi - tlo) * (len(SPARK_BLOCKS) - 1)))
            out.append(SPARK_BLOCKS[level])
    return "".join(out)


def fmt_trend(ratio: float | None) -> str:
    return "—" if ratio is None else f"×{fmt(float(ratio))}"


def common_folder(records: list[dict]) -> str | None:
    """The folder all runs' files share (shown once above the table), or None."""
    dirs = {os.path.dirname(r["file"]) for r in records}
    if len(dirs) != 1:
        return None
    (folder,) = dirs
    return folder or None


def run_label(rec: dict, by: str = "run", folder: str | None = None) -> str:
    if by == "layer":
        return rec.get("layer") or "features"  # as recorded (the JSON output); shown via printable
    name = rec["file"]
    if folder is not None and os.path.dirname(name) == folder:
        name = os.path.basename(name)
    return "\n".join(run_label_parts(rec, name=name, with_layer=(by == "run_layer")))


def _run_label_mode(records: list[dict]) -> str:
    """Show the layer in run headers when one file contributes several runs (layers)."""
    files = [r["file"] for r in records]
    return "run_layer" if len(set(files)) < len(files) else "run"


def table_heading(records: list[dict], by: str = "run") -> str | None:
    """The line printed above a table: the file of a by-layer group, or the runs' folder."""
    if by == "layer":
        return run_label(records[0], "run").replace("\n", "  ") + ": layers, input → output"
    folder = common_folder(records)
    return f"runs in {printable(folder)}{os.sep}" if folder else None


def _table_cells(records: list[dict], by: str, sparklines: bool) -> tuple[list[str], list[list[str]]]:
    """Headers and string rows of the comparison: metric, one column per run, trend."""
    mode = by if by == "layer" else _run_label_mode(records)
    folder = common_folder(records)
    labels = [run_label(rec, mode, folder) for rec in records]  # by run: already printable
    headers = ["metric", *[printable(label) if mode == "layer" else label for label in labels]]
    headers.append("trend" if sparklines else "trend\nfirst→last")
    rows = []
    for label, split, key in row_keys(records, by):
        values = [value_of(r, split, key) for r in records]
        trend = fmt_trend(trend_ratio(values))
        if sparklines:
            trend = f"{sparkline(values)} {trend}"
        rows.append([printable(label), *[fmt(v) for v in values], trend])
    return headers, rows


def _make_table(headers: list[str], rows: list[list[str]], cols: list[int]) -> Table:
    from rich.table import Table

    table = Table()
    for j in cols:
        justify = "right" if 0 < j < len(headers) - 1 else "left"
        table.add_column(literal(headers[j]), justify=justify, no_wrap=True)
    for row in rows:
        table.add_row(*[literal(row[j]) for j in cols])
    return table


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
