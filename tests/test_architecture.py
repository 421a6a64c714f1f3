"""The import contracts in pyproject.toml ([tool.importlinter]) hold, and would catch a breach."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
SOURCES = ("src", "operator", "trainer")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / s) for s in SOURCES)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        check=False,
    )


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for source in SOURCES:
        shutil.copytree(REPO / source, root / source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_contract_fails_on_forbidden_import(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    runspec = root / "src/datamix/runspec.py"
    runspec.write_text(runspec.read_text() + "\nimport torch  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "datamix.runspec -> torch" in result.stdout


def test_operator_may_not_import_the_trainer(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    render = root / "operator/datamix_operator/render.py"
    render.write_text(render.read_text() + "\nimport datamix_trainer  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "datamix_operator.render -> datamix_trainer" in result.stdout
