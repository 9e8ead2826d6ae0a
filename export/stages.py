"""A two-stage model as two files: each stage in a session of its own at run time (metadata schema 3).

    python -m export.stages MODEL.onnx --out OUT.onnx    # writes OUT.onnx and, beside it, OUT.refine.onnx

``edge-seg-export --refine`` puts both stages in one graph, behind two inputs. onnxruntime wants every
input of a graph fed, so each call of one stage feeds the other an empty batch, whose nodes still cost
0.3-0.6 ms a call (``python -m bench.split``; bench/README.md, issue 30). Cut in two, the first file holds
the first stage and the model's metadata, whose ``refine`` block names the second file and its sha256
(:func:`edge_runtime.core.refine.refine_metadata`); the runtime opens a session on each. The graphs are cut
with ``onnx.utils.extract_model``, and the outputs of the two files are checked equal, bit for bit, to the
model's on the same inputs before anything is written. The second file is written first, so the first
never names a file that is not there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_runtime.core.metadata import METADATA_KEY, SPLIT_SCHEMA_VERSION, attach_metadata, parse_metadata
from edge_runtime.core.refine import RefineSpec
from edge_runtime.errors import ModelError
from edge_runtime.files.durable import write_atomic

log = logging.getLogger(__name__)

#: The second file's own metadata key: a note for a person, not a model the runtime opens alone.
STAGE_KEY = "edge_seg_stage"


def second_stage_name(out: Path) -> str:
    """The second stage's file name beside ``out``: ``NAME.refine.onnx``."""
    return f"{out.stem}.refine.onnx"


def split_stages(model: Path, out: Path) -> tuple[Path, Path]:
    """Write ``model`` (one graph of two stages) as ``out`` and its second stage beside it; both paths."""
    import onnx
    import onnx.utils

    proto = onnx.load(str(model), load_external_data=False)
    raw = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    meta = parse_metadata(raw, model)
    if meta.get("refine") is None:
        raise ValueError(f"{model} has no second stage: nothing to split")
    spec = RefineSpec.from_metadata(meta["refine"])
    if spec.file is not None:
        raise ValueError(f"{model}'s second stage is in a file of its own already ({spec.file})")
    scan_inputs = [i.name for i in proto.graph.input if i.name != spec.input_name]
    first_outputs = [o.name for o in proto.graph.output if o.name != spec.output_name]
    second = out.parent / second_stage_name(out)
    with tempfile.TemporaryDirectory() as tmp:
        one, two = Path(tmp) / "one.onnx", Path(tmp) / "two.onnx"
        onnx.utils.extract_model(str(model), str(one), scan_inputs, first_outputs)
        onnx.utils.extract_model(str(model), str(two), [spec.input_name], [spec.output_name])
        first_proto, second_proto = onnx.load(str(one)), onnx.load(str(two))
    del second_proto.metadata_props[:]
    note = second_proto.metadata_props.add()
    note.key = STAGE_KEY
    note.value = json.dumps({"stage": "refine", "of": f"{out.name} ({meta['name']} {meta['version']})"})
    second_bytes = second_proto.SerializeToString()
    meta["schema"] = SPLIT_SCHEMA_VERSION
    meta["refine"] = {**meta["refine"], "file": second.name, "sha256": hashlib.sha256(second_bytes).hexdigest()}
    del first_proto.metadata_props[:]
    first_proto.metadata_props.extend(p for p in proto.metadata_props if p.key != METADATA_KEY)
    attach_metadata(first_proto, meta)
    first_bytes = first_proto.SerializeToString()
    check_same_outputs(proto.SerializeToString(), first_bytes, second_bytes, spec)
    write_atomic(second, second_bytes)
    write_atomic(out, first_bytes)
    return out, second


def check_same_outputs(whole: bytes, first: bytes, second: bytes, spec: RefineSpec) -> None:
    """Every output of the two graphs equals the one graph's on the same seeded inputs (batch 2); else ValueError."""
    import onnxruntime as ort

    def session(graph: bytes) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(20261204)
    s_whole, s_first, s_second = session(whole), session(first), session(second)
    feeds = {}
    for inp in s_whole.get_inputs():
        feeds[inp.name] = rng.random([2, *(int(d) for d in inp.shape[1:])], dtype=np.float32)
    names = [o.name for o in s_whole.get_outputs()]
    expected = dict(zip(names, s_whole.run(None, feeds), strict=True))
    scan_feeds = {k: v for k, v in feeds.items() if k != spec.input_name}
    got = dict(zip([o.name for o in s_first.get_outputs()], s_first.run(None, scan_feeds), strict=True))
    got.update(zip([spec.output_name], s_second.run(None, {spec.input_name: feeds[spec.input_name]}), strict=True))
    differ = [n for n in names if n not in got or not np.array_equal(expected[n], got[n])]
    if differ:
        raise ValueError(f"the two files compute other outputs than the one graph: {', '.join(differ)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a two-stage model (edge-seg-export --refine)")
    p.add_argument("--out", type=Path, required=True, help="the first stage's file; the second goes beside it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out.resolve() == args.model.resolve():
        p.error("--out must differ from MODEL (the model is read while the two files are made)")
    try:
        first, second = split_stages(args.model, args.out)
    except (ValueError, OSError, ModelError) as exc:
        log.error("%s", exc)
        return 2
    log.info("wrote %s and %s (outputs checked equal to %s's)", first, second, args.model.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
