"""DICOM peers for the node's tests: a pynetdicom PACS that keeps what it receives, a C-STORE/C-ECHO client,
and DCMTK / dicom3tools lookups (tests skip with the reason when they are missing locally; CI has them)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

DCMTK_HINT = "not installed here (Debian: apt-get install dcmtk dicom3tools); .ci/run installs them for CI"


def need_tool(name: str) -> str:
    """DCMTK's (or dicom3tools') ``name`` from PATH, never the Python environment's own script of that name:
    pynetdicom installs ``echoscu``, ``storescu`` and ``storescp`` apps into the environment's bin folder,
    which come first on PATH once it is activated and take other options."""
    env_bins = {Path(sys.prefix, "bin").resolve(), Path(sys.executable).parent.resolve()}
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() not in env_bins]
    path = shutil.which(name, path=os.pathsep.join(dirs))
    if path is None:
        pytest.skip(f"{name} {DCMTK_HINT}")
    return path


@contextlib.contextmanager
def storage_scps(in_dir: Path) -> Iterator[Callable[..., Any]]:
    """``start(**options)`` starts a StorageSCP on IN (on a free port of 127.0.0.1); all are stopped after."""
    from edge_runtime.net.scp import StorageSCP

    made: list[StorageSCP] = []

    def start(**options: Any) -> StorageSCP:
        in_dir.mkdir(exist_ok=True)
        node = StorageSCP(in_dir, **options)
        node.start("127.0.0.1", 0)
        made.append(node)
        return node

    try:
        yield start
    finally:
        for node in made:
            node.stop()


def free_port() -> int:
    """A port nothing listens on now (for a peer that comes up later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pacs:
    """A storage SCP in this process that accepts every storage class and keeps the datasets it receives."""

    def __init__(self, port: int = 0, ae_title: str = "PACS", status: int = 0x0000) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list[Any] = []
        self.status = status
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]
        self.address = f"{ae_title}@127.0.0.1:{self.port}"

    def _store(self, event) -> int:
        with self._lock:
            if self.status == 0:
                ds = event.dataset
                ds.file_meta = event.file_meta
                self.received.append(ds)
        return self.status

    def uids(self) -> list[str]:
        with self._lock:
            return [str(ds.SOPInstanceUID) for ds in self.received]

    def of_class(self, modality: str) -> list[Any]:
        with self._lock:
            return [ds for ds in self.received if ds.Modality == modality]

    def close(self) -> None:
        self.server.shutdown()


def store(port: int, paths: list[Path], calling: str = "SCANNER", called: str = "EDGESEG") -> list[int]:
    """C-STORE files to ``port`` over one association; the status of each (-1: not sent)."""
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title=calling)
    for sop, ts in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
        ae.add_requested_context(sop, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return [-1] * len(datasets)
    try:
        return [int(s.Status) if (s := assoc.send_c_store(ds)) else -1 for ds in datasets]
    finally:
        assoc.release()


def echo(port: int, calling: str = "SCANNER") -> int | None:
    """C-ECHO; the status, or None when the association was rejected."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGESEG")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for a file (it prints warnings and errors on stderr)."""
    import subprocess

    out = subprocess.run([need_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
