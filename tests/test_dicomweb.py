"""The STOW-RS sender's word on each answer a DICOMweb service can give, from a real HTTP server on
loopback (the statuses Orthanc does not give on demand: 5xx, 408, 429, a 202 that lists a failure),
``--send-auth`` and ``--send-to URL`` on the command line. Orthanc itself: tests/test_orthanc.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("dicomweb_client")

from pydicom import dcmread

from edge_runtime.cli import main
from edge_runtime.errors import SetupError
from edge_runtime.net.dicomweb import StowSender, read_auth
from edge_runtime.net.peer import WebTarget
from tests.dicomnet import free_port
from tests.helpers import nodule_scan, us_ids, write_dicom


class Service:
    """A DICOMweb service answering every POST with ``status`` (and ``body`` as DICOM JSON)."""

    def __init__(self, status: int, body: dict | None = None, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(dict(self.headers))
                payload = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # (cert, key)
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def result(tmp_path):
    return dcmread(write_dicom(tmp_path / "r.dcm", nodule_scan()[0], **us_ids()))


def failed(uid: str, reason: int = 0xC000) -> dict:
    item = {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}
    return {"00081198": {"vr": "SQ", "Value": [item]}}


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "sent"),
        (400, "refused"),
        (403, "refused"),
        (409, "refused"),
        (408, "down"),
        (429, "down"),
        (500, "down"),
        (503, "down"),
    ],
)
def test_http_statuses_are_sent_refused_or_down(result, status, outcome):
    service = Service(status)
    try:
        answer = StowSender(WebTarget(service.url)).send([result])
    finally:
        service.close()
    assert answer.outcome == outcome
    if outcome != "sent":
        assert answer.reason.startswith(f"{service.url}: HTTP {status}")
    assert len(service.requests) == 1  # dicomweb-client's own retries are off: the outbox retries


def test_an_instance_the_service_lists_as_failed_is_refused_with_its_reason(result):
    service = Service(202, failed(str(result.SOPInstanceUID), 0xA700))
    try:
        answer = StowSender(WebTarget(service.url)).send([result])
    finally:
        service.close()
    assert answer.outcome == "refused" and "failure reason 0xA700" in answer.reason


def test_no_service_is_down(result):
    answer = StowSender(WebTarget(f"http://127.0.0.1:{free_port()}/dicom-web")).send([result])
    assert answer.outcome == "down" and "cannot connect" in answer.reason


def test_tls_certificates_are_verified_by_default_and_a_hospital_ca_is_taken_from_requests_ca_bundle(
    tmp_path, result, monkeypatch
):
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed here (Debian: apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run([openssl, *request, *subject], check=True, capture_output=True)
    service = Service(200, tls=(cert, key))
    try:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        refused = StowSender(WebTarget(service.url)).send([result])  # a certificate no CA vouches for
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # the hospital's own CA
        taken = StowSender(WebTarget(service.url)).send([result])
    finally:
        service.close()
    assert (
        refused.outcome == "down" and "TLS failed" in refused.reason and "CERTIFICATE_VERIFY_FAILED" in refused.reason
    )
    assert taken.outcome == "sent" and len(service.requests) == 1


@pytest.mark.parametrize(
    ("text", "header"),
    [("edge:pa:ss\n", "Basic ZWRnZTpwYTpzcw=="), ("eyJhbGciOi.token\n", "Bearer eyJhbGciOi.token")],
)
def test_send_auth_is_basic_for_user_password_and_bearer_otherwise(tmp_path, result, text, header):
    (tmp_path / "auth").write_text(text)
    service = Service(200)
    try:
        assert StowSender(WebTarget(service.url), read_auth(tmp_path / "auth")).send([result]).outcome == "sent"
    finally:
        service.close()
    assert service.requests[0]["Authorization"] == header


def test_send_auth_file_problems_are_one_line(tmp_path):
    with pytest.raises(SetupError, match="cannot read --send-auth"):
        read_auth(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SetupError, match="is empty"):
        read_auth(tmp_path / "empty")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--send-to", "https://user:pw@pacs.example.org/dicom-web"], "credentials go in --send-auth FILE"),
        (["--send-to", "PACS@10.0.0.5:104", "--send-auth", "x"], "--send-auth is for DICOMweb targets"),
        (["--dicom-results", "seg,sc"], "seg and sr are made together"),
        (["--dicom-results", "seg,sr,png"], "give a comma-separated list of seg, sr and sc"),
    ],
)
def test_command_line_mistakes_are_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["--watch", str(tmp_path), "--out", str(tmp_path / "out"), *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_several_send_to_targets_each_get_an_outbox_of_their_own(tmp_path):
    from edge_runtime.cli import build_parser, settings_from_args

    argv = ["--watch", str(tmp_path), "--out", str(tmp_path / "o"), "--send-to", "PACS@10.0.0.5:104"]
    argv += ["--send-to", "https://pacs.example.org/dicom-web/", "--send-to", "PACS@10.0.0.5:104"]
    settings = settings_from_args(build_parser().parse_args(argv), argv)
    assert [str(t) for t in settings.node.send_to] == ["PACS@10.0.0.5:104", "https://pacs.example.org/dicom-web"]
    assert "dicom" in settings.job.outputs and "dicom-sc" not in settings.job.outputs


def test_the_outbox_of_a_web_target_sends_by_stow_rs(tmp_path, result):
    from edge_runtime.net.outbox import Outbox

    (tmp_path / "out" / "dicom").mkdir(parents=True)
    Path(tmp_path / "out" / "dicom" / "r.sr.dcm").write_bytes((tmp_path / "r.dcm").read_bytes())
    service = Service(200)
    try:
        outbox = Outbox(tmp_path / "out", tmp_path / "out" / ".edge-seg", WebTarget(service.url))
        assert outbox.reconcile() == 1
        assert outbox.send_due() == 1
    finally:
        service.close()
    assert outbox.stats()["sent_total"] == 1 and outbox.stats()["to"] == service.url
