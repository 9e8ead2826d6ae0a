"""A job's settings as typed values, built once from the command line (argparse stays in the CLI modules).

* :class:`JobRequest` -- what the user asked to make: the model, the thresholds, the outputs.
* :class:`JobSpec`    -- the same, resolved against the loaded model: every field of it makes earlier
  outputs out of date, and :attr:`JobSpec.signature` is made from exactly those fields.
* :class:`RunOptions` -- how to run it: workers, batch size, fsync, force, a cluster. None of them changes a byte
  of the outputs, so none is in the signature.
* :class:`WatchOptions` -- the daemon's timing (``--watch``).
* :class:`NodeOptions`  -- the daemon as a DICOM node: its listener and where results are sent.
* :class:`RunSettings`  -- all of them, with IN, OUT and the command line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.core.model import ModelInfo
from edge_runtime.errors import SetupError
from edge_runtime.net.peer import Target
from edge_runtime.outputs.writers import EXTRAS, extras_signature

if TYPE_CHECKING:
    from edge_runtime.job.parts import Part

#: Scans per inference run in a one-shot run; a daemon takes one (latency). One for a folder too: over 100
#: DDTI scans on 2 cores, batches of 4 were 1.5% faster (4.44-4.46 s against 4.50-4.55 s, CPU 1.8% less) but
#: peaked at 417-452 MB against 240-248 MB (issue 30's target: 250), each worker's batch in flight at once.
FOLDER_BATCH_SIZE = 1
DAEMON_BATCH_SIZE = 1


@dataclass(frozen=True)
class JobRequest:
    """What to make for each scan, as asked for."""

    model: Path | None = None  #: None: the bundled model
    thresholds: tuple[float, ...] | None = None  #: None: the model's own default
    #: outputs besides the masks (``"overlays"``, ``"reports"``, ``"dicom"``, ``"review"``: the review page's
    #: pictures, with ``--report``)
    outputs: tuple[str, ...] = ()
    #: ``--pixel-spacing``: (row, column) mm for scans whose file states none
    pixel_spacing: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        unknown = [k for k in self.outputs if k not in EXTRAS]
        if unknown:
            raise ValueError(f"unknown output kind(s): {', '.join(unknown)}")

    def resolve(self, model: ModelInfo) -> JobSpec:
        thresholds = tuple(sorted(set(self.thresholds))) if self.thresholds else (model.threshold,)
        asked = set(self.outputs)
        if "review" in asked:  # the review page shows the overlays and reads the findings
            asked |= {"overlays", "reports"}
        return JobSpec(model, thresholds, tuple(k for k in EXTRAS if k in asked), self.pixel_spacing)


@dataclass(frozen=True)
class JobSpec:
    """What is made for each scan; changing any of these makes earlier outputs out of date."""

    model: ModelInfo
    thresholds: tuple[float, ...]
    #: outputs besides the masks, in the order they are written
    outputs: tuple[str, ...] = ()
    #: ``--pixel-spacing`` (in the signature only when given, so that other jobs keep theirs)
    pixel_spacing: tuple[float, float] | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every output kind made, masks first."""
        return ("masks", *self.outputs)

    @property
    def signature(self) -> str:
        """16 hex digits from the model file, its morphology, the thresholds and the outputs (and nothing else)."""
        sig = {
            "model": self.model.sha256,
            "thresholds": list(self.thresholds),
            "morph": self.model.morphology_size,
            "extras": extras_signature(self.outputs),
        }
        if self.pixel_spacing is not None:
            sig["pixel_spacing"] = list(self.pixel_spacing)
        return hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunOptions:
    """How a job runs; none of these changes the outputs."""

    #: worker threads taking whole batches from file to recorded outputs (None: one per free core, plus one)
    workers: int | None = None
    batch_size: int = FOLDER_BATCH_SIZE
    #: flush every file to disk before renaming it into place, and sync folders before recording a scan done
    fsync: bool = True
    #: redo scans even when their outputs are up to date
    force: bool = False
    #: run the batches on a Dask cluster: a scheduler address (``tcp://host:8786``) or ``local:N``
    cluster: str | None = None
    #: ``--num-parts N --part-id K``: do only this share of the scans (None: all of them)
    part: Part | None = None
    #: keep onnxruntime's optimised graph of the model in this folder (None: no cache; the CLI's default
    #: is ``$XDG_CACHE_HOME/edge-seg``, :mod:`edge_runtime.core.graph_cache`)
    cache_dir: Path | None = None


@dataclass(frozen=True)
class WatchOptions:
    """The daemon's timing, in seconds."""

    settle: float = 2.0  #: a file with no close/rename event is taken once unchanged this long
    polling: float | None = None  #: poll every so often instead of file-system events (None: events)
    rescan: float = 60.0  #: full rescan interval

    def __post_init__(self) -> None:
        if self.settle < 0:
            raise SetupError("--settle must not be negative")
        if self.polling is not None and self.polling <= 0:
            raise SetupError("--polling interval must be positive")


@dataclass(frozen=True)
class NodeOptions:
    """The daemon as a DICOM node (``--dicom-listen``, ``--send-to``); None of it changes the outputs."""

    #: where the storage SCP listens (``--dicom-listen [HOST:]PORT``); None: no listener
    listen: tuple[str, int] | None = None
    ae_title: str = "EDGESEG"
    #: calling AE titles accepted (``--allow-ae``); empty: any
    allow_ae: tuple[str, ...] = ()
    max_associations: int = 4
    max_instance_mb: int = 512
    #: new instances are refused (out of resources) when less than this is free under IN
    min_free_mb: int = 1024
    #: where the results go (``--send-to AET@HOST:PORT`` or a DICOMweb URL, each to each); empty: they stay in OUT
    send_to: tuple[Target, ...] = ()
    #: ``--send-auth FILE``: the credentials for the DICOMweb targets (a bearer token or user:password)
    send_auth: Path | None = None
    #: the first retry of a failed send waits this long, each further one twice as long (up to 10 minutes)
    retry: float = 5.0

    @property
    def active(self) -> bool:
        return self.listen is not None or bool(self.send_to)


@dataclass(frozen=True)
class RunSettings:
    """Everything a run was asked to do, as the command line said it."""

    in_dir: Path
    out_dir: Path
    job: JobRequest = JobRequest()
    run: RunOptions = RunOptions()
    watch: WatchOptions = WatchOptions()
    node: NodeOptions = NodeOptions()
    #: the command line, for the run's provenance record
    argv: tuple[str, ...] = ()
    #: single-file mode (``edge-seg scan.png --out OUT``): the file's name; ``in_dir`` is its folder
    scan: str | None = None
