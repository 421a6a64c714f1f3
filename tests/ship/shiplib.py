"""Helpers of the shipping tests (tests/ship/): the helm and Prometheus binaries, chart rendering.

helm comes from the control-plane build (tools/k8s/build.sh builds the pinned helm module into
its bin dir); Prometheus and promtool from tools/ci/install-prometheus.sh (Debian's package).
Either may be overridden with DATAMIX_HELM / DATAMIX_PROMETHEUS_BIN_DIR.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "datamix"
BUILD_SH = REPO / "tools" / "k8s" / "build.sh"
INSTALL_PROMETHEUS = REPO / "tools" / "ci" / "install-prometheus.sh"
INSTALL_CHECKOV = REPO / "tools" / "ci" / "install-checkov.sh"


def _kube_version() -> str:
    for line in (REPO / "tools" / "k8s" / "pins.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    return "v1.36.0"


# The tests render for the local cluster's Kubernetes (helm alone assumes its client-go's version).
KUBE_VERSION = _kube_version()


def _print_dir(cmd: list[str]) -> Path | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0 or not res.stdout.strip():
        return None
    return Path(res.stdout.strip().splitlines()[-1])


def helm_bin() -> str | None:
    """The pinned helm (control-plane build), else DATAMIX_HELM; None when neither exists."""
    if os.environ.get("DATAMIX_HELM"):
        return os.environ["DATAMIX_HELM"]
    bin_dir = _print_dir(["bash", str(BUILD_SH), "--print-bin-dir"])
    if bin_dir and (bin_dir / "helm").exists():
        return str(bin_dir / "helm")
    return None


HELM_MISSING = ("helm is not built yet: run `make k8s-build` (tools/k8s/build.sh builds the pinned "
                "helm with the control plane; .ci/run does) or set DATAMIX_HELM")


def prometheus_bin_dir() -> Path | None:
    if os.environ.get("DATAMIX_PROMETHEUS_BIN_DIR"):
        return Path(os.environ["DATAMIX_PROMETHEUS_BIN_DIR"])
    return _print_dir(["bash", str(INSTALL_PROMETHEUS), "--print-bin-dir"])


PROMETHEUS_MISSING = "prometheus/promtool not installed: run tools/ci/install-prometheus.sh (make deps does)"


def checkov_bin() -> str | None:
    if os.environ.get("DATAMIX_CHECKOV"):
        return os.environ["DATAMIX_CHECKOV"]
    path = _print_dir(["bash", str(INSTALL_CHECKOV), "--print-bin"])
    return str(path) if path else shutil.which("checkov")


def helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    binary = helm_bin()
    assert binary, HELM_MISSING
    # No repositories or plugins are used; keep helm's state out of the user's home.
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/datamix-helm/cache",
           "HELM_CONFIG_HOME": "/tmp/datamix-helm/config", "HELM_DATA_HOME": "/tmp/datamix-helm/data"}
    res = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def values_args(values: dict[str, Any] | None, tmp_dir: Path) -> list[str]:
    if not values:
        return []
    path = tmp_dir / f"values-{abs(hash(yaml.safe_dump(values, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return ["--values", str(path)]


def render_text(values: dict[str, Any] | None, tmp_dir: Path, *, release: str = "dmx",
                namespace: str = "datamix-system", include_crds: bool = False) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
            *values_args(values, tmp_dir)]
    if include_crds:
        args.append("--include-crds")
    return helm(*args).stdout


def render(values: dict[str, Any] | None, tmp_dir: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """The chart's objects for these values (helm template)."""
    return [d for d in yaml.safe_load_all(render_text(values, tmp_dir, **kwargs)) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]
