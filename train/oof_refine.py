"""A second stage scored out of fold, on the boxes the first stage really gave: is it worth its cost, and how.

Each fold's second stage (``edge-seg-train --refine --refine-boxes OOF/oof.npz --fold K``) looks again at the
frames of fold K, which it never saw, around the box of the out-of-fold first-stage mask (``train.oof``),
exactly as the runtime does (:class:`edge_runtime.core.segmenter.Segmenter`): the first stage's map at the
scan's size, its mask at the box threshold, opened and gated, the box widened, the crop preprocessed, the
second map put in the box, averaged (``mean``) or in place of the first (``replace``). Every frame's masks are
then scored at the scan's size, by nodule size band, for the first stage alone and each blend, and the mask
threshold is chosen (best mean Dice) for each: the choice of blend and threshold is made here, out of fold.

``python -m train.oof_refine runs/ddti-0.7/oof runs/refine-oof/f0 ... f4 --out runs/refine-oof/report``
writes ``oof_refine.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("first stage", "mean", "replace")


def combined_maps(first: np.ndarray, hw: tuple[int, int], image, second, threshold: float, presence_ok: bool, spec):
    """The scan-size maps of one frame: ``{kind: map}`` for :data:`KINDS`, and the second stage's box (or None).

    ``second`` predicts a preprocessed crop batch (N, h, w, c) -> (N, h, w); ``spec`` gives its input size,
    channels and resize, and the box rule (``edge_runtime.core.refine``).
    """
    from edge_runtime.core.postprocess import mask_from_probability, opening_kernel, probability_at_scan_size
    from edge_runtime.core.preprocess import preprocess
    from edge_runtime.core.refine import blend, crop, mask_box, refine_box

    prob = probability_at_scan_size(first.astype(np.float32), hw)
    kernel = opening_kernel(hw, first.shape[:2], spec["morphology_size"])
    maps = dict.fromkeys(KINDS, prob)
    box = mask_box(mask_from_probability(prob, threshold, kernel)) if presence_ok else None
    if box is None:
        return maps, None
    box = refine_box(box, hw, spec["margin"], spec["min_margin"])
    x = preprocess(crop(image, box), spec["size"], spec["channels"], spec["resize"])
    refined = second(x[None])[0]
    maps["mean"] = blend(prob, refined, box, "mean")
    maps["replace"] = blend(prob, refined, box, "replace")
    return maps, box


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.oof_refine", description=__doc__.split("\n\n")[0])
    p.add_argument("oof", type=Path, help="train.oof's output folder (oof.npz, oof.json): the first stage out of fold")
    p.add_argument("folds", nargs="+", type=Path, help="the second stage's fold runs (--refine --fold K)")
    p.add_argument("--out", type=Path, required=True, help="folder for oof_refine.json")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from edge_runtime.core.metrics import scan_metrics, summarise, summarise_by_band
    from edge_runtime.core.postprocess import gate, mask_from_probability, opening_kernel
    from edge_runtime.core.refine import MARGIN, MIN_MARGIN
    from edge_runtime.core.thresholds import THRESHOLD_GRID, best_threshold

    from .data import concat, load_split
    from .loading import load_keras
    from .oof import _subset_by_names
    from .trainer import set_threads

    if args.threads:
        set_threads(args.threads)
    chosen = json.loads((args.oof / "oof.json").read_text())["chosen_out_of_fold"]
    box_t, presence_t = float(chosen["threshold"]), chosen.get("presence_threshold")
    with np.load(args.oof / "oof.npz") as f:
        index = {str(n): i for i, n in enumerate(f["names"])}
        first_maps, presence = f["maps"], f["presence"]
    records = [json.loads((d / "training.json").read_text()) for d in args.folds]
    if any("fold" not in r or not r["config"].get("refine") for r in records):
        log.error("error: every folder must hold a --refine --fold run's training.json")
        return 2
    cfg = records[0]["config"]
    size = (cfg["input_size"], cfg["input_size"])
    pooled = concat(*(load_split(d, size, cfg["channels"], cfg["resize"]) for d in (cfg["train_dir"], cfg["val_dir"])))
    thresholds = list(THRESHOLD_GRID)
    rows: dict[str, dict[float, list]] = {k: {t: [] for t in thresholds} for k in KINDS}
    boxes = 0
    for d, rec in zip(args.folds, records, strict=True):
        model = load_keras(d / "model.keras")
        spec = {
            "size": size,
            "channels": cfg["channels"],
            "resize": cfg["resize"],
            "margin": MARGIN,
            "min_margin": MIN_MARGIN,
            "morphology_size": cfg["morphology_size"],
        }

        def second(x: np.ndarray, model=model) -> np.ndarray:
            return np.asarray(model.predict(x, verbose=0))[..., 0]

        held = _subset_by_names(pooled, rec["fold"]["held_out"])
        log.info("fold %d (%s): %d held-out frames", rec["fold"]["fold"], d, len(held))
        for name, image, truth, hw in zip(held.names, held.images, held.masks, held.sizes, strict=True):
            if name not in index:
                log.error("error: %s has no out-of-fold first-stage map in %s", name, args.oof)
                return 2
            i = index[name]
            q = float(presence[i])
            ok = presence_t is None or q >= float(presence_t)
            maps, box = combined_maps(first_maps[i], hw, image, second, box_t, ok, spec)
            boxes += box is not None
            kernel = opening_kernel(hw, first_maps[i].shape[:2], cfg["morphology_size"])
            for kind, prob in maps.items():
                masks = gate({t: mask_from_probability(prob, t, kernel) for t in thresholds}, q, presence_t)
                for t in thresholds:
                    rows[kind][t].append(scan_metrics(masks[t], truth, False))
    out: dict = {"oof": str(args.oof), "folds": [str(d) for d in args.folds], "frames": len(rows[KINDS[0]][0.5])}
    out["second_stage_ran_on"] = boxes
    out["box_threshold"], out["presence_threshold"] = box_t, presence_t
    lines = [f"{'':>12}  {'threshold':>9}  {'band':>9}  {'frames':>6}  {'dice mean':>9}  {'area ratio':>10}  missed"]
    for kind in KINDS:
        dice = {t: summarise(rows[kind][t])["dice_mean"] for t in thresholds}
        best = best_threshold(dice)
        out[kind] = {"threshold": best, "dice_by_threshold": {format(t, "g"): v for t, v in dice.items()}}
        for t in sorted({0.5, best}):
            s, bands = summarise(rows[kind][t]), summarise_by_band(rows[kind][t])
            out[kind][format(t, "g")] = {**s, "by_band": bands}
            for band, v in [("all", s), *bands.items()]:
                lines.append(
                    f"{kind:>12}  {t:>9g}  {band:>9}  {v['positives']:>6}  {v['dice_mean']:9.4f}  "
                    f"{v['area_ratio_mean']:10.2f}  {v['missed']:>6}"
                )
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "oof_refine.json").write_text(json.dumps(out, indent=2, default=float))
    log.info("wrote %s", args.out / "oof_refine.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
