"""A real Orthanc for the tests: Debian's ``orthanc`` and ``orthanc-dicomweb``, started on loopback with a
temporary configuration, driven and read through its own REST API (skipped, saying so, when it is not
installed here; .ci/run installs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dicomnet import free_port
from tests.helpers import wait_for

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
HINT = "not installed here (Debian: apt-get install orthanc orthanc-dicomweb); .ci/run installs them for CI"


def need_orthanc() -> str:
    path = shutil.which("Orthanc")
    if path is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"Orthanc with its DICOMweb plugin {HINT}")
    return path


class Orthanc:
    """One Orthanc server in ``root``: HTTP and DICOM on free loopback ports, the DICOMweb plugin on
    ``/dicom-web/``, and ``modalities`` (name -> ``(AET, host, port)``) it may send to."""

    def __init__(
        self,
        root: Path,
        modalities: dict[str, tuple[str, str, int]],
        users: dict[str, str] | None = None,
        lua: str | None = None,
        aet: str = "ORTHANC",
    ) -> None:
        import requests

        self.binary = need_orthanc()
        self.root, self.aet = root, aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.http = requests.Session()
        if users:
            self.http.auth = next(iter(users.items()))
        config: dict[str, Any] = {
            "Name": "edge-seg-test",
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,  # loopback only
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {name: list(m) for name, m in modalities.items()},
        }
        root.mkdir(parents=True, exist_ok=True)
        if lua is not None:
            (root / "filter.lua").write_text(lua)
            config["LuaScripts"] = [str(root / "filter.lua")]
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.root / "orthanc.log", "a")  # noqa: SIM115  (closed by stop())
        self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=log)
        self._log = log
        wait_for(self._up, "Orthanc to answer on its HTTP port")

    def _up(self) -> bool:
        import requests

        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError((self.root / "orthanc.log").read_text()[-2000:])
        try:
            return self.http.get(f"{self.url}/system", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.proc = None
        self._log.close()

    # -- its REST API ---------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        r = self.http.get(f"{self.url}{path}", timeout=60)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body)
        r = self.http.post(f"{self.url}{path}", data=data, timeout=120)
        r.raise_for_status()
        return r.json()

    def upload(self, path: Path) -> str:
        """POST a DICOM file to /instances; its Orthanc id."""
        return str(self.post("/instances", path.read_bytes())["ID"])

    def store_to(self, modality: str, resources: list[str]) -> float:
        """Orthanc's own C-STORE of ``resources`` to ``modality`` (synchronous); when it started (time.time())."""
        t0 = time.time()
        self.post(f"/modalities/{modality}/store", {"Resources": resources, "Synchronous": True})
        return t0

    def instances(self) -> list[dict[str, Any]]:
        """Every instance Orthanc holds: its tags (simplified) with its Orthanc id, parent study and patient."""
        found = []
        for oid in self.get("/instances"):
            tags = self.get(f"/instances/{oid}/simplified-tags")
            study = self.get(f"/instances/{oid}/study")
            found.append({**tags, "_id": oid, "_study": study["ID"], "_patient": study["ParentPatient"]})
        return found

    def file(self, oid: str, dest: Path) -> Path:
        r = self.http.get(f"{self.url}/instances/{oid}/file", timeout=60)
        r.raise_for_status()
        dest.write_bytes(r.content)
        return dest
