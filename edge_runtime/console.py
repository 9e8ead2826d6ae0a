"""What the command-line tools share: logging to the console, and argument types for argparse.

One logger tree: every module logs to ``logging.getLogger(__name__)`` under ``edge_runtime``. On the
console, warnings and errors say what they are (``error: ...``), except the run's own lines -- per-scan
outcomes, failures and summaries, from :mod:`edge_runtime.job.outcome` -- which are printed as they are.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from edge_runtime.core.thresholds import parse_threshold
from edge_runtime.errors import one_line, scan_being_read
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


class OneLineFormatter(logging.Formatter):
    """Every message on one line: control characters in it (a scan named ``a<newline>FAIL b.png``) are escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


class ConsoleFormatter(OneLineFormatter):
    """Per-scan lines and the summary as they are; other warnings and errors say what they are."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING and record.name not in AS_IS:  # after the time stamp, if any
            record.message = f"{record.levelname.lower()}: {record.message}"
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        # A file name that is not UTF-8 is shown escaped (``bad\udcffname.png``), whatever the stream's encoding.
        return super().format(record).encode("utf-8", "backslashreplace").decode("utf-8")


class LibraryLines(logging.Filter):
    """Lines from libraries (pydicom, pynetdicom, Python warnings): one line each, without a traceback (-v keeps
    it), naming the scan being read when there is one, and the same line at most once a minute."""

    REPEAT_SECONDS = 60.0

    def __init__(self, verbose: bool = False) -> None:
        super().__init__()
        self.verbose = verbose
        self._said: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("edge_runtime"):
            return True
        if not self.verbose:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        message = record.getMessage()
        scan = scan_being_read()
        if scan is not None and not message.startswith(scan):
            message = f"{scan}: {message}"
        record.msg, record.args = message, None
        now, key = time.monotonic(), (record.name, message)
        if now - self._said.get(key, -self.REPEAT_SECONDS) < self.REPEAT_SECONDS:
            return False
        if len(self._said) > 10_000:
            self._said.clear()
        self._said[key] = now
        return True


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Python warnings as one log line each; pydicom's are left out, as it logs every one of them itself."""
    if file is not None:
        _SHOW_WARNING(message, category, filename, lineno, file, line)
        return
    if f"{os.sep}pydicom{os.sep}" in str(filename):
        return
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)


_SHOW_WARNING = warnings.showwarning


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
    library_lines = LibraryLines(verbose)
    console.addFilter(library_lines)
    root.addHandler(console)
    warnings.showwarning = _show_warning
    if log_file:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.handlers.RotatingFileHandler(
                log_file, maxBytes=10 << 20, backupCount=5, encoding="utf-8", errors="backslashreplace"
            )
        except OSError as exc:
            from edge_runtime.errors import SetupError

            raise SetupError(f"cannot write the log file {log_file}: {exc.strerror or exc}") from None
        fh.addFilter(library_lines)
        fh.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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


def number_arg(low: float, high: float, *, low_ok: bool = False) -> Callable[[str], float]:
    """argparse type for a finite number in (``low``, ``high``] (``[low, high]`` with ``low_ok``).

    NaN and infinity are refused: ``--settle nan`` would compare false with every age, and no scan would ever
    be taken.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value >= low if low_ok else value > low
        if not math.isfinite(value) or not above or value > high:
            bounds = f"{'[' if low_ok else '('}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"{text} is not a finite number in {bounds}")
        return value

    return parse


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


def target_arg(text: str):  # -> edge_runtime.net.peer.Target
    """argparse type for ``--send-to``: ``AET@HOST:PORT``, or a DICOMweb base URL (``http(s)://host:port/path``)."""
    from urllib.parse import urlsplit

    from edge_runtime.net.peer import WebTarget

    if not text.lower().startswith(("http://", "https://")):
        return peer_arg(text)
    parts = urlsplit(text)
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a DICOMweb base URL (e.g. https://pacs.example.org/dicom-web; "
            "credentials go in --send-auth FILE)"
        )
    try:
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} has a bad port") from None
    return WebTarget(text.rstrip("/"))


def results_arg(text: str) -> tuple[str, ...]:
    """argparse type for ``--dicom-results seg,sr,sc``: which DICOM results to make."""
    kinds = tuple(k.strip().lower() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in ("seg", "sr", "sc")]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of seg, sr and sc (e.g. seg,sr,sc)")
    if ("seg" in kinds) != ("sr" in kinds):
        raise argparse.ArgumentTypeError(f"{text!r}: seg and sr are made together (the SR references the SEG)")
    return kinds


def peer_arg(text: str):  # -> edge_runtime.net.peer.Peer (imported late: the CLI starts fast)
    """argparse type for ``AET@HOST:PORT``."""
    from edge_runtime.net.peer import Peer

    aet, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and host):
        raise argparse.ArgumentTypeError(f"{text!r} is not AET@HOST:PORT (e.g. PACS@10.0.0.5:104)")
    return Peer(ae_title_arg(aet), host.strip("[]"), _port(port, text))
