"""``edge-seg-train``: train a model on image/ + mask/ folders (needs the [train] extra)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

EPILOG = """example (the seed recipe on DDTI, validation on its own patients):
  edge-seg-train --train ../shared/data/ddti/train --val ../shared/data/ddti/val --out runs/seed
then export it:
  edge-seg-export runs/seed/model.keras --out runs/seed/model.onnx
cross-validation (fold 0 of 5 over train + val, groups kept whole); a stopped run resumes when started again:
  edge-seg-train --train ../shared/data/ddti/train --val ../shared/data/ddti/val --fold 0 --folds 5 --out runs/f0
"""


def build_parser() -> argparse.ArgumentParser:
    from edge_runtime.console import HelpFormatter

    from .models import architecture_names

    p = argparse.ArgumentParser(
        prog="edge-seg-train", description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    p.add_argument("--train", required=True, help="folder with image/ and mask/ subfolders")
    p.add_argument("--val", help="validation folder (image/ + mask/); without it a random fraction is held out")
    p.add_argument("--val-fraction", type=float, default=0.15, help="held-out fraction when --val is not given")
    p.add_argument("--out", required=True, help="folder for model.keras and training.json")
    p.add_argument("--arch", default="seed-fcn", choices=architecture_names(), help="architecture")
    p.add_argument("--input-size", type=int, default=128, help="square model input size in pixels")
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start from this model.keras's weights (same --arch, --input-size and --views) instead of "
        "ImageNet's or random ones: continue a run at a lower --lr",
    )
    p.add_argument(
        "--loss",
        default="bce",
        choices=["bce", "dice_bce", "dice_bce_nodule"],
        help="dice_bce_nodule: dice_bce on the training images that hold a nodule only (with --views, the "
        "presence output alone learns the nodule-free views)",
    )
    p.add_argument("--lr-schedule", default="none", choices=["none", "cosine", "plateau"])
    p.add_argument("--patience", type=int, default=5, help="early stopping patience on validation loss")
    p.add_argument(
        "--monitor",
        choices=["val_loss", "val_scan_dice", "val_view_dice"],
        help="what early stopping and the checkpoint watch (default: val_view_dice with --views, else val_loss)",
    )
    p.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: all cores)")
    p.add_argument("--augment", action="store_true", help="ultrasound augmentation (flips, affine, gamma, speckle)")
    p.add_argument(
        "--views",
        action="store_true",
        help="train on nodule-free and positive crops beside the frames, with an image-level presence output "
        "(its threshold is chosen on --val's own views)",
    )
    p.add_argument(
        "--refine",
        action="store_true",
        help="a second-stage network: trains on crops around each nodule (edges jittered as a first stage's box "
        "would be) and is validated on val's crops; exported beside a first stage with edge-seg-export --refine",
    )
    p.add_argument(
        "--refine-boxes",
        metavar="OOF_NPZ",
        help="with --refine: cut each training and validation crop around the mask a first stage really drew, "
        "the out-of-fold map of train.oof's oof.npz (its oof.json's thresholds), not the jittered true box",
    )
    p.add_argument("--view-passes", type=int, default=1, help="with --views or --refine: samples per frame and epoch")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="stop after the first epoch that ends past this many minutes of training (0: no limit); the record "
        "says how many epochs ran, and --epochs with that number reproduces the run",
    )
    p.add_argument(
        "--fold",
        type=int,
        help="cross-validation: pool --train and --val, split them into --folds folds that keep each patient group "
        "whole (--groups), train on all folds but this one (0-based) and validate on it; implies --keep last",
    )
    p.add_argument("--folds", type=int, default=5, help="with --fold: the number of folds")
    p.add_argument(
        "--pool",
        action="store_true",
        help="train on every frame of --train and --val (the final network of a cross-validated recipe, e.g. a "
        "second stage whose choices were made out of fold); --val is watched, not held out; implies --keep last",
    )
    p.add_argument(
        "--groups", metavar="CSV", help="with --fold: id,split,group of every frame (default: split.csv beside --train)"
    )
    p.add_argument(
        "--validate-every",
        type=int,
        default=1,
        metavar="N",
        help="with --views and --keep last (a --fold or --distill run): score the validation frames every N epochs "
        "and at the first and last (default 1: every epoch); the other rows of history.csv hold nan",
    )
    p.add_argument(
        "--keep",
        choices=["best", "last"],
        help="the weights kept: the best epoch by --monitor (default), or the last epoch (the default with --fold, "
        "so that its validation fold stays unseen by every choice)",
    )
    p.add_argument(
        "--distill",
        nargs="+",
        metavar="TEACHER",
        help="train a student on every frame of --train and --val with targets blending the truth and these "
        "teachers' averaged outputs (model.keras files of --views runs at the same --input-size); keeps the last epoch",
    )
    p.add_argument("--distill-passes", type=int, default=6, help="with --distill: views drawn per frame for the bank")
    p.add_argument(
        "--distill-alpha", type=float, default=0.5, help="with --distill: the teachers' share of the targets"
    )
    p.add_argument(
        "--thresholds-from",
        metavar="OOF_JSON",
        help="store the thresholds chosen out of fold (python -m train.oof's oof.json) as the model's own",
    )
    p.add_argument("--name", default="ddti-fcn", help="model name stored in the metadata")
    p.add_argument("--model-version", default="0.1.0", help="model version stored in the metadata")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


TRAIN_EXTRA = "edge-seg-train needs the training extra (TensorFlow, Keras, tf2onnx): pip install 'edge-seg[train]'"


def main(argv: list[str] | None = None) -> int:
    try:
        import keras  # noqa: F401 -- the parser lists the architectures, which are Keras models
    except ImportError:
        sys.stderr.write(f"error: {TRAIN_EXTRA}\n")
        return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the console
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        logging.error("%s", TRAIN_EXTRA)
        return 2
    from .data import DataError
    from .trainer import TrainConfig, train

    cfg = TrainConfig(
        train_dir=args.train,
        val_dir=args.val,
        val_fraction=args.val_fraction,
        out_dir=args.out,
        architecture=args.arch,
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        loss=args.loss,
        lr_schedule=args.lr_schedule,
        patience=args.patience,
        augment=args.augment,
        views=args.views,
        refine=args.refine,
        refine_boxes=args.refine_boxes,
        view_passes=args.view_passes,
        max_minutes=args.max_minutes,
        init_from=args.init_from,
        fold=args.fold,
        folds=args.folds,
        groups_csv=args.groups,
        validate_every=max(1, args.validate_every),
        keep=args.keep or ("last" if args.fold is not None or args.distill or args.pool else "best"),
        pool=args.pool,
        distill_from=args.distill or [],
        distill_passes=args.distill_passes,
        distill_alpha=args.distill_alpha,
        thresholds_from=args.thresholds_from,
        monitor=args.monitor or ("val_view_dice" if args.views else "val_loss"),
        threads=args.threads,
        seed=args.seed,
        name=args.name,
        version=args.model_version,
    )
    try:
        train(cfg)
    except DataError as exc:
        logging.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
