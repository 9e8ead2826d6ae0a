"""What every benchmark shares: where this checkout and the DDTI data are, which scans to use, and how to start.

The benchmarks are modules of the ``bench`` package, meant to be run as ``python -m bench.run`` (or
``bench.sweep``, ``bench.encode``, ``bench.soak``) from the repository's root. ``python bench/run.py``
works too, from anywhere: the script's first lines call :func:`run_as_module`, which starts the same
module again with this checkout on ``PYTHONPATH`` (no ``sys.path`` edits), so both spellings import
the same code the same way.

The data: ``$EDGE_SEG_DDTI``, or ``../shared/data/ddti`` beside the repository, with the DDTI splits
``{test,val,train}/{image,mask}``. Scans are copied into a temporary folder, never into the repository.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

#: This checkout (the folder holding ``bench/``, ``edge_runtime/``, ...).
REPO = Path(__file__).resolve().parent.parent
#: The splits scans are taken from, in this order.
SPLITS = ("test", "val", "train")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def run_as_module(module: str, pythonpath: list[Path] | None = None) -> None:
    """Replace this process with ``python -m module`` (same arguments), this checkout first on PYTHONPATH.

    For ``python bench/x.py``; ``pythonpath`` puts other folders before it (an older checkout's
    ``edge_runtime`` for an A/B run). Does not return.
    """
    env = dict(os.environ)
    paths = [str(p) for p in [*(pythonpath or []), REPO]]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def ddti_root() -> Path:
    """The DDTI data: ``$EDGE_SEG_DDTI``, else ``../shared/data/ddti`` relative to the repository."""
    return Path(os.environ.get("EDGE_SEG_DDTI", REPO.parent / "shared" / "data" / "ddti"))


def split_images(root: Path, split: str) -> list[Path]:
    """The images of one split, sorted by name (empty when the split is missing)."""
    folder = root / split / "image"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def pick_scans(root: Path, n: int) -> list[Path]:
    """The first ``n`` scans of test, then val, then train (sorted by name): the same set every run."""
    found = [p for split in SPLITS for p in split_images(root, split)]
    if not found:
        sys.exit(f"no DDTI scans under {root}/{{{','.join(SPLITS)}}}/image (set EDGE_SEG_DDTI)")
    return found[:n]


def stage_scans(scans: list[Path], dest: Path) -> Path:
    """Copy scans flat into ``dest`` as ``<split>_<name>`` (every pipeline reads the same folder)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in scans:
        shutil.copy2(p, dest / f"{p.parent.parent.name}_{p.name}")
    return dest
