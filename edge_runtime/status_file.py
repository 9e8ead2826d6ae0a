"""The daemon's status file, ``OUT/.edge-seg/status.json``: what it says, and when it is rewritten.

Rewritten every :data:`STATUS_EVERY` seconds as a heartbeat a monitor can check, and about a second
after anything changed (docs/OUTPUTS.md lists the fields). Padded to :data:`STATUS_BYTES`, so that on a
full disk it can still be rewritten in its own blocks.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_runtime._version import __version__
from edge_runtime.files.durable import rewrite_in_place, unwritable, write_atomic
from edge_runtime.outputs.layout import STATE_DIR
from edge_runtime.timestamps import local

if TYPE_CHECKING:
    from edge_runtime.blocked import Blocked
    from edge_runtime.job.assemble import Job
    from edge_runtime.job.sources import WatchedFolder
    from edge_runtime.node import Node

log = logging.getLogger(__name__)

STATUS_NAME = "status.json"
STATUS_EVERY = 5.0  #: seconds between status file rewrites
STATUS_BYTES = 4096  #: the status file is padded to this size (one block), to be rewritable on a full disk


@dataclass
class Tally:
    """What the daemon did since it started."""

    done: int = 0
    failed: int = 0
    last_error: dict[str, Any] | None = None  #: the last scan that failed: ``scan``, ``reason``, ``time``


@dataclass
class StatusFile:
    """The status file of one daemon's job."""

    job: Job
    folder: WatchedFolder
    node: Node
    tally: Tally
    started: float = field(default_factory=time.time)
    dirty: bool = False  #: something changed since the last rewrite
    _last: float = field(default_factory=time.monotonic)
    _warned: bool = False

    def keep(self, blocked: Blocked | None, now: float) -> None:
        """Rewrite it if it is time: every :data:`STATUS_EVERY` seconds, or a second after a change."""
        if now - self._last >= STATUS_EVERY or (self.dirty and now - self._last >= 1.0):
            self._last, self.dirty = now, False
            self.write(blocked)

    def write(self, blocked: Blocked | None, state: str = "running", exit_info: dict | None = None) -> None:
        """Rewrite it now: the state, and a heartbeat a monitor can check (docs/OUTPUTS.md)."""
        data = self._text(blocked, state, exit_info)
        path = self.job.out_dir / STATE_DIR / STATUS_NAME
        try:
            try:
                write_atomic(path, data, fsync=False)
            except OSError as exc:
                if unwritable(exc) is None or not path.exists() or path.stat().st_size < len(data):
                    raise
                rewrite_in_place(path, data)
            self._warned = False
        except OSError as exc:
            if not self._warned:  # once, until it works again
                self._warned = True
                log.warning("cannot write the status file: %s", exc)

    def _text(self, blocked: Blocked | None, state: str, exit_info: dict | None) -> bytes:
        job, info, now = self.job, self.job.spec.model, time.time()
        status = {
            "state": "blocked" if state == "running" and blocked is not None else state,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": __version__,
            "started": local(self.started),
            "updated": local(now),
            "heartbeat": now,
            "heartbeat_every_s": STATUS_EVERY,
            "input": str(job.in_dir),
            "output": str(job.out_dir),
            "observer": self.folder.observer_kind,
            "model": {"name": info.name, "version": info.version, "path": str(info.path), "sha256": info.sha256},
            "thresholds": list(job.spec.thresholds),
            "outputs": list(job.spec.kinds),
            "done": self.tally.done,
            "failed": self.tally.failed,
            "queued": self.folder.queued(),
            "problem": None
            if blocked is None
            else {"what": blocked.problem, "detail": blocked.detail, "since": local(blocked.since)},
            "last_error": self.tally.last_error,
            "ledger": job.ledger.counts(),
            "exit": exit_info,
            **self.node.status(),  # the DICOM listener and the outbox, when there are
        }
        text = json.dumps(status, indent=2)
        return (text + " " * max(0, STATUS_BYTES - len(text) - 1) + "\n").encode("utf-8")
