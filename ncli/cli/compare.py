"""``ncli compare``: many runs side by side. Thin: options in, :mod:`ncli.compare` does the
work."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ncli.cli.app import command
from ncli.cli.options import ALLOW_EXTERNAL_HELP, GlobalMean
from ncli.console import done, note
from ncli.errors import UsageError


class Order(str, Enum):
    epoch = "epoch"
    given = "given"


class By(str, Enum):
    run = "run"
    layer = "layer"


@command()
def compare(
    inputs: Optional[List[str]] = typer.Argument(
        None,
        metavar="INPUT",
        help="Feature or statistics files (measured here), files of `ncli measure --json` lines, or - for those lines on stdin.",
        show_default=False,
    ),
    json_out: bool = typer.Option(False, "--json", help='Print one JSON object {"schema": "ncli.compare/1", "runs": [...], ...}.'),
    csv_out: bool = typer.Option(False, "--csv", help="Print tidy CSV rows: run, epoch, step, layer, split, metric, value."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", metavar="OUT.{png,pdf,svg}", help="Also draw the paper's panels against epoch into this file (needs matplotlib: pip install 'neural-collapse-cli[plot]')."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing --plot file."),
    order: Order = typer.Option(Order.epoch, "--order", help="epoch: by stored epoch, then step, then as given; given: as given."),
    by: By = typer.Option(By.run, "--by", help="run: a column per run; layer: one file's stored layers side by side."),
    split: Optional[str] = typer.Option(
        None, "--split", "-s", help="For feature files: split whose class statistics define the metrics (default: train)."
    ),
    global_mean: Optional[GlobalMean] = typer.Option(
        None, "--global-mean", help="For feature files: mu_G = mean of class means ('class', default) or of all samples ('sample')."
    ),
    chunk_rows: Optional[int] = typer.Option(None, "--chunk-rows", min=1, help="Rows read per chunk when measuring feature files."),
    allow_external: bool = typer.Option(False, "--allow-external", help=ALLOW_EXTERNAL_HELP),
    min_per_class: Optional[int] = typer.Option(
        None, "--min-per-class", min=1, metavar="K",
        help="For feature files: measure only the classes with at least K train samples.",
    ),
    ood: Optional[str] = typer.Option(
        None, "--ood", metavar="SPLIT", help="For feature files: the out-of-distribution split (NC5)."
    ),
) -> None:
    """Compare runs: metric trends across checkpoints, as a table, JSON, CSV or the paper's figure.

    Runs are ordered by the epoch stored in each file (then step, then the order given). The table has a row per metric, a column per run and a trend column (last/first ratio, with a sparkline on terminals). Records given as JSON lines are used as they are, not measured again.

    Examples:

    \b
      ncli compare runs/*.h5 --plot collapse.png
      ncli measure runs/*.h5 --json | ncli compare - --csv > trends.csv
      ncli compare run.h5 --by layer
    """
    from ncli.compare.load import LoadOptions, group_by_file, load_runs, order_runs

    if json_out and csv_out:
        raise UsageError("--json and --csv exclude each other; pick one")
    if not inputs:
        raise UsageError("compare needs at least one INPUT (feature files, `ncli measure --json` lines, or - for stdin)")
    plot_path = None
    if plot is not None:
        from ncli.compare.plot import check_plot_path, require_matplotlib

        plot_path = check_plot_path(plot, force)
        from ncli.outputs import same_file

        for source in inputs:
            if source != "-" and same_file(source, plot_path):
                raise UsageError(f"--plot {plot}: is also an input; the figure would replace it")
        require_matplotlib()  # fail before measuring anything

    opts = LoadOptions(
        split=split, global_mean=global_mean.value if global_mean is not None else None, by=by.value,
        chunk_rows=chunk_rows, min_per_class=min_per_class, ood=ood, allow_external=allow_external,
    )
    runs = order_runs(load_runs(inputs, opts), order.value)
    _note_mixed(runs)
    for run in runs:
        for text in run.record.get("notes", ()):
            note(f"{run.record['file']}: {text}")

    if by is By.layer:
        groups = group_by_file(runs, order.value)
        ordered = [r for g in groups for r in g.runs]
    else:
        groups = None
        ordered = runs
    records = [r.record for r in ordered]

    if json_out:
        from ncli.compare.export import compare_json, compare_object

        sys.stdout.write(compare_json(compare_object(ordered, by=by.value, order=order.value)) + "\n")
    elif csv_out:
        from ncli.compare.export import compare_csv

        sys.stdout.write(compare_csv(records))
    else:
        from rich.text import Text

        from ncli.compare.table import compare_tables, table_heading
        from ncli.console import make_console

        console = make_console()
        spark = console.is_terminal
        tables = [[r.record for r in g.runs] for g in groups] if groups is not None else [records]
        for recs in tables:
            heading = table_heading(recs, by.value)
            if heading:
                console.print(Text(heading))
            for table in compare_tables(recs, by=by.value, sparklines=spark, width=console.width if spark else None):
                console.print(table)
    sys.stdout.flush()

    if plot_path is not None:
        from ncli.compare.plot import build_figure, build_layer_figure, save_figure

        if groups is not None:
            fig = build_layer_figure([(_group_label(group), [run.record for run in group.runs]) for group in groups])
        else:
            fig = build_figure(records)
        save_figure(fig, plot_path, force=force)
        done(f"wrote {plot_path}")


def _group_label(group) -> str:
    rec = group.runs[0].record
    return f"epoch {rec['epoch']}" if rec.get("epoch") is not None else group.file


def _note_mixed(runs) -> None:
    """Runs measured differently are still compared, with a note on stderr."""
    for key in ("global_mean", "train_split", "min_per_class"):
        seen = sorted({str(r.record.get(key)) for r in runs if r.record.get(key) is not None})
        if len(seen) > 1:
            note(f"the runs differ in {key} ({', '.join(seen)})")
