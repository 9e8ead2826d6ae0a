"""Out-of-fold predictions of fold-trained teachers, the choices made on them, and their report by nodule size.

Each fold's network (``edge-seg-train --fold K``) predicts the frames of its own held-out fold, which it never
saw, plus those frames' fixed nodule-free views and positive crops (``train.views.fixed_views``). Pooled over
the folds, that is an honest prediction of every labelled frame, and every choice is made on it: the mask
threshold (best mean scan-resolution Dice on the frames, presence gate applied), and the presence threshold
(:func:`edge_runtime.core.thresholds.choose_presence_threshold` on the frames and positive crops against the
nodule-free views). ``test`` takes no part: ``--test`` only reports the averaged teachers on it afterwards,
at the thresholds chosen out of fold.

``python -m train.oof runs/teachers/f0 runs/teachers/f1 ... --out runs/teachers/oof`` writes ``oof.json``
(choices, figures by nodule size band) and ``oof.npz`` (the out-of-fold maps and presence scores by frame name,
what a second stage or a student can train on).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SEED_THRESHOLDS = (0.5, 0.85, 0.9, 0.95)


@dataclass
class Predictions:
    """Model-size probability maps and presence scores of the frames, nodule-free views and positive crops."""

    frames: tuple[np.ndarray, np.ndarray]
    free: tuple[np.ndarray, np.ndarray]
    crops: tuple[np.ndarray, np.ndarray]


def averaged(models: list, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean probability maps (N, h, w) and presence scores (N,) of ``models`` (each with a presence output)."""
    from .validation import predict

    maps, scores = [], []
    for m in models:
        p, s = predict(m, x)
        assert s is not None, "a teacher has a presence output (trained with --views)"
        maps.append(p)
        scores.append(s)
    return np.mean(maps, axis=0), np.mean(scores, axis=0)


def predict_views(models: list, split, channels: int = 3) -> Predictions:
    """The averaged ``models`` on ``split``'s frames, its fixed nodule-free views and its positive crops."""
    from .data import views_split

    free = views_split(split, ("neg",), channels)
    crops = views_split(split, ("pos",), channels)
    return Predictions(averaged(models, split.x), averaged(models, free.x), averaged(models, crops.x))


def choose(frames, free, crops, preds: Predictions, morphology_size: int = 3) -> dict:
    """The presence threshold, then the mask threshold, chosen on these (out-of-fold) predictions."""
    from edge_runtime.core.thresholds import THRESHOLD_GRID, best_threshold, choose_presence_threshold

    from .validation import score

    presence_t, at = choose_presence_threshold(np.concatenate([preds.frames[1], preds.crops[1]]), preds.free[1])
    sweep = score(preds.frames[0], frames, THRESHOLD_GRID, morphology_size, False, preds.frames[1], presence_t)
    threshold = best_threshold({t: s["dice_mean"] for t, s in sweep.items()})
    return {
        "threshold": threshold,
        "presence_threshold": presence_t,
        "presence_at_choice": at,
        "dice_by_threshold": {format(t, "g"): s["dice_mean"] for t, s in sweep.items()},
        "rule": "presence: edge_runtime.core.thresholds.choose_presence_threshold on the frames and positive crops "
        "against the nodule-free views; mask: best mean scan-resolution Dice on the frames with that presence gate",
    }


def report(frames, free, preds: Predictions, thresholds, presence_t: float, morphology_size: int = 3) -> dict:
    """Figures per threshold: frames (overall and by size band, presence-gated) and nodule-free views."""
    from .validation import score

    f = score(preds.frames[0], frames, thresholds, morphology_size, True, preds.frames[1], presence_t)
    n = score(preds.free[0], free, thresholds, morphology_size, False, preds.free[1], presence_t)
    return {format(t, "g"): {"frames": f[t], "nodule_free": n[t]} for t in thresholds}


def format_report(rep: dict) -> str:
    from edge_runtime.core.metrics import BAND_LABELS

    lines = [
        f"{'threshold':>9}  {'frames':>11}  {'scans':>5}  {'dice mean/med':>15}  {'area ratio mean/med':>19}  "
        f"{'HD95':>6}  missed  nodule-free views with a mask"
    ]
    for label, r in rep.items():
        f, n = r["frames"], r["nodule_free"]
        rows = [("all", f)] + [(BAND_LABELS[b], s) for b, s in f["by_band"].items()]
        for i, (name, s) in enumerate(rows):
            fp = f"{n['fp_share']:.1%} of {n['negatives']}" if i == 0 else ""
            lines.append(
                f"{label if i == 0 else '':>9}  {name:>11}  {s['positives']:>5}  "
                f"{s['dice_mean']:6.4f} / {s['dice_median']:6.4f}  "
                f"{s['area_ratio_mean']:8.2f} / {s['area_ratio_median']:8.2f}  {s['hd95_mean']:6.1f}  "
                f"{s['missed']:>6}  {fp}"
            )
    return "\n".join(lines)


def _subset_by_names(split, names: list[str]):
    index = {n: i for i, n in enumerate(split.names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise SystemExit(f"error: {len(missing)} held-out frame(s) not in the data: {', '.join(missing[:5])}")
    return split.subset(np.array([index[n] for n in names]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.oof", description=__doc__.split("\n\n")[0])
    p.add_argument("folds", nargs="+", type=Path, help="the fold runs' folders (model.keras + training.json each)")
    p.add_argument("--out", type=Path, required=True, help="folder for oof.json and oof.npz")
    p.add_argument("--test", type=Path, help="also report the averaged teachers on this labelled folder (report only)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from .data import concat, load_split, views_split
    from .loading import load_keras
    from .trainer import set_threads

    if args.threads:
        set_threads(args.threads)
    records = [json.loads((d / "training.json").read_text()) for d in args.folds]
    if any("fold" not in r for r in records):
        log.error("error: every folder must hold a --fold run's training.json")
        return 2
    cfg = records[0]["config"]
    size = (cfg["input_size"], cfg["input_size"])
    pooled = concat(*(load_split(d, size, cfg["channels"], cfg["resize"]) for d in (cfg["train_dir"], cfg["val_dir"])))
    models = [load_keras(d / "model.keras") for d in args.folds]
    parts: list[tuple] = []
    for model, rec, d in zip(models, records, args.folds, strict=True):
        held = _subset_by_names(pooled, rec["fold"]["held_out"])
        log.info("fold %d (%s): predicting its %d held-out frames and their views", rec["fold"]["fold"], d, len(held))
        parts.append((held, predict_views([model], held, cfg["channels"])))
    frames = concat(*(h for h, _ in parts))
    free = concat(*(views_split(h, ("neg",), cfg["channels"]) for h, _ in parts))
    crops = concat(*(views_split(h, ("pos",), cfg["channels"]) for h, _ in parts))

    def cat(kind: str) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.concatenate([getattr(pr, kind)[i] for _, pr in parts]) for i in (0, 1))  # type: ignore[return-value]

    preds = Predictions(cat("frames"), cat("free"), cat("crops"))
    chosen = choose(frames, free, crops, preds, cfg["morphology_size"])
    thresholds = sorted({*SEED_THRESHOLDS, chosen["threshold"]})
    rep = report(frames, free, preds, thresholds, chosen["presence_threshold"], cfg["morphology_size"])
    complete = len(frames) == len(pooled)
    out = {
        "folds": [str(d) for d in args.folds],
        "frames": len(frames),
        "pooled_frames": len(pooled),
        "complete": complete,
        "counts": {"frames": len(frames), "nodule_free": len(free), "positive_crops": len(crops)},
        "chosen_out_of_fold": chosen,
        "out_of_fold": rep,
    }
    log.info(
        "out of fold (%d of %d frames%s): presence threshold %.2f, mask threshold %.2f",
        len(frames),
        len(pooled),
        "" if complete else ", NOT every fold yet",
        chosen["presence_threshold"],
        chosen["threshold"],
    )
    sys.stdout.write("out of fold\n" + format_report(rep) + "\n")
    if args.test:
        test = load_split(args.test, size, cfg["channels"], cfg["resize"])
        test_free = views_split(test, ("neg",), cfg["channels"])
        tp = predict_views(models, test, cfg["channels"])
        rep_t = report(test, test_free, tp, thresholds, chosen["presence_threshold"], cfg["morphology_size"])
        out["test_report_only"] = {"folder": str(args.test), "teachers": len(models), "report": rep_t}
        head = f"\n{args.test}, the {len(models)} teachers averaged (report only)\n"
        sys.stdout.write(head + format_report(rep_t) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "oof.json").write_text(json.dumps(out, indent=2, default=float))
    np.savez_compressed(
        args.out / "oof.npz",
        names=np.array(frames.names),
        maps=preds.frames[0].astype(np.float16),
        presence=preds.frames[1],
        free_names=np.array(free.names),
        free_presence=preds.free[1],
        crop_names=np.array(crops.names),
        crop_presence=preds.crops[1],
    )
    log.info("wrote %s and %s", args.out / "oof.json", args.out / "oof.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
