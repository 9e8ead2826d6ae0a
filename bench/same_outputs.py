"""Whether two OUT trees hold the same outputs, and the collision case to make them from.

    python -m bench.same_outputs compare OUT_A OUT_B
    python -m bench.same_outputs collisions IN 1     # the scans of every case of tests/test_collisions.py
    python -m bench.same_outputs collisions IN 2     # then the newcomers: names taken, changed, refused

``compare`` reads every file under both trees except ``.edge-seg/`` (the ledger, the status file) and
compares them byte for byte, except what holds a time, a duration or the run's own paths, compared
without them: reports (``created``, ``timings_ms``), ``run-summary.csv`` (``ms``), ``run-provenance.json``
(``started``, ``finished``, ``argv``, ``input``, ``output``), error files (``time:``) and the review
page (times, durations, the folders' names). It prints the files that differ or are in one tree only.
"""

from __future__ import annotations

if __package__ in (None, ""):  # python bench/same_outputs.py: run as a module of this checkout
    from common import run_as_module  # type: ignore[import-not-found]  # (this file's folder is on sys.path)

    run_as_module("bench.same_outputs")

import argparse
import csv
import io
import json
import re
import sys
from pathlib import Path


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".edge-seg" not in p.parts}


def _normal(rel: str, data: bytes, root: Path) -> bytes:
    data = data.replace(str(root.parent).encode(), b"<where>")  # the folders each run was given
    data = re.sub(rb"(?<![\w.-])" + re.escape(root.name.encode()) + rb"(?![\w.-])", b"<out>", data)
    if rel.endswith(".json"):
        d = json.loads(data)
        for key in ("created", "timings_ms", "started", "finished", "argv", "input", "output"):
            d.pop(key, None)
        if isinstance(d.get("model"), dict):
            d["model"].pop("path", None)  # where each checkout's bundled model is
        return json.dumps(d, sort_keys=True).encode()
    if rel.endswith("run-summary.csv"):
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        for r in rows:
            r.pop("ms", None)
        return json.dumps(sorted(rows, key=lambda r: (r["path"], r.get("threshold", ""))), sort_keys=True).encode()
    if rel.endswith(".error.txt"):
        return re.sub(rb"\ntime: [^\n]*", b"", data)
    if rel.endswith(".html"):
        data = re.sub(rb"\(\d+\.\d s\)", b"(<s>)", re.sub(rb"\d+(\.\d+)? ms", b"<ms>", data))
        return re.sub(rb"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d)?Z?( UTC)?", b"<time>", data)
    return data


def compare(a: Path, b: Path) -> list[str]:
    """The files that differ (or are in one tree only), as paths relative to OUT."""
    fa, fb = _files(a), _files(b)
    differ = sorted(fa ^ fb)
    for rel in sorted(fa & fb):
        if _normal(rel, (a / rel).read_bytes(), a) != _normal(rel, (b / rel).read_bytes(), b):
            differ.append(rel)
    return differ


def collisions(src: Path, phase: int) -> None:
    """Phase 1: every collision of tests/test_collisions.py in one folder; phase 2: newcomers to it."""
    import cv2

    from tests.helpers import synthetic, write_dicom, write_png  # the tests' scan writers: no downloads

    def tiff(path: Path, seeds: tuple[int, ...]) -> None:
        ok, buf = cv2.imencodemulti(".tif", [synthetic(s, 120, 140)[0] for s in seeds])
        if not ok:
            raise SystemExit(f"OpenCV cannot write the multi-page TIFF {path}")
        path.write_bytes(buf.tobytes())

    src.mkdir(parents=True, exist_ok=True)
    if phase == 1:
        write_png(src / "same.png", synthetic(1, 120, 140)[0])  # same stem: the one named like the mask keeps it
        for i, other in enumerate(("same.jpg", "same.bmp", "same.tif")):
            cv2.imwrite(str(src / other), synthetic(2 + i, 90, 80)[0])
        tiff(src / "cine.tif", (1, 2, 3))  # a multi-frame scan and a scan named like one of its frames
        write_png(src / "cine_f0002.png", synthetic(9, 100, 100)[0])
        write_dicom(src / "dcine.dcm", [synthetic(s, 120, 140)[0] for s in (1, 2, 3)])
        write_png(src / "dcine_f0002.png", synthetic(9, 100, 100)[0])
        (src / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")  # a corrupt scan keeps no name
        cv2.imwrite(str(src / "x.png"), synthetic(3, 110, 120)[0])
        (src / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        cv2.imwrite(str(src / "y.jpg"), synthetic(3, 110, 120)[0])
        (src / "z.bmp").write_bytes(b"BM broken")
        cv2.imwrite(str(src / "z.jpg"), synthetic(4, 110, 120)[0])
        for i in range(12):  # many groups at once: the same winners whatever the threads do
            cv2.imwrite(str(src / f"g{i:02d}.jpg"), synthetic(i)[0])
            cv2.imwrite(str(src / f"g{i:02d}.bmp"), synthetic(50 + i)[0])
            if i % 3 == 0:
                write_png(src / f"g{i:02d}.png", synthetic(100 + i)[0])
        for i, name in enumerate(("t.jpg", "u.jpg", "w.jpg")):
            cv2.imwrite(str(src / name), synthetic(5 + i, 120, 140)[0])
        tiff(src / "c2.tif", (1, 2, 3))
    else:
        write_png(src / "t.png", synthetic(8, 90, 80)[0])  # named like the mask: takes it from t.jpg
        cv2.imwrite(str(src / "u.bmp"), synthetic(10, 90, 80)[0])  # not named like it: refused
        cv2.imwrite(str(src / "w.jpg"), synthetic(11, 130, 150)[0])  # changed since it was done ...
        write_png(src / "w.png", synthetic(12, 90, 80)[0])  # ... and a newcomer takes its name
        write_png(src / "c2_f0002.png", synthetic(13, 100, 100)[0])  # takes a frame's name from the cine


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.same_outputs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("compare", help="compare two OUT trees")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    m = sub.add_parser("collisions", help="write the collision case's scans into IN")
    m.add_argument("src", type=Path)
    m.add_argument("phase", type=int, choices=(1, 2))
    args = p.parse_args()
    if args.what == "collisions":
        collisions(args.src, args.phase)
        return
    differ = compare(args.a, args.b)
    print(f"{args.a} vs {args.b}: {len(_files(args.a))} / {len(_files(args.b))} files, {len(differ)} differ")
    for rel in differ[:50]:
        print(f"  {rel}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
