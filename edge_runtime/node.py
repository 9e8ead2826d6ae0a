"""The daemon as a DICOM node: the storage SCP that feeds IN and the outboxes that send results to PACS.

:func:`open_node` starts what the command line asked for (``--dicom-listen``, ``--send-to``) around
a job that is already open; the daemon (:mod:`edge_runtime.watch`) hands it each scan's outcome, so
that the scan's DICOM results join every target's outbox once the scan is recorded done, and shows its
:meth:`Node.status` in the status file.

One outbox per ``--send-to`` target, each with its state folder: the first target's is
``OUT/.edge-seg/outbox/`` (where a single target's always was, so an upgrade sends nothing twice), the
others' ``OUT/.edge-seg/outbox/<target>/`` (:func:`edge_runtime.net.peer.folder_name`).
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

    def __init__(self, listener: StorageSCP | None = None, outboxes: list[Outbox] | None = None) -> None:
        self.listener = listener
        self.outboxes: list[Outbox] = outboxes or []

    @property
    def outbox(self) -> Outbox | None:
        """The first target's outbox (None without ``--send-to``)."""
        return self.outboxes[0] if self.outboxes else None

    def on_outcome(self, outcome: Outcome) -> None:
        """Queue a scan's DICOM results for sending to each target once it is recorded done."""
        if not self.outboxes or outcome.status != Status.OK:
            return
        for outbox in self.outboxes if outcome.dicom else []:
            try:
                outbox.add(outcome.dicom)
            except OSError as exc:  # the next start finds them (Outbox.reconcile)
                log.error("cannot queue the DICOM results of %s for %s: %s", outcome.rel, outbox.peer, exc)

    def status(self) -> dict[str, Any]:
        """The listener's and the outboxes' part of the status file (``outbox``: the first target's;
        ``outboxes``: every target's, with several)."""
        out: dict[str, Any] = {}
        if self.listener is not None:
            out["dicom_listener"] = self.listener.stats()
        if self.outboxes:
            out["outbox"] = self.outboxes[0].stats()
        if len(self.outboxes) > 1:
            out["outboxes"] = [o.stats() for o in self.outboxes]
        return out

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        for outbox in self.outboxes:
            outbox.stop()


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
        if options.send_to:
            from edge_runtime.net.dicomweb import read_auth
            from edge_runtime.net.outbox import OUTBOX_DIR, Outbox
            from edge_runtime.net.peer import folder_name

            auth = read_auth(options.send_auth) if options.send_auth is not None else None
            state = job.out_dir / STATE_DIR
            for i, target in enumerate(options.send_to):
                folder = state / OUTBOX_DIR if i == 0 else state / OUTBOX_DIR / folder_name(target)
                outbox = Outbox(job.out_dir, state, target, options.ae_title, options.retry, folder, auth)
                node.outboxes.append(outbox)
                outbox.reconcile(DICOM_DIR)
                outbox.start()
                log.info("DICOM results go to %s (outbox in %s)", target, outbox.folder)
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
