"""Training: the seed recipe by default, with the improvements measured in the model card as options.

Writes ``OUT_DIR/model.keras`` (best weights by the monitored figure) and ``OUT_DIR/training.json``
(config, data folders with counts and fingerprints, per-epoch history, scan-resolution validation
Dice, the thresholds chosen on validation, versions, timings).

With ``views`` the model gains an image-level "presence" output and trains on views cut from the
frames (``train.views``) beside the frames themselves: each epoch draws, per frame and pass, the whole
frame, a crop that holds its nodule at another zoom, or a nodule-free crop beside it (empty mask,
presence 0). Validation then scores ``val``'s frames together with its fixed views, and the presence
threshold is chosen there (``edge_runtime.evaluate.choose_presence_threshold``).

With ``refine`` it trains a second-stage network instead: every sample is a crop around the frame's nodule
whose edges are moved as a first stage's box would be (``train.views.refine_box``), and validation scores
``val``'s crops around its true nodules. ``edge-seg-export FIRST --refine THIS`` puts it beside a first stage.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .data import Split

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
    monitor: str = "val_loss"  # what early stopping and checkpointing watch: val_loss, val_scan_dice, val_view_dice
    threads: int = 0  # TensorFlow intra-op threads (0: all cores)
    augment: bool = False
    views: bool = False  # nodule-free and positive crops as training views, and the presence head
    view_passes: int = 1  # with views or refine: samples per frame and epoch
    refine: bool = False  # a second-stage network, trained and validated on crops around the nodule (views.refine_box)
    refine_boxes: str | None = None  # with refine: train.oof's oof.npz; crops cut around those first-stage boxes
    view_mix: tuple[float, float, float] = (0.4, 0.25, 0.35)  # with views: share of whole frames, positive, nodule-free
    presence_weight: float = 0.5  # with views: weight of the presence loss beside the mask loss
    seed: int = 42
    max_minutes: float = 0.0  # stop after the first epoch that ends past this much training time (0: no limit)
    init_from: str | None = None  # start from this trained model's weights (same architecture and size)
    fold: int | None = None  # with folds: pool train_dir and val_dir, train on every fold but this one, validate on it
    folds: int = 5
    groups_csv: str | None = None  # the frames' patient groups (id, split, group); default: split.csv beside train_dir
    keep: str = "best"  # best: the best epoch by `monitor`; last: the last epoch (no choice made on validation)
    validate_every: int = 1  # with views and keep last: score val every this many epochs (and the first and last)
    pool: bool = False  # train on train_dir and val_dir together (val watched, not held out); keeps the last epoch
    distill_from: list[str] = field(default_factory=list)  # teacher model.keras files: train a student (train.distill)
    distill_passes: int = 6  # views drawn per frame for the distillation bank
    distill_alpha: float = 0.5  # weight of the teachers' average in the targets (the truth has 1 - alpha)
    thresholds_from: str | None = None  # an oof.json (train.oof): its out-of-fold thresholds go into the record
    morphology_size: int = 3
    name: str = "ddti-fcn"
    version: str = "0.1.0"
    extra: dict = field(default_factory=dict)


def set_threads(threads: int) -> None:
    """TensorFlow's thread pools; once TensorFlow has run (a second run in one process) they stay as they are."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # "cannot be modified after initialization"
        log.warning("TensorFlow is already running in this process: its thread count stays as it is")


def set_seed(seed: int, threads: int = 0) -> None:
    import keras
    import tensorflow as tf

    if threads:
        set_threads(threads)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def library_versions() -> dict[str, str]:
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


def time_limit(minutes: float):
    """A callback that stops training after the first epoch ending past ``minutes`` of training."""
    import keras

    class _TimeLimit(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            if time.time() - self.t0 > minutes * 60:
                log.warning(
                    "time limit of %g minutes reached after epoch %d: stopping (reproduce with --epochs %d)",
                    minutes,
                    epoch + 1,
                    epoch + 1,
                )
                self.model.stop_training = True

    return _TimeLimit()


def samples_in_bank(split, cfg: TrainConfig) -> int:
    return len(split) * cfg.distill_passes


def distillation_bank(cfg: TrainConfig, split, out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The student's training views and blended targets (``train.distill``), kept in OUT/bank.npz for a resume."""
    from .distill import build_bank, load_teachers

    cached = out / "bank.npz"
    key = json.dumps([cfg.distill_from, cfg.distill_passes, cfg.distill_alpha, cfg.seed, split.fingerprint])
    if cached.is_file():
        with np.load(cached) as f:
            if str(f["key"]) == key:
                log.info("distillation bank read from %s", cached)
                return f["x"], f["y"], f["presence"]
    teachers = load_teachers(cfg.distill_from, (cfg.input_size, cfg.input_size))
    x, y, presence = build_bank(split, cfg, teachers, cfg.distill_passes, cfg.distill_alpha)
    tmp = out / "bank.tmp.npz"
    np.savez(tmp, x=x, y=y, presence=presence, key=np.array(key))
    tmp.replace(cached)
    return x, y, presence


def resumed_epoch(backup: Path) -> int:
    """The epochs a stopped run completed, from its BackupAndRestore folder (0: nothing to resume)."""
    try:
        return int(json.loads((backup / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def read_history(path: Path) -> dict[str, list[float]]:
    """The per-epoch figures of a run's ``history.csv`` (CSVLogger's), every epoch of every start."""
    import csv

    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    rows = list({int(r["epoch"]): r for r in rows}.values())  # an epoch logged twice (a resume): the later one
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {}) if k != "epoch"}


def best_so_far(path: Path, monitor: str, mode: str) -> tuple[float | None, int]:
    """The best ``monitor`` value in a stopped run's history and the epochs since it."""
    values = read_history(path).get(monitor, [])
    if not values:
        return None, 0
    i = int(np.argmin(values) if mode == "min" else np.argmax(values))
    return values[i], len(values) - 1 - i


def fold_split(cfg: TrainConfig, pooled_first):
    """With ``cfg.fold``: ``train_dir`` and ``val_dir`` pooled, split into ``cfg.folds`` whole-group folds.

    Returns (training split: every other fold, validation split: fold ``cfg.fold``, the record's fold block).
    """
    from .data import DataError, concat, load_split
    from .folds import SMALL, FoldError, assign_folds, nodule_share, read_groups

    if not cfg.val_dir:
        raise DataError("--fold pools --train and --val into folds: give both folders")
    fold = cfg.fold
    assert fold is not None, "fold_split is for a fold run"
    if not 0 <= fold < cfg.folds:
        raise DataError(f"--fold {fold} is not one of the {cfg.folds} folds (0 to {cfg.folds - 1})")
    size = pooled_first.x.shape[1:3]
    pooled = concat(pooled_first, load_split(cfg.val_dir, size, cfg.channels, cfg.resize))
    groups_csv = Path(cfg.groups_csv) if cfg.groups_csv else Path(cfg.train_dir).parent / "split.csv"
    try:
        groups = read_groups(groups_csv)
        missing = [n for n in pooled.names if n not in groups]
        if missing:
            raise FoldError(f"{groups_csv}: no group for {len(missing)} frame(s): {', '.join(missing[:5])}")
        small = [nodule_share(m) < SMALL for m in pooled.masks]
        folds = assign_folds(pooled.names, [groups[n][1] for n in pooled.names], small, cfg.folds)
    except FoldError as exc:
        raise DataError(str(exc)) from None
    mine = folds == cfg.fold
    held = pooled.subset(np.flatnonzero(mine))
    rest = pooled.subset(np.flatnonzero(~mine))
    log.info(
        "fold %d of %d: training on %d frames, validating on %d (%d small), whole patient groups from %s",
        cfg.fold,
        cfg.folds,
        len(rest),
        len(held),
        int(np.sum(np.asarray(small)[mine])),
        groups_csv,
    )
    info = {
        "fold": cfg.fold,
        "folds": cfg.folds,
        "groups_csv": str(groups_csv),
        "rule": "train.folds.assign_folds: whole groups, small-nodule frames spread first, then frames",
        "train_frames": len(rest),
        "held_out": held.names,
    }
    return rest, held, info


_LOCKS: list = []  # the open lock files of this process's runs: held until it exits, released by the kernel


def hold_run_lock(out: Path) -> None:
    """Hold ``out/.lock`` for this process, or :class:`DataError` naming the process that holds it.

    Two runs in one folder would resume from one backup and write one record over the other; the
    lock (``flock``, released by the kernel however the holder ends) makes the second one refuse.
    """
    import fcntl

    from .data import DataError

    f = (out / ".lock").open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise DataError(
            f"{out}: another edge-seg-train (pid {holder}) is training into this folder; wait for it or stop it"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _LOCKS.append(f)


def monitor_mode(cfg: TrainConfig) -> str:
    """Whether the figure early stopping and checkpoints watch is best low (a loss) or high (a Dice)."""
    return "min" if cfg.monitor == "val_loss" else "max"


def check_config(cfg: TrainConfig) -> None:
    """Refuse a combination of options before any work (data loaded, network built)."""
    from .data import DataError

    if cfg.pool and (cfg.fold is not None or cfg.keep != "last" or not cfg.val_dir):
        raise DataError("--pool trains on --train and --val together: give both, keep the last epoch, no --fold")
    if cfg.validate_every > 1 and (not cfg.views or cfg.keep != "last"):
        raise DataError("--validate-every scores --views runs that keep their last epoch (--keep last, --fold)")
    if cfg.refine_boxes and not cfg.refine:
        raise DataError("--refine-boxes gives a second stage (--refine) its crops: add --refine")
    if cfg.refine and cfg.views:
        raise DataError("--refine trains a second-stage network on nodule crops: it takes no --views")
    if cfg.distill_from and (not cfg.views or cfg.keep != "last"):
        raise DataError("--distill trains a student with --views and keeps its last epoch (--keep last)")


@dataclass
class Splits:
    """What a run trains and validates on."""

    train: Split
    val: Split
    fold: dict | None = None  # --fold: the fold and its held-out frames
    train_boxes: list | None = None  # --refine-boxes: the first-stage boxes the training crops are cut around
    boxes_record: dict = field(default_factory=dict)  # --refine-boxes: how many frames have one
    val_neg: Split | None = None  # --views: val's nodule-free views
    val_pos: Split | None = None  # --views: val's positive crops
    val_frames_and_free: Split | None = None  # --views: val's frames and nodule-free views together


def load_splits(cfg: TrainConfig) -> Splits:
    """The training and validation data: folders, a fold of them, second-stage crops, validation views."""
    from .data import concat, load_split, refine_split, split_fraction, views_split

    size = (cfg.input_size, cfg.input_size)
    train_split = load_split(cfg.train_dir, size, cfg.channels, cfg.resize)
    fold_info = None
    if cfg.fold is not None:
        train_split, val_split, fold_info = fold_split(cfg, train_split)
    elif cfg.val_dir:
        val_split = load_split(cfg.val_dir, size, cfg.channels, cfg.resize)
        if cfg.distill_from or cfg.pool:  # every labelled frame; val is watched, not held out
            train_split = concat(train_split, val_split)
            why = "distillation" if cfg.distill_from else "--pool"
            log.warning("%s: training on --train and --val together; validation figures are on seen frames", why)
    else:
        train_split, val_split = split_fraction(train_split, cfg.val_fraction, cfg.seed)
    splits = Splits(train_split, val_split, fold_info)
    if cfg.refine:
        val_boxes, around = None, "val's nodules"
        if cfg.refine_boxes:
            from .refine_boxes import load_first_stage_boxes

            first = load_first_stage_boxes(cfg.refine_boxes, [train_split, val_split], cfg.morphology_size)
            splits.train_boxes, val_boxes = first.for_split(train_split), first.for_split(val_split)
            splits.boxes_record = {"train": first.summary(train_split), "val": first.summary(val_split)}
            around = f"the out-of-fold first-stage boxes of {cfg.refine_boxes}"
            log.info(
                "second stage: crops around out-of-fold first-stage masks (%d of %d training frames have one; "
                "the others are cut around their nodule)",
                splits.boxes_record["train"]["with_a_box"],
                len(train_split),
            )
        splits.val = refine_split(val_split, cfg.channels, cfg.resize, val_boxes)
        log.info("second stage: validation on %d crops around %s", len(splits.val), around)
    if cfg.views:  # val's own frames cut the same way every run (never another split's)
        splits.val_neg = views_split(splits.val, ("neg",), cfg.channels, cfg.resize)
        splits.val_pos = views_split(splits.val, ("pos",), cfg.channels, cfg.resize)
        splits.val_frames_and_free = concat(splits.val, splits.val_neg)  # built once, not every epoch
    return splits


def build_model(cfg: TrainConfig, splits: Splits, steps: int) -> tuple[Any, int, Any]:
    """The network (from --init-from's weights when given), compiled; returns it, its MACs and Keras' val data."""
    import keras

    from .data import DataError
    from .loading import ModelLoadError, load_weights_into
    from .losses import LOSSES, dice_at_half, iou_at_half
    from .models import PRESENCE, PROBABILITY, count_macs, get_model

    model = get_model(cfg.architecture, (cfg.input_size, cfg.input_size), cfg.channels, presence=cfg.views)
    if cfg.init_from:
        try:
            load_weights_into(model, cfg.init_from)
        except ModelLoadError as exc:
            why = str(exc).removeprefix(f"{cfg.init_from}: ")
            raise DataError(
                f"--init-from {cfg.init_from}: cannot start from it ({why}); it must be a model.keras of "
                f"--arch {cfg.architecture} at --input-size {cfg.input_size}{' with --views' if cfg.views else ''}"
            ) from None
        log.info("starting from the weights of %s", cfg.init_from)
    macs = count_macs(model)
    log.info("%s: %s parameters, %.3f GMAC per scan", cfg.architecture, f"{model.count_params():,}", macs / 1e9)
    lr: float | keras.optimizers.schedules.LearningRateSchedule = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=cfg.epochs * steps, alpha=0.01)
    metrics = ["accuracy", dice_at_half, iou_at_half]
    if not cfg.views:
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=LOSSES[cfg.loss], metrics=metrics)
        return model, macs, (splits.val.x, splits.val.y)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss={PROBABILITY: LOSSES[cfg.loss], PRESENCE: "binary_crossentropy"},
        loss_weights={PROBABILITY: 1.0, PRESENCE: cfg.presence_weight},
        metrics={PROBABILITY: metrics, PRESENCE: ["accuracy"]},
    )
    # no Keras validation pass: ScanDice scores val's frames and views once an epoch, and the
    # schedule and early stopping watch those figures (a second pass would double validation's cost)
    assert splits.val_neg is not None and splits.val_pos is not None  # load_splits makes them with --views
    log.info(
        "validation: %d frames, %d nodule-free views, %d positive crops",
        len(splits.val),
        len(splits.val_neg),
        len(splits.val_pos),
    )
    return model, macs, None


def callbacks_for(cfg: TrainConfig, splits: Splits, out: Path, backup: Path, resumed_at: int) -> list:
    """Per-epoch scoring, checkpoints (--keep best), the CSV log, the backup a stopped run resumes from, limits."""
    import keras

    from .scan_dice import scan_dice_callback

    mode = monitor_mode(cfg)
    callbacks: list = [scan_dice_callback(cfg, splits.val, splits.val_neg, splits.val_frames_and_free)]
    if cfg.keep == "best":
        stopping = keras.callbacks.EarlyStopping(
            monitor=cfg.monitor, mode=mode, patience=cfg.patience, restore_best_weights=True, verbose=1
        )
        checkpoint = keras.callbacks.ModelCheckpoint(
            str(out / "model.keras"), monitor=cfg.monitor, mode=mode, save_best_only=True
        )
        if resumed_at:  # the best so far and the epochs since, as the stopped run left them
            best, since = best_so_far(out / "history.csv", cfg.monitor, mode)
            if best is not None:
                checkpoint.best = stopping.best = best
                stopping.wait = since
        callbacks += [stopping, checkpoint]
    # the CSV log is appended to when resuming; BackupAndRestore restores weights, optimizer and epoch
    callbacks.append(keras.callbacks.CSVLogger(str(out / "history.csv"), append=bool(resumed_at)))
    callbacks.append(keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False))
    if cfg.max_minutes:
        callbacks.append(time_limit(cfg.max_minutes))
    if cfg.lr_schedule == "plateau":
        plateau_on, plateau_mode = ("val_view_dice", "max") if cfg.views else ("val_loss", "min")
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=plateau_on, mode=plateau_mode, factor=0.5, patience=3, min_lr=1e-5
            )
        )
    return callbacks


def train(cfg: TrainConfig) -> dict:
    """Train one model as configured; returns the training record (also written to disk)."""
    import keras

    from .augment import AugmentConfig
    from .distill import BankSampler
    from .sampling import ViewSampler
    from .training_record import training_record

    check_config(cfg)
    set_seed(cfg.seed, cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hold_run_lock(out)
    splits = load_splits(cfg)
    samples = len(splits.train) * (cfg.view_passes if cfg.views or cfg.refine else 1)
    steps = int(np.ceil(samples / cfg.batch_size))
    model, macs, val_data = build_model(cfg, splits, steps)

    backup = out / "backup"
    resumed_at = resumed_epoch(backup)
    if resumed_at:
        log.info("resuming from the end of epoch %d (%s); delete that folder to start over", resumed_at, backup)
    sampler: ViewSampler | BankSampler
    if cfg.distill_from:
        bank = distillation_bank(cfg, splits.train, out)
        sampler = BankSampler(bank, samples, cfg.batch_size, cfg.seed, resumed_at)
    else:
        sampler = ViewSampler(splits.train, cfg, AugmentConfig(), steps, resumed_at, boxes=splits.train_boxes)

    class Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return steps

        def __getitem__(self, i: int):
            return sampler.batch(i)

        def on_epoch_end(self) -> None:
            sampler.shuffle()

    callbacks = callbacks_for(cfg, splits, out, backup, resumed_at)
    t0 = time.time()
    hist = model.fit(Batches(), validation_data=val_data, epochs=cfg.epochs, callbacks=callbacks, verbose=2)
    seconds = time.time() - t0
    if cfg.keep == "best":
        # the best epoch's weights: restored by early stopping when it fired, read back from the checkpoint when
        # the epoch or time limit ended the run first
        model.load_weights(out / "model.keras")
    model.save(out / "model.keras")

    history = read_history(out / "history.csv") or {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    record = training_record(cfg, model, macs, splits, history, seconds)
    if resumed_at:
        record["resumed_after_epoch"] = resumed_at
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / "training.json").write_text(json.dumps(record, indent=2, default=float))
    shutil.rmtree(backup, ignore_errors=True)  # the run is complete: nothing left to resume
    log.info(
        "%s epoch %d of %d; threshold %.2f%s: val Dice %.4f (at 0.5: %.4f); %s",
        "best" if cfg.keep == "best" else "kept the last,",
        record["best_epoch"],
        record["epochs_run"],
        record["threshold"],
        " (out of fold)" if cfg.thresholds_from else " chosen on validation",
        record["val_dice"],
        record["val"]["0.5"]["dice_mean"],
        out / "model.keras",
    )
    return record
