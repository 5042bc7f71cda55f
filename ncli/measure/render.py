"""Rendering of measure records: JSON lines and rich tables.

Tables go to stdout. When stdout is not a terminal the console is made wide enough that no
number is ever cut or wrapped; the table shows 6 significant digits, ``--json`` gives full
precision. Names from files (file, layer, split, class names) are shown as text: control
characters escaped, never read as rich markup.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from ncli.console import fmt, literal, make_console, plain_text, printable
from ncli.measure.registry import CAPTIONS, SPLIT_NUMBERS

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


def metrics_table(records: list[dict]) -> Table:
    from rich.table import Table

    single = len(records) == 1
    table = Table()
    table.add_column("metric", no_wrap=True)
    table.add_column("meaning", no_wrap=True, style="dim")
    for rec in records:
        head = "value" if single else "\n".join(run_label_parts(rec))
        table.add_column(literal(head), justify="right", no_wrap=True)
    for key in records[0]["metrics"]:
        table.add_row(plain_text(key), CAPTIONS.get(key, ""), *[fmt(r["metrics"].get(key)) for r in records])
    return table


def splits_heading(rec: dict, with_file: bool = False) -> str:
    title = f"splits (class statistics from {printable(repr(rec.get('train_split', 'train')))})"
    if rec.get("ood"):
        ood_name = printable(repr(rec["ood"]["split"]))
        title += f"; out-of-distribution split {ood_name} ({rec['ood']['num_samples']:,} samples) for NC5 only"
    return f"{_title(rec)}: {title}" if with_file else title


def splits_table(rec: dict) -> Table:
    from rich.table import Table

    table = Table()
    table.add_column("split", justify="left", no_wrap=True)
    for number in SPLIT_NUMBERS:
        table.add_column(number.column or number.key, justify="right", no_wrap=True)
    for name, values in rec["splits"].items():
        table.add_row(plain_text(name), *[fmt(values[number.key]) for number in SPLIT_NUMBERS])
    return table


def per_class_table(rec: dict) -> Table:
    from rich.table import Table

    splits = list(rec["splits"])
    table = Table()
    per_split = [number for number in SPLIT_NUMBERS if number.per_class is not None]
    cols = ["class", "name", "N_c", "σ_c²", "‖μ_c−μ_G‖", "‖w_c‖", "cos(w_c, μ_c−μ_G)"]
    cols += [f"{number.per_class_column} {s}" for number in per_split for s in splits]
    for col in cols:
        table.add_column(col, justify="left" if col == "name" else "right", no_wrap=True)
    for row in rec["per_class"]:
        table.add_row(
            str(row["class"]),
            plain_text(row.get("name") or ""),
            fmt(row["num_samples"]),
            fmt(row["sigma2"]),
            fmt(row["mean_dist"]),
            fmt(row["classifier_norm"]),
            fmt(row["cos_classifier_mean"]),
            *[fmt(row[number.key].get(s)) for number in per_split for s in splits],
        )
    return table


def print_records(records: list[dict], *, per_class: bool = False, file=None) -> None:
    """Tables of one or more records. Headings are printed outside the tables so that they
    are never wrapped to the table's width."""
    console = make_console(file)
    if not records:
        return
    several = len(records) > 1
    if not several:
        console.print(literal(_title(records[0])), highlight=False)
    console.print(metrics_table(records))
    for rec in records:
        console.print(literal(splits_heading(rec, with_file=several)), highlight=False)
        console.print(splits_table(rec))
        if per_class and "per_class" in rec:
            where = f": {printable(rec['file'])}" if several else ""
            console.print(literal(f"per class (train statistics){where}"), highlight=False)
            console.print(per_class_table(rec))
    if any(not rec.get("has_classifier", True) for rec in records):
        console.print("— : not available (the file stores no classifier)", style="dim", highlight=False)
