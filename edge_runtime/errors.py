"""The two kinds of failure the runtime tells people about.

* :class:`ScanError` -- one scan could not be processed (corrupt, empty, too large, ...).
  The run goes on with the other scans; the CLI exits 1 at the end.
* :class:`SetupError` -- the run cannot start (missing folder, bad model, OUT not writable, ...).
  The CLI prints a one-line reason and exits 2.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path


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
