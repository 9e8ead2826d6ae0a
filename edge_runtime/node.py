"""The daemon as a DICOM node: the storage SCP that feeds IN and the outbox that sends results to PACS.

:func:`open_node` starts what the command line asked for (``--dicom-listen``, ``--send-to``) around
a job that is already open; the daemon (:mod:`edge_runtime.watch`) hands it each scan's outcome, so
that the scan's SEG and SR join the outbox once the scan is recorded done, and shows its
:meth:`Node.status` in the status file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.job.assemble import Job
from edge_runtime.job.outcome import Outcome, Status
from edge_runtime.job.settings import NodeOptions
from edge_runtime.outputs.layout import DICOM_DIR, STATE_DIR

if TYPE_CHECKING:
    from edge_runtime.net.outbox import Outbox
    from edge_runtime.net.scp import StorageSCP

log = logging.getLogger(__name__)


class Node:
    """The listener and the outbox of one daemon (either may be absent)."""

    def __init__(self, listener: StorageSCP | None = None, outbox: Outbox | None = None) -> None:
        self.listener = listener
        self.outbox = outbox

    def on_outcome(self, outcome: Outcome) -> None:
        """Queue a scan's DICOM results for sending once it is recorded done."""
        if self.outbox is None or outcome.status != Status.OK:
            return
        results = [p for p in outcome.outputs if p.startswith(f"{DICOM_DIR}/") and p.endswith(".dcm")]
        if results:
            try:
                self.outbox.add(results)
            except OSError as exc:  # the next start finds them (Outbox.reconcile)
                log.error("cannot queue the DICOM results of %s for sending: %s", outcome.rel, exc)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.listener is not None:
            out["dicom_listener"] = self.listener.stats()
        if self.outbox is not None:
            out["outbox"] = self.outbox.stats()
        return out

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        if self.outbox is not None:
            self.outbox.stop()


def prepare_inbox(in_dir: Path) -> None:
    """With ``--dicom-listen`` IN is the listener's inbox: make it when it does not exist yet."""
    if not in_dir.exists():
        try:
            in_dir.mkdir(parents=True)
        except OSError as exc:
            from edge_runtime.errors import SetupError

            raise SetupError(f"cannot create the input folder {in_dir}: {exc.strerror or exc}") from None
        log.info("created the input folder %s for the DICOM listener", in_dir)


def open_node(job: Job, options: NodeOptions, verbose: bool = False) -> Node:
    """Start the outbox's sender and the storage SCP that ``options`` ask for."""
    if not options.active:
        return Node()
    try:
        import pynetdicom  # noqa: F401
    except ImportError:
        from edge_runtime.errors import SetupError

        raise SetupError('--dicom-listen and --send-to need the dicom extra: pip install "edge-seg[dicom]"') from None
    if not verbose:  # pynetdicom logs every association at INFO, and each refused connection as an error
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    node = Node()
    try:
        if options.send_to is not None:
            from edge_runtime.net.outbox import Outbox

            node.outbox = Outbox(job.out_dir, job.out_dir / STATE_DIR, options.send_to, options.ae_title, options.retry)
            node.outbox.reconcile(DICOM_DIR)
            node.outbox.start()
            log.info("DICOM results go to %s (outbox in %s)", options.send_to, node.outbox.folder)
        if options.listen is not None:
            from edge_runtime.net.scp import StorageSCP

            node.listener = StorageSCP(
                job.in_dir,
                options.ae_title,
                options.allow_ae,
                options.max_associations,
                options.max_instance_mb,
                options.min_free_mb,
            )
            node.listener.start(*options.listen)
    except BaseException:
        node.close()
        raise
    return node
