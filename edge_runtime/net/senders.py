"""Sending DICOM results to a target: the one small protocol every sender keeps.

The outbox (:mod:`edge_runtime.net.outbox`) holds the queue, the back-off and what was sent; a
:class:`Sender` only makes one try: it takes the datasets of the results that are due and answers,
dataset by dataset and in order as the target answers, :class:`Reply` -- sent, refused with a reason
(an answer that does not change by waiting: the outbox sets such a result aside after a few), or the
target down (waited for without end). The senders: DIMSE C-STORE (:mod:`edge_runtime.net.dimse`) and
DICOMweb STOW-RS (:mod:`edge_runtime.net.dicomweb`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pydicom import Dataset


class Delivery(StrEnum):
    """What became of one dataset in one try."""

    SENT = "sent"  #: the target took it (a warning status included)
    REFUSED = "refused"  #: the target answered no, for a reason waiting does not change
    DOWN = "down"  #: not taken this time (target unreachable, busy, out of resources): try again later


@dataclass(frozen=True)
class Reply:
    """A target's answer for one dataset; ``reason`` (naming the target) unless it was sent."""

    delivery: Delivery
    reason: str = ""


class Sender(Protocol):
    """One try at sending datasets to one target."""

    @property
    def target(self) -> object:
        """The target; ``str()`` names it as the log lines and the status file do (``PACS@10.0.0.5:104``)."""
        ...

    def offer(self, datasets: Sequence[Dataset], stop: Callable[[], bool]) -> Generator[Reply, None, None]:
        """Offer ``datasets`` (one connection where the protocol has them), yielding a :class:`Reply` for
        each, in order, as it comes; fewer than there are datasets when ``stop()`` turns true or the
        connection is lost after an answer (the rest were not tried)."""
        ...
