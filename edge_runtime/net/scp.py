"""``--dicom-listen``: a storage SCP (pynetdicom) that writes the instances it receives into IN.

It answers C-ECHO and accepts C-STORE of the ultrasound storage classes (single- and multi-frame,
also their retired forms) and secondary capture, in the native transfer syntaxes and every compressed
one the installed pydicom plugins decode (JPEG Baseline at least, with the ``dicom`` extra). Each
instance is written atomically to ``IN/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (a hidden temporary
name, fsync, rename, folder fsync) and acknowledged only then; the daemon's watched folder picks it up
like any other arrival, so the ledger, error records and status file work for it as for a copied file.

Refused, each with one log line naming the calling AE title and the reason: associations from AE
titles not in ``--allow-ae``, associations beyond ``--max-associations`` (pynetdicom rejects both),
instances over ``--max-instance-mb`` and instances that would leave less than ``--min-free-mb`` free
on IN's disk (status 0xA700, out of resources: the sender may retry later), instances whose UIDs
cannot name a file (0xA900), and associations none of whose SOP classes it takes (logged only).
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from edge_runtime.errors import SetupError
from edge_runtime.files.durable import sync_dirs, write_atomic

log = logging.getLogger(__name__)

#: Storage SOP classes accepted: ultrasound (and its retired forms) and secondary capture.
STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
VERIFICATION = "1.2.840.10008.1.1"
SUCCESS, OUT_OF_RESOURCES, NOT_MATCHING, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def transfer_syntaxes() -> list[str]:
    """The native transfer syntaxes, then every compressed one pydicom can decode here."""
    from pydicom import uid
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


def _valid_uid(value: Any) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and _UID.match(text) is not None


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
        self.address: tuple[str, int] | None = None
        self.counts = {"associations": 0, "rejected": 0, "echoes": 0, "received": 0, "refused": 0, "bytes": 0}
        self.last_refusal: dict[str, Any] | None = None

    # -- the server ------------------------------------------------------------------------------------
    def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0: any free one); returns the address bound."""
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.max_associations
        ae.require_calling_aet = list(self.allow_ae)
        syntaxes = transfer_syntaxes()
        ae.add_supported_context(VERIFICATION)
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
        log.warning("DICOM %s from AE %r: %s", what, calling, reason)
        with self._lock:
            self.counts["refused" if what == "refused" else "rejected"] += 1
            self.last_refusal = {"ae": calling, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

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
        sop = str(event.request.AffectedSOPInstanceUID or "")
        size = len(event.request.DataSet.getbuffer())
        if size > self.max_bytes:
            self._refuse(calling, f"instance {sop} of {size:,} bytes is over --max-instance-mb {self.max_bytes >> 20}")
            return OUT_OF_RESOURCES
        try:
            free = shutil.disk_usage(self.in_dir).free
        except OSError as exc:  # IN unmounted or gone
            self._refuse(calling, f"instance {sop}: cannot check the disk under {self.in_dir}: {exc.strerror or exc}")
            return OUT_OF_RESOURCES
        if free - size < self.min_free:
            self._refuse(
                calling,
                f"instance {sop}: only {free >> 20} MB free on the disk under {self.in_dir}, "
                f"below --min-free-mb {self.min_free >> 20}",
            )
            return OUT_OF_RESOURCES
        try:
            study = event.dataset.get("StudyInstanceUID")
        except Exception as exc:
            self._refuse(calling, f"instance {sop}: cannot be parsed ({type(exc).__name__}: {exc})")
            return CANNOT_UNDERSTAND
        if not (_valid_uid(study) and _valid_uid(sop)):
            self._refuse(calling, f"instance {sop!r}: StudyInstanceUID {study!r} or SOPInstanceUID is not a valid UID")
            return NOT_MATCHING
        folder = self.in_dir / str(study)
        path = folder / f"{sop}.dcm"
        try:
            write_atomic(path, event.encoded_dataset(include_meta=True), fsync=True)
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
            STORAGE_CLASSES.get(str(event.request.AffectedSOPClassUID), "storage"),
        )
        return SUCCESS
