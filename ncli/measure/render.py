"""Rendering of measure records: JSON lines and rich tables.

Tables go to stdout. When stdout is not a terminal the console is made wide enough that no
number is ever cut or wrapped; the table shows 6 significant digits, ``--json`` gives full
precision. Names from files (file, layer, split, class names) are shown as text: control
characters escaped, never read as rich markup.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ncli.console import fmt, literal, make_console, printable
from ncli.measure.registry import CAPTIONS, HEADLINE_METRICS, SPLIT_NUMBERS, headline_split

if TYPE_CHECKING:  # rich is imported when a table is drawn (`--json` runs never load it)
    from rich.table import Table


def nonfinite_to_null(obj):
    """Non-finite floats become None so that the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nonfinite_to_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nonfinite_to_null(v) for v in obj]
    return obj


def record_json(record: dict) -> str:
    """One line of strict JSON at full float precision."""
    return json.dumps(nonfinite_to_null(record), allow_nan=False, ensure_ascii=False)


def run_label_parts(rec: dict, name: str | None = None, with_layer: bool = True) -> list[str]:
    """[file (or ``name``), "layer L", "epoch E", "step S"] for headings and column heads, with
    control characters escaped (:func:`ncli.console.printable`)."""
    bits = [printable(rec["file"] if name is None else name)]
    if with_layer and rec.get("layer"):
        bits.append(f"layer {printable(rec['layer'])}")
    if rec.get("epoch") is not None:
        bits.append(f"epoch {rec['epoch']}")
    if rec.get("step") is not None:
        bits.append(f"step {rec['step']}")
    return bits


def classes_measured(rec: dict) -> str | None:
    """"C' of C classes measured (≥ K train samples each)" when not every class was."""
    measured, total = rec.get("classes_measured"), rec.get("num_classes")
    if measured is None or measured == total:
        return None
    rule = f" (≥ {rec['min_per_class']} train samples each)" if rec.get("min_per_class") else ""
    return f"{measured:,} of {total:,} classes measured{rule}"


def _title(rec: dict) -> str:
    return "  ".join(run_label_parts(rec) + [part for part in (classes_measured(rec),) if part])


LABEL_MIN = 12  # a name column is never narrowed below this (it wraps; numbers never do)
HEADER_WORD_MAX = 16  # a number column's head folds only longer words (paths) when the terminal is narrow
PADDING = 3  # a column's two spaces of padding and its border; a table adds one more border


@dataclass
class Column:
    """One column of a measure table: a name column (``number=False``: wraps when the
    terminal is narrow, repeated on every page; ``optional``: dropped rather than narrowed
    below ``least``) or a number column (never wrapped or cut)."""

    header: str
    cells: list[str]
    number: bool = True
    style: str | None = None
    least: int = LABEL_MIN
    optional: bool = False

    def natural(self) -> int:
        """Width of its widest line, head included."""
        return max(_line_width(text) for text in [self.header, *self.cells])

    def narrowest(self) -> int:
        """A name column's least width (its natural width when that is less)."""
        return min(self.natural(), self.least)

    def compact(self) -> int:
        """Narrowest width that shows every number whole, its head folded at spaces."""
        words = [word for line in self.header.split("\n") for word in line.split()] or [""]
        head = min(max(_line_width(word) for word in words), HEADER_WORD_MAX)
        return max([head, *[_line_width(text) for text in self.cells]])


def _line_width(text: str) -> int:
    from rich.cells import cell_len

    return max(cell_len(line) for line in text.split("\n"))


def _pages(widths: list[int], room: int) -> list[list[int]]:
    """Number columns (by index) packed in order into pages of at most ``room`` cells."""
    pages: list[list[int]] = [[]]
    used = 0
    for j, width in enumerate(widths):
        if pages[-1] and used + width + PADDING > room:
            pages.append([])
            used = 0
        pages[-1].append(j)
        used += width + PADDING
    return pages


def _label_widths(labels: list[Column], room: int) -> list[int]:
    """Widths of the name columns in ``room`` cells (padding included): each its least, the
    rest given to the columns that must stay first, in order, up to their natural widths."""
    widths = [col.narrowest() for col in labels]
    spare = room - sum(widths) - PADDING * len(labels)
    for k in sorted(range(len(labels)), key=lambda k: labels[k].optional):
        extra = max(0, min(labels[k].natural() - widths[k], spare))
        widths[k] += extra
        spare -= extra
    return widths


def fitted_tables(columns: list[Column], width: int | None) -> list[Table]:
    """``columns`` as one table, or, when ``width`` (a terminal's) is too narrow for it, as
    one whose names wrap, or as several tables of consecutive number columns, each with the
    name columns: no number is ever cut or wrapped. An optional name column (a metric's
    meaning) is kept only where it still gets its least width beside the others' natural
    ones. ``width=None`` (not a terminal): one table, nothing wrapped."""
    labels = [col for col in columns if not col.number]
    numbers = [col for col in columns if col.number]
    full = 1 + sum(col.natural() + PADDING for col in columns)
    if width is None or full <= width or not numbers:
        return [_table(labels, [col.natural() for col in labels], numbers, [col.natural() for col in numbers])]
    required = [col for col in labels if not col.optional]
    least = 1 + sum(col.narrowest() + PADDING for col in required)
    natural, compact = [col.natural() for col in numbers], [col.compact() for col in numbers]
    pages, widths = _pages(natural, width - least), natural
    if len(_pages(compact, width - least)) < len(pages):
        pages, widths = _pages(compact, width - least), compact
    used = [1 + sum(widths[j] + PADDING for j in page) for page in pages]
    spare = width - max(used) - sum(col.natural() + PADDING for col in required)
    kept = [col for col in labels if not col.optional or spare >= col.least + PADDING]
    return [
        _table(kept, _label_widths(kept, width - room), [numbers[j] for j in page], [widths[j] for j in page])
        for page, room in zip(pages, used)
    ]


def _table(labels: list[Column], label_widths: list[int], numbers: list[Column], number_widths: list[int]) -> Table:
    from rich.table import Table

    table = Table()
    for col, width in zip(labels, label_widths):
        table.add_column(literal(col.header), justify="left", width=width, overflow="fold", style=col.style)
    for col, width in zip(numbers, number_widths):
        table.add_column(literal(col.header), justify="right", width=width, overflow="fold", style=col.style)
    for row in zip(*[col.cells for col in labels + numbers]):
        table.add_row(*[literal(cell) for cell in row])
    return table


def _headline_caption(records: list[dict]) -> str:
    """Which split the headline numbers (``ncc_disagreement``) are from."""
    names = []
    for rec in records:
        name = headline_split(rec["splits"], rec.get("train_split", "train"))
        if name not in names:
            names.append(name)
    return ", " + " or ".join(printable(repr(name)) for name in names) + " split"


def metrics_columns(records: list[dict]) -> list[Column]:
    keys = list(records[0]["metrics"])
    headline = _headline_caption(records)
    captions = [CAPTIONS.get(key, "") + (headline if key in HEADLINE_METRICS else "") for key in keys]
    columns = [
        Column("metric", [printable(key) for key in keys], number=False),
        Column("meaning", captions, number=False, style="dim", least=16, optional=True),
    ]
    single = len(records) == 1
    folder = common_folder(records)
    for rec in records:
        name = os.path.basename(rec["file"]) if folder else None
        head = "value" if single else "\n".join(run_label_parts(rec, name=name))
        columns.append(Column(head, [fmt(rec["metrics"].get(key)) for key in keys]))
    return columns


def common_folder(records: list[dict]) -> str | None:
    """The folder all records' files are in, when there are several and they share one (the
    column heads then name the files without it)."""
    folders = {os.path.dirname(rec["file"]) for rec in records}
    return folders.pop() if len(records) > 1 and len(folders) == 1 and "" not in folders else None


def global_mean_line(records: list[dict]) -> str | None:
    """Which μ_G the metrics were measured with (``--global-mean``)."""
    kinds = []
    for rec in records:
        if rec.get("global_mean") and rec["global_mean"] not in kinds:
            kinds.append(rec["global_mean"])
    if not kinds:
        return None
    return "μ_G: " + "; ".join(f"{GLOBAL_MEANS.get(kind, printable(kind))} (--global-mean {printable(kind)})" for kind in kinds)


GLOBAL_MEANS = {"class": "the mean of the class means", "sample": "the mean of all samples"}


def splits_heading(rec: dict, with_file: bool = False) -> str:
    title = f"splits (class statistics from {printable(repr(rec.get('train_split', 'train')))})"
    if rec.get("ood"):
        ood_name = printable(repr(rec["ood"]["split"]))
        title += f"; out-of-distribution split {ood_name} ({rec['ood']['num_samples']:,} samples) for NC5 only"
    return f"{_title(rec)}: {title}" if with_file else title


def splits_columns(rec: dict) -> list[Column]:
    names = list(rec["splits"])
    columns = [Column("split", [printable(name) for name in names], number=False)]
    for number in SPLIT_NUMBERS:
        columns.append(Column(number.column or number.key, [fmt(rec["splits"][name][number.key]) for name in names]))
    return columns


def per_class_columns(rec: dict) -> list[Column]:
    """The per-class table; the name column only when the file names its classes."""
    splits = list(rec["splits"])
    rows = rec["per_class"]
    columns = [Column("class", [str(row["class"]) for row in rows], number=False)]
    if any(row.get("name") for row in rows):
        columns.append(Column("name", [printable(row.get("name") or "") for row in rows], number=False))
    for head, key in (
        ("N_c", "num_samples"), ("σ_c²", "sigma2"), ("‖μ_c−μ_G‖", "mean_dist"), ("‖w_c‖", "classifier_norm"),
        ("cos(w_c, μ_c−μ_G)", "cos_classifier_mean"),
    ):
        columns.append(Column(head, [fmt(row[key]) for row in rows]))
    for number in SPLIT_NUMBERS:
        if number.per_class is not None:
            for split in splits:
                head = f"{number.per_class_column} {printable(split)}"
                columns.append(Column(head, [fmt(row[number.key].get(split)) for row in rows]))
    return columns


def print_records(records: list[dict], *, per_class: bool = False, layers: list | None = None, file=None) -> None:
    """Tables of one or more records, fitted to the terminal's width (:func:`fitted_tables`).
    Headings are printed outside the tables so that they are never wrapped to a table's
    width. ``layers``: per record, the stored layer it measures (``--layer``), or None."""
    console = make_console(file)
    if not records:
        return
    width = console.width if console.is_terminal else None
    several = len(records) > 1
    folder = common_folder(records)
    if not several:
        console.print(literal(_title(records[0])), highlight=False)
    elif folder:
        console.print(literal(f"files in {printable(folder)}{os.sep}"), highlight=False)
    _print_tables(console, metrics_columns(records), width)
    mean = global_mean_line(records)
    if mean:
        console.print(literal(mean), style="dim", highlight=False)
    for rec in records:
        console.print(literal(splits_heading(rec, with_file=several)), highlight=False)
        _print_tables(console, splits_columns(rec), width)
        if per_class and "per_class" in rec:
            where = f": {printable(rec['file'])}" if several else ""
            console.print(literal(f"per class (train statistics){where}"), highlight=False)
            _print_tables(console, per_class_columns(rec), width)
    layers = layers if layers is not None else [None] * len(records)
    missing = {layer is not None for rec, layer in zip(records, layers) if not rec.get("has_classifier", True)}
    for of_layer in sorted(missing):
        why = "a stored layer has no classifier" if of_layer else "the file stores no classifier"
        console.print(f"— : not available ({why})", style="dim", highlight=False)


def _print_tables(console, columns: list[Column], width: int | None) -> None:
    for table in fitted_tables(columns, width):
        console.print(table)
