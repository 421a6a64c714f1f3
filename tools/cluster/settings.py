"""Paths, pins, fixed names and addresses of the local control plane, and where its state lives."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO = PACKAGE_DIR.parents[1]
BUILD_SH = REPO / "tools" / "k8s" / "build.sh"
PINS_FILE = REPO / "tools" / "k8s" / "pins.env"
STAGES_DIR = PACKAGE_DIR / "stages"
# Fixed by the training-operator (pkg/cert/cert.go): one operator's certificates per machine.
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"  # fake pod IPs handed out by kwok; nothing ever routes to them
CONTEXT = "datamix-local"
# In start order (stop goes the other way).
COMPONENTS = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "training-operator",
]
CONTROLLERS = [
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "persistentvolume-binder-controller",  # binds the PVCs of the tests' data volumes
    "replicaset-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
    "clusterrole-aggregation-controller",
    "service-cidr-controller",
]
CRD_NAME = "pytorchjobs.kubeflow.org"
START_TIMEOUT = float(os.environ.get("DATAMIX_CLUSTER_START_TIMEOUT", "180"))


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


class ClusterError(RuntimeError):
    pass


def cache_root() -> Path:
    if os.environ.get("DATAMIX_CACHE_DIR"):
        return Path(os.environ["DATAMIX_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "datamix"


def state_dir() -> Path:
    return Path(os.environ.get("DATAMIX_CLUSTER_DIR") or cache_root() / "cluster").absolute()


def read_pins() -> dict[str, str]:
    pins = {}
    for line in PINS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            pins[k.strip()] = v.strip().strip('"')
    return pins
