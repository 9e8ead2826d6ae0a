"""Losses and Keras-side metrics (on the model-size maps, per batch).

The scan-resolution Dice that decides thresholds and is reported comes from
``edge_runtime.metrics`` (see ``train.validation``), not from here.
"""

from __future__ import annotations

import keras
from keras import ops

SMOOTH = 1.0


def soft_dice_loss(y_true, y_pred):
    """1 - soft Dice per image, averaged over the batch."""
    axes = (1, 2, 3)
    inter = ops.sum(y_true * y_pred, axis=axes)
    denom = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - ops.mean((2.0 * inter + SMOOTH) / (denom + SMOOTH))


def dice_bce_loss(y_true, y_pred):
    """Binary cross-entropy plus soft Dice: BCE for calibrated pixels, Dice for overlap on small nodules."""
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    return bce + soft_dice_loss(y_true, y_pred)


LOSSES = {"bce": "binary_crossentropy", "dice_bce": dice_bce_loss}


def dice_at_half(y_true, y_pred):
    """Hard Dice at P > 0.5 per image, averaged over the batch (1 when both are empty)."""
    p = ops.cast(y_pred > 0.5, "float32")
    axes = (1, 2, 3)
    inter = ops.sum(y_true * p, axis=axes)
    denom = ops.sum(y_true, axis=axes) + ops.sum(p, axis=axes)
    return ops.mean(ops.where(denom > 0, 2.0 * inter / ops.maximum(denom, 1e-7), 1.0))


def iou_at_half(y_true, y_pred):
    """Hard IoU at P > 0.5 per image, averaged over the batch (1 when both are empty)."""
    p = ops.cast(y_pred > 0.5, "float32")
    axes = (1, 2, 3)
    inter = ops.sum(y_true * p, axis=axes)
    union = ops.sum(y_true, axis=axes) + ops.sum(p, axis=axes) - inter
    return ops.mean(ops.where(union > 0, inter / ops.maximum(union, 1e-7), 1.0))


dice_at_half.__name__ = "dice"
iou_at_half.__name__ = "iou"
