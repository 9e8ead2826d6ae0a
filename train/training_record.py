"""A training run's record (``OUT/training.json``): config, data, network, history, the thresholds chosen on
val and its figures at them, and what a fold, a pool, a distillation or out-of-fold thresholds add."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .trainer import library_versions, monitor_mode, samples_in_bank

if TYPE_CHECKING:
    from .trainer import Splits, TrainConfig

log = logging.getLogger(__name__)


def training_record(cfg: TrainConfig, model: Any, macs: int, splits: Splits, history: dict, seconds: float) -> dict:
    """The training record: config, data, network, history, thresholds chosen on val and its figures at them."""
    from .models import PRESENCE, PROBABILITY
    from .validation import choose_threshold, predict, score

    probs, pres = predict(model, splits.val.x)
    threshold, sweep = choose_threshold(probs, splits.val, cfg.morphology_size)
    report_t = sorted({0.5, threshold, 0.85, 0.9, 0.95})
    val_scores = score(probs, splits.val, report_t, cfg.morphology_size, True)
    epochs_run = len(history["loss"])
    best_epoch = epochs_run
    if cfg.keep == "best":
        watched = history[cfg.monitor]
        best_epoch = int(np.argmin(watched) if monitor_mode(cfg) == "min" else np.argmax(watched)) + 1
    record = {
        "record_schema": 2,
        "config": asdict(cfg),
        "data": {"train": splits.train.describe(), "val": splits.val.describe()},
        "model": {
            "architecture": cfg.architecture,
            "parameters": int(model.count_params()),
            "macs": macs,
            "outputs": [PROBABILITY, PRESENCE] if cfg.views else [PROBABILITY],
        },
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "history": history,
        "threshold": threshold,
        "val_dice_by_threshold": sweep,
        "val": {format(t, "g"): s for t, s in val_scores.items()},
        "val_dice": val_scores[threshold]["dice_mean"],
        "train_seconds": round(seconds, 1),
        "versions": library_versions(),
    }
    if cfg.views:
        record.update(_presence_record(cfg, model, splits, probs, pres, threshold, report_t))
    if splits.fold is not None:
        record["fold"] = splits.fold
    if cfg.refine_boxes:
        record["refine_boxes"] = splits.boxes_record
    if cfg.pool:
        record["pooled"] = "trained on --train and --val together: the val figures above are on frames it saw"
    if cfg.distill_from:
        record["distillation"] = {
            "teachers": cfg.distill_from,
            "passes": cfg.distill_passes,
            "alpha": cfg.distill_alpha,
            "bank_views": samples_in_bank(splits.train, cfg),
            "note": "trained on --train and --val together: the val figures above are on frames it saw",
        }
    if cfg.thresholds_from:
        _thresholds_from(cfg, record)
    return record


def _presence_record(
    cfg: TrainConfig, model: Any, splits: Splits, probs: Any, pres: Any, threshold: float, report_t: list[float]
) -> dict:
    """With --views: the presence threshold chosen on val, and val's frames, views and crops gated by it."""
    from edge_runtime.core.thresholds import choose_presence_threshold

    from .validation import predict, score

    val_neg, val_pos = splits.val_neg, splits.val_pos
    assert val_neg is not None and val_pos is not None, "load_splits makes val's views with --views"
    probs_n, pres_n = predict(model, val_neg.x)
    probs_p, pres_p = predict(model, val_pos.x)
    assert pres is not None and pres_n is not None and pres_p is not None, "a --views model has a presence output"
    presence_threshold, at = choose_presence_threshold(np.concatenate([pres, pres_p]), pres_n)
    gated = {
        kind: {
            format(t, "g"): s
            for t, s in score(pr, sp, report_t, cfg.morphology_size, False, ps, presence_threshold).items()
        }
        for kind, pr, ps, sp in (
            ("frames", probs, pres, splits.val),
            ("nodule_free", probs_n, pres_n, val_neg),
            ("positive_crops", probs_p, pres_p, val_pos),
        )
    }
    at_t = format(threshold, "g")
    log.info(
        "presence threshold %.2f chosen on validation: at mask threshold %.2f, frames Dice %.4f, sensitivity "
        "%.3f; nodule-free views with a mask %.3f; positive crops detected %.3f",
        presence_threshold,
        threshold,
        gated["frames"][at_t]["dice_mean"],
        gated["frames"][at_t]["sensitivity"],
        gated["nodule_free"][at_t]["fp_share"],
        gated["positive_crops"][at_t]["sensitivity"],
    )
    return {
        "presence_threshold": presence_threshold,
        "presence_choice": {
            "rule": "highest specificity on val's nodule-free views with sensitivity >= the minimum on val's "
            "frames and positive crops; ties to the lowest threshold",
            **at,
        },
        "val_views": {
            "counts": {"frames": len(splits.val), "nodule_free": len(val_neg), "positive_crops": len(val_pos)},
            "gated": gated,
        },
        "val_dice": gated["frames"][at_t]["dice_mean"],
    }


def _thresholds_from(cfg: TrainConfig, record: dict) -> None:
    """--thresholds-from: the out-of-fold thresholds replace those chosen on val (kept beside them)."""
    chosen = json.loads(Path(str(cfg.thresholds_from)).read_text())["chosen_out_of_fold"]
    record["thresholds_chosen_on_val"] = {
        "threshold": record["threshold"],
        **({"presence_threshold": record["presence_threshold"]} if "presence_threshold" in record else {}),
    }
    record["threshold"] = chosen["threshold"]
    record["presence_threshold"] = chosen["presence_threshold"]
    record["thresholds_chosen"] = {"on": "out-of-fold predictions of the fold teachers", "file": cfg.thresholds_from}
    log.info(
        "thresholds from %s (chosen out of fold): mask %.2f, presence %.2f",
        cfg.thresholds_from,
        chosen["threshold"],
        chosen["presence_threshold"],
    )
