"""The signals a service gets -- SIGTERM (systemd, ``kill``), SIGHUP (a closed SSH session or terminal),
SIGINT (Ctrl-C) -- turned into a stop request that the commands act on between batches.

A second SIGINT while stopping gives up at once (``KeyboardInterrupt``): what is written is complete
either way (contract 5), and an unfinished scan is redone on the next run.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

#: The signals handled, where the platform has them.
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name))


class StopSignals:
    """While entered, SIGTERM, SIGHUP and SIGINT set :attr:`requested` (and call ``on_stop``) instead of killing.

    ``what`` ends the log line: ``"SIGTERM received: <what>"``.
    """

    def __init__(self, what: str, on_stop: Callable[[], None] | None = None) -> None:
        self.what = what
        self.on_stop = on_stop
        self.requested = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by it (SIGTERM 143, SIGHUP 129, SIGINT 130)."""
        return 128 + (self.signum or 0)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        self.requested.set()
        from edge_runtime.job.outcome import log_summary

        log_summary(f"{signal.Signals(signum).name} received: {self.what}")
        if self.on_stop is not None:
            self.on_stop()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
