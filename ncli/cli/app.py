"""The typer application, its root options and the error policy every command shares.

Every command reports expected failures (``ncli.errors.NcliError``) as one line on stderr,
``ncli: error: ...``, and exits with the error's code; ``--debug`` (before the command name)
shows the traceback instead. Progress goes to stderr, data to stdout.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import traceback
import typing
from enum import Enum

import typer

from ncli import __version__, interrupts
from ncli.console import error
from ncli.errors import EnvironmentProblem, NcliError
from ncli.outputs import write_failure

app = typer.Typer(
    name="ncli",
    help=(
        "Neural Collapse analysis (Papyan, Han & Donoho, PNAS 2020).\n\n"
        "\b\n"  # one line per step of the pipeline (Click rewraps other paragraphs)
        "extract: checkpoint + data -> HDF5 feature file\n"
        "measure: feature file -> NC1-NC4 metrics\n"
        "compare: many files -> trends, tables, the paper's figures\n"
        "inspect: a checkpoint's linear layers, and which one is the classifier\n\n"
        "Each command's --help teaches it: ncli measure --help"
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


def _show_help(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def _help_option():
    """-h/--help, declared as a plain flag: typer's own shows a ``<bool>`` value in the help."""
    return typer.Option(
        False, "--help", "-h", is_eager=True, expose_value=False, callback=_show_help, metavar="",
        help="Show this message and exit.",
    )


@app.callback(context_settings={"help_option_names": []})
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, metavar="", help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", metavar="", help="Also show the traceback of an error (the exit code stays the error's)."
    ),
    show_help: bool = _help_option(),
) -> None:
    del show_help  # handled by its callback
    _state["debug"] = debug or bool(os.environ.get("NCLI_DEBUG"))


def error_exit(message: str, code: int) -> "typer.Exit":
    """``ncli: error: message`` and exit ``code``; under ``--debug`` the traceback of the
    error being handled comes first (the exit code is the same)."""
    if _state["debug"] and sys.exc_info()[1] is not None:
        traceback.print_exc()
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
            raise error_exit(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
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
            raise error_exit(f"out of memory ({exc or 'MemoryError'}); the input needs more memory than is available", 5) from None
        except OSError as exc:
            known = _os_error(exc)
            if known is None:
                raise error_exit(f"internal error: {type(exc).__name__}: {exc} (run `ncli --debug ...` for the traceback)", 1) from None
            raise error_exit(*known) from None
        except Exception as exc:  # a bug: one line (and the traceback under --debug), exit 1
            if _interrupted(exc):  # Ctrl-C wrapped by Python (e.g. RuntimeError from __set_name__)
                raise error_exit("interrupted", 130) from None
            raise error_exit(
                f"internal error: {type(exc).__name__}: {exc} (run `ncli --debug ...` for the traceback)", 1
            ) from None

    return wrapper


def _is_list(annotation) -> bool:
    """``List[X]`` or ``Optional[List[X]]``: a repeatable option or a variadic argument."""
    if typing.get_origin(annotation) is list:
        return True
    return typing.get_origin(annotation) is typing.Union and any(_is_list(arg) for arg in typing.get_args(annotation))


def _is_choice(annotation) -> bool:
    """An Enum, or an Optional one: typer lists its values."""
    if typing.get_origin(annotation) is typing.Union:
        return any(_is_choice(arg) for arg in typing.get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, Enum)


def _plain_metavars(func) -> inspect.Signature:
    """``func``'s signature with the help's value names made plain, and -h/--help added:
    a flag shows no value (typer writes ``<bool>``); an argument or an option without a
    metavar of its own reads as its name in capitals (``CHECKPOINT``, ``--data DATA``,
    ``--split SPLIT``), not ``{checkpoint}``, ``<list[str]>`` or ``<str>``."""
    signature = inspect.signature(func, eval_str=True)
    params = []
    for param in signature.parameters.values():
        info = param.default
        if isinstance(info, (typer.models.OptionInfo, typer.models.ArgumentInfo)) and info.metavar is None:
            repeated = _is_list(param.annotation)
            if param.annotation is bool:
                info.metavar = ""
            elif isinstance(info, typer.models.ArgumentInfo):
                info.metavar = param.name.upper() + ("..." if repeated else "")
            elif not _is_choice(param.annotation):  # a choice keeps typer's <class|sample>
                long_names = [d for d in info.param_decls if d.startswith("--")]
                info.metavar = (long_names[0][2:] if long_names else param.name).upper().replace("-", "_")
        params.append(param)
    params.append(inspect.Parameter("show_help", inspect.Parameter.KEYWORD_ONLY, default=_help_option(), annotation=bool))
    return signature.replace(parameters=params)


class PlainHelpCommand(typer.core.TyperCommand):
    """A command whose usage line names arguments by their metavar alone: typer puts braces
    around a required one (``{files}...``); here it reads ``ncli measure [OPTIONS] FILE...``."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                name = param.metavar or param.name.upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def command(summary: str):
    """Register a command function on the app, with ``summary`` as its line in ``ncli --help``
    (short enough not to be cut at 80 columns), the shared error policy, the help's plain value
    names (:func:`_plain_metavars`) and, for arguments that take several files, a usage error
    for a flag given a value (``--json true``)."""

    def register(func):
        from ncli.cli.options import refuse_flag_values

        signature = inspect.signature(func, eval_str=True)
        variadic = [  # arguments that take several paths: where `--json true` leaves its "true"
            name for name, param in signature.parameters.items()
            if isinstance(param.default, typer.models.ArgumentInfo) and _is_list(param.annotation)
        ]

        def run(*args, **kwargs):
            for name in variadic:
                refuse_flag_values(kwargs.get(name))
            return func(*args, **kwargs)

        checked = reports_errors(run)

        @functools.wraps(func)
        def wrapper(*args, show_help: bool = False, **kwargs):
            return checked(*args, **kwargs)

        wrapper.__signature__ = _plain_metavars(func)
        app.command(cls=PlainHelpCommand, short_help=summary)(wrapper)
        return func

    return register
