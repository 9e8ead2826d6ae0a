"""Keep a finished run's network in the repository: its weights without the optimizer, and its record.

A fold teacher costs over an hour on a 2-core machine, and five of them and a student do not fit in one
working session; ``runs/`` (checkpoints, optimizer state, backups) is never committed. What a later step
needs of a finished teacher -- :mod:`train.oof` and ``edge-seg-train --distill`` read a folder holding
``model.keras`` and ``training.json`` -- is kept instead: the model saved again without its optimizer state
(a third of the checkpoint's size, the same outputs), its ``training.json`` and ``history.csv``, and a
``SHA256SUMS`` line per file.

``python -m train.archive runs/teachers/f0 runs/teachers/f1 --to teachers/ddti-effl0-unet-160``
writes ``teachers/ddti-effl0-unet-160/f0/`` and ``.../f1/``, refusing a run that has not finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from edge_runtime.core.model import file_sha256 as sha256

log = logging.getLogger(__name__)

FILES = ("model.keras", "training.json", "history.csv")


class ArchiveError(Exception):
    """A run that cannot be archived; the message names the folder and the reason."""


def archive(run: Path, dest: Path) -> Path:
    """Copy the finished run ``run`` to ``dest`` (weights without optimizer state, record, history); ``dest``."""
    from .loading import load_keras

    record_path = run / "training.json"
    if not record_path.is_file() or not (run / "model.keras").is_file():
        raise ArchiveError(f"{run}: not a finished run (no training.json and model.keras)")
    if (run / "backup").exists():
        raise ArchiveError(f"{run}: still has a backup/ to resume from, so it has not finished")
    record = json.loads(record_path.read_text())
    model = load_keras(run / "model.keras")  # uncompiled: saved again, it carries no optimizer state
    dest.mkdir(parents=True, exist_ok=True)
    model.save(dest / "model.keras")
    record["archived_from"] = {"run": str(run), "model_sha256": sha256(run / "model.keras")}
    (dest / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    if (run / "history.csv").is_file():
        shutil.copyfile(run / "history.csv", dest / "history.csv")
    sums = [f"{sha256(dest / name)}  {name}\n" for name in FILES if (dest / name).is_file()]
    (dest / "SHA256SUMS").write_text("".join(sums))
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.archive", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders (model.keras + training.json)")
    p.add_argument("--to", type=Path, required=True, help="folder to hold one sub-folder per run, named as the run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from .loading import ModelLoadError

    status = 0
    for run in args.runs:
        try:
            dest = archive(run, args.to / run.name)
        except (ArchiveError, ModelLoadError) as exc:
            log.error("error: %s", exc)
            status = 2
            continue
        size = (dest / "model.keras").stat().st_size / 1e6
        log.info("archived %s to %s (model.keras %.1f MB)", run, dest, size)
    return status


if __name__ == "__main__":
    sys.exit(main())
