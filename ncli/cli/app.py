"""The typer application, its root options and the error policy every command shares.

Every command reports expected failures (``ncli.errors.NcliError``) as one line on stderr,
``ncli: error: ...``, and exits with the error's code; ``--debug`` (before the command name)
shows the traceback instead. Progress goes to stderr, data to stdout.
"""

from __future__ import annotations

import functools
import os
import sys

import typer

from ncli import __version__, interrupts
from ncli.console import error
from ncli.errors import EnvironmentProblem, NcliError
from ncli.outputs import write_failure

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
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        from ncli.measure.kernels import default_kernels, why_not_compiled

        why = f" ({why_not_compiled})" if why_not_compiled else ""
        typer.echo(f"ncli {__version__}\nmeasure kernels: {default_kernels.name}{why}")
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
    error(message)
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


def _os_error(exc: OSError) -> tuple[str, int] | None:
    """A file the command could not read or write: not a bug in ncli. A full disk is exit 5,
    another failure naming a file exit 3; None when the error names no file."""
    problem = write_failure(exc.filename or "output", exc)
    if isinstance(problem, EnvironmentProblem):  # a full disk, whatever was being written
        return str(problem), problem.exit_code
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}", 3
    return None


def reports_errors(func):
    """Decorator for commands: NcliError -> one line + exit code; Ctrl-C -> 130; running out
    of memory -> 5; an OSError naming a file -> 3 (5 for a full disk)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with interrupts.as_keyboard_interrupt():
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
        except MemoryError as exc:
            if _state["debug"]:
                raise
            raise error_exit(f"out of memory ({exc or 'MemoryError'}); the input needs more memory than is available", 5) from None
        except OSError as exc:
            if _state["debug"]:
                raise
            known = _os_error(exc)
            if known is None:
                raise error_exit(f"internal error: {type(exc).__name__}: {exc} (run `ncli --debug ...` for the traceback)", 1) from None
            raise error_exit(*known) from None
        except Exception as exc:  # a bug: still one line unless --debug
            if _state["debug"]:
                raise
            if _interrupted(exc):  # Ctrl-C wrapped by Python (e.g. RuntimeError from __set_name__)
                raise error_exit("interrupted", 130) from None
            raise error_exit(
                f"internal error: {type(exc).__name__}: {exc} (run `ncli --debug ...` for the traceback)", 1
            ) from None

    return wrapper


def command(name: str | None = None):
    """Register a command function on the app, with the shared error policy."""

    def register(func):
        app.command(name)(reports_errors(func))
        return func

    return register
