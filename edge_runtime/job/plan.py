"""Which scans need work, and whose outputs are whose: the decisions made before a scan is read."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from edge_runtime.errors import ScanError
from edge_runtime.files.formats import DICOM_SUFFIXES, IMAGE_SUFFIXES
from edge_runtime.job.ledger import Ledger
from edge_runtime.job.processor import ScanChanged
from edge_runtime.outputs.base import OutputWriter
from edge_runtime.outputs.layout import scan_stem

if TYPE_CHECKING:
    from edge_runtime.job.parts import Part

#: How the error records of scans that failed not for their own fault begin: for want of a writable OUT
#: (older versions recorded a full disk as the scan's error), or -- in older versions -- for a DICOM result its
#: header could not give (now that result alone is refused and the scan is ok).
WRITE_FAILURES = (
    "cannot write its outputs",
    "cannot record its outputs",
    "cannot write its error record",
    "cannot make DICOM results",
)


class Planner:
    """Decides from the ledger whether a scan needs work, and makes sure no two scans write the same file.

    Output names follow the scan's name stem (contract 4), so scans can collide: ``x.png`` and ``x.jpg``
    both write ``x.png``; the frames of ``cine.dcm`` are ``cine_f0001.png``, ... which a scan named
    ``cine_f0002.png`` writes too. :meth:`reserve` is asked once a scan is read and its output files
    are known, before any is written: a file that another scan in IN wrote (its ledger record says so;
    the names that could have written it are built from the file names, the folder is not listed) or
    is writing now is refused, naming both, except by a scan named like that mask, which takes it (the
    scan done before is then refused). A scan that cannot be read reserves nothing, so it
    never keeps a good one from its name. :func:`group_key` lets the scheduler keep scans that may
    collide in one batch, in :func:`collision_order`, so which one keeps the name does not depend on
    thread timing: the scan whose own name is its mask's (``x.png``), then sort order.

    Args:
        in_dir: the input folder the scans' relative paths start from.
        ledger: the job's ledger.
        signature: the job signature (:attr:`edge_runtime.job.settings.JobSpec.signature`).
        thresholds: how many thresholds the job writes (with one, outputs go straight under OUT).
        writers: the job's output writers, whose folders under OUT input folders must not shadow.
        part: the share of the scans this process does (``--num-parts``); the others never need work here.
    """

    def __init__(
        self,
        in_dir: Path,
        ledger: Ledger,
        signature: str,
        thresholds: int,
        writers: list[OutputWriter],
        part: Part | None = None,
    ) -> None:
        self.in_dir = in_dir
        self.ledger = ledger
        self.signature = signature
        self.thresholds = thresholds
        self.folders = [(w.folder, w.kind) for w in writers if w.folder]
        self.part = part
        self._write_retried: set[str] = set()
        self._retrying: set[str] = set()  #: write failures let through by needs_work, not yet taken
        self.reservations = Reservations(in_dir, ledger)

    def needs_work(self, rel: str, retry_failed: bool = True) -> bool:
        """False when the scan's outputs are up to date (or, unless ``retry_failed``, it failed as it is),
        or it is another part's."""
        if self.part is not None and not self.part.owns(rel):
            return False
        try:
            st = os.stat(self.in_dir / rel)
        except OSError:
            return True  # let the processor report it
        if self.ledger.up_to_date(rel, st.st_size, st.st_mtime_ns, self.signature):
            return False
        if retry_failed or not self.ledger.known_failure(rel, st.st_size, st.st_mtime_ns):
            return True
        # Failing to write (OUT full, say) is not the scan's fault: tried again once by each new process --
        # until it gets as far as writing (:meth:`reserve`), not merely until it is first asked about (a
        # daemon asks when it finds the scan and again when it takes it).
        reason = str((self.ledger.get(rel) or {}).get("reason", ""))
        if reason.startswith(WRITE_FAILURES) and rel not in self._write_retried:
            self._retrying.add(rel)
            return True
        return False

    def claim(self, rel: str) -> None:
        """Refuse, before it is read, a scan whose mask would go into an output writer's folder (ScanError)."""
        parts = PurePosixPath(rel).parts
        if self.thresholds == 1 and len(parts) > 1:
            for folder, kind in self.folders:
                if parts[0] == folder:
                    raise ScanError(
                        rel,
                        f"its mask would go to OUT/{folder}/, the folder of the {kind}; "
                        f"rename the input folder {folder!r} or run without the {kind}",
                    )

    def reserve(self, rel: str, outputs: list[str]) -> list[tuple[str, str]]:
        """:meth:`Reservations.reserve` against the job's ledger (the scan's retry of a write failure is used)."""
        if rel in self._retrying:  # (only such scans are remembered: a daemon's memory stays flat)
            self._retrying.discard(rel)
            self._write_retried.add(rel)
        return self.reservations.reserve(rel, outputs)

    def release(self, rel: str) -> None:
        """The scan is recorded (done or failed) or given up: its reservation ends."""
        self.reservations.release(rel)

    def owners(self, batch: Iterable[str | ScanError]) -> dict[str, dict[str, Any]]:
        """The ledger's done records of the scans in IN whose outputs could share a name with a scan of
        ``batch`` (same folder, same :func:`group_key`), other than the batch's own: what a Dask worker,
        which has no ledger, needs to reserve the batch's output names (:class:`Reservations`)."""
        mine = {rel for rel in batch if isinstance(rel, str)}
        found: dict[str, dict[str, Any]] = {}
        for prefix in sorted({_group_prefix(rel) for rel in mine}):
            for other, rec in self.ledger.done_with_prefix(prefix):
                if other not in mine and _group_prefix(other) == prefix:
                    found[other] = rec
        return found


class Records(Protocol):
    """What reserving names needs of a ledger: a scan's newest record."""

    def get(self, rel: str) -> dict[str, Any] | None: ...


class OwnersView:
    """The records :meth:`Planner.owners` gave a Dask worker, as a :class:`Records`."""

    def __init__(self, owners: Mapping[str, dict[str, Any]]) -> None:
        self.owners = owners

    def get(self, rel: str) -> dict[str, Any] | None:
        return self.owners.get(rel)


class Reservations:
    """Output names taken by the scans being written now, checked against the scans done before.

    The job's :class:`Planner` holds one over its ledger; a Dask worker one a batch over the records the
    client sent with it (:meth:`Planner.owners`).
    """

    def __init__(self, in_dir: Path, records: Records) -> None:
        self.in_dir = in_dir
        self.records = records
        self._mutex = threading.Lock()
        self._writing: dict[str, set[str]] = {}  # scans between reserve() and release(): their outputs

    def reserve(self, rel: str, outputs: list[str]) -> list[tuple[str, str]]:
        """Take ``outputs`` (paths relative to OUT) for scan ``rel``, held until :meth:`release`.

        Another scan in IN that has one of them keeps it (ScanError naming both), unless ``rel`` is named
        like that mask (``x.png``) and the other is not (``x.jpg``, or the multi-frame ``x.dcm`` whose
        frames are ``x_f0001.png``, ...): the rule :func:`collision_order` gives scans of one batch holds
        whatever order they came in. Such a scan done before is returned as ``(scan, shared output)``,
        for the caller to record as refused now (:meth:`edge_runtime.job.recorder.Recorder.displace`);
        one being written now makes ``rel`` wait (:class:`ScanChanged`:
        the watcher tries it again; one-shot runs keep such scans in one batch, in that order).
        """
        mine = set(outputs)
        displaced: list[tuple[str, str]] = []
        with self._mutex:
            for other, theirs in self._writing.items():  # being written now (a few scans: all of them)
                if other != rel and mine & theirs:
                    first = _first(outputs, theirs)
                    if _takes_over(rel, other):
                        raise ScanChanged(rel, f"waits for {other}, which is writing OUT/{first} now")
                    raise ScanError(rel, _collision(rel, other, first))
            for other in self._rivals(rel, mine):  # written before: what the ledger says of the likely ones
                if other in self._writing:
                    continue
                rec = self.records.get(other)
                if not rec or rec.get("event") != "done" or not (self.in_dir / other).exists():
                    continue
                shared = mine.intersection(rec.get("outputs", []))
                if shared and _takes_over(rel, other):
                    displaced.append((other, _first(outputs, shared)))
                elif shared:
                    raise ScanError(rel, _collision(rel, other, _first(outputs, shared)))
            self._writing[rel] = mine
        return displaced

    def release(self, rel: str) -> None:
        """The scan is recorded (done or failed) or given up: its reservation ends."""
        with self._mutex:
            self._writing.pop(rel, None)

    def _rivals(self, rel: str, outputs: set[str]) -> list[str]:
        """The names other scans in ``rel``'s IN folder would need to write one of ``outputs``.

        Built from the outputs' stems, not by listing the folder (a busy folder changes all the time):
        ``x_f0002.png`` is written by a scan ``x_f0002.<suffix>`` or by the multi-frame ``x.<suffix>``;
        suffixes in lower or upper case, and the bare stem (a DICOM file named by its UID).
        """
        stems: set[str] = set()
        for out in outputs:
            stem = os.path.splitext(PurePosixPath(out).name)[0]
            stems.update((stem, _FRAME.sub("", stem)))
        parent = PurePosixPath(rel).parent
        prefix = "" if str(parent) == "." else f"{parent}/"
        names = [prefix + stem + sfx for stem in stems for sfx in _SUFFIX_FORMS] + [prefix + st for st in stems]
        return [n for n in names if n != rel]


def _group_prefix(rel: str) -> str:
    """The folder and :func:`group_key` of a scan: the start of the name of every scan it may collide with."""
    relp = PurePosixPath(rel)
    return (relp.parent / group_key(relp.name)).as_posix().removeprefix("./")


_FRAME = re.compile(r"_f\d{4}$")
#: Scan suffixes as names carry them (``x.png``, ``X.PNG``).
_SUFFIX_FORMS = sorted({f for sfx in IMAGE_SUFFIXES | DICOM_SUFFIXES for f in (sfx, sfx.upper())})


def group_key(name: str) -> str:
    """Scans whose outputs may share a name share this key: the name stem without a frame number.

    ``x.png``, ``x.jpg`` and ``x.dcm`` (frames ``x_f0001.png``, ...) and ``x_f0002.png`` all give ``x``.
    """
    return _FRAME.sub("", scan_stem(PurePosixPath(name).name))


def collision_order(rel: str) -> tuple[bool, str]:
    """Within a group, who is asked first: a scan named like its own mask (``x.png``), then by name."""
    relp = PurePosixPath(rel)
    return relp.name != scan_stem(relp.name) + ".png", rel


def _first(outputs: list[str], shared: set[str]) -> str:
    """The output a message names: the scan's first that is shared (its mask, before overlays and reports)."""
    return next(o for o in outputs if o in shared)


def _takes_over(rel: str, other: str) -> bool:
    """Whether ``rel`` keeps an output name from ``other`` whatever came first: it is named like its mask."""
    return collision_order(rel)[0] < collision_order(other)[0]


def displaced_reason(rel: str, by: str, shared: str) -> str:
    """Why scan ``rel``, done before, is refused now that ``by`` (named like the mask) writes ``shared``."""
    return (
        f"OUT/{shared} is now written by {by}, which is named like it and so keeps it, although this scan "
        "was done first; its outputs are removed; rename one of the two"
    )


def _collision(rel: str, other: str, shared: str) -> str:
    how = (
        "a scan named like one of its frames"
        if scan_stem(PurePosixPath(rel).name) != scan_stem(PurePosixPath(other).name)
        else "same folder and name stem"
    )
    return f"OUT/{shared} would be written by this scan and by {other} ({how}); {other} keeps it; rename one of the two"
