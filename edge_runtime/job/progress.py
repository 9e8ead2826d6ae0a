"""How a one-shot run shows its progress on the console, for a handful of scans or for thousands.

* Up to :data:`LIST_UP_TO` scans to do, or with ``-v``: a line per scan (``ok a.png -> a.png  23 ms``).
* More, on a terminal: a progress bar, with the ``FAIL`` lines printed above it (tqdm's
  ``logging_redirect_tqdm``: the bar is cleared, the line written, the bar drawn again below it).
* More, without a terminal (a pipe, a file, a CI log, cron): a progress line at every tenth of the
  scans, ``progress: 500/5000 scans (10%), 2 failed, 41.2 scans/s``, instead of 5,000 ``ok`` lines,
  and at least every :data:`EVERY_SECONDS` in between (a tenth of a long run can take an hour).

``FAIL`` lines are always printed; ``-q`` leaves only them, the summary and other warnings and errors.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator

from edge_runtime.job.outcome import Outcome, Status, log_outcome

log = logging.getLogger(__name__)

#: A run with at most this many scans to do lists each of them.
LIST_UP_TO = 20
#: A progress bar needs at least this many scans to be worth drawing.
BAR_FROM = 10
#: Without a terminal, a progress line at every this-th share of the scans...
STEPS = 10
#: ... and at least this often (seconds).
EVERY_SECONDS = 60.0


def show_progress(outcomes: Iterable[Outcome], total: int) -> Iterator[Outcome]:
    """Log each outcome as it comes (see the module's rules) and hand it on."""
    info = logging.getLogger("edge_runtime").isEnabledFor(logging.INFO)
    listed = total <= LIST_UP_TO or logging.getLogger("edge_runtime").isEnabledFor(logging.DEBUG)
    bar = info and total >= BAR_FROM and _terminal()
    t0 = last = time.monotonic()
    step = max(1, -(-total // STEPS))  # ceil: at most STEPS lines
    failed = 0
    with _bar(total) if bar else contextlib.nullcontext() as pbar:
        for n, outcome in enumerate(outcomes, 1):
            log_outcome(outcome, listed)
            failed += outcome.status == Status.FAILED
            if pbar is not None:
                pbar.update(1)
            elif not listed and (n % step == 0 or n == total or time.monotonic() - last >= EVERY_SECONDS):
                last = time.monotonic()
                seconds = last - t0
                rate = f", {n / seconds:.1f} scans/s" if seconds > 0 else ""
                log.info("progress: %d/%d scans (%.0f%%), %d failed%s", n, total, 100 * n / total, failed, rate)
            yield outcome


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _bar(total: int) -> Iterator:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(total=total, unit="scan", dynamic_ncols=True, leave=False) as pbar:
        yield pbar
