"""What runs on a Dask worker: the checks that admit it, the plugin that loads the model once, one batch.

The client (:mod:`edge_runtime.job.cluster`) registers an :class:`EdgeSegPlugin` carrying a
:class:`WorkerBrief`. On every worker, now and joining later, the plugin checks the worker against it
(:func:`refusal`: the same edge-seg version, the same model file, IN and OUT reached by the same paths)
and builds the worker's one :class:`~edge_runtime.job.processor.Processor` with a one-thread ONNX
session, then offers the run's worker resource (:func:`resource_name`), which every task asks for, so
a worker that joins later and does not match is never given work; :func:`run_batch` is the task, which
hands a batch to it. Workers write outputs and never touch the ledger. This module imports Dask's
plugin base class, so only the ``cluster`` extra needs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

from edge_runtime._version import __version__
from edge_runtime.errors import ScanError, SetupError
from edge_runtime.job.processor import Processor, Result
from edge_runtime.job.settings import JobRequest, RunOptions
from edge_runtime.outputs.base import OutputSetup
from edge_runtime.outputs.naming import Names
from edge_runtime.outputs.writers import make_writers

log = logging.getLogger(__name__)

#: How many of IN's names (sorted) a worker must see as the client does.
LISTED = 64


class WorkerRefused(SetupError):
    """A worker cannot take part in this run (another edge-seg, no model, other folders)."""


@dataclass(frozen=True)
class WorkerBrief:
    """What a worker must match to take part, and what it needs to build its processor."""

    version: str  #: the client's edge-seg version
    request: JobRequest  #: model path as given (None: the bundled model), thresholds, outputs
    model_sha256: str  #: the client's model file
    signature: str  #: the client's job signature (the worker's must be the same)
    options: RunOptions
    in_dir: str
    out_dir: str
    in_names: tuple[str, ...]  #: the first :data:`LISTED` names in IN, sorted
    probe: str  #: a file under OUT the client wrote ...
    probe_token: str  #: ... with this text


def in_listing(in_dir: Path) -> tuple[str, ...]:
    """The names a worker must see in IN as the client does."""
    return tuple(sorted(os.listdir(in_dir))[:LISTED])


def refusal(brief: WorkerBrief) -> str | None:
    """Why this process cannot be a worker of the run ``brief`` describes, or None."""
    if __version__ != brief.version:
        return f"it runs edge-seg {__version__}, the client {brief.version}; install the same version on every worker"
    model = brief.request.model
    if model is not None and not Path(model).is_file():
        return f"it has no model file {model} (give a --model path every worker reaches)"
    shared = "IN and OUT must be on storage every worker reaches by the same path (NFS/SMB)"
    try:
        if in_listing(Path(brief.in_dir)) != brief.in_names:
            return f"it sees other files in IN {brief.in_dir} than the client; {shared}"
    except OSError as exc:
        return f"it cannot list IN {brief.in_dir}: {exc.strerror or exc}; {shared}"
    try:
        token = (Path(brief.out_dir) / brief.probe).read_text()
    except OSError:
        token = None
    if token != brief.probe_token:
        return f"it does not see the file the client wrote in OUT {brief.out_dir}; {shared}"
    if not os.access(brief.out_dir, os.W_OK):
        return f"it cannot write to OUT {brief.out_dir}"
    return None


def build_processor(brief: WorkerBrief) -> Processor:
    """The worker's processor: its own model session (one thread), writers and folders. Raises SetupError."""
    import cv2

    from edge_runtime.core.segmenter import Segmenter

    segmenter = Segmenter(brief.request.model, threads=1)
    spec = brief.request.resolve(segmenter.info)
    if spec.model.sha256 != brief.model_sha256:
        raise WorkerRefused(
            f"its model file differs from the client's (sha256 {spec.model.sha256[:16]} against "
            f"{brief.model_sha256[:16]}); install the same edge-seg, or give a --model path every worker reaches"
        )
    if spec.signature != brief.signature:
        raise WorkerRefused("it resolves the job to other settings than the client; install the same edge-seg")
    cv2.setNumThreads(1)  # the worker's threads are the parallelism (edge_runtime.job.assemble)
    in_dir, out_dir = Path(brief.in_dir), Path(brief.out_dir)
    writers = make_writers(
        OutputSetup(out_dir, spec.thresholds, spec.model, spec.kinds, brief.options.fsync, spec.pixel_spacing)
    )
    return Processor(segmenter, spec, brief.options, writers, in_dir, out_dir)


class EdgeSegPlugin(WorkerPlugin):
    """Loads the model once per worker; a worker that does not match the run keeps the reason instead."""

    def __init__(self, brief: WorkerBrief) -> None:
        self.brief = brief
        self.processor: Processor | None = None
        self.refused: str | None = None

    async def setup(self, worker: Any) -> None:
        reason = refusal(self.brief)
        if reason is None:
            try:
                self.processor = build_processor(self.brief)
            except SetupError as exc:
                reason = str(exc)
        if reason is not None:
            self.refused = f"Dask worker {worker.address} refused: {reason}"
            log.error("%s", self.refused)
            return
        # The run's tasks ask for one unit of this resource: only a worker that passed gets any, also one
        # that joins in the middle of the run (a refused one is simply never given work).
        await worker.set_resources(**{resource_name(self.brief): worker.state.nthreads})

    async def teardown(self, worker: Any) -> None:
        if self.processor is not None:
            self.processor = None
            await worker.set_resources(**{resource_name(self.brief): 0})


def resource_name(brief: WorkerBrief) -> str:
    """The Dask worker resource a worker admitted to the run offers (one unit a thread); also the plugin's name."""
    return f"edge-seg-{brief.probe_token[:12]}"


def worker_state(plugin: str, dask_worker: Any = None) -> str | None:
    """On a worker (``client.run``, which passes ``dask_worker``): None if it is ready for the run, else why not."""
    worker = dask_worker if dask_worker is not None else get_worker()
    found = worker.plugins.get(plugin)
    if not isinstance(found, EdgeSegPlugin):
        return f"Dask worker {worker.address} has not loaded the edge-seg plugin"
    return found.refused


def run_batch(batch: list[Names | ScanError], known: Mapping[str, str] | None = None, *, plugin: str) -> list[Result]:
    """The task: one batch through this worker's processor (outputs written, nothing recorded).

    Each scan comes with the output names the client granted it (:class:`~edge_runtime.outputs.naming.Names`);
    one whose outputs another scan keeps comes back unnamed, for the client to decide.
    """
    found = get_worker().plugins.get(plugin)
    if not isinstance(found, EdgeSegPlugin) or found.processor is None:
        raise WorkerRefused(worker_state(plugin) or f"Dask worker {get_worker().address} has no processor")
    return found.processor.work(batch, known)
