"""``ncli measure``: feature files -> the collapse metrics, as a table or JSON lines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ncli.cli.app import command
from ncli.cli.options import ALLOW_EXTERNAL_HELP, GlobalMean
from ncli.console import note, warn
from ncli.errors import NcliError


@command("Feature or statistics files -> NC1-NC4 metrics.")
def measure(
    files: List[Path] = typer.Argument(..., metavar="FILE...", help="Feature files (format 1, as written by `ncli extract`) or statistics files (`ncli extract --stats-only`, Accumulator.save).", show_default=False),
    split: str = typer.Option(
        "train", "--split", "-s", help="Split whose class statistics define the metrics; all splits are evaluated."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object per file (JSON Lines) instead of a table."),
    per_class: bool = typer.Option(
        False, "--per-class", help="Add per-class N_c, sigma_c^2, |mu_c - mu_G|, |w_c|, cos(w_c, mu_c - mu_G), NCC disagreement."
    ),
    global_mean: GlobalMean = typer.Option(
        GlobalMean.klass,
        "--global-mean",
        help="mu_G: 'class' = mean of class means (the paper's code), 'sample' = mean of all samples.",
    ),
    layer: Optional[str] = typer.Option(
        None,
        "--layer",
        help="Measure a stored intermediate layer (/<split>/layers/NAME) instead of the penultimate features; "
        "'all' measures every stored layer, input to output, then the penultimate features. "
        "Classifier metrics are not available for layers.",
    ),
    chunk_rows: Optional[int] = typer.Option(
        None, "--chunk-rows", min=1, help="Rows read per chunk (default: about 16 MiB as float64). Results do not depend on it."
    ),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        min=1,
        help="Compute threads (default: OMP_NUM_THREADS if set, else all CPUs). Results do not depend on it.",
    ),
    device: str = typer.Option(
        "cpu",
        "--device",
        help="cpu, or cuda / cuda:N to do the arithmetic on a GPU (float64; imports torch). "
        "Without CUDA, a warning and the CPU.",
    ),
    allow_external: bool = typer.Option(False, "--allow-external", help=ALLOW_EXTERNAL_HELP),
    min_per_class: Optional[int] = typer.Option(
        None, "--min-per-class", min=1, metavar="K",
        help="Measure only the classes with at least K train samples (vocabulary-sized C); the others, "
        "and their samples in every split, are left out. Without it a class without train samples is an error. "
        "A statistics file answers only a K that keeps the classes its passes kept (extract --stats-only --min-per-class).",
    ),
    ood: Optional[str] = typer.Option(
        None, "--ood", metavar="SPLIT",
        help="An out-of-distribution split (labels ignored, not evaluated): NC5's ID/OOD orthogonality. "
        "In a statistics file: a split whose sums it holds (extract --stats-only --ood).",
    ),
) -> None:
    """Compute the Neural Collapse metrics (NC1-NC4; GNC2, UNC3, NC5) of feature files.

    Class statistics come from the train split (--split; a file without one, e.g. test data only, needs --split NAME); every split in the file is evaluated against them (accuracy, NCC accuracy, NCC disagreement), except an --ood split. The headline ncc_disagreement is the test split's when there is one. Streams over the file in chunks with float64 accumulators, so memory does not grow with the number of samples; no C x C matrix either (vocabulary-sized C: see --min-per-class).

    On a terminal the tables fit its width: names wrap and columns of numbers continue in a further table; no number is cut.

    Statistics files (extract --stats-only, Accumulator.save) hold statistics collected for one --split, --global-mean and --min-per-class: those must match how the file was collected (a file that kept the p x p scatter answers either --global-mean), --ood must name a split whose sums it holds, and --layer and --chunk-rows do not apply. Each mismatch is refused in one line.

    Examples:

    \b
      ncli measure fixtures/features/mlp_epoch0300.h5 --per-class
      ncli measure fixtures/features/*.h5 --json
    """
    from ncli.measure.engine import NumpyBackend
    from ncli.measure.record import list_layers, measure_file
    from ncli.measure.render import print_records, record_json

    backend = None
    if device != "cpu":
        from ncli.measure.engine_torch import TorchBackend

        try:
            backend = TorchBackend(device)
        except NcliError as exc:
            warn(f"{exc}; measuring on the CPU instead")
    if backend is None:
        backend = NumpyBackend(threads=threads)
    records, measured_layers = [], []
    for f in files:
        # all: the stored layers, input -> output, then the penultimate features (as compare --by layer)
        layers = [*list_layers(f, split, allow_external=allow_external), None] if layer == "all" else [layer]
        for name in layers:
            rec = measure_file(
                f,
                split=split,
                global_mean=global_mean.value,
                per_class=per_class,
                layer=name,
                chunk_rows=chunk_rows,
                backend=backend,
                allow_external=allow_external,
                min_per_class=min_per_class,
                ood=ood,
            )
            for text in rec.get("notes", ()):
                note(f"{rec['file']}: {text}")
            if json_out:
                sys.stdout.write(record_json(rec) + "\n")
                sys.stdout.flush()
            else:
                records.append(rec)
                measured_layers.append(name)
    if not json_out:
        print_records(records, per_class=per_class, layers=measured_layers)
