"""What ncli says to people: one-line messages on stderr, the rich console for tables, and the
display format of numbers. Data goes to stdout; notes, warnings, errors and progress to stderr.
rich is imported only when a console is made (``--json`` runs never load it).
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


DISTRIBUTION = "neural-collapse-cli"  # the name on the package index (the command and import name are ncli)


def install_hint(extra: str | None = None) -> str:
    """The pip command that installs ncli with an optional extra, e.g. ``[plot]``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'" if extra else f"pip install {DISTRIBUTION}"


# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``): names
    from files never move the cursor, retitle a terminal or start a new line."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], str(text))


def literal(text: str) -> "Text":
    """A rich Text that is never parsed as markup (``[bold]``, ``[/]`` stay as written): every
    string that reaches a rich table or heading goes through here, names from files first
    through :func:`printable`."""
    from rich.text import Text

    return Text(text)


def plain_text(text) -> "Text":
    """:func:`literal` of :func:`printable`: a name from a file, ready for a table."""
    return literal(printable(text))


def _say(kind: str, message: str) -> None:
    stream = sys.stderr
    # one line, one write: lines of several processes never mix
    stream.write(f"ncli: {kind}{printable(message)}\n")
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
