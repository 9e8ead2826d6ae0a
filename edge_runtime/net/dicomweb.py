"""``--send-to https://host:port/dicom-web``: sending results by DICOMweb STOW-RS (dicomweb-client).

:class:`StowSender` is one of the outbox's senders (:class:`edge_runtime.net.senders.Sender`):
:meth:`StowSender.offer` sends the results that are due one request each, stopping at a service that is
down; :meth:`StowSender.send` sends one result's datasets and says what happened, as a :class:`Sent`:

* ``sent`` -- the service took every instance (HTTP 200, or 202 with none of ours in its Failed SOP
  Sequence);
* ``refused`` with the reason -- an HTTP 4xx answer other than 408 (request timeout) and 429 (too many
  requests), or an instance in the Failed SOP Sequence: waiting does not change such an answer;
* ``down`` with the reason -- a 5xx, 408 or 429 answer, or no answer (connection refused or reset,
  time-out, a TLS failure): the outbox tries again later, with back-off.

TLS certificates are verified (requests' own default, against certifi's CA bundle or the one
``REQUESTS_CA_BUNDLE`` names). ``--send-auth FILE`` gives the credentials, read once at start from the
file (never from the command line, where ``ps`` would show them): a line ``user:password`` is HTTP
basic authentication, anything else a bearer token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_runtime.errors import SetupError
from edge_runtime.net.peer import WebTarget
from edge_runtime.net.senders import Delivery, Reply

log = logging.getLogger(__name__)

TIMEOUT = 60.0  #: seconds to connect, and between bytes of the answer
#: HTTP client errors that waiting may cure: request timeout, too many requests.
TRANSIENT_4XX = (408, 429)


@dataclass(frozen=True)
class Sent:
    """What became of one result sent to one target."""

    outcome: Literal["sent", "refused", "down"]
    reason: str = ""


def read_auth(path: Path) -> tuple[str, str] | str:
    """``--send-auth FILE``: ``(user, password)`` from a ``user:password`` line, else the file as a bearer token."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(f"cannot read --send-auth {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not text:
        raise SetupError(f"--send-auth {path} is empty: give a bearer token or user:password")
    if "\n" in text:
        raise SetupError(f"--send-auth {path} has several lines: give one bearer token or user:password")
    user, colon, password = text.partition(":")
    return (user, password) if colon and " " not in user else text


class StowSender:
    """STOW-RS to one DICOMweb service."""

    def __init__(self, target: WebTarget, auth: tuple[str, str] | str | None = None, timeout: float = TIMEOUT):
        try:
            from dicomweb_client.api import DICOMwebClient
            from dicomweb_client.session_utils import create_session
        except ImportError:
            raise SetupError('--send-to a DICOMweb URL needs the dicom extra: pip install "edge-seg[dicom]"') from None
        self.target = target
        session = create_session()  # verifies TLS certificates (requests' default)
        if isinstance(auth, tuple):
            session.auth = auth
        elif auth is not None:
            session.headers["Authorization"] = f"Bearer {auth}"
        self.client = DICOMwebClient(url=target.url, session=session, timeout=timeout)
        self.client.set_http_retry_params(retry=False)  # the outbox retries, with its own back-off
        logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL)  # its failures are ours to say

    def offer(self, datasets: Sequence[Any], stop: Callable[[], bool]) -> Generator[Reply, None, None]:
        """One request per result (:meth:`send`); once the service is down, the rest are down too (not asked)."""
        for i, ds in enumerate(datasets):
            if stop():
                return
            answer = self.send([ds])
            yield Reply(Delivery(answer.outcome), answer.reason)
            if answer.outcome == "down":
                yield from (Reply(Delivery.DOWN, answer.reason) for _ in datasets[i + 1 :])
                return

    def send(self, datasets: list[Any]) -> Sent:
        """STOW-RS ``datasets`` (one result's) in one request."""
        import requests

        try:
            answer = self.client.store_instances(datasets)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            why = f"{self.target}: HTTP {code} {getattr(exc.response, 'reason', '') or ''}".rstrip()
            detail = _failure_reasons(exc.response)
            if detail:
                why += f" ({detail})"
            if 400 <= code < 500 and code not in TRANSIENT_4XX:
                return Sent("refused", why)
            return Sent("down", why)
        except requests.exceptions.SSLError as exc:
            return Sent("down", f"{self.target}: TLS failed ({_first_line(exc)})")
        except requests.RequestException as exc:
            return Sent("down", f"{self.target}: cannot connect ({type(exc).__name__})")
        except ValueError as exc:  # an answer that is not a STOW-RS response: the service is not well
            return Sent("down", f"{self.target}: {_first_line(exc)}")
        ours = {str(ds.SOPInstanceUID) for ds in datasets}
        failed = [f for f in answer.get("FailedSOPSequence", []) if str(f.get("ReferencedSOPInstanceUID")) in ours]
        if failed:
            reasons = ", ".join(f"0x{int(f.get('FailureReason', 0)):04X}" for f in failed)
            return Sent("refused", f"{self.target}: the service did not store it (failure reason {reasons})")
        return Sent("sent")


def _failure_reasons(response: Any) -> str:
    """The Failed SOP Sequence's reasons of an error answer, when it has one (DICOM JSON)."""
    if response is None:
        return ""
    try:
        from pydicom import Dataset

        failed = Dataset.from_json(response.json()).get("FailedSOPSequence", [])
        return ", ".join(f"failure reason 0x{int(f.FailureReason):04X}" for f in failed if "FailureReason" in f)
    except Exception:  # not DICOM JSON (an HTML error page, say): the status line says enough
        return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
