"""``edge-seg-export``: convert a trained ``model.keras`` to the ONNX file ``edge-seg`` runs.

The model's facts (input size, preprocessing, default threshold, morphology, training data and
validation Dice, tool versions) go into the file's metadata; the export only succeeds once the ONNX
model matches the Keras one on real scans.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from edge_runtime.console import threshold_arg

log = logging.getLogger(__name__)

EPILOG = """example:
  edge-seg-export runs/seed/model.keras --out runs/seed/model.onnx
(reads runs/seed/training.json for the threshold chosen on validation and the training facts,
and checks parity on the validation scans named there)
"""


def build_parser() -> argparse.ArgumentParser:
    fmt = type("F", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {})
    p = argparse.ArgumentParser(prog="edge-seg-export", description=__doc__, epilog=EPILOG, formatter_class=fmt)
    p.add_argument("keras_model", type=Path, help="model.keras written by edge-seg-train")
    p.add_argument("--out", type=Path, required=True, help="the ONNX file to write")
    p.add_argument("--record", type=Path, help="training record (default: training.json beside the model)")
    p.add_argument("--name", help="model name for the metadata (default: from the training record)")
    p.add_argument("--model-version", help="model version for the metadata (default: from the training record)")
    p.add_argument("--threshold", type=threshold_arg, help="default threshold (default: the one chosen on validation)")
    p.add_argument(
        "--parity-scans",
        type=Path,
        help="folder of real scans for the parity check (default: the record's validation folder)",
    )
    p.add_argument("--parity-count", type=int, default=32, help="scans used for the parity check")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="flip: average with the mirrored scan inside the graph (2x inference); the default threshold is then "
        "chosen again on the validation folder unless --threshold is given",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def choose_threshold_on(onnx_path: Path, labelled: Path) -> float:
    """The threshold with the best mean scan-resolution Dice of ``onnx_path`` on ``labelled`` (image/ + mask/)."""
    from edge_runtime.core.segmenter import Segmenter
    from edge_runtime.core.thresholds import THRESHOLD_GRID, best_threshold, threshold_label
    from edge_runtime.errors import SetupError
    from edge_runtime.scoring import evaluate

    if not (labelled / "image").is_dir() or not (labelled / "mask").is_dir():
        raise SetupError(f"choosing the threshold needs {labelled}/image and {labelled}/mask")
    summary, _ = evaluate(Segmenter(onnx_path), labelled / "image", labelled / "mask", list(THRESHOLD_GRID), False)
    best = best_threshold({t: summary[threshold_label(t)]["dice_mean"] for t in THRESHOLD_GRID})
    log.info(
        "threshold %g chosen on %s: mean Dice %.4f (at 0.5: %.4f)",
        best,
        labelled,
        summary[threshold_label(best)]["dice_mean"],
        summary["0.5"]["dice_mean"],
    )
    return best


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import onnx
        import tf2onnx  # noqa: F401
    except ImportError:
        log.error("export needs TensorFlow, tf2onnx and onnx: pip install 'edge-seg[train]'")
        return 2
    from edge_runtime.core.metadata import COMPARE_THRESHOLDS
    from edge_runtime.errors import ModelError, ScanError, SetupError
    from edge_runtime.files.durable import write_atomic
    from export.convert import (
        attach_metadata,
        build_metadata,
        load_keras,
        to_onnx,
        with_flip_tta,
    )
    from export.parity import check_parity, parity_images

    if not args.keras_model.is_file():
        log.error("%s: no such model file", args.keras_model)
        return 2
    record_path = args.record or args.keras_model.with_name("training.json")
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    if record is None:
        log.warning("no training record at %s: the metadata will carry no training facts", record_path)
    threshold = args.threshold or (record or {}).get("threshold") or 0.5
    cfg = (record or {}).get("config", {})
    name = args.name or cfg.get("name") or args.keras_model.stem
    version = args.model_version or cfg.get("version") or "0.0.0"
    parity_dir = args.parity_scans or (Path(cfg["val_dir"]) if cfg.get("val_dir") else None)
    if parity_dir is None or not parity_dir.is_dir():
        log.error("parity check needs real scans: pass --parity-scans DIR (looked for %s)", parity_dir)
        return 2

    t0 = time.time()
    model = load_keras(args.keras_model)
    if args.tta == "flip":
        model = with_flip_tta(model)
    proto = to_onnx(model, args.opset)
    attach_metadata(proto, build_metadata(model, record, name, version, threshold, args.opset, args.tta))
    onnx.checker.check_model(proto)
    tmp = args.out.with_name(f".{args.out.name}.parity")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, tmp)
    try:
        if args.tta != "none" and args.threshold is None:
            # The record's threshold was chosen for the plain model: choose again, on the same validation
            # folder, with the graph as exported and the runtime's own scoring.
            threshold = choose_threshold_on(tmp, Path(cfg["val_dir"]) if cfg.get("val_dir") else parity_dir)
            attach_metadata(proto, build_metadata(model, record, name, version, threshold, args.opset, args.tta))
            onnx.save(proto, tmp)
        images = parity_images(parity_dir, args.parity_count)
        thresholds = sorted({*COMPARE_THRESHOLDS, float(threshold)})
        report = check_parity(model, tmp, images, thresholds)
        if not report.ok:
            log.error("parity check FAILED: %s", report.describe())
            return 1
        log.info("parity ok: %s", report.describe())
        write_atomic(args.out, tmp.read_bytes())
    except (ModelError, ScanError, SetupError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        tmp.unlink(missing_ok=True)
    size = args.out.stat().st_size
    log.info("wrote %s (%.2f MB) in %.1f s; threshold %g", args.out, size / 1e6, time.time() - t0, threshold)
    log.info("use it:  edge-seg IN --out OUT --model %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
