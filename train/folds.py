"""Cross-validation folds that keep each patient group whole, balanced for small nodules.

``split.csv`` (beside a data root's ``train/``, ``val/`` and ``test/``) gives every frame's split and its
patient ``group``: the frames of one patient case and its near-identical frames. A fold that split a group
would let its validation frames leak into its training, so folds are made of whole groups.

The assignment is deterministic (no random state to lose): groups are placed, largest first, in the fold
that then holds the fewest small-nodule frames (nodule under :data:`SMALL` of the frame), then the fewest
frames, then the lowest index. The small frames are the ones whose out-of-fold figures matter most, so
each fold gets its share of them.

``python -m train.folds ROOT --folds 5`` prints each fold's frames, groups and small frames.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.core.metrics import SIZE_BANDS

log = logging.getLogger(__name__)

SMALL = SIZE_BANDS["small"][1]  #: a nodule under this share of the frame's area is "small"
POOLED = ("train", "val")  #: the splits pooled into folds; test is never pooled


class FoldError(Exception):
    """The folds cannot be made; the message names the file and the reason."""


def read_groups(csv_path: str | Path) -> dict[str, tuple[str, str]]:
    """``{frame id: (split, group)}`` from a ``split.csv`` with columns id, split, group."""
    path = Path(csv_path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise FoldError(f"{path}: cannot read the group file ({exc.strerror or exc})") from None
    if not rows or not {"id", "split", "group"} <= set(rows[0]):
        raise FoldError(f"{path}: needs the columns id, split, group (a header line, one row a frame)")
    return {r["id"]: (r["split"], r["group"]) for r in rows}


def assign_folds(names: Sequence[str], groups: Sequence[str], small: Sequence[bool], k: int) -> np.ndarray:
    """The fold (0..k-1) of each frame: whole groups, balanced for small frames, then for frames."""
    if k < 2:
        raise FoldError(f"--folds must be at least 2, got {k}")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    if len(members) < k:
        raise FoldError(f"{len(members)} patient groups cannot make {k} folds")
    n_small = {g: sum(bool(small[i]) for i in idx) for g, idx in members.items()}
    order = sorted(members, key=lambda g: (-n_small[g], -len(members[g]), g))
    fold_small, fold_n = [0] * k, [0] * k
    fold = np.full(len(names), -1, int)
    for g in order:
        if n_small[g]:  # groups with small frames come first: spread them evenly
            f = min(range(k), key=lambda j: (fold_small[j], fold_n[j], j))
        else:
            f = min(range(k), key=lambda j: (fold_n[j], j))
        fold[members[g]] = f
        fold_small[f] += n_small[g]
        fold_n[f] += len(members[g])
    return fold


def nodule_share(mask: np.ndarray) -> float:
    """The nodule's share of the frame's area (a bool mask at the frame's own size)."""
    return float(mask.sum()) / float(mask.size) if mask.size else 0.0


def fold_table(root: str | Path, k: int) -> list[dict[str, Any]]:
    """One row per pooled frame of a data root: id, split, group, fold, nodule share (reads the masks)."""
    import cv2

    root = Path(root)
    groups = read_groups(root / "split.csv")
    rows: list[dict[str, Any]] = []
    for fid, (split, group) in sorted(groups.items()):
        if split not in POOLED:
            continue
        mask_path = root / split / "mask" / f"{fid}.png"
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise FoldError(f"{mask_path}: cannot read the mask named in {root / 'split.csv'}")
        rows.append({"id": fid, "split": split, "group": group, "share": nodule_share(mask > 127)})
    folds = assign_folds([r["id"] for r in rows], [r["group"] for r in rows], [r["share"] < SMALL for r in rows], k)
    for r, f in zip(rows, folds, strict=True):
        r["fold"] = int(f)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.folds", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="data root with split.csv and train/, val/ (image/ + mask/)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--csv", help="also write id,split,group,fold,share to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rows = fold_table(args.root, args.folds)
    except FoldError as exc:
        log.error("error: %s", exc)
        return 2
    for f in range(args.folds):
        mine = [r for r in rows if r["fold"] == f]
        log.info(
            "fold %d: %d frames, %d groups, %d small (< 3%%)",
            f,
            len(mine),
            len({r["group"] for r in mine}),
            sum(r["share"] < SMALL for r in mine),
        )
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["id", "split", "group", "fold", "share"])
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
