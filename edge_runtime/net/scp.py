"""``--dicom-listen``: a storage SCP (pynetdicom) that writes the instances it receives into IN.

It answers C-ECHO and accepts C-STORE of the ultrasound storage classes (single- and multi-frame,
also their retired forms) and secondary capture, in the native transfer syntaxes and every compressed
one the installed pydicom plugins decode (JPEG Baseline at least, with the ``dicom`` extra). Each
instance is written atomically to ``IN/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (a hidden temporary
name, fsync, rename, folder fsync) and acknowledged only then; the daemon's watched folder picks it up
like any other arrival, so the ledger, error records and status file work for it as for a copied file.

Received data is written to disk as it arrives (:mod:`edge_runtime.net.guards`), under
``IN/.edge-seg-incoming/``, and the instance is checked there before it is renamed into place.

Refused, each with one log line naming the calling AE title (or, before there is one, the peer's
address) and the reason: associations from AE titles not in ``--allow-ae``, associations beyond
``--max-associations`` (pynetdicom rejects both); connections that do not complete their association
request in time or come one too many (closed; :mod:`~edge_runtime.net.guards`); an instance that passes
``--max-instance-mb`` while it arrives (its association aborted, nothing more of it stored), instances
that would leave less than ``--min-free-mb`` free on IN's disk (status 0xA700, out of resources: the
sender may retry later); instances whose UIDs cannot name a file, or whose content is not the SOP class
or instance the request names (0xA900); instances that cannot be parsed, are cut short or whose pixels
fail :func:`edge_runtime.files.dicom.check_image` (0xC000); and associations none of whose SOP classes it
takes (logged only). Every C-STORE gets a status.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from pydicom import uid
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # (made at import by pynetdicom)
from pynetdicom.status import Status

from edge_runtime import timestamps
from edge_runtime.errors import ScanError, SetupError, one_line
from edge_runtime.files.durable import sync_dirs

log = logging.getLogger(__name__)

#: Storage SOP classes accepted: ultrasound (and its retired forms, which neither pydicom nor pynetdicom
#: names) and secondary capture; each with its name, as pydicom's UID dictionary gives it.
ACCEPTED = (
    uid.UltrasoundImageStorage,
    uid.UltrasoundMultiFrameImageStorage,
    uid.UID("1.2.840.10008.5.1.4.1.1.6"),  # Ultrasound Image Storage (Retired)
    uid.UID("1.2.840.10008.5.1.4.1.1.3"),  # Ultrasound Multi-frame Image Storage (Retired)
    uid.SecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
)
STORAGE_CLASSES = {str(sop): sop.name + (" (Retired)" if sop.is_retired else "") for sop in ACCEPTED}
SUCCESS = Status.SUCCESS
#: The storage service's failure statuses this SCP answers (PS3.4 B.2.3); pynetdicom describes them
#: (``pynetdicom.status.STORAGE_SERVICE_CLASS_STATUS``) but has no name for them.
OUT_OF_RESOURCES, NOT_MATCHING, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000


def transfer_syntaxes() -> list[str]:
    """The native transfer syntaxes, then every compressed one pydicom can decode here."""
    from pydicom.pixels import get_decoder

    native = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian]
    compressed = [
        uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit,
        uid.JPEGLossless,
        uid.JPEGLosslessSV1,
        uid.JPEGLSLossless,
        uid.JPEGLSNearLossless,
        uid.JPEG2000Lossless,
        uid.JPEG2000,
        uid.RLELossless,
    ]
    usable = []
    for ts in compressed:
        try:
            if get_decoder(ts).is_available:
                usable.append(ts)
        except NotImplementedError:
            continue
    return [str(ts) for ts in native + usable]


def _shown(value: Any, limit: int = 70) -> str:
    """A peer's value for a log line: quoted, control characters escaped, cut to ``limit`` characters."""
    text = one_line(str(value if value is not None else ""))
    return repr(text if len(text) <= limit else text[:limit] + "...")


class StorageSCP:
    """The listener: :meth:`start` it on a port, :meth:`stats` for the status file, :meth:`stop` at the end."""

    def __init__(
        self,
        in_dir: Path,
        ae_title: str = "EDGESEG",
        allow_ae: tuple[str, ...] = (),
        max_associations: int = 4,
        max_instance_mb: int = 512,
        min_free_mb: int = 1024,
    ) -> None:
        self.in_dir = in_dir
        self.ae_title = ae_title
        self.allow_ae = allow_ae
        self.max_associations = max_associations
        self.max_bytes = max_instance_mb * 1024 * 1024
        self.min_free = min_free_mb * 1024 * 1024
        self._lock = threading.Lock()
        self._server: Any = None
        self._guard: Any = None
        self.address: tuple[str, int] | None = None
        self.counts = {"associations": 0, "rejected": 0, "echoes": 0, "received": 0, "refused": 0, "bytes": 0}
        self.last_refusal: dict[str, Any] | None = None

    # -- the server ------------------------------------------------------------------------------------
    def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0: any free one); returns the address bound."""
        from pynetdicom import evt

        from edge_runtime.net import guards

        guard = guards.Guard(self.in_dir, self.max_bytes, self.max_associations, self._refuse_peer)
        try:
            guard.prepare()
        except OSError as exc:
            raise SetupError(f"--dicom-listen: cannot make {guard.incoming}: {exc.strerror or exc}") from None
        ae = guards.GuardedAE(ae_title=self.ae_title)
        ae.maximum_associations = self.max_associations
        ae.acse_timeout = guards.REQUEST_SECONDS  # pynetdicom's own wait for a request: the guard's time
        ae.require_calling_aet = list(self.allow_ae)
        syntaxes = transfer_syntaxes()
        ae.add_supported_context(Verification)
        for sop in STORAGE_CLASSES:
            ae.add_supported_context(sop, syntaxes)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
        ]
        try:
            self._server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise SetupError(f"--dicom-listen {host}:{port}: cannot listen there ({exc.strerror or exc})") from None
        self.address = self._server.server_address[:2]
        guard.attach(ae, self._server)
        ae.guard = self._guard = guard
        log.info(
            "DICOM node %s listening on %s:%d (C-ECHO; C-STORE of ultrasound and secondary capture; %s)",
            self.ae_title,
            *self.address,
            "calling AE titles " + ", ".join(self.allow_ae) if self.allow_ae else "any calling AE title",
        )
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._guard is not None:
            self._guard.detach()
            self._guard = None

    def stats(self) -> dict[str, Any]:
        """What the status file shows: where it listens, associations open and counted, instances received."""
        with self._lock:
            active = len(self._server.active_associations) if self._server is not None else 0
            return {
                "ae_title": self.ae_title,
                "address": f"{self.address[0]}:{self.address[1]}" if self.address else None,
                "associations_open": active,
                **self.counts,
                "last_refusal": self.last_refusal,
            }

    # -- events ----------------------------------------------------------------------------------------
    def _refuse(self, calling: str, reason: str, what: str = "refused") -> None:
        self._refuse_peer(f"AE {_shown(calling, 16)}", reason, what, calling)

    def _refuse_peer(self, who: str, reason: str, what: str = "refused", calling: str | None = None) -> None:
        log.warning("DICOM %s from %s: %s", what, who, reason)
        with self._lock:
            self.counts["refused" if what == "refused" else "rejected"] += 1
            self.last_refusal = {
                "ae": calling if calling is not None else who,
                "reason": reason,
                "time": timestamps.local(),
            }

    def _on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        with self._lock:
            self.counts["associations"] += 1
        log.debug("DICOM association from AE %r at %s", calling, assoc.requestor.address)
        if not assoc.accepted_contexts and assoc.rejected_contexts:  # it can send nothing: say why
            offered = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts})
            self._refuse(
                calling,
                f"none of its SOP classes / transfer syntaxes is accepted ({', '.join(offered[:5])}"
                f"{', ...' if len(offered) > 5 else ''}); this node takes ultrasound and secondary capture images",
            )

    def _on_rejected(self, event: Any) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        if self.allow_ae and calling not in self.allow_ae:
            reason = f"calling AE title not allowed (--allow-ae {' '.join(self.allow_ae)})"
        else:
            reason = f"too many concurrent associations (--max-associations {self.max_associations})"
        self._refuse(calling, reason, "association rejected")

    def _on_echo(self, event: Any) -> int:
        with self._lock:
            self.counts["echoes"] += 1
        return SUCCESS

    def _on_store(self, event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            return self._store(event, calling)
        except Exception as exc:  # one bad instance must not take the listener down
            log.exception("unexpected error storing an instance from AE %r", calling)
            self._refuse(calling, f"unexpected error: {type(exc).__name__}: {exc}")
            return CANNOT_UNDERSTAND

    def _store(self, event: Any, calling: str) -> int:
        request = event.request
        raw = getattr(request, "raw_instance_uid", None)
        if raw is not None:  # pynetdicom could not take its Affected SOP Instance UID (net.guards)
            self._refuse(calling, f"instance {_shown(raw)}: its Affected SOP Instance UID is not a valid UID")
            return NOT_MATCHING
        sop = str(request.AffectedSOPInstanceUID or "")
        over = self._guard.over.get(id(event.assoc)) if self._guard is not None else None
        if over is not None:  # refused and logged as it passed the limit
            return OUT_OF_RESOURCES
        source = Path(event.dataset_path)
        size = source.stat().st_size
        if size > self.max_bytes:
            self._refuse(calling, f"instance {sop} of {size:,} bytes is over --max-instance-mb {self.max_bytes >> 20}")
            return OUT_OF_RESOURCES
        try:
            free = shutil.disk_usage(self.in_dir).free
        except OSError as exc:  # IN unmounted or gone
            self._refuse(calling, f"instance {sop}: cannot check the disk under {self.in_dir}: {exc.strerror or exc}")
            return OUT_OF_RESOURCES
        if free < self.min_free:
            self._refuse(
                calling,
                f"instance {sop}: only {free >> 20} MB free on the disk under {self.in_dir}, "
                f"below --min-free-mb {self.min_free >> 20}",
            )
            return OUT_OF_RESOURCES
        status, study, reason = _check_instance(source, request)
        if status != SUCCESS:
            self._refuse(calling, f"instance {_shown(sop)}: {reason}")
            return status
        folder = self.in_dir / study
        path = folder / f"{sop}.dcm"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _fsync(source)
            os.replace(source, path)  # same file system: IN/.edge-seg-incoming/ -> IN/<study>/
            sync_dirs([folder, self.in_dir])  # the new name, and a new study's folder, survive a power cut
        except OSError as exc:
            self._refuse(calling, f"instance {sop}: cannot write {path}: {exc.strerror or exc}")
            return OUT_OF_RESOURCES
        with self._lock:
            self.counts["received"] += 1
            self.counts["bytes"] += size
        log.info(
            "received %s/%s.dcm from AE %r (%s)",
            study,
            sop,
            calling,
            STORAGE_CLASSES.get(str(request.AffectedSOPClassUID), "storage"),
        )
        return SUCCESS


def _check_instance(source: Path, request: Any) -> tuple[int, str, str]:
    """(status, StudyInstanceUID, reason): whether a received instance is whole and what its request says."""
    import pydicom

    from edge_runtime.files.dicom import check_image
    from edge_runtime.net.guards import valid_uid

    try:
        ds = pydicom.dcmread(source)
        for _ in ds.iterall():  # every element parsed now: a cut or malformed one fails here, not later
            pass
    except Exception as exc:  # pydicom raises many types for bad input
        return CANNOT_UNDERSTAND, "", f"cannot be parsed ({_first_line(exc)})"
    sent_as = str(request.AffectedSOPClassUID)
    sop_class, sop = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    if sop_class != sent_as:
        what = STORAGE_CLASSES.get(sent_as, sent_as)
        return NOT_MATCHING, "", f"its content is SOP class {_shown(sop_class)}, not the {what} it was sent as"
    if sop != str(request.AffectedSOPInstanceUID):
        return NOT_MATCHING, "", f"its content's SOP Instance UID is {_shown(sop)}, not the one in the request"
    study = ds.get("StudyInstanceUID")
    if not (valid_uid(study) and valid_uid(sop)):
        return NOT_MATCHING, "", f"StudyInstanceUID {_shown(study)} or SOPInstanceUID is not a valid UID"
    try:
        check_image(ds, source.name)
    except ScanError as exc:
        return CANNOT_UNDERSTAND, "", exc.reason
    return SUCCESS, str(study), ""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
