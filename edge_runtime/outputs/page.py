"""The review page (``--report``): ``OUT/index.html``, every scan of OUT as a card, flagged ones first.

Rendered from what is on disk under OUT -- the findings reports (``OUT/reports/**.json``) and the error
records (``OUT/**.error.txt``) -- so a rerun, or a daemon restarted, shows the whole of OUT, not only
the scans of this process. When a scan has both (it failed after it had once been done, or the other
way round), the newer file wins. The page is static: one HTML file per :data:`PAGE_SIZE` cards
(``index.html``, ``index-2.html``, ...; with more than one, each flag's own, ``index-failed.html``,
...), with its CSS and JavaScript inline and nothing fetched from
elsewhere, so it works opened from disk (``file://``) and offline. The template
(``templates/review.html.j2``) is rendered by Jinja2 with autoescaping: file names and reasons are text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import jinja2

from edge_runtime._version import __version__
from edge_runtime.files.durable import write_atomic
from edge_runtime.outputs.cards import FLAGS, Card, failed_card, report_card
from edge_runtime.outputs.layout import (
    PAGE_NAME,
    REPORT_DIR,
    STATE_DIR,
    error_path,
    plain_path,
    relative,
    thumbnail_path,
)
from edge_runtime.outputs.review import thumb_size
from edge_runtime.timestamps import for_page

log = logging.getLogger(__name__)

#: Cards per page.
PAGE_SIZE = 200
ERROR_SUFFIX = ".error.txt"


@dataclass
class RunInfo:
    """The run's summary at the top of the page."""

    command: list[str]
    started: float  #: time.time() when the run (or the daemon) started
    mode: str = "one-shot"  #: or ``"watch"``
    model: str = ""  #: ``name version (file)``
    thresholds: list[str] = field(default_factory=list)
    finished: float | None = None  #: None while a daemon runs
    #: this run's own counts (``segmented``, ``up to date``, ``failed``), or empty
    counts: dict[str, int] = field(default_factory=dict)


def page_name(number: int, flag: str | None = None) -> str:
    """``index.html``, ``index-2.html``, ...; a flag's own pages ``index-failed.html``, ``index-failed-2.html``."""
    parts = [PAGE_NAME.removesuffix(".html"), *([flag] if flag else []), *([str(number)] if number > 1 else [])]
    return "-".join(parts) + ".html"


def _url(path: str) -> str:
    """A path relative to OUT as a relative URL (``#``, ``?``, ``%``, spaces, non-ASCII escaped).

    A name that is not UTF-8 (its bytes kept as surrogates) is escaped byte for byte, so the URL still
    names the file.
    """
    return quote(path, safe="/", encoding="utf-8", errors="surrogateescape")


def _local(t: float | None) -> str:
    return "" if t is None else for_page(t)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("edge_runtime.outputs", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["url"] = _url
    return env


class ReviewPage:
    """Collects the cards of OUT from disk and writes the review page's files.

    Reads each report and error record once and keeps its card until the file changes, so a daemon
    rewriting the page every few seconds reads only what is new.
    """

    def __init__(self, out_dir: Path, newest_first: bool = False, page_size: int = PAGE_SIZE, fsync: bool = True):
        self.out_dir = out_dir
        self.newest_first = newest_first
        self.page_size = max(1, page_size)
        self.fsync = fsync
        self._cache: dict[str, tuple[tuple[int, int], Card | None]] = {}
        self._template = _environment().get_template("review.html.j2")

    # -- the cards ------------------------------------------------------------------------------------
    def collect(self) -> list[Card]:
        """Every scan with a report or an error record under OUT, in page order."""
        cards: dict[str, Card] = {}
        seen: set[str] = set()
        for path in self._record_files():
            card = self._card(path)
            seen.add(str(path))
            if card is not None and (card.rel not in cards or card.time_ns > cards[card.rel].time_ns):
                cards[card.rel] = card
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return sorted(cards.values(), key=self._order)

    def _order(self, card: Card) -> tuple:
        if self.newest_first:
            return (not card.flags, -card.time_ns, card.rel)
        return (card.rank, card.rel)

    def _record_files(self) -> list[Path]:
        """The reports under OUT/reports/ and the error records anywhere under OUT (hidden folders aside)."""
        found = []
        reports = self.out_dir / REPORT_DIR
        for root, dirs, files in os.walk(self.out_dir):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != STATE_DIR]
            in_reports = Path(root).is_relative_to(reports)
            for name in files:
                if name.startswith("."):
                    continue
                if name.endswith(ERROR_SUFFIX) or (in_reports and name.endswith(".json")):
                    found.append(Path(root) / name)
        return found

    def _card(self, path: Path) -> Card | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(str(path))
        if cached is not None and cached[0] == key:
            return cached[1]
        card = self._read(path, st.st_mtime_ns)
        self._cache[str(path)] = (key, card)
        return card

    def _read(self, path: Path, mtime_ns: int) -> Card | None:
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")  # a name's own bytes
            if path.name.endswith(ERROR_SUFFIX):
                # The scan is the record's own path (OUT/<scan>.error.txt), never a line of its text, which a
                # name holding a newline could forge; the reason is its first "reason: " line.
                rel = relative(self.out_dir, path).removesuffix(ERROR_SUFFIX)
                lines = text.split("\n")
                named = lines[0][6:] if lines and lines[0].startswith("scan: ") else ""
                if named != rel and error_path(self.out_dir, named) == path:  # a name too long, shortened
                    rel = named
                reasons = [line[8:] for line in lines if line.startswith("reason: ")]
                return failed_card(rel, reasons[0] if reasons else "unknown", mtime_ns)
            card = report_card(json.loads(text), mtime_ns)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("review page: %s left out, it cannot be read: %s", relative(self.out_dir, path), exc)
            return None
        out = self.out_dir
        card.thumb = relative(out, thumbnail_path(out, card.rel))
        card.plain = relative(out, plain_path(out, card.rel))
        card.thumb_size = thumb_size(card.height, card.width)
        return card

    # -- the page -------------------------------------------------------------------------------------
    def write(self, run: RunInfo) -> list[Path]:
        """Write every page atomically (and remove pages left from a larger run); returns their paths.

        When the cards take more than one page, each flag gets its own pages too (``index-failed.html``,
        ``index-failed-2.html``, ...), which the filter buttons then link to, so that a filter covers
        the whole run; on a single page the filter is the page's own script.
        """
        cards = self.collect()
        flag_counts = Counter(f for c in cards for f in c.flags)
        totals = {
            "scans": len(cards),
            "failed": flag_counts["failed"],
            "with_nodule": sum(1 for c in cards if "failed" not in c.flags and "no-nodule" not in c.flags),
            "no_nodule": flag_counts["no-nodule"],
            "flagged": sum(1 for c in cards if c.flags),
        }
        split = len(cards) > self.page_size
        views: list[tuple[str | None, list[Card]]] = [(None, cards)]
        if split:
            views += [(flag, [c for c in cards if flag in c.flags]) for flag in FLAGS if flag_counts[flag]]
        common = {
            "run": run,
            "version": __version__,
            "out_name": self.out_dir.name,
            "flags": [(key, label, flag_counts[key], page_name(1, key)) for key, label in FLAGS.items()],
            "labels": FLAGS,
            "totals": totals,
            "split": split,
            "newest_first": self.newest_first,
            "started": _local(run.started),
            "finished": _local(run.finished),
            "updated": _local(time.time()),
            "seconds": None if run.finished is None else run.finished - run.started,
        }
        written = []
        for flag, subset in views:
            pages = [subset[i : i + self.page_size] for i in range(0, len(subset), self.page_size)] or [[]]
            last_flagged = max((i + 1 for i, page in enumerate(pages) if any(c.flags for c in page)), default=0)
            for number, page in enumerate(pages, 1):
                html = self._template.render(
                    **common,
                    flag=flag,
                    cards=page,
                    page=number,
                    pages=[(n, page_name(n, flag)) for n in range(1, len(pages) + 1)],
                    last_flagged=last_flagged if flag is None else 0,
                )
                path = self.out_dir / page_name(number, flag)
                # a name that is not UTF-8 shows escaped (\udcff), as on the console; its URLs are exact
                write_atomic(path, html.encode("utf-8", "backslashreplace"), fsync=self.fsync)
                written.append(path)
        stem = PAGE_NAME.removesuffix(".html")
        for old in self.out_dir.glob(f"{stem}-*.html"):  # a larger run's pages, or a flag's no longer needed
            if old not in written:
                with contextlib.suppress(OSError):
                    old.unlink()
        return written
