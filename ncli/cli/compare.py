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


@command("Many runs side by side: trends, JSON/CSV, figures.")
def compare(
    inputs: Optional[List[str]] = typer.Argument(
        None,
        metavar="INPUT...",
        help="Feature or statistics files (measured here), files of `ncli measure --json` lines, or - for those lines on stdin.",
        show_default=False,
    ),
    json_out: bool = typer.Option(False, "--json", help='Print one JSON object {"schema": "ncli.compare/1", "runs": [...], ...}.'),
    csv_out: bool = typer.Option(False, "--csv", help="Print tidy CSV rows: run, epoch, step, layer, split, metric, value."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", metavar="OUT.{png,pdf,svg}", help="Also draw the paper's panels against epoch into this file (needs matplotlib: pip install 'neural-collapse-cli[plot]')."
    ),
    group: Optional[str] = typer.Option(
        None, "--group", metavar="REGEX",
        help="For --plot and --plot-per-class: which inputs form one training run (a colour or a row each). A regular expression searched in each file path; its first group (or the whole match) names the run, e.g. --group '(mlp|cnn)_epoch' or --group 'runs/([^/]+)/'. Default: a run name stored in the records, else the folder.",
    ),
    plot_per_class: Optional[Path] = typer.Option(
        None, "--plot-per-class", metavar="OUT.{png,pdf,svg}",
        help="Also draw per-class heat maps (class x checkpoint, a block per run) of cos(w_c, mu_c - mu_G), sigma_c^2/||mu_c - mu_G||^2, ||mu_c - mu_G|| over its mean and NCC disagreement, and the pairwise cos(mu_c, mu_c') and cos(w_c, mu_c') at the last checkpoint (feature files of up to 64 classes); above 64 classes the 64 least collapsed. Feature files are measured with --per-class; JSON lines need `ncli measure --per-class`.",
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing --plot / --plot-per-class file."),
    order: Order = typer.Option(Order.epoch, "--order", help="epoch: by epoch (stored, else from the file name), then step, then the names in natural order; given: as given."),
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

    Runs are ordered by the epoch stored in each file, else the number in its name (ckpt_20.h5: 20; said on stderr, recorded as epoch_source), then step, then the names in natural order (ep5 before ep20). The table has a row per metric, a column per run and a trend column (last/first ratio, with a sparkline on terminals). Records given as JSON lines are used as they are, not measured again.

    The figure (--plot) draws one line per training run: the files of one folder by default, or as --group names them; a dotted line marks the epoch where a run's train accuracy first reaches 1 (train error 0: the terminal phase).

    Examples:

    \b
      ncli compare runs/*.h5 --plot collapse.png
      ncli compare mlp/*.h5 cnn/*.h5 --plot nc.png --plot-per-class classes.png
      ncli compare fixtures/features/*.h5 --group '(mlp|cnn)_epoch' --plot nc.pdf
      ncli measure runs/*.h5 --json | ncli compare - --csv > trends.csv
      ncli compare run.h5 --by layer
    """
    from ncli.compare.load import LoadOptions, group_by_file, load_runs, order_runs

    if json_out and csv_out:
        raise UsageError("--json and --csv exclude each other; pick one")
    if not inputs:
        raise UsageError("compare needs at least one INPUT (feature files, `ncli measure --json` lines, or - for stdin)")
    plot_path = _figure_path("--plot", plot, inputs, force)
    per_class_path = _figure_path("--plot-per-class", plot_per_class, inputs, force)
    if plot_path is not None and per_class_path is not None and plot_path.resolve() == per_class_path.resolve():
        raise UsageError("--plot and --plot-per-class name the same file")
    pattern = None
    if group is not None:
        from ncli.compare.series import group_pattern

        if plot_path is None and per_class_path is None:
            raise UsageError("--group groups the runs of a figure: give --plot or --plot-per-class")
        if by is By.layer:
            raise UsageError("--group does not apply to --by layer (its figure has a line per file)")
        pattern = group_pattern(group)
    if per_class_path is not None and by is By.layer:
        raise UsageError("--plot-per-class draws checkpoints of runs: it does not apply to --by layer")

    opts = LoadOptions(
        split=split, global_mean=global_mean.value if global_mean is not None else None, by=by.value,
        chunk_rows=chunk_rows, min_per_class=min_per_class, ood=ood, allow_external=allow_external,
        per_class=per_class_path is not None,
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
    series = per_class_fig = None
    if groups is None and (plot_path is not None or per_class_path is not None):
        from ncli.compare.series import group_series

        series = group_series(records, pattern)  # a --group that misses an input fails before any output
        if per_class_path is not None:
            from ncli.compare.plot_per_class import build_per_class_figure

            per_class_fig = build_per_class_figure(series)  # so do records without per-class rows

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

    if plot_path is None and per_class_path is None:
        return
    from ncli.compare.plot import save_figure

    if plot_path is not None:
        if groups is not None:
            from ncli.compare.plot_layers import build_layer_figure

            layer_fig = build_layer_figure([(_group_label(group), [run.record for run in group.runs]) for group in groups])
            save_figure(layer_fig, plot_path, force=force)
        else:
            from ncli.compare.plot import build_runs_figure

            save_figure(build_runs_figure(series), plot_path, force=force)
        done(f"wrote {plot_path}")
    if per_class_path is not None:
        save_figure(per_class_fig, per_class_path, force=force)
        done(f"wrote {per_class_path}")


def _figure_path(option: str, path: Optional[Path], inputs: List[str], force: bool) -> Optional[Path]:
    """A figure's output checked before any work: its name, not an input, matplotlib there."""
    if path is None:
        return None
    from ncli.compare.plot import check_plot_path, require_matplotlib
    from ncli.outputs import same_file

    out = check_plot_path(path, force, option)
    for source in inputs:
        if source != "-" and same_file(source, out):
            raise UsageError(f"{option} {path}: is also an input; the figure would replace it")
    require_matplotlib()  # fail before measuring anything
    return out


def _group_label(group) -> str:
    rec = group.runs[0].record
    return f"epoch {rec['epoch']}" if rec.get("epoch") is not None else group.file


def _note_mixed(runs) -> None:
    """Runs measured differently are still compared, with a note on stderr."""
    for key in ("global_mean", "train_split", "min_per_class"):
        seen = sorted({str(r.record.get(key)) for r in runs if r.record.get(key) is not None})
        if len(seen) > 1:
            note(f"the runs differ in {key} ({', '.join(seen)})")
