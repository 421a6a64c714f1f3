"""The admin kubeconfig of the local cluster (client certificate in group system:masters)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from .settings import CONTEXT


def b64file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, pki: Path, port: int) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {
            "server": f"https://127.0.0.1:{port}",
            "certificate-authority-data": b64file(pki / "ca.crt")}}],
        "users": [{"name": "datamix-admin", "user": {
            "client-certificate-data": b64file(pki / "admin.crt"),
            "client-key-data": b64file(pki / "admin.key")}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": "datamix-admin"}}],
        "current-context": CONTEXT,
        "preferences": {},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2))  # JSON is valid YAML
    tmp.chmod(0o600)
    os.replace(tmp, path)
