"""Training: the seed recipe by default, with the improvements measured in the model card as options.

Writes ``OUT_DIR/model.keras`` (best weights by validation loss) and ``OUT_DIR/training.json``
(config, data folders with counts and fingerprints, per-epoch history, scan-resolution validation
Dice, the threshold chosen on validation, versions, timings).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    train_dir: str
    out_dir: str
    val_dir: str | None = None
    val_fraction: float = 0.15
    architecture: str = "seed-fcn"
    input_size: int = 128
    channels: int = 3
    resize: str = "area"
    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-3
    loss: str = "bce"
    lr_schedule: str = "none"  # none | cosine | plateau
    patience: int = 5
    monitor: str = "val_loss"  # what early stopping and checkpointing watch: val_loss or val_scan_dice
    threads: int = 0  # TensorFlow intra-op threads (0: all cores)
    augment: bool = False
    seed: int = 42
    morphology_size: int = 3
    name: str = "ddti-fcn"
    version: str = "0.1.0"
    extra: dict = field(default_factory=dict)


def set_seed(seed: int, threads: int = 0) -> None:
    import keras
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    from edge_runtime import __version__

    return {
        "edge_seg": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def train(cfg: TrainConfig) -> dict:
    """Train one model as configured; returns the training record (also written to disk)."""
    import keras

    from train.augment import AugmentConfig, augment_pair
    from train.data import load_split, split_fraction
    from train.losses import LOSSES, dice_at_half, iou_at_half
    from train.models import count_macs, get_model
    from train.validation import choose_threshold, score

    set_seed(cfg.seed, cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = (cfg.input_size, cfg.input_size)
    train_split = load_split(cfg.train_dir, size, cfg.channels, cfg.resize)
    if cfg.val_dir:
        val_split = load_split(cfg.val_dir, size, cfg.channels, cfg.resize)
    else:
        train_split, val_split = split_fraction(train_split, cfg.val_fraction, cfg.seed)

    model = get_model(cfg.architecture, size, cfg.channels)
    macs = count_macs(model)
    log.info("%s: %s parameters, %.3f GMAC per scan", cfg.architecture, f"{model.count_params():,}", macs / 1e9)
    steps = int(np.ceil(len(train_split) / cfg.batch_size))
    lr: float | keras.optimizers.schedules.LearningRateSchedule = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=cfg.epochs * steps, alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.Adam(lr), loss=LOSSES[cfg.loss], metrics=["accuracy", dice_at_half, iou_at_half]
    )

    aug_cfg = AugmentConfig()

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(cfg.seed)
            self.order = self.rng.permutation(len(train_split))

        def __len__(self) -> int:
            return steps

        def __getitem__(self, i: int):
            idx = self.order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if not cfg.augment:
                return train_split.x[idx], train_split.y[idx]
            pairs = [augment_pair(train_split.x[j], train_split.y[j], self.rng, aug_cfg) for j in idx]
            return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(train_split))

    class ScanDice(keras.callbacks.Callback):
        """Adds val_scan_dice: mean Dice at P > 0.5 at scan resolution, as edge-seg-eval measures it."""

        def on_epoch_end(self, epoch, logs=None):
            probs = self.model.predict(val_split.x, batch_size=32, verbose=0)[..., 0]
            s = score(probs, val_split, (0.5,), cfg.morphology_size)[0.5]
            logs["val_scan_dice"] = s["dice_mean"]
            logs["val_scan_iou"] = s["iou_mean"]
            log.info("epoch %d: val_loss %.4f  val_scan_dice@0.5 %.4f", epoch + 1, logs["val_loss"], s["dice_mean"])

    mode = "min" if cfg.monitor == "val_loss" else "max"
    callbacks = [
        ScanDice(),
        keras.callbacks.EarlyStopping(
            monitor=cfg.monitor, mode=mode, patience=cfg.patience, restore_best_weights=True, verbose=1
        ),
        keras.callbacks.ModelCheckpoint(str(out / "model.keras"), monitor=cfg.monitor, mode=mode, save_best_only=True),
        keras.callbacks.CSVLogger(str(out / "history.csv")),
    ]
    if cfg.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_lr=1e-5))
    t0 = time.time()
    hist = model.fit(
        Batches(), validation_data=(val_split.x, val_split.y), epochs=cfg.epochs, callbacks=callbacks, verbose=2
    )
    seconds = time.time() - t0
    model.save(out / "model.keras")  # the restored best weights (same as the best checkpoint)

    probs = model.predict(val_split.x, batch_size=32, verbose=0)[..., 0]
    threshold, sweep = choose_threshold(probs, val_split, cfg.morphology_size)
    val_scores = score(probs, val_split, sorted({0.5, threshold, 0.85, 0.9, 0.95}), cfg.morphology_size, True)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    best_epoch = int(np.argmin(history["val_loss"]) if mode == "min" else np.argmax(history[cfg.monitor])) + 1
    record = {
        "record_schema": 1,
        "config": asdict(cfg),
        "data": {"train": train_split.describe(), "val": val_split.describe()},
        "model": {"architecture": cfg.architecture, "parameters": int(model.count_params()), "macs": macs},
        "epochs_run": len(history["val_loss"]),
        "best_epoch": best_epoch,
        "history": history,
        "threshold": threshold,
        "val_dice_by_threshold": sweep,
        "val": {format(t, "g"): s for t, s in val_scores.items()},
        "val_dice": val_scores[threshold]["dice_mean"],
        "train_seconds": round(seconds, 1),
        "versions": _versions(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "training.json").write_text(json.dumps(record, indent=2, default=float))
    log.info(
        "best epoch %d of %d; threshold %.2f chosen on validation: val Dice %.4f (at 0.5: %.4f); %s",
        best_epoch,
        record["epochs_run"],
        threshold,
        record["val_dice"],
        val_scores[0.5]["dice_mean"],
        out / "model.keras",
    )
    return record
