"""What ncli says to people: one-line messages on stderr, the rich console for tables, and the
display format of numbers. Data goes to stdout; notes, warnings, errors and progress to stderr.
rich is imported only when a console is made (``--json`` runs never load it).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


DISTRIBUTION = "neural-collapse-cli"  # the name on the package index (the command and import name are ncli)


def install_hint(extra: str | None = None) -> str:
    """The pip command that installs ncli with an optional extra, e.g. ``[plot]``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'" if extra else f"pip install {DISTRIBUTION}"


def _say(kind: str, message: str) -> None:
    stream = sys.stderr
    stream.write(f"ncli: {kind}{message}\n")  # one write: lines of several processes never mix
    stream.flush()


def note(message: str) -> None:
    """``ncli: note: ...`` on stderr: something the user should know; nothing is wrong."""
    _say("note: ", message)


def warn(message: str) -> None:
    """``ncli: warning: ...`` on stderr: ncli goes on, differently than asked."""
    _say("warning: ", message)


def error(message: str) -> None:
    """``ncli: error: ...`` on stderr (the CLI exits non-zero after it)."""
    _say("error: ", message)


def done(message: str) -> None:
    """``ncli: ...`` on stderr: what a command wrote (e.g. ``wrote plot.png``)."""
    _say("", message)


def fmt(value) -> str:
    """A number for a table: 6 significant digits, ``—`` for a missing one (JSON keeps full
    precision)."""
    if value is None:
        return "—"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.6g}"
    return str(value)


def make_console(file=None) -> "Console":
    """A rich console on ``file`` (stdout). On a terminal it uses the terminal's width; for
    pipes and files it never wraps or cuts and uses no colours."""
    from rich.console import Console

    file = file or sys.stdout
    is_tty = hasattr(file, "isatty") and file.isatty()
    if is_tty:
        return Console(file=file)
    return Console(file=file, width=10_000, color_system=None, force_terminal=False, soft_wrap=False)
