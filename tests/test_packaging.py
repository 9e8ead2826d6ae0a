"""Install names: train/ and export/ install as edge_seg_train and edge_seg_export, and still run from a checkout."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

import pytest

from tests.helpers import REPO

RENAMED = {"train": "edge_seg_train", "export": "edge_seg_export"}


def test_the_installed_names_cannot_collide_with_another_projects_train_or_export():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setup = project["tool"]["setuptools"]
    for folder, name in RENAMED.items():
        assert setup["package-dir"][name] == folder
        assert name in setup["packages"] and folder not in setup["packages"]
    scripts = project["project"]["scripts"]
    assert scripts["edge-seg-train"] == "edge_seg_train.cli:main"
    assert scripts["edge-seg-export"] == "edge_seg_export.cli:main"


@pytest.mark.parametrize("folder", sorted(RENAMED))
def test_modules_import_their_siblings_relatively(folder):
    """An absolute ``from train.x import`` works from a checkout but not once installed as edge_seg_train."""
    absolute = []
    for path in sorted((REPO / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == folder:
                absolute.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == folder for a in node.names):
                absolute.append(f"{path.name}:{node.lineno}")
    assert absolute == []


@pytest.mark.parametrize("name", ["edge_seg_train", "edge_seg_export", "train", "export"])
def test_both_names_import(name):
    """The installed name, and the checkout's folder (python -m train / python -m export), both import."""
    res = subprocess.run(
        [sys.executable, "-c", f"import {name}.cli"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr


def test_edge_seg_train_without_the_training_extra_names_it():
    """Issue 15: `edge-seg-train --help` in a runtime-only install said ModuleNotFoundError: 'keras'."""
    # keras and tensorflow made unimportable, as in an install without the [train] extra
    code = "import sys; sys.modules['keras'] = None; sys.modules['tensorflow'] = None\n"
    code += "from train.cli import main; sys.exit(main(['--help']))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2
    assert "pip install 'edge-seg[train]'" in res.stderr and "Traceback" not in res.stderr
