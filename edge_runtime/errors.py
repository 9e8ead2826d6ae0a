"""The two kinds of failure the runtime tells people about.

* :class:`ScanError` -- one scan could not be processed (corrupt, empty, too large, ...).
  The run goes on with the other scans; the CLI exits 1 at the end.
* :class:`SetupError` -- the run cannot start (missing folder, bad model, OUT not writable, ...).
  The CLI prints a one-line reason and exits 2.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators, as escapes.
_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))},
    0x09: "\\t",
    0x0A: "\\n",
    0x0D: "\\r",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``): a name or reason that cannot start
    another line of a log or a record file, or move a terminal's cursor."""
    return text.translate(_ESCAPES)


class ErrorKind(StrEnum):
    """Whose fault a scan's failure is, as its error record says (``kind``): what decides a retry."""

    SCAN = "scan"  #: the scan's own (unreadable, refused, ...): tried again once the file changes
    WRITE = "write"  #: OUT did not take its outputs or records: tried again once by each new process


class ScanError(Exception):
    """A single scan cannot be read or processed. ``str()`` is ``"<path>: <reason>"``."""

    kind = ErrorKind.SCAN  #: what its error record says of it

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[ScanError], tuple[str, str]]:
        # So that it pickles (a Dask worker sends it back to the client): rebuilt from (path, reason).
        return (type(self), (self.path, self.reason))


class SetupError(Exception):
    """The run cannot start; the message is meant for a person and fits on one line."""


class ModelError(SetupError):
    """The model file is missing, unreadable, or not one this runtime understands."""


_reading = threading.local()


@contextlib.contextmanager
def reading_scan(path: str | Path) -> Iterator[None]:
    """While this thread reads ``path``: a library's log line or warning is said with the scan's name."""
    before = getattr(_reading, "path", None)
    _reading.path = str(path)
    try:
        yield
    finally:
        _reading.path = before


def scan_being_read() -> str | None:
    """The scan this thread is reading (:func:`reading_scan`), or None."""
    return getattr(_reading, "path", None)
