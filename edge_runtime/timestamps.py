"""Times as edge-seg writes them: one function a format, so that each file says a time the same way.

* :func:`utc` -- records a program reads (the ledger, reports, run provenance, OUT's settings):
  ISO 8601 in UTC, ``2026-12-03T07:41:02Z``.
* :func:`local` -- files a person on the machine reads beside a clock (error files, the status file):
  ISO 8601 in local time with its offset, ``2026-12-03T08:41:02+0100``.
* :func:`for_page` -- the review page: ``2026-12-03 08:41:02 CET``.

``t`` is seconds since the epoch (``time.time()``); None is now.
"""

from __future__ import annotations

import time


def utc(t: float | None = None) -> str:
    """``2026-12-03T07:41:02Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def local(t: float | None = None) -> str:
    """``2026-12-03T08:41:02+0100``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def for_page(t: float | None = None) -> str:
    """``2026-12-03 08:41:02 CET``."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))
