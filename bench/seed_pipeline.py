"""The seed's inference pipeline, as the blog post runs it: the reference edge-seg is measured against.

TensorFlow/Keras ``load_model``, then for each scan in a folder: ``cv2.imread``, resize to the model's
input, min-max normalise, ``model.predict`` on a batch of one, threshold, 3x3 elliptical erode +
dilate, ``cv2.imwrite`` of the model-size mask. Nothing is overlapped, batched or written atomically.

    python bench/seed_pipeline.py IN OUT --model seed.keras --threshold 0.2
    python bench/seed_pipeline.py --build seed-fcn 128 128 3 seed.keras   # make a Keras model to run

``--build`` makes an untrained model of the given architecture with ``train.models.get_model``: the
compute (and so the time) is the same as a trained one's. Kept deliberately plain: it is the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the console


def build(arch: str, height: int, width: int, channels: int, out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from train.models import get_model

    model = get_model(arch, (height, width), channels)
    model.save(out)
    print(f"saved {arch} {height}x{width}x{channels} ({model.count_params():,} parameters) to {out}")


def run(in_dir: Path, out_dir: Path, model_path: Path, threshold: float) -> None:
    import cv2
    import numpy as np
    import tensorflow as tf  # noqa: F401 - the blog imports TensorFlow; Keras 3 runs on it
    from tensorflow import keras

    model = keras.models.load_model(model_path)
    _, height, width, _ = model.input_shape
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(in_dir)):
        img = cv2.imread(str(in_dir / name))
        x = cv2.resize(img, (width, height)).astype(np.float32)
        x = (x - x.min()) / (x.max() - x.min() + 1e-8)
        prob = model.predict(np.expand_dims(x, axis=0), verbose=0)[0, :, :, 0]
        mask = (prob > threshold).astype(np.uint8) * 255
        mask = cv2.erode(mask, kernel)
        mask = cv2.dilate(mask, kernel)
        cv2.imwrite(str(out_dir / (Path(name).stem + ".png")), mask)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", type=Path)
    p.add_argument("out", nargs="?", type=Path)
    p.add_argument("--model", type=Path)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--build", nargs=5, metavar=("ARCH", "H", "W", "C", "OUT"))
    args = p.parse_args()
    if args.build:
        arch, h, w, c, out = args.build
        build(arch, int(h), int(w), int(c), Path(out))
    elif args.input and args.out and args.model:
        run(args.input, args.out, args.model, args.threshold)
    else:
        p.error("give IN OUT --model M, or --build ARCH H W C OUT")


if __name__ == "__main__":
    main()
