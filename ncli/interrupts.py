"""Ctrl-C over the whole life of the ``ncli`` process: one line, ``ncli: error: interrupted``,
and exit code 130, whenever it comes.

Outside a command's body (the imports at start-up, parsing the command line, shutting down
after the output is written) nothing is open that needs cleaning up: the process says so and
exits at once (:func:`exit_now`), so neither a traceback from an import nor click's "Aborted!"
nor an "Exception ignored" at shutdown can appear. Inside the body (:func:`as_keyboard_interrupt`)
SIGINT raises KeyboardInterrupt as usual, so that writers remove their temporary files before
the error policy (``ncli.cli.app.reports_errors``) prints the same line. Only the process entry
points install this (``python -m ncli``, the ``ncli`` script); ncli used as a library leaves
SIGINT alone. Standard library only: it is imported before anything else.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

MESSAGE = b"ncli: error: interrupted\n"


def exit_now(signum, frame) -> None:  # pragma: no cover - exits the process
    """The SIGINT handler outside a command's body."""
    try:
        os.write(2, MESSAGE)
    finally:
        os._exit(130)


def install() -> None:
    """Make SIGINT exit at once (one line, 130), unless the caller chose to ignore it."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, exit_now)


@contextmanager
def as_keyboard_interrupt():
    """A command's body: SIGINT raises KeyboardInterrupt (when :func:`install` is in force).
    Afterwards the output is flushed before SIGINT exits at once again."""
    switched = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is exit_now
    if switched:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if switched:
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
            signal.signal(signal.SIGINT, exit_now)
