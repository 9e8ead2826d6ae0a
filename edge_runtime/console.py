"""What the command-line tools share: logging to the console, and argument types for argparse.

One logger tree: every module logs to ``logging.getLogger(__name__)`` under ``edge_runtime``. On the
console, warnings and errors say what they are (``error: ...``), except the run's own lines -- per-scan
outcomes, failures and summaries, from :mod:`edge_runtime.job.outcome` -- which are printed as they are.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from pathlib import Path

from edge_runtime.core.thresholds import parse_threshold
from edge_runtime.job.outcome import SUMMARY

#: The console's time stamps (``--watch`` off journald): local time, to the second.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: Loggers whose lines the console prints as they are (``FAIL a.png: ...``, the summary).
AS_IS = ("edge_runtime.job.outcome",)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help as the tools write it: the description's own line breaks, and each option's default once.

    argparse's own formatter appends ``(default: ...)`` to every option, also where the help already says
    what the default is, and where there is none (``(default: None)``, ``(default: False)`` for a switch);
    this one appends it only when the help does not mention a default and there is a value to show.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


class ConsoleFormatter(logging.Formatter):
    """Per-scan lines and the summary as they are; other warnings and errors say what they are."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING and record.name not in AS_IS:  # after the time stamp, if any
            record.message = f"{record.levelname.lower()}: {record.message}"
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        # A file name that is not UTF-8 is shown escaped (``bad\udcffname.png``), whatever the stream's encoding.
        return super().format(record).encode("utf-8", "backslashreplace").decode("utf-8")


def setup_logging(
    verbose: bool = False, quiet: bool = False, log_file: Path | None = None, timestamps: bool = False
) -> None:
    """The console on stderr (and ``log_file``, rotated at 10 MB, 5 kept), at the level asked for.

    ``quiet``: warnings, errors and the run's closing lines (:data:`edge_runtime.job.outcome.SUMMARY`).
    ``timestamps``: each console line starts with the local time (``2026-12-01 11:40:02``), for a daemon
    run on a console; under journald (:func:`under_journald`), which stamps every line itself, they are
    left out. Raises :class:`~edge_runtime.errors.SetupError` if the log file cannot be opened (the
    console is set up).
    """
    level = logging.DEBUG if verbose else SUMMARY if quiet else logging.INFO
    root = logging.getLogger()
    root.setLevel(level)
    for old in [h for h in root.handlers if getattr(h, "edge_seg", False)]:  # main() called again in-process
        root.removeHandler(old)
        old.close()
    console = logging.StreamHandler(sys.stderr)
    console.edge_seg = True  # type: ignore[attr-defined]
    stamped = timestamps and not under_journald()
    console.setFormatter(ConsoleFormatter("%(asctime)s %(message)s" if stamped else "%(message)s", TIME_FORMAT))
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


def under_journald() -> bool:
    """True when stderr is connected to the systemd journal.

    systemd sets ``JOURNAL_STREAM`` to ``<device>:<inode>`` of the stream it connects; the variable is
    inherited by children whose stderr goes elsewhere, so the stream itself is compared too
    (systemd.exec(5)).
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def outputs_doc() -> Path:
    """Where ``OUTPUTS.md`` (every output file and field) is: shipped in the installed package as
    ``edge_runtime/docs/`` (pyproject maps docs/ there), or in a checkout's ``docs/``."""
    package = Path(__file__).resolve().parent
    shipped = package / "docs" / "OUTPUTS.md"
    checkout = package.parent / "docs" / "OUTPUTS.md"
    return shipped if shipped.is_file() or not checkout.is_file() else checkout


def threshold_arg(text: str) -> float:
    """argparse type for a probability threshold (:func:`edge_runtime.core.thresholds.parse_threshold`)."""
    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def spacing_arg(text: str) -> tuple[float, float]:
    """argparse type for ``--pixel-spacing MM`` or ``MM_ROW,MM_COL`` (:func:`.calibration.parse_spacing`)."""
    from edge_runtime.core.calibration import parse_spacing

    try:
        return parse_spacing(text)
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


def ae_title_arg(text: str) -> str:
    """argparse type for a DICOM AE title: 1 to 16 characters, no backslash or control characters."""
    title = text.strip()
    if not 1 <= len(title) <= 16 or "\\" in title or not title.isprintable():
        raise argparse.ArgumentTypeError(f"{text!r} is not an AE title (1 to 16 printable characters, no backslash)")
    return title


def _port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{whole!r}: {text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{whole!r}: port {port} is not in 0..65535")
    return port


def listen_arg(text: str) -> tuple[str, int]:
    """argparse type for ``[HOST:]PORT`` (HOST defaults to every interface, 0.0.0.0)."""
    host, _, port = text.rpartition(":")
    return (host.strip("[]") or "0.0.0.0", _port(port, text))


def peer_arg(text: str):  # -> edge_runtime.net.peer.Peer (imported late: the CLI starts fast)
    """argparse type for ``AET@HOST:PORT``."""
    from edge_runtime.net.peer import Peer

    aet, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and host):
        raise argparse.ArgumentTypeError(f"{text!r} is not AET@HOST:PORT (e.g. PACS@10.0.0.5:104)")
    return Peer(ae_title_arg(aet), host.strip("[]"), _port(port, text))
