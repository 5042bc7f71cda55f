"""The ``ncli`` command line (typer). Thin: parse options, call the library, render.

Every command reports expected failures (``ncli.errors.NcliError``) as one line on stderr,
``ncli: error: ...``, and exits with the error's code; ``--debug`` (before the command name)
shows the traceback instead. Progress goes to stderr, data to stdout.
"""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ncli import __version__
from ncli.errors import NcliError

app = typer.Typer(
    name="ncli",
    help=(
        "Neural Collapse analysis (Papyan, Han & Donoho, PNAS 2020).\n\n"
        "extract: checkpoint + data -> HDF5 feature file.  "
        "measure: feature file -> NC1-NC4 metrics.  "
        "compare: many files -> trends, tables, the paper's figures."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        from ncli import kernels

        why = f" ({kernels.why_not_compiled})" if kernels.why_not_compiled else ""
        typer.echo(f"ncli {__version__}\nmeasure kernels: {kernels.BACKEND}{why}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug or bool(os.environ.get("NCLI_DEBUG"))


def error_exit(message: str, code: int) -> "typer.Exit":
    typer.echo(f"ncli: error: {message}", err=True)
    return typer.Exit(code)


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by a KeyboardInterrupt (its cause or context chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def reports_errors(func):
    """Decorator for commands: NcliError -> one line + exit code; Ctrl-C -> 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except NcliError as exc:
            if _state["debug"]:
                raise
            raise error_exit(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            raise error_exit("interrupted", 130) from None
        except BrokenPipeError:
            # e.g. `ncli measure ... | head`: stop quietly
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
            raise typer.Exit(0) from None
        except typer.Exit:
            raise
        except Exception as exc:  # a bug: still one line unless --debug
            if _state["debug"]:
                raise
            if _interrupted(exc):  # Ctrl-C wrapped by Python (e.g. RuntimeError from __set_name__)
                raise error_exit("interrupted", 130) from None
            raise error_exit(
                f"internal error: {type(exc).__name__}: {exc} (run `ncli --debug ...` for the traceback)", 1
            ) from None

    return wrapper


class GlobalMean(str, Enum):
    klass = "class"
    sample = "sample"


@app.command()
@reports_errors
def measure(
    files: List[Path] = typer.Argument(..., help="Feature files (format 1, as written by `ncli extract`).", show_default=False),
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
        "'all' measures every stored layer. Classifier metrics are not available for layers.",
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
) -> None:
    """Compute the Neural Collapse metrics (NC1-NC4) of feature files.

    Class statistics come from the train split (--split); every split in the file is evaluated
    against them (accuracy, NCC accuracy, NCC disagreement). Streams over the file in chunks
    with float64 accumulators, so memory does not grow with the number of samples.

    Example:  ncli measure fixtures/features/mlp_epoch0300.h5 --json
    """
    from ncli.measure import list_layers, measure_file
    from ncli.report import print_records, record_json

    if device != "cpu":
        from ncli.stream_torch import resolve_device

        try:
            resolve_device(device)
        except NcliError as exc:
            typer.echo(f"ncli: warning: {exc}; measuring on the CPU instead", err=True)
            device = "cpu"
    records = []
    for f in files:
        layers = list_layers(f, split) if layer == "all" else [layer]
        for lay in layers:
            rec = measure_file(
                f,
                split=split,
                global_mean=global_mean.value,
                per_class=per_class,
                layer=lay,
                chunk_rows=chunk_rows,
                threads=threads,
                device=device,
            )
            if json_out:
                sys.stdout.write(record_json(rec) + "\n")
                sys.stdout.flush()
            else:
                records.append(rec)
    if not json_out:
        print_records(records, per_class=per_class)


# --- commands defined in their own modules (they import torch/matplotlib only when run) ---
from ncli.commands_compare import compare as _compare_command  # noqa: E402
from ncli.extract.commands import extract as _extract_command  # noqa: E402
from ncli.extract.commands import inspect as _inspect_command  # noqa: E402

app.command("extract")(reports_errors(_extract_command))
app.command("inspect")(reports_errors(_inspect_command))
app.command("compare")(reports_errors(_compare_command))


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
