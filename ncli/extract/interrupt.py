"""While the output is open, a Ctrl-C is never lost."""

from __future__ import annotations

import signal
import sys
import threading


class InterruptGuard:
    """Python raises KeyboardInterrupt at the next bytecode of the main thread. If that bytecode
    is in a ``__del__`` or a weakref callback run by the garbage collector, Python only prints
    "Exception ignored" and the run goes on to write a complete file. This guard's handler
    raises as usual and also sets a flag, and :meth:`check` (after every batch, and before the
    file is committed) raises again; the swallowed interrupt is not printed (it is not lost).
    It is installed only in the main thread, and only over Python's default handler: an
    ignored SIGINT (a background job) stays ignored.
    """

    def __init__(self):
        self.hit = False
        self._old = None
        self._old_hook = None

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old = signal.signal(signal.SIGINT, self._handler)
            self._old_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def _unraisable(self, info) -> None:
        if not (self.hit and info.exc_type is KeyboardInterrupt):  # ours: check() raises it again
            self._old_hook(info)

    def _handler(self, signum, frame):
        self.hit = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            sys.unraisablehook = self._old_hook
