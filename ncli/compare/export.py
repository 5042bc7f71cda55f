"""Compare's machine-readable outputs: the ``ncli.compare/1`` JSON object (the runs' measure
records in order, plus trends) and tidy CSV rows (one per run, split and metric)."""

from __future__ import annotations

import csv
import io
import json
import math

from ncli.compare import SCHEMA
from ncli.compare.load import Run, group_by_file
from ncli.compare.table import run_label, trends
from ncli.console import printable
from ncli.measure.registry import HEADLINE_METRICS, SPLIT_KEYS
from ncli.measure.render import nonfinite_to_null


def compare_object(runs: list[Run], *, by: str = "run", order: str = "epoch") -> dict:
    """The ``ncli.compare/1`` object: the runs' measure records in order, plus trends."""
    obj: dict = {"schema": SCHEMA, "by": by, "order": order}
    if by == "layer":
        groups = group_by_file(runs, order)
        obj["runs"] = [run.record for group in groups for run in group.runs]
        obj["groups"] = [
            {
                "file": group.file,
                "layers": [run_label(run.record, "layer") for run in group.runs],
                "trend": trends([run.record for run in group.runs], "layer"),
            }
            for group in groups
        ]
    else:
        records = [run.record for run in runs]
        obj["runs"] = records
        obj["trend"] = trends(records, "run")
    return obj


def compare_json(obj: dict) -> str:
    """One line of strict, deterministic JSON at full float precision."""
    return json.dumps(nonfinite_to_null(obj), allow_nan=False, ensure_ascii=False)


CSV_COLUMNS = ("run", "epoch", "step", "layer", "split", "metric", "value")
# A text cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV injection"):
# it is written with a leading apostrophe, which spreadsheets show as text. Numbers are not text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell that no spreadsheet runs as a formula and that stays on its row: control
    characters escaped (a bare CR would end the row for readers), formula starts quoted."""
    text = printable(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv_value(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return repr(v)  # shortest round-trip representation: full precision
    if isinstance(v, str):
        return csv_text(v)
    return v


def csv_rows(records: list[dict]) -> list[dict]:
    """Tidy long rows: one per (run, split, metric). Metrics of the class statistics carry the
    split they come from (the train split); per-split numbers carry their split. Headline
    metrics (NC4's disagreement) are left out: they repeat the test split's row (the train
    split's when there is no test)."""
    rows = []
    for rec in records:
        base = {
            "run": rec["file"], "epoch": rec.get("epoch"), "epoch_source": rec.get("epoch_source"), "step": rec.get("step"),
            "layer": rec.get("layer"),
        }
        train = rec.get("train_split", "train")
        for k, v in rec["metrics"].items():
            if k in HEADLINE_METRICS:
                continue  # = a per-split row below
            rows.append({**base, "split": train, "metric": k, "value": v})
        for split, values in rec["splits"].items():
            for k in SPLIT_KEYS:
                if k in values:
                    rows.append({**base, "split": split, "metric": k, "value": values[k]})
    return rows


def csv_columns(records: list[dict]) -> tuple[str, ...]:
    """CSV_COLUMNS, with ``epoch_source`` after ``epoch`` when an epoch was read from a file name."""
    if not any(rec.get("epoch_source") for rec in records):
        return CSV_COLUMNS
    at = CSV_COLUMNS.index("epoch") + 1
    return (*CSV_COLUMNS[:at], "epoch_source", *CSV_COLUMNS[at:])


def compare_csv(records: list[dict]) -> str:
    columns = csv_columns(records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(records):
        writer.writerow({k: ("" if row[k] is None else _csv_value(row[k])) for k in columns})
    return buf.getvalue()
