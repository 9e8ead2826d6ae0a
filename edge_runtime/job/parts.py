"""Sharding a job: ``--num-parts N --part-id K`` gives this process one Nth of the scans under IN.

As nnU-Net's ``-num_parts/-part_id``: N processes each run with the same IN and N and their own K
(0 to N-1), and together do every scan exactly once. On one machine they may share one OUT (the
ledger serialises their records); on several, each needs its own OUT (SQLite's WAL is not for
network file systems).

The split is by a stable hash, not by position in the sorted list: the first 8 bytes of the SHA-1 of
the scan's folder and :func:`edge_runtime.outputs.naming.group_key` (its name stem without a frame number),
modulo N. So

* a scan keeps its part when other files are added to IN or removed (a sorted split would move most
  scans to another part, and a rerun of part K would redo scans part K+1 already did);
* scans that could write the same outputs (``a/x.png`` and ``a/x.jpg``; ``a/cine.dcm``, whose frames
  are ``cine_f0002.png``, and ``a/cine_f0002.png``) fall in the same part, where the naming refuses
  the second one as a single process does;
* it is the same on every machine and Python (no ``hash()`` salt), so the parts agree.

The shares are equal on average, not exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath

from edge_runtime.errors import SetupError
from edge_runtime.outputs.naming import group_key


@dataclass(frozen=True)
class Part:
    """Part ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise SetupError(f"--num-parts must be at least 1 (got {self.count})")
        if not 0 <= self.index < self.count:
            raise SetupError(f"--part-id must be from 0 to {self.count - 1} for --num-parts {self.count}")

    def owns(self, rel: str) -> bool:
        """True if the scan ``rel`` (its POSIX path relative to IN) is this part's to do."""
        return part_of(rel, self.count) == self.index

    @property
    def label(self) -> str:
        """``part-K-of-N``, for file names."""
        return f"part-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"part {self.index} of {self.count}"


def part_of(rel: str, count: int) -> int:
    """Which of ``count`` parts the scan ``rel`` belongs to."""
    relp = PurePosixPath(rel)
    digest = hashlib.sha1(f"{relp.parent}/{group_key(relp.name)}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % count
