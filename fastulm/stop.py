"""Ctrl-C and SIGTERM as a request to stop at the next safe point, not wherever they land.

The signal handler only records the request; the long job (the tokenizer between batches,
the trainer between steps) asks ``requested`` at its safe points, cleans up or saves, and
stops. Raising from the handler itself can land inside a numba call or a half-done
optimizer step. A second Ctrl-C still stops at once.
"""

from __future__ import annotations

import signal


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever has them
                break
        return self

    def restore(self) -> None:
        """Put back the handlers ``install`` replaced (a caller in the same process, such as
        a test, gets its own Ctrl-C back)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a stop was requested."""
        if self.signum is not None:
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)
