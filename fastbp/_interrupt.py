"""Ctrl-C during training, deferred to the end of the step in progress.

Python runs a signal handler between bytecodes, so a KeyboardInterrupt can land
between a compiled optimizer kernel's return and the Python line that counts
the step (Adam's ``state.step += 1``): weights and moments updated, step count
not. While ``fit`` runs, ``DeferredInterrupt`` replaces Python's default SIGINT
handler with one that only records the signal; ``fit`` calls ``check()`` after
each step, where weights, optimizer state and step count agree, and it raises
KeyboardInterrupt there. A second Ctrl-C before that raises at once (an escape
from a step that does not end, at the price of that consistency).

Only Python's default handler is replaced, and only from the main thread (the
only thread that may set handlers); otherwise nothing is deferred.
"""

import signal
import threading

__all__ = ["DeferredInterrupt"]


class DeferredInterrupt:
    """Record SIGINT between ``install()`` and ``uninstall()``; ``check()`` raises it."""

    def __init__(self):
        self.pending = False
        self._previous = None

    def install(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._record)

    def uninstall(self):
        """Restore the previous handler; a recorded interrupt stays pending for ``check``."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _record(self, signum, frame):
        if self.pending:  # the user insists: interrupt now
            raise KeyboardInterrupt
        self.pending = True

    def check(self):
        """Raise KeyboardInterrupt if a SIGINT was recorded."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt
