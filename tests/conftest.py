from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import DDTI, make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny ONNX model (dark = nodule) with valid edge-seg metadata; no TensorFlow needed."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def ddti() -> Path:
    if not (DDTI / "test" / "image").is_dir():
        pytest.skip(f"DDTI data not found at {DDTI} (set EDGE_SEG_DDTI)")
    return DDTI


@pytest.fixture(scope="session")
def _graph_cache_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(autouse=True)
def _own_cache_folder(monkeypatch, _graph_cache_home):
    # The CLI keeps optimised graphs under $XDG_CACHE_HOME/edge-seg: the suite's go into a folder of its own
    # (subprocesses inherit it), never into the user's ~/.cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(_graph_cache_home))


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # Keep test runs polite on a 2-core CI machine.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
