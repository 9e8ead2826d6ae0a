"""What OUT was made with: ``OUT/.edge-seg/settings.json``, and the warning when a run changes it.

The ledger records each scan's job signature, a hash; this file keeps the settings behind it in words,
as the last job into OUT used them: model (name, version, sha256), thresholds, outputs, opening size.
A job whose settings differ says what changed (``threshold 0.5 -> 0.9``) once at start, as a warning,
and a one-shot run says it again in its summary: the scans done with the earlier settings are redone
(the ledger's signature decides), and where the layout stays their masks are replaced under the same names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edge_runtime import timestamps
from edge_runtime._version import __version__
from edge_runtime.files.durable import write_atomic
from edge_runtime.job.settings import JobSpec
from edge_runtime.outputs.layout import STATE_DIR

log = logging.getLogger(__name__)

SETTINGS_NAME = "settings.json"


def describe(spec: JobSpec) -> dict[str, Any]:
    """The settings of a job as the file holds them."""
    m = spec.model
    return {
        "signature": spec.signature,
        "model": {"name": m.name, "version": m.version, "sha256": m.sha256},
        "thresholds": list(spec.thresholds),
        "outputs": list(spec.kinds),
        "opening": m.morphology_size,
        "pixel_spacing": list(spec.pixel_spacing) if spec.pixel_spacing else None,
    }


def changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two settings, in words (empty when the signature is the same)."""
    if before.get("signature") == now["signature"]:
        return []
    said = []
    old_model, new_model = before.get("model"), now["model"]
    old_model = old_model if isinstance(old_model, dict) else {}
    if old_model.get("sha256") != new_model["sha256"]:
        said.append(f"model {_model(old_model)} -> {_model(new_model)}")
    named = (
        ("thresholds", "threshold"),
        ("outputs", "outputs"),
        ("opening", "opening size"),
        ("pixel_spacing", "pixel spacing"),
    )
    for key, name in named:
        if before.get(key) != now[key]:
            said.append(f"{name} {_words(before.get(key))} -> {_words(now[key])}")
    return said or ["output settings (another edge-seg version)"]


def check_and_record(out_dir: Path, spec: JobSpec) -> list[str]:
    """Compare this job's settings with the last ones used on ``out_dir`` and record this job's.

    Returns what changed, in words, having warned about it once. Call it with OUT's lock held (after
    the ledger is opened).
    """
    path = out_dir / STATE_DIR / SETTINGS_NAME
    now = describe(spec)
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(before, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        before = None
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); it is written again", path, exc)
        before = None
    said = changes(before, now) if before is not None else []
    if before is not None and said:
        old = before.get("thresholds")
        same_layout = (isinstance(old, list) and len(old) == 1) == (len(spec.thresholds) == 1)
        what = "their masks are replaced under the same names" if same_layout else "the earlier files stay as they are"
        log.warning(
            "%s was made with other settings (%s): scans done with those are redone, and %s",
            out_dir,
            "; ".join(said),
            what,
        )
    if before is None or said:
        record = {**now, "edge_seg": __version__, "since": timestamps.utc()}
        try:
            write_atomic(path, json.dumps(record, indent=2) + "\n")
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)
    return said


def _model(m: dict[str, Any]) -> str:
    if not m:
        return "?"
    return f"{m.get('name', '?')} {m.get('version', '?')} ({str(m.get('sha256', ''))[:12]})"


def _words(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(format(v, "g") if isinstance(v, float) else str(v) for v in value) or "none"
    return "none" if value is None else str(value)
