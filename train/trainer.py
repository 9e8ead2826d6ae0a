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


def validated(epoch: int, every: int, epochs: int) -> bool:
    """Whether 0-based ``epoch`` is scored on val: every ``every``-th epoch, and always the first and the last."""
    return epoch == 0 or (epoch + 1) % every == 0 or epoch + 1 >= epochs


def train(cfg: TrainConfig) -> dict:
    """Train one model as configured; returns the training record (also written to disk)."""
    import keras

    from edge_runtime.core.thresholds import choose_presence_threshold

    from .augment import AugmentConfig
    from .data import DataError, concat, load_split, refine_split, split_fraction, views_split
    from .distill import BankSampler
    from .loading import ModelLoadError, load_weights_into
    from .losses import LOSSES, dice_at_half, iou_at_half
    from .models import PRESENCE, PROBABILITY, count_macs, get_model
    from .sampling import ViewSampler
    from .validation import choose_threshold, predict, score

    if cfg.pool and (cfg.fold is not None or cfg.keep != "last" or not cfg.val_dir):  # before any work
        raise DataError("--pool trains on --train and --val together: give both, keep the last epoch, no --fold")
    if cfg.validate_every > 1 and (not cfg.views or cfg.keep != "last"):  # before any work
        raise DataError("--validate-every scores --views runs that keep their last epoch (--keep last, --fold)")
    set_seed(cfg.seed, cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hold_run_lock(out)
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
    train_boxes, refine_boxes_record = None, {}
    if cfg.refine_boxes and not cfg.refine:
        raise DataError("--refine-boxes gives a second stage (--refine) its crops: add --refine")
    if cfg.refine:
        if cfg.views:
            raise DataError("--refine trains a second-stage network on nodule crops: it takes no --views")
        val_boxes, around = None, "val's nodules"
        if cfg.refine_boxes:
            from .refine_boxes import load_first_stage_boxes

            first = load_first_stage_boxes(cfg.refine_boxes, [train_split, val_split], cfg.morphology_size)
            train_boxes, val_boxes = first.for_split(train_split), first.for_split(val_split)
            refine_boxes_record = {"train": first.summary(train_split), "val": first.summary(val_split)}
            around = f"the out-of-fold first-stage boxes of {cfg.refine_boxes}"
            log.info(
                "second stage: crops around out-of-fold first-stage masks (%d of %d training frames have one; "
                "the others are cut around their nodule)",
                refine_boxes_record["train"]["with_a_box"],
                len(train_split),
            )
        val_split = refine_split(val_split, cfg.channels, cfg.resize, val_boxes)
        log.info("second stage: validation on %d crops around %s", len(val_split), around)
    # validation views: val's own frames cut the same way every run (never another split's)
    val_neg = views_split(val_split, ("neg",), cfg.channels, cfg.resize) if cfg.views else None
    val_pos = views_split(val_split, ("pos",), cfg.channels, cfg.resize) if cfg.views else None
    # what val_view_dice scores: val's frames and its nodule-free views together (built once, not every epoch)
    val_frames_and_free = concat(val_split, val_neg) if val_neg is not None else None

    model = get_model(cfg.architecture, size, cfg.channels, presence=cfg.views)
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
    samples = len(train_split) * (cfg.view_passes if cfg.views or cfg.refine else 1)
    steps = int(np.ceil(samples / cfg.batch_size))
    lr: float | keras.optimizers.schedules.LearningRateSchedule = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=cfg.epochs * steps, alpha=0.01)
    metrics = ["accuracy", dice_at_half, iou_at_half]
    if cfg.views:
        assert val_neg is not None and val_pos is not None
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss={PROBABILITY: LOSSES[cfg.loss], PRESENCE: "binary_crossentropy"},
            loss_weights={PROBABILITY: 1.0, PRESENCE: cfg.presence_weight},
            metrics={PROBABILITY: metrics, PRESENCE: ["accuracy"]},
        )
        # no Keras validation pass: ScanDice scores val's frames and views once an epoch, and the
        # schedule and early stopping watch those figures (a second pass would double validation's cost)
        val_data = None
        log.info(
            "validation: %d frames, %d nodule-free views, %d positive crops", len(val_split), len(val_neg), len(val_pos)
        )
    else:
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=LOSSES[cfg.loss], metrics=metrics)
        val_data = (val_split.x, val_split.y)

    backup = out / "backup"
    resumed_at = resumed_epoch(backup)
    if resumed_at:
        log.info("resuming from the end of epoch %d (%s); delete that folder to start over", resumed_at, backup)
    sampler: ViewSampler | BankSampler
    if cfg.distill_from:
        if not cfg.views or cfg.keep != "last":
            raise DataError("--distill trains a student with --views and keeps its last epoch (--keep last)")
        bank = distillation_bank(cfg, train_split, out)
        sampler = BankSampler(bank, samples, cfg.batch_size, cfg.seed, resumed_at)
    else:
        sampler = ViewSampler(train_split, cfg, AugmentConfig(), steps, resumed_at, boxes=train_boxes)

    class Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return steps

        def __getitem__(self, i: int):
            return sampler.batch(i)

        def on_epoch_end(self) -> None:
            sampler.shuffle()

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

    mode = "min" if cfg.monitor == "val_loss" else "max"
    callbacks: list = [ScanDice()]
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
    t0 = time.time()
    hist = model.fit(Batches(), validation_data=val_data, epochs=cfg.epochs, callbacks=callbacks, verbose=2)
    seconds = time.time() - t0
    if cfg.keep == "best":
        # the best epoch's weights: restored by early stopping when it fired, read back from the checkpoint when
        # the epoch or time limit ended the run first
        model.load_weights(out / "model.keras")
    model.save(out / "model.keras")

    probs, pres = predict(model, val_split.x)
    threshold, sweep = choose_threshold(probs, val_split, cfg.morphology_size)
    report_t = sorted({0.5, threshold, 0.85, 0.9, 0.95})
    val_scores = score(probs, val_split, report_t, cfg.morphology_size, True)
    history = read_history(out / "history.csv") or {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    epochs_run = len(history["loss"])
    if cfg.keep == "best":
        best_epoch = int(np.argmin(history[cfg.monitor]) if mode == "min" else np.argmax(history[cfg.monitor])) + 1
    else:
        best_epoch = epochs_run
    record = {
        "record_schema": 2,
        "config": asdict(cfg),
        "data": {"train": train_split.describe(), "val": val_split.describe()},
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
        "versions": _versions(),
    }
    if cfg.views:
        assert val_neg is not None and val_pos is not None
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
                ("frames", probs, pres, val_split),
                ("nodule_free", probs_n, pres_n, val_neg),
                ("positive_crops", probs_p, pres_p, val_pos),
            )
        }
        record["presence_threshold"] = presence_threshold
        record["presence_choice"] = {
            "rule": "highest specificity on val's nodule-free views with sensitivity >= the minimum on val's "
            "frames and positive crops; ties to the lowest threshold",
            **at,
        }
        record["val_views"] = {
            "counts": {"frames": len(val_split), "nodule_free": len(val_neg), "positive_crops": len(val_pos)},
            "gated": gated,
        }
        record["val_dice"] = gated["frames"][format(threshold, "g")]["dice_mean"]
        log.info(
            "presence threshold %.2f chosen on validation: at mask threshold %.2f, frames Dice %.4f, sensitivity "
            "%.3f; nodule-free views with a mask %.3f; positive crops detected %.3f",
            presence_threshold,
            threshold,
            gated["frames"][format(threshold, "g")]["dice_mean"],
            gated["frames"][format(threshold, "g")]["sensitivity"],
            gated["nodule_free"][format(threshold, "g")]["fp_share"],
            gated["positive_crops"][format(threshold, "g")]["sensitivity"],
        )
    if fold_info is not None:
        record["fold"] = fold_info
    if cfg.refine_boxes:
        record["refine_boxes"] = refine_boxes_record
    if cfg.pool:
        record["pooled"] = "trained on --train and --val together: the val figures above are on frames it saw"
    if cfg.distill_from:
        record["distillation"] = {
            "teachers": cfg.distill_from,
            "passes": cfg.distill_passes,
            "alpha": cfg.distill_alpha,
            "bank_views": samples_in_bank(train_split, cfg),
            "note": "trained on --train and --val together: the val figures above are on frames it saw",
        }
    if cfg.thresholds_from:
        chosen = json.loads(Path(cfg.thresholds_from).read_text())["chosen_out_of_fold"]
        record["thresholds_chosen_on_val"] = {
            "threshold": record["threshold"],
            **({"presence_threshold": record["presence_threshold"]} if "presence_threshold" in record else {}),
        }
        record["threshold"] = chosen["threshold"]
        record["presence_threshold"] = chosen["presence_threshold"]
        record["thresholds_chosen"] = {
            "on": "out-of-fold predictions of the fold teachers",
            "file": cfg.thresholds_from,
        }
        log.info(
            "thresholds from %s (chosen out of fold): mask %.2f, presence %.2f",
            cfg.thresholds_from,
            chosen["threshold"],
            chosen["presence_threshold"],
        )
    if resumed_at:
        record["resumed_after_epoch"] = resumed_at
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / "training.json").write_text(json.dumps(record, indent=2, default=float))
    shutil.rmtree(backup, ignore_errors=True)  # the run is complete: nothing left to resume
    log.info(
        "%s epoch %d of %d; threshold %.2f%s: val Dice %.4f (at 0.5: %.4f); %s",
        "best" if cfg.keep == "best" else "kept the last,",
        best_epoch,
        record["epochs_run"],
        record["threshold"],
        " (out of fold)" if cfg.thresholds_from else " chosen on validation",
        record["val_dice"],
        val_scores[0.5]["dice_mean"],
        out / "model.keras",
    )
    return record
