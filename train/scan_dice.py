"""The per-epoch scoring of a training run: val's frames at scan resolution, as ``edge-seg-eval`` measures them."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def validated(epoch: int, every: int, epochs: int) -> bool:
    """Whether 0-based ``epoch`` is scored on val: every ``every``-th epoch, and always the first and the last."""
    return epoch == 0 or (epoch + 1) % every == 0 or epoch + 1 >= epochs


def scan_dice_callback(cfg: Any, val_split: Any, val_neg: Any, val_frames_and_free: Any) -> Any:
    """A Keras callback that logs val_scan_dice (and with views val_view_dice and its parts) each scored epoch."""
    import keras

    from .validation import predict, score

    class ScanDice(keras.callbacks.Callback):
        """val_scan_dice: mean Dice at P > 0.5 at scan resolution on val's frames, as edge-seg-eval measures it.

        With views also val_view_dice: the mean Dice over val's frames and nodule-free views with the
        presence gate at 0.5 (a nodule-free view scores 1 without a mask, 0 with one), and its parts.
        """

        def on_epoch_end(self, epoch, logs=None):
            if not validated(epoch, cfg.validate_every, cfg.epochs):
                # the same columns every epoch, so that the CSV log keeps one header across a resume
                for key in self.keys():
                    logs[key] = float("nan")
                return
            probs, pres = predict(self.model, val_split.x)
            s = score(probs, val_split, (0.5,), cfg.morphology_size)[0.5]
            logs["val_scan_dice"] = s["dice_mean"]
            logs["val_scan_iou"] = s["iou_mean"]
            val_loss = f"val_loss {logs['val_loss']:.4f}  " if "val_loss" in logs else ""
            line = f"epoch {epoch + 1}: {val_loss}val_scan_dice@0.5 {s['dice_mean']:.4f}"
            small = s["by_band"].get("small")
            logs["val_small_dice"] = logs["val_small_area_ratio"] = float("nan")
            if small:  # the band the average hides
                logs["val_small_dice"] = small["dice_mean"]
                logs["val_small_area_ratio"] = small["area_ratio_mean"]
                line += (
                    f" (nodules under 3%: {small['dice_mean']:.4f} on {small['positives']}, "
                    f"area ratio {small['area_ratio_mean']:.2f})"
                )
            if cfg.views:
                assert val_frames_and_free is not None
                probs_n, pres_n = predict(self.model, val_neg.x)
                g = score(
                    np.concatenate([probs, probs_n]),
                    val_frames_and_free,
                    (0.5,),
                    cfg.morphology_size,
                    False,
                    np.concatenate([pres, pres_n]),
                    0.5,
                )[0.5]
                logs["val_view_dice"] = g["view_dice_mean"]
                logs["val_sensitivity"] = g["sensitivity"]
                logs["val_fp_share"] = g["fp_share"]
                line += (
                    f"  val_view_dice {g['view_dice_mean']:.4f} (gated Dice {g['dice_mean']:.4f}, "
                    f"sensitivity {g['sensitivity']:.3f}, nodule-free views with a mask {g['fp_share']:.3f})"
                )
            log.info("%s", line)

        @staticmethod
        def keys() -> list[str]:
            """Every figure an epoch's scoring can log (those of a band val lacks included)."""
            keys = ["val_scan_dice", "val_scan_iou", "val_small_dice", "val_small_area_ratio"]
            return keys + (["val_view_dice", "val_sensitivity", "val_fp_share"] if cfg.views else [])

    return ScanDice()
