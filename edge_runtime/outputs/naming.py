"""Who writes which output names: decided once, by the one process that holds the ledger (contract 4).

Output names follow the scan's name stem (:mod:`edge_runtime.outputs.layout`), so scans can collide:
``x.png`` and ``x.jpg`` both write ``x.png`` (so do ``x.Png`` and ``x.jpg``: suffixes are compared as
output names are made); the frames of ``cine.dcm`` are ``cine_f0001.png``, ... which a scan named
``cine_f0002.png`` writes too. Scans that may collide share a group (:func:`group_of`: their folder and
name stem without a frame number, case-folded where OUT's file system folds case). The rule (README,
docs/OUTPUTS.md): the scan named like the mask (``x.png``) keeps a contested name whenever it comes;
else the one done first, scans of one listing taken in :func:`collision_order`; a scan that cannot be
read keeps nothing.

:class:`Naming` applies it, on the client, at three moments:

* :meth:`Naming.grant`, before a scan is read: the :class:`Names` a worker is given -- the scan, and
  the output names the other scans of its group keep (their ledger records). While another scan of its
  group is out on a worker, it waits (None), so a group goes one scan at a time, in the order given.
* a worker writes a scan's outputs unless one of them is in :attr:`Names.taken`; then it writes
  nothing and hands the outputs back (a cine's frame count is known only once it is read), and
  :meth:`Naming.contest` decides, in one step: refused (a ScanError naming both), or the scan takes the
  names from scans done before, which the client records as refused before it sends the scan again.
* :meth:`Naming.release`, once a scan's result is recorded: the scans of its group that waited for it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from edge_runtime.errors import ScanError
from edge_runtime.outputs.layout import scan_stem

_FRAME = re.compile(r"_f\d{4}$")


@dataclass(frozen=True)
class Names:
    """What a worker is given for one scan: write the outputs its name makes, unless one is ``taken``."""

    rel: str  #: the scan, its POSIX path relative to IN
    #: output names (relative to OUT, :func:`fold`-ed) that other scans keep
    taken: frozenset[str] = field(default_factory=frozenset)
    folds_case: bool = False  #: OUT's file system folds case: ``X.png`` is ``x.png``

    def contested(self, outputs: Iterable[str]) -> bool:
        """Whether any of ``outputs`` is another scan's: the worker then writes none of them."""
        return bool(self.taken) and any(fold(o, self.folds_case) in self.taken for o in outputs)


class Records(Protocol):
    """What deciding names needs of the ledger: the done records of the scans whose path starts so."""

    def done_with_prefix(self, prefix: str) -> list[tuple[str, dict[str, Any]]]: ...


def group_key(name: str) -> str:
    """Scans whose outputs may share a name share this key: the name stem without a frame number.

    ``x.png``, ``x.Png``, ``x.jpg`` and ``x.dcm`` (frames ``x_f0001.png``, ...) and ``x_f0002.png`` all give ``x``.
    """
    return _FRAME.sub("", scan_stem(PurePosixPath(name).name))


def group_of(rel: str, folds_case: bool = False) -> str:
    """The folder and :func:`group_key` of a scan: scans that may write the same file have the same one."""
    relp = PurePosixPath(rel)
    return fold((relp.parent / group_key(relp.name)).as_posix().removeprefix("./"), folds_case)


def fold(name: str, folds_case: bool) -> str:
    """``name`` as the file system compares it."""
    return name.casefold() if folds_case else name


def collision_order(rel: str) -> tuple[bool, str]:
    """Within a group, who is asked first: a scan named like its own mask (``x.png``), then by name."""
    relp = PurePosixPath(rel)
    return relp.name != scan_stem(relp.name) + ".png", rel


def takes_over(rel: str, other: str) -> bool:
    """Whether ``rel`` keeps an output name from ``other`` whatever came first: it is named like its mask."""
    return collision_order(rel)[0] < collision_order(other)[0]


def collision_reason(rel: str, other: str, shared: str) -> str:
    """Why scan ``rel`` is refused: ``other`` keeps the output ``shared`` both would write."""
    how = (
        "a scan named like one of its frames"
        if scan_stem(PurePosixPath(rel).name) != scan_stem(PurePosixPath(other).name)
        else "same folder and name stem"
    )
    return f"OUT/{shared} would be written by this scan and by {other} ({how}); {other} keeps it; rename one of the two"


def displaced_reason(rel: str, by: str, shared: str) -> str:
    """Why scan ``rel``, done before, is refused now that ``by`` (named like the mask) writes ``shared``."""
    return (
        f"OUT/{shared} is now written by {by}, which is named like it and so keeps it, although this scan "
        "was done first; its outputs are removed; rename one of the two"
    )


def folds_case(directory: Path) -> bool:
    """Whether ``directory``'s file system takes ``A`` and ``a`` for the same name (a probe file in it)."""
    probe = directory / f"case-probe-{os.getpid()}"
    try:
        probe.touch()
        try:
            return (directory / probe.name.upper()).exists()
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    except OSError:
        return False


class Naming:
    """The output names of the scans of one job, decided on the client from the ledger (module docstring).

    Args:
        in_dir: the input folder the scans' relative paths start from.
        records: the job's ledger.
        thresholds: how many thresholds the job writes (with one, outputs go straight under OUT).
        folders: the output writers' folders under OUT and their kinds, which input folders must not shadow.
        folds_case: OUT's file system folds case (:func:`folds_case`).
    """

    def __init__(
        self,
        in_dir: Path,
        records: Records,
        thresholds: int,
        folders: list[tuple[str, str]],
        folds_case: bool = False,
    ) -> None:
        self.in_dir = in_dir
        self.records = records
        self.thresholds = thresholds
        self.folders = folders
        self.folds_case = folds_case
        self._out: dict[str, str] = {}  # group -> its scan on a worker now
        self._waiting: dict[str, deque[str]] = {}  # group -> its scans waiting for that one, in order

    def grant(self, rel: str) -> Names | ScanError | None:
        """The names scan ``rel`` is sent with; a ScanError when it is refused before it is read (its mask
        would go into an output writer's folder); None when it waits for a scan of its group (:meth:`release`)."""
        refused = self._shadowed(rel)
        if refused is not None:
            return refused
        group = group_of(rel, self.folds_case)
        if self._out.setdefault(group, rel) != rel:
            self._waiting.setdefault(group, deque()).append(rel)
            return None
        taken = {fold(o, self.folds_case) for _, rec in self._keepers(rel) for o in rec.get("outputs", [])}
        return Names(rel, frozenset(taken), self.folds_case)

    def contest(self, rel: str, outputs: list[str]) -> list[tuple[str, str]]:
        """Scan ``rel``, read, would write ``outputs``, some of which scans done before keep (:meth:`Names.contested`).

        A ScanError naming the first such scan that keeps its name (``x.jpg`` against ``x.png``, or against
        ``x.bmp`` done first); else the scans it takes names from, each with the first name shared, which
        the caller records as refused (:func:`displaced_reason`) before it sends ``rel`` again.
        """
        taken: list[tuple[str, str]] = []
        for other, rec in self._keepers(rel):
            theirs = {fold(o, self.folds_case) for o in rec.get("outputs", [])}
            shared = next((o for o in outputs if fold(o, self.folds_case) in theirs), None)
            if shared is None:
                continue
            if not takes_over(rel, other):
                raise ScanError(rel, collision_reason(rel, other, shared))
            taken.append((other, shared))
        return taken

    def waiting(self, rel: str) -> bool:
        """Whether scan ``rel`` waits for another of its group (its own result says what became of it)."""
        return rel in self._waiting.get(group_of(rel, self.folds_case), ())

    def release(self, rel: str) -> list[str]:
        """Scan ``rel``'s result is recorded: the scans of its group that waited for it, to be granted again."""
        group = group_of(rel, self.folds_case)
        if self._out.get(group) != rel:
            return []
        del self._out[group]
        return list(self._waiting.pop(group, ()))

    def reset(self) -> None:
        """Nothing is out on a worker any more (the end of a run's batches): forget who waited."""
        self._out.clear()
        self._waiting.clear()

    def _keepers(self, rel: str) -> list[tuple[str, dict[str, Any]]]:
        """The other scans of ``rel``'s group done before whose files are still in IN, with their records, by name."""
        group = group_of(rel, self.folds_case)
        if self.folds_case:  # the ledger's index compares case: look at the whole folder
            parent = PurePosixPath(rel).parent
            prefix = "" if str(parent) == "." else f"{parent}/"
        else:
            prefix = group
        return sorted(
            (other, rec)
            for other, rec in self.records.done_with_prefix(prefix)
            if other != rel and group_of(other, self.folds_case) == group and (self.in_dir / other).exists()
        )

    def _shadowed(self, rel: str) -> ScanError | None:
        """A scan whose mask would go into an output writer's folder (one threshold, ``IN/overlays/...``)."""
        parts = PurePosixPath(rel).parts
        if self.thresholds == 1 and len(parts) > 1:
            for folder, kind in self.folders:
                if parts[0] == folder:
                    return ScanError(
                        rel,
                        f"its mask would go to OUT/{folder}/, the folder of the {kind}; "
                        f"rename the input folder {folder!r} or run without the {kind}",
                    )
        return None
