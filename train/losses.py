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


def _dice_bce_per_image(y_true, y_pred):
    """BCE + (1 - soft Dice) for each image of the batch, shape (N,)."""
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    axes = (1, 2, 3)
    inter = ops.sum(y_true * y_pred, axis=axes)
    denom = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return bce + 1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH)


def dice_bce_nodule_loss(y_true, y_pred):
    """:func:`dice_bce_loss` over the images that hold a nodule only (0 for a batch without one).

    With ``--views`` this splits the work: the mask output learns the outline given a nodule, and the
    presence output alone learns the nodule-free views (the runtime empties the masks when it says "none").
    Soft Dice on an empty truth rewards nothing but an all-zero map, which pulls every outline inwards.
    """
    has_nodule = ops.cast(ops.max(y_true, axis=(1, 2, 3)) > 0.5, y_pred.dtype)
    per_image = _dice_bce_per_image(y_true, y_pred)
    return ops.sum(has_nodule * per_image) / ops.maximum(ops.sum(has_nodule), 1.0)


LOSSES = {"bce": "binary_crossentropy", "dice_bce": dice_bce_loss, "dice_bce_nodule": dice_bce_nodule_loss}


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
