"""What the command-line tools share: logging to the console, and argument types for argparse.

One logger tree: every module logs to ``logging.getLogger(__name__)`` under ``edge_runtime``. On the
console, warnings and errors say what they are (``error: ...``), except the run's own lines -- per-scan
outcomes, failures and summaries, from :mod:`edge_runtime.job.outcome` -- which are printed as they are.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys
from pathlib import Path

from edge_runtime.core.thresholds import parse_threshold

#: Loggers whose lines the console prints as they are (``FAIL a.png: ...``, the summary).
AS_IS = ("edge_runtime.job.outcome",)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help as the tools write it: the description's own line breaks, and each option's default."""


class ConsoleFormatter(logging.Formatter):
    """Per-scan lines and the summary as they are; other warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING and record.name not in AS_IS:
            text = f"{record.levelname.lower()}: {text}"
        # A file name that is not UTF-8 is shown escaped (``bad\udcffname.png``), whatever the stream's encoding.
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def setup_logging(verbose: bool = False, quiet: bool = False, log_file: Path | None = None) -> None:
    """The console on stderr (and ``log_file``, rotated at 10 MB, 5 kept), at the level asked for.

    Raises :class:`~edge_runtime.errors.SetupError` if the log file cannot be opened (the console is set up).
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    root.setLevel(level)
    for old in [h for h in root.handlers if getattr(h, "edge_seg", False)]:  # main() called again in-process
        root.removeHandler(old)
        old.close()
    console = logging.StreamHandler(sys.stderr)
    console.edge_seg = True  # type: ignore[attr-defined]
    console.setFormatter(ConsoleFormatter("%(message)s"))
    root.addHandler(console)
    if log_file:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.handlers.RotatingFileHandler(
                log_file, maxBytes=10 << 20, backupCount=5, encoding="utf-8", errors="backslashreplace"
            )
        except OSError as exc:
            from edge_runtime.errors import SetupError

            raise SetupError(f"cannot write the log file {log_file}: {exc.strerror or exc}") from None
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh.edge_seg = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def threshold_arg(text: str) -> float:
    """argparse type for a probability threshold (:func:`edge_runtime.core.thresholds.parse_threshold`)."""
    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int_arg(text: str) -> int:
    """argparse type for a count of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value
