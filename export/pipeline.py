"""The Keras-to-ONNX export as named steps, each taking and returning a typed value.

:func:`check` turns the command line into one checked :class:`Settings` (every refusal before any
work); :func:`convert` builds the graph (ensemble, flip TTA) into an :class:`Exported`;
:func:`choose_again` picks the thresholds again when the graph is not the plain model's;
:func:`add_second_stage` puts a ``--refine`` model into the same graph; :func:`check_and_write`
checks parity against Keras on real scans and only then writes the fp32 file. A step that refuses
raises :class:`Refused` (exit 2), one that fails :class:`Failed` (exit 1); :mod:`export.cli` says
which and runs what follows (int8 or smaller weights).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .convert import SecondStage

log = logging.getLogger(__name__)


class Refused(Exception):
    """The export cannot run as asked; the message is one line for a person (exit 2)."""


class Failed(Exception):
    """The export ran and failed (parity, a bad scan, a model that will not load); one line (exit 1)."""


#: An ensemble member: its model file and the training record beside it (None: there is none).
Member = tuple[str, dict | None]


@dataclass(frozen=True)
class Settings:
    """The export as asked, every folder and file found and every combination checked."""

    keras_model: Path
    out: Path  #: what the user asked for
    fp32_out: Path  #: where the checked fp32 model goes (``out`` unless it is then made smaller)
    record: dict | None  #: the training record beside the model
    name: str
    version: str
    threshold: float  #: given, or the record's, until chosen again
    threshold_given: bool
    parity_dir: Path  #: real scans to compare Keras and ONNX on
    val_dir: Path  #: the validation folder thresholds are chosen again on
    labelled: Path | None  #: image/ + mask/ for the int8 / smaller-weights check
    calibration: Path | None  #: training scans for int8 calibration
    members: list[Member]  #: the ensemble, the first model included ([] without --ensemble)
    refine: Path | None
    refine_blend: str  #: ``mean`` or ``replace`` (--refine-blend)
    box_threshold: float | None  #: with --refine: the crop's box is the first mask at this (None: its threshold)
    opset: int
    tta: str
    weights: str
    precision: str
    parity_count: int
    calibration_count: int
    pre_process: bool


def check(args: argparse.Namespace) -> Settings:
    """The command line as :class:`Settings`; :class:`Refused` when something is missing or at odds."""
    if args.keras_model is None:
        raise Refused("give a model.keras to export (or --from-onnx FILE with --precision int8)")
    try:
        import onnx  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        raise Refused("export needs TensorFlow, tf2onnx and onnx: pip install 'edge-seg[train]'") from None
    if not args.keras_model.is_file():
        raise Refused(f"{args.keras_model}: no such model file")
    record_path = args.record or args.keras_model.with_name("training.json")
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    if record is None:
        log.warning("no training record at %s: the metadata will carry no training facts", record_path)
    cfg = (record or {}).get("config", {})
    val_dir = Path(cfg["val_dir"]) if cfg.get("val_dir") else None
    parity_dir = args.parity_scans or val_dir
    if parity_dir is None or not parity_dir.is_dir():
        raise Refused(f"parity check needs real scans: pass --parity-scans DIR (looked for {parity_dir})")
    labelled = args.int8_parity or val_dir
    calibration = args.calibration or (Path(cfg["train_dir"]) if cfg.get("train_dir") else None)
    fp32_out = _fp32_out(args, labelled, calibration)
    members = _ensemble_members(args.keras_model, record, args.ensemble)
    if args.refine is not None and not args.refine.is_file():
        raise Refused(f"{args.refine}: no such model file (--refine)")
    if args.refine is not None and args.precision == "int8":
        raise Refused("--refine and --precision int8: a two-stage graph is not quantized (use --weights int8 or fp16)")
    return Settings(
        keras_model=args.keras_model,
        out=args.out,
        fp32_out=fp32_out,
        record=record,
        name=args.name or cfg.get("name") or args.keras_model.stem,
        version=args.model_version or cfg.get("version") or "0.0.0",
        threshold=args.threshold or (record or {}).get("threshold") or 0.5,
        threshold_given=args.threshold is not None,
        parity_dir=parity_dir,
        val_dir=val_dir or parity_dir,
        labelled=labelled,
        calibration=calibration,
        members=members,
        refine=args.refine,
        refine_blend=args.refine_blend,
        box_threshold=args.box_threshold,
        opset=args.opset,
        tta=args.tta,
        weights=args.weights,
        precision=args.precision,
        parity_count=args.parity_count,
        calibration_count=args.calibration_count,
        pre_process=args.pre_process,
    )


def _fp32_out(args: argparse.Namespace, labelled: Path | None, calibration: Path | None) -> Path:
    """Where the fp32 model goes: ``--out``, or beside it when it is then made smaller (its inputs checked)."""
    if args.precision == "int8" and args.weights != "fp32":
        raise Refused(f"--weights {args.weights} and --precision int8 are two ways to shrink the file: give one")
    if args.weights == "fp32" and args.precision != "int8":
        return args.out
    fp32_out: Path = args.fp32_out or args.out.with_name(f"{args.out.stem}.fp32.onnx")
    if args.weights != "fp32":  # the fp32 parent is written and checked first, then stored smaller into --out
        if labelled is None or not (labelled / "image").is_dir() or not (labelled / "mask").is_dir():
            raise Refused(
                f"--weights {args.weights} is checked on a labelled folder (image/ + mask/): pass --int8-parity DIR"
            )
    else:  # --precision int8: the fp32 parent is checked first, then quantized into --out
        problem = int8_inputs_problem(calibration, labelled, args.calibration_count)
        if problem:  # before the conversion, not after it
            raise Refused(problem)
    return fp32_out


def int8_inputs_problem(calibration: Path | None, labelled: Path | None, count: int) -> str | None:
    """Why the int8 step could not run with these folders (None when it can), checked before any work."""
    from edge_runtime.errors import SetupError

    from .quantize import calibration_files

    if calibration is None:
        return "int8 needs training scans to calibrate on: pass --calibration DIR (the record names none)"
    if labelled is None or not (labelled / "image").is_dir() or not (labelled / "mask").is_dir():
        return f"the int8 parity check needs a labelled folder (image/ + mask/): pass --int8-parity DIR ({labelled})"
    try:
        calibration_files(calibration, count)
    except SetupError as exc:
        return str(exc)
    return None


def _ensemble_members(first: Path, record: dict | None, more: list[Path]) -> list[Member]:
    """Every ensemble member (file, training record beside it), the first included; [] without --ensemble."""
    if not more:
        return []
    members: list[Member] = [(str(first), record)]
    for path in more:
        if not path.is_file():
            raise Refused(f"{path}: no such model file (--ensemble)")
        rec_path = path.with_name("training.json")
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else None
        if rec is None:
            log.warning("no training record at %s: the metadata will say nothing of that member", rec_path)
        members.append((str(path), rec))
    return members


@dataclass
class Exported:
    """The graph as exported so far, and what its metadata says."""

    settings: Settings
    model: Any  #: the Keras first stage as converted (ensemble and TTA included)
    graph: Any  #: what is converted: the first stage, then (with --refine) both stages
    proto: Any  #: the ONNX graph
    threshold: float
    presence_threshold: float | None = None  #: None: the record's (chosen again for --tta / --ensemble)
    chosen: dict | None = None  #: what the export chose again, for the metadata
    second: Any = None  #: the Keras second stage (--refine)
    refine: SecondStage | None = None  #: the second stage (--refine), as the metadata describes it

    def metadata(self) -> dict:
        from .convert import Described, build_metadata

        s = self.settings
        about = Described(
            name=s.name,
            version=s.version,
            threshold=self.threshold,
            opset=s.opset,
            tta=s.tta,
            presence_threshold=self.presence_threshold,
            chosen_at_export=self.chosen,
            members=s.members,
            refine=self.refine,
        )
        meta = build_metadata(self.graph, s.record, about)
        meta["precision"] = "fp32"
        return meta

    def save(self, path: Path) -> None:
        """The metadata as it stands now into the graph, and the graph to ``path``."""
        import onnx

        from .convert import attach_metadata

        attach_metadata(self.proto, self.metadata())
        onnx.save(self.proto, path)


def convert(s: Settings, tmp: Path) -> Exported:
    """Load the Keras model (and the ensemble's others), add flip TTA, convert and check it, save to ``tmp``."""
    import onnx

    from .convert import attach_metadata, load_keras, to_onnx, with_ensemble, with_flip_tta

    model = load_keras(s.keras_model)
    if s.members:
        try:
            model = with_ensemble([model, *(load_keras(Path(m)) for m, _ in s.members[1:])])
        except ValueError as exc:
            raise Refused(str(exc)) from None
    if s.tta == "flip":
        model = with_flip_tta(model)
    exported = Exported(s, model, model, to_onnx(model, s.opset), s.threshold)
    attach_metadata(exported.proto, exported.metadata())
    onnx.checker.check_model(exported.proto)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(exported.proto, tmp)
    return exported


def choose_again(e: Exported, tmp: Path) -> Exported:
    """With --tta or --ensemble and no --threshold: the record's thresholds were chosen for the plain model,
    so choose them again, on the same validation folder, with the graph as exported (export/choose.py)."""
    from .choose import choose_presence_on, choose_threshold_on
    from .convert import has_presence

    s = e.settings
    reason = " ".join(([f"--tta {s.tta}"] if s.tta != "none" else []) + (["--ensemble"] if s.members else []))
    if not reason or s.threshold_given:
        return e
    if has_presence(e.model):
        e.presence_threshold, _ = choose_presence_on(tmp, s.val_dir)
        e.save(tmp)
    e.threshold = choose_threshold_on(tmp, s.val_dir)
    e.chosen = {"folder": str(s.val_dir), "reason": reason, "threshold": e.threshold}
    if e.presence_threshold is not None:
        e.chosen["presence_threshold"] = e.presence_threshold
    e.save(tmp)
    return e


def add_second_stage(e: Exported, tmp: Path) -> Exported:
    """With --refine: both stages in one graph; without --threshold, the masks' threshold chosen again
    (the box keeps the first stage's)."""
    from .choose import choose_threshold_on
    from .convert import load_keras, to_onnx, with_refine

    s = e.settings
    if s.refine is None:
        return e
    e.second = load_keras(s.refine)
    try:
        e.graph = with_refine(e.model, e.second)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    rec_path = s.refine.with_name("training.json")
    record = json.loads(rec_path.read_text()) if rec_path.is_file() else None
    box = e.threshold if s.box_threshold is None else s.box_threshold
    e.refine = SecondStage(str(s.refine), record, box, s.refine_blend)
    e.proto = to_onnx(e.graph, s.opset)
    e.save(tmp)
    if not s.threshold_given:
        e.threshold = choose_threshold_on(tmp, s.val_dir)
        e.chosen = {
            **(e.chosen or {"folder": str(s.val_dir)}),
            "reason": " ".join(filter(None, [(e.chosen or {}).get("reason"), "--refine"])),
            "threshold": e.threshold,
            "box_threshold": box,
        }
        e.save(tmp)
    return e


def check_and_write(e: Exported, tmp: Path) -> Exported:
    """Compare the ONNX graph in ``tmp`` with Keras on real scans; only if they agree, write the fp32 file."""
    from edge_runtime.core.metadata import COMPARE_THRESHOLDS
    from edge_runtime.files.durable import write_atomic

    from .parity import check_parity, parity_images

    s = e.settings
    images = parity_images(s.parity_dir, s.parity_count)
    thresholds = sorted({*COMPARE_THRESHOLDS, float(e.threshold)})
    report = check_parity(e.model, tmp, images, thresholds, e.second)
    if not report.ok:
        raise Failed(f"parity check FAILED: {report.describe()}")
    log.info("parity ok: %s", report.describe())
    write_atomic(s.fp32_out, tmp.read_bytes())
    return e
