"""The DIMSE sender (``--send-to AET@HOST:PORT``): C-STORE over one association a try (pynetdicom)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING

from edge_runtime.net.peer import Peer
from edge_runtime.net.senders import Delivery, Reply

if TYPE_CHECKING:
    from pydicom import Dataset
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10  #: seconds to open the TCP connection
TIMEOUT = 60  #: seconds for the association, each DIMSE message and the network


def out_of_resources(status: int) -> bool:
    """A C-STORE failure that waiting may cure: "Refused: Out of resources" (0xA7xx), or no response at all."""
    return status < 0 or 0xA700 <= status <= 0xA7FF


class DimseSender:
    """Sends datasets to ``peer`` by C-STORE, calling as ``calling_ae``.

    A :class:`~edge_runtime.net.senders.Sender`: a status pynetdicom counts as success or warning is sent;
    "out of resources" or no answer is the target down; any other failure status is a refusal.
    """

    def __init__(self, peer: Peer, calling_ae: str = "EDGESEG") -> None:
        self.peer = peer
        self.calling_ae = calling_ae
        self.target = str(peer)

    def offer(self, datasets: Sequence[Dataset], stop: Callable[[], bool]) -> Generator[Reply, None, None]:
        from pynetdicom import AE
        from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

        ae = AE(ae_title=self.calling_ae)
        ae.connection_timeout = CONNECT_TIMEOUT
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        for sop_class, syntax in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title)
        if not assoc.is_established:
            reply = self._not_associated(assoc)
            yield from (reply for _ in datasets)
            return
        try:
            for ds in datasets:
                if stop():
                    return
                try:
                    status = assoc.send_c_store(ds)
                except ValueError as exc:  # the PACS accepted no presentation context for this SOP class
                    yield Reply(Delivery.REFUSED, f"{self.peer}: {str(exc).strip().splitlines()[0]}")
                    continue
                code = int(getattr(status, "Status", -1)) if status else -1
                if code >= 0 and code_to_category(code) in (STATUS_SUCCESS, STATUS_WARNING):
                    yield Reply(Delivery.SENT)
                    continue
                why = f"{self.peer}: C-STORE failed" + (f" with status 0x{code:04X}" if code >= 0 else " (no response)")
                yield Reply(Delivery.DOWN if out_of_resources(code) else Delivery.REFUSED, why)
                if not assoc.is_established:
                    return
        finally:
            if assoc.is_established:
                assoc.release()

    def _not_associated(self, assoc: Association) -> Reply:
        """Why no association was made, for every dataset of the try."""
        if assoc.is_rejected:
            why = "association rejected (is the PACS's AE title right, and does it know ours?)"
            return Reply(Delivery.DOWN, f"{self.peer}: {why}")
        rejected = assoc.rejected_contexts
        if rejected:
            offered = ", ".join(sorted({str(cx.abstract_syntax) for cx in rejected}))
            return Reply(Delivery.REFUSED, f"{self.peer}: the PACS accepts none of the SOP classes offered ({offered})")
        return Reply(Delivery.DOWN, f"{self.peer}: cannot connect (PACS down?)")
