"""The package's layers: imports point down only, checked by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([command, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    """A copy of the package with one planted upward import (core -> run) fails the contract, naming it."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copytree(ROOT / "lrsweep", copy / "lrsweep", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    planted = copy / "lrsweep" / "core" / "checks.py"
    planted.write_text(planted.read_text() + "\nfrom lrsweep.run import experiment  # noqa: E402,F401\n")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command(['--no-cache']))"],
        cwd=copy, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "lrsweep.core is not allowed to import lrsweep.run" in result.stdout
    assert "lrsweep.core.checks -> lrsweep.run.experiment" in result.stdout
