"""The control-plane binaries (tools/k8s/build.sh) and the PyTorchJob CRD of the pinned
training-operator (from the Go module cache)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .settings import BUILD_SH, ClusterError, log, read_pins


def build_binaries() -> Path:
    """Runs tools/k8s/build.sh (a no-op when the cache for these pins is complete)."""
    out = subprocess.run(["bash", str(BUILD_SH)], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise ClusterError(f"{BUILD_SH} failed with exit code {out.returncode}")
    return Path(out.stdout.strip().splitlines()[-1])


def gomodcache() -> Path:
    if os.environ.get("GOMODCACHE"):
        return Path(os.environ["GOMODCACHE"])
    try:
        out = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True)
        if out.stdout.strip():
            return Path(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return Path.home() / "go" / "pkg" / "mod"


def pytorchjob_crd_path() -> Path:
    """The PyTorchJob CRD of the pinned training-operator, read from the Go module cache."""
    version = read_pins()["TRAINING_OPERATOR_VERSION"]
    mod = f"github.com/kubeflow/training-operator@{version}"
    path = gomodcache() / mod / "manifests" / "base" / "crds" / "kubeflow.org_pytorchjobs.yaml"
    if not path.is_file():
        log(f"downloading {mod} into the Go module cache for its CRD")
        subprocess.run(["go", "mod", "download", mod], cwd="/", check=True)
    if not path.is_file():
        raise ClusterError(f"PyTorchJob CRD not found at {path}")
    return path
