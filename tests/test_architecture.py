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


def test_layers_contract_fails_when_the_core_imports_the_command_line(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    experiment = root / "src/datamix/experiment.py"
    experiment.write_text(experiment.read_text() + "\nimport datamix_cli.main  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "Layers: the command line above the operator and the trainer, above the core BROKEN" in result.stdout
    assert "datamix.experiment -> datamix_cli.main" in result.stdout


def test_layers_contract_fails_when_the_operator_imports_the_command_line(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    status = root / "operator/datamix_operator/status.py"
    status.write_text(status.read_text() + "\nimport datamix_cli  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "Layers: the command line above the operator and the trainer, above the core BROKEN" in result.stdout
    assert "datamix_operator.status -> datamix_cli" in result.stdout


def test_layers_contract_fails_when_the_trainer_imports_the_operator(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    report = root / "trainer/datamix_trainer/report.py"
    report.write_text(report.read_text() + "\nimport datamix_operator.status  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "Layers: the command line above the operator and the trainer, above the core BROKEN" in result.stdout
    assert "datamix_trainer.report -> datamix_operator.status" in result.stdout


def test_every_module_is_in_a_layer() -> None:
    """The layers contract names whole packages; a new top-level package would escape it."""
    packages = {p.parent.name for s in SOURCES for p in (REPO / s).glob("*/__init__.py")}
    assert packages == {"datamix", "datamix_cli", "datamix_operator", "datamix_trainer"}
