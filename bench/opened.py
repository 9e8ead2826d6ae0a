"""How much of edge_runtime one scan opens: the modules and functions called on its way, counted on a real run.

    python -m bench.opened                   # one-shot: `edge-seg IN --out OUT` over one DDTI test scan
    python -m bench.opened --dicom           # the DICOM node: a C-STORE until its SEG and SR reach the PACS
    python -m bench.opened --root ../other   # the same, counting another checkout's edge_runtime
    python -m bench.opened -v                # and list them, module by module
    python -m bench.opened --largest         # the largest function of each folder of edge_runtime, export, train

Counted with ``sys.setprofile`` and ``threading.setprofile`` (every thread, the workers' too): each
function or method of ``ROOT/edge_runtime`` that is called at least once from the command's start
to its end. Module and class bodies (imports), comprehensions and lambdas are left out. With
``--dicom`` the daemon (``--watch IN --out OUT --dicom-listen PORT --send-to PACS --dicom-results``)
runs in this process between a pynetdicom client (the "ultrasound machine") and a pynetdicom PACS,
which are not counted; it is stopped (SIGTERM) once the PACS has the scan's SEG and SR.
"""

from __future__ import annotations

if __package__ in (None, ""):  # python bench/opened.py: run as a module of this checkout
    from common import run_as_module  # type: ignore[import-not-found]  # (this file's folder is on sys.path)

    run_as_module("bench.opened")

import argparse
import inspect
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from bench.common import REPO, ddti_root, pick_scans


class Opened:
    """The functions of one package folder called while it is on."""

    def __init__(self, package: Path) -> None:
        self.prefix = f"{package.resolve()}{os.sep}"
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            if (
                code.co_filename.startswith(self.prefix)
                and code.co_flags & inspect.CO_OPTIMIZED
                and "<" not in code.co_qualname
            ):
                self.seen.add((code.co_filename[len(self.prefix) :], code.co_qualname))

    def __enter__(self) -> Opened:
        sys.setprofile(self)
        threading.setprofile(self)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)
        threading.setprofile(None)

    def report(self, what: str, verbose: bool) -> str:
        modules = sorted({m for m, _ in self.seen})
        lines = [f"{what}: {len(modules)} modules, {len(self.seen)} functions of {self.prefix.rstrip(os.sep)}"]
        if verbose:
            lines += [f"  {m}: {', '.join(sorted(f for mm, f in self.seen if mm == m))}" for m in modules]
        return "\n".join(lines)


def one_shot(work: Path, opened: Opened) -> int:
    from edge_runtime.cli import main

    scan = pick_scans(ddti_root(), 1)[0]
    (work / "in").mkdir()
    shutil.copy(scan, work / "in" / scan.name)
    with opened:
        return main([str(work / "in"), "--out", str(work / "out"), "-q"])


def dicom_node(work: Path, opened: Opened) -> int:
    import cv2

    from bench.dicom_node import Pacs, _free_port
    from edge_runtime.cli import main
    from tests.helpers import us_ids, write_dicom  # the tests' DICOM writer: pydicom, no downloads

    png = pick_scans(ddti_root(), 1)[0]
    scan = write_dicom(work / "scan.dcm", cv2.imread(str(png), cv2.IMREAD_GRAYSCALE), **us_ids(PatientID="BENCH"))
    pacs_port, port = _free_port(), _free_port()
    pacs = Pacs(pacs_port)

    def machine() -> None:
        from pydicom import dcmread
        from pynetdicom import AE

        ds = dcmread(scan)
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        for _ in range(600):  # until the daemon listens
            assoc = ae.associate("127.0.0.1", port, ae_title="EDGESEG")
            if assoc.is_established:
                assoc.send_c_store(ds)
                assoc.release()
                break
            threading.Event().wait(0.1)
        pacs.wait(str(ds.SOPInstanceUID))
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=machine, daemon=True).start()
    argv = ["--watch", str(work / "in"), "--out", str(work / "out"), "--dicom-listen", str(port)]
    argv += ["--send-to", f"PACS@127.0.0.1:{pacs_port}", "--dicom-results", "-q"]
    try:
        with opened:
            return main(argv)
    finally:
        pacs.server.shutdown()


def largest(root: Path) -> str:
    """The largest function (its lines, ``def`` to last) of each package folder, as ``ast`` reads them."""
    import ast

    best: dict[str, tuple[int, str]] = {}
    for package in ("edge_runtime", "export", "train"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > best.get(str(rel.parent), (0, ""))[0]:
                        best[str(rel.parent)] = (lines, f"{rel.as_posix()}:{node.lineno} {node.name}")
    return "\n".join(f"{folder:22s} {n:4d}  {where}" for folder, (n, where) in sorted(best.items()))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.opened", description=__doc__.split("\n\n")[0])
    p.add_argument("--dicom", action="store_true", help="the DICOM node's path instead of a one-shot run")
    p.add_argument("--root", type=Path, default=REPO, help="the checkout whose edge_runtime is run and counted")
    p.add_argument("-v", "--verbose", action="store_true", help="list the functions, module by module")
    p.add_argument("--largest", action="store_true", help="only the largest function of each package folder")
    args = p.parse_args()
    if args.largest:
        print(largest(args.root.resolve()))
        return
    sys.path.insert(0, str(args.root.resolve()))
    sys.modules.pop("edge_runtime", None)
    import edge_runtime

    opened = Opened(Path(edge_runtime.__file__).parent)
    with tempfile.TemporaryDirectory(prefix="edge-seg-opened-") as tmp:
        code = (dicom_node if args.dicom else one_shot)(Path(tmp), opened)
    what = "DICOM node, C-STORE to SEG and SR at the PACS" if args.dicom else "one-shot, one scan"
    print(opened.report(f"{what} (exit {code})", args.verbose))


if __name__ == "__main__":
    main()
