"""What the storage SCP changes in pynetdicom's receive path, so that no peer can exhaust it.

* **Received data goes to disk as it arrives**, never into memory: pynetdicom's chunked mode
  (``_config.STORE_RECV_CHUNKED_DATASET``) writes each C-STORE's data set to a temporary file; here that
  file is made in ``IN/.edge-seg-incoming/`` (hidden, so never taken for a scan; on IN's file system, so
  the stored instance is renamed into place, not copied), and its writes are counted: once an instance
  passes ``--max-instance-mb`` nothing more of it is written and the association is aborted.
* **A C-STORE whose Affected SOP Instance UID pynetdicom cannot take** (empty, over 64 characters, not a
  UID) is passed on without it, so that the SCP answers it with a failure status instead of pynetdicom
  dropping it (an empty one) or aborting on it (a long one) while the sender waits.
* **Slots are for associations**: ``--max-associations`` counts established associations only. A
  connection that has not completed its A-ASSOCIATE-RQ within :data:`REQUEST_SECONDS` is closed (a
  peer trickling one byte every 20 s held a slot for as long as it liked), one peer address may have at
  most ``--max-associations`` + 1 connections open at once (the one over the slots is told "too many" by
  a proper A-ASSOCIATE-RJ), and all peers together at most twice ``--max-associations`` still waiting to
  complete their request; beyond, a new connection makes room: the oldest waiting connection of the
  address holding the most is closed (closing the newcomer let two addresses that reconnect every few
  seconds keep every real sender out).

pynetdicom has no hooks for these, so :func:`install` replaces four of its functions (once a process);
each replacement calls pynetdicom's own and is a no-op for associations of other AEs (a PACS in a test, the
outbox's sender).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, _config, dimse_messages
from pynetdicom.dimse_primitives import C_STORE

log = logging.getLogger(__name__)

#: Seconds a new connection has to complete its A-ASSOCIATE-RQ.
REQUEST_SECONDS = 5.0
#: Folder under IN where instances are received, then renamed into place.
INCOMING = ".edge-seg-incoming"
#: An A-ABORT PDU (PS3.8 9.3.8): type 7, length 4, source 0 (the service user: this node), reason 0.
_A_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])
#: How often the watchdog looks for connections past their time.
_TICK = 0.5
#: Seconds an address is remembered as refused (a connection of it rejected, aborted or closed): when waiting
#: connections must make room, such an address's go first.
REFUSED_REMEMBERED = 60.0
#: Connection times (and refused addresses) kept at most (a stamp goes when its association is seen, or after a minute).
_ARRIVED_KEPT = 4096

_guards: dict[int, Guard] = {}  # id(AE) -> its guard
_installed = threading.Lock()
_done = False


def install() -> None:
    """Replace pynetdicom's chunked temporary file, its C-STORE request decoding and its association limit."""
    global _done
    with _installed:
        if _done:
            return
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = _incoming_file
        make_meta = dimse_messages.create_file_meta

        def create_file_meta(*, sop_instance_uid: Any, **kwargs: Any) -> Any:
            # the temporary file's own header: an empty UID there would stop pynetdicom's reading thread
            usable = sop_instance_uid if valid_uid(sop_instance_uid) else UID("0")
            return make_meta(sop_instance_uid=usable, **kwargs)

        dimse_messages.create_file_meta = create_file_meta
        original = dimse_messages.DIMSEMessage.message_to_primitive

        def message_to_primitive(self: Any) -> Any:
            return _lenient_store_request(self, original)

        dimse_messages.DIMSEMessage.message_to_primitive = message_to_primitive  # type: ignore[method-assign]
        _done = True


def _current_assoc() -> Any:
    """The association whose DUL or reactor thread this is (None elsewhere)."""
    thread = threading.current_thread()
    return getattr(thread, "assoc", None) or (thread if hasattr(thread, "acceptor") else None)


def _guard_of(assoc: Any) -> Guard | None:
    return _guards.get(id(getattr(assoc, "ae", None)))


def _incoming_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's temporary file for a C-STORE data set: in IN's incoming folder, its size limited."""
    assoc = _current_assoc()
    guard = _guard_of(assoc)
    if guard is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    kwargs["dir"] = guard.incoming
    handle = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115
    write = handle.file.write
    written = [0]

    def limited(data: bytes) -> int:
        if written[0] > guard.max_bytes:
            return len(data)  # already refused: what still arrives is dropped
        written[0] += len(data)
        if written[0] > guard.max_bytes:
            guard.over_limit(assoc, written[0])
            return len(data)
        return write(data)

    handle.write = limited  # type: ignore[method-assign,assignment]
    return handle


def _lenient_store_request(message: Any, original: Callable[[Any], Any]) -> Any:
    """pynetdicom's decoding of a DIMSE message, but a C-STORE-RQ with a bad instance UID is passed on without it."""
    command = getattr(message, "command_set", None)
    if command is None or command.get("CommandField") != 0x0001:
        return original(message)
    raw = command.get("AffectedSOPInstanceUID")
    if valid_uid(raw):
        return original(message)
    del command.AffectedSOPInstanceUID
    primitive = original(message)
    primitive.__class__ = UnnamedStore
    primitive.raw_instance_uid = str(raw or "")
    return primitive


def valid_uid(value: Any) -> bool:
    """A UID that can name a file: 1 to 64 characters, digits in dot-separated groups."""
    text = str(value or "")
    return 0 < len(text) <= 64 and all(part.isdigit() and part.isascii() for part in text.split("."))


class UnnamedStore(C_STORE):
    """A C-STORE request whose Affected SOP Instance UID could not be taken: still served, to be refused."""

    raw_instance_uid = ""

    @property
    def is_valid_request(self) -> bool:
        return self.MessageID is not None and self.AffectedSOPClassUID is not None


class GuardedAE(AE):
    """pynetdicom's AE whose association limit counts established associations only (its guard's answer)."""

    guard: Guard | None = None

    @property
    def maximum_associations(self) -> int:
        if self.guard is not None:  # read by pynetdicom's ACSE when a request arrives
            return self.guard.association_limit()
        return int(self._maximum_associations)

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        self._maximum_associations = value


class Guard:
    """One storage SCP's limits: where and how much it receives, and who may hold its slots."""

    def __init__(
        self,
        in_dir: Path,
        max_bytes: int,
        max_associations: int,
        refuse: Callable[[str, str], None],
    ) -> None:
        self.incoming = in_dir / INCOMING
        self.max_bytes = max_bytes
        self.max_associations = max_associations
        self.refuse = refuse  # (who: "AE 'X'" or "address A", reason): one log line and the counts
        self.over: dict[int, int] = {}  # id(association) -> bytes received when it passed the limit
        self._opened: dict[int, float] = {}  # id(association) -> time.monotonic() at connection
        # (peer address, port) -> time.monotonic() when its connection was accepted: stamped here, before
        # its association exists, so that "the oldest" is exact (thread order and watchdog ticks are not)
        self._arrived: dict[tuple[str, int], float] = {}
        self._closed_said: dict[str, float] = {}
        # peer address -> time.monotonic() when a connection of it was last rejected, aborted or closed: its
        # waiting connections go before those of an address never refused (a real sender, mid-request)
        self._refused_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._ae: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def prepare(self) -> None:
        """Make the incoming folder and clear what a killed process left there."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        for old in self.incoming.iterdir():
            with contextlib.suppress(OSError):
                old.unlink()

    def attach(self, ae: Any, server: Any) -> None:
        """Start guarding ``ae``'s ``server``: connection checks and the request-time watchdog."""
        install()
        self._ae, self._server = ae, server
        _guards[id(ae)] = self
        server.verify_request = self.verify_request
        self._thread = threading.Thread(target=self._watch, name="edge-seg-dicom-guard", daemon=True)
        self._thread.start()

    def detach(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _guards.pop(id(self._ae), None)

    # -- slots ---------------------------------------------------------------------------------------------
    def _acceptors(self) -> list[Any]:
        return [a for a in self._ae.active_associations if a.is_acceptor] if self._ae is not None else []

    def association_limit(self) -> int:
        """What pynetdicom compares its acceptors with when a request arrives: reject when established >= N.

        pynetdicom counts every acceptor thread, waiting ones included, and rejects when there are more
        than this; so the answer is that count when a slot is free and one less when not.
        """
        acceptors = self._acceptors()
        established = sum(1 for a in acceptors if a.is_established)
        return len(acceptors) if established < self.max_associations else len(acceptors) - 1

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """socketserver's check of a new connection: per-address and waiting-connection limits."""
        address = str(client_address[0])
        acceptors = self._acceptors()
        # waiting: connections that are no association -- still to send their request, or rejected or aborted
        # and not yet closed by the peer. Never one whose request is being answered or that is being released
        # (a real peer: closing it then would abort its association or its A-RELEASE-RP still queued).
        waiting = [a for a in acceptors if _refused(a) or (not a.is_established and _before_request(a))]
        mine = [a for a in acceptors if _address(a) == address]
        if len(mine) > self.max_associations:  # one more than the slots: its request gets a proper rejection
            self._closed(address, f"{len(mine)} connections from it already open (--max-associations)")
            return False
        with contextlib.suppress(TypeError, ValueError, IndexError):
            _stamp(self._arrived, (address, int(client_address[1])), time.monotonic())
        if len(waiting) >= 2 * self.max_associations:
            # Room is made, not refused: closing the newcomer would let a few addresses that reconnect
            # every few seconds keep every real sender out. The oldest waiting connection of the address
            # that holds the most goes, so a flood evicts its own, while a real sender's request (sent
            # within milliseconds of connecting) is complete long before its turn would come.
            victim = self._evictee(waiting)
            _close(victim)
            self._closed(
                _address(victim),
                f"{len(waiting)} connections waiting for their association request: its oldest closed to make room",
            )
        return True

    def _evictee(self, waiting: list[Any]) -> Any:
        """Of the waiting connections, one already refused (rejected or aborted, not yet closed by its peer)
        first, then one of an address refused in the last minute, then the oldest of the address holding the most."""
        counts: dict[str, int] = {}
        for assoc in waiting:
            counts[_address(assoc)] = counts.get(_address(assoc), 0) + 1
        now = time.monotonic()
        for assoc in waiting:
            if _refused(assoc):
                self._remember_refused(_address(assoc), now)
        return min(
            waiting,
            key=lambda a: (
                not _refused(a),
                now - self._refused_at.get(_address(a), -1e9) > REFUSED_REMEMBERED,
                -counts[_address(a)],
                self._opened.get(id(a)) or self._arrival(a, now),
            ),
        )

    def _arrival(self, assoc: Any, default: float) -> float:
        """When ``assoc``'s connection was accepted (``default`` when not known)."""
        return self._arrived.get((_address(assoc), _port(assoc)), default)

    def _remember_refused(self, address: str, now: float) -> None:
        """``address`` had a connection rejected, aborted or closed now (kept a minute)."""
        _stamp(self._refused_at, address, now)

    def _closed(self, address: str, reason: str) -> None:
        now = time.monotonic()
        self._remember_refused(address, now)
        if now - self._closed_said.get(address, -1e9) >= 60:  # one line a minute an address, not one a try
            self._closed_said[address] = now
            self.refuse(f"address {address}", f"connection closed: {reason}")

    # -- the watchdog ----------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(_TICK):
            now = time.monotonic()
            live = set()
            for assoc in self._acceptors():
                key = id(assoc)
                live.add(key)
                opened = self._opened.get(key)
                if opened is None:
                    opened = self._opened[key] = self._arrived.pop((_address(assoc), _port(assoc)), now)
                if key in self.over and now - opened > REQUEST_SECONDS:  # aborted for its size, still open
                    _close(assoc)
                    continue
                if _refused(assoc):
                    self._remember_refused(_address(assoc), now)
                if assoc.is_established or assoc.is_rejected or assoc.is_aborted or assoc.is_released:
                    continue
                if now - opened > REQUEST_SECONDS:
                    self._opened[key] = float("inf")  # said and closed once
                    self._remember_refused(_address(assoc), now)
                    self.refuse(
                        f"address {_address(assoc)}",
                        f"connection closed: no complete association request within {REQUEST_SECONDS:g} s",
                    )
                    _close(assoc)
            for gone in set(self._opened) - live:
                del self._opened[gone]
                self.over.pop(gone, None)
            for peer, at in list(self._arrived.items()):  # accepted, but never became an association
                if now - at > 60:
                    self._arrived.pop(peer, None)
            for address, at in list(self._refused_at.items()):
                if now - at > REFUSED_REMEMBERED:
                    self._refused_at.pop(address, None)

    # -- size ------------------------------------------------------------------------------------------
    def over_limit(self, assoc: Any, received: int) -> None:
        """An instance passed the size limit while arriving: say so once and abort its association."""
        if assoc is None or id(assoc) in self.over:
            return
        self.over[id(assoc)] = received
        calling = str(getattr(assoc.requestor, "ae_title", "") or "").strip()
        self.refuse(
            f"AE {calling!r}",
            f"instance over --max-instance-mb {self.max_bytes >> 20} ({received:,} bytes received so far): "
            "association aborted",
        )
        # This is the association's own reading thread (pynetdicom's DUL): an abort queued for it would wait
        # behind the data still arriving, so the A-ABORT is sent from here; what still arrives is dropped,
        # and the watchdog closes the connection if the peer has not within REQUEST_SECONDS.
        self._opened[id(assoc)] = time.monotonic()
        sock = getattr(assoc.dul, "socket", None)
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.send(_A_ABORT)


def _stamp(stamps: dict[Any, float], key: Any, now: float) -> None:
    """``stamps[key] = now``; when ``_ARRIVED_KEPT`` are kept, the oldest half go first (bounded under a flood)."""
    if key not in stamps and len(stamps) >= _ARRIVED_KEPT:
        for old, _ in sorted(list(stamps.items()), key=lambda item: item[1])[: _ARRIVED_KEPT // 2]:
            stamps.pop(old, None)
    stamps[key] = now


def _refused(assoc: Any) -> bool:
    """Rejected or aborted, its connection still open (pynetdicom waits for the peer to close it)."""
    return bool(assoc.is_rejected or assoc.is_aborted)


def _before_request(assoc: Any) -> bool:
    """The connection is open and its A-ASSOCIATE-RQ has not arrived whole (DICOM PS3.8 states 1 and 2)."""
    state = getattr(getattr(getattr(assoc, "dul", None), "state_machine", None), "current_state", "Sta2")
    return state in ("Sta1", "Sta2")


def _address(assoc: Any) -> str:
    try:
        return str(assoc.requestor.address)
    except (AttributeError, ValueError):
        return "?"


def _port(assoc: Any) -> int:
    try:
        return int(assoc.requestor.port)
    except (AttributeError, TypeError, ValueError):
        return -1


def _close(assoc: Any) -> None:
    """Close a waiting connection's socket: its reading thread sees the end and the association ends."""
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(Exception):
            sock.close()
