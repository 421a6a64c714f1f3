"""Health of a running cluster: each component's health endpoint, the saved state, waiting."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .processes import is_ours
from .settings import COMPONENTS, START_TIMEOUT, ClusterError


def http_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ssl.SSLError, ValueError):
        return False


def admin_ssl(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def insecure_ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def health_urls(state: dict[str, Any]) -> dict[str, tuple[str, ssl.SSLContext | None]]:
    p = state["ports"]
    pki = Path(state["state_dir"]) / "pki"
    return {
        "etcd": (f"http://127.0.0.1:{p['etcd_client']}/health", None),
        "kube-apiserver": (f"https://127.0.0.1:{p['apiserver']}/readyz", admin_ssl(pki)),
        "kube-controller-manager": (f"https://127.0.0.1:{p['controller_manager']}/healthz", insecure_ssl()),
        "kube-scheduler": (f"https://127.0.0.1:{p['scheduler']}/healthz", insecure_ssl()),
        "kwok": (f"http://127.0.0.1:{p['kwok']}/healthz", None),
        "training-operator": (f"http://127.0.0.1:{p['operator_probe']}/readyz", None),
    }


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = START_TIMEOUT,
               proc: subprocess.Popen[bytes] | None = None, logfile: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise ClusterError(f"{what}: process exited with code {proc.returncode}" + log_tail(logfile))
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}" + log_tail(logfile))
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def log_tail(logfile: Path | None, lines: int = 30) -> str:
    if logfile is None or not logfile.is_file():
        return ""
    tail = logfile.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {logfile} ---\n" + "\n".join(tail)


def read_state(sdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((sdir / "state.json").read_text())
    except (OSError, ValueError):
        return None


def health(sdir: Path) -> dict[str, Any]:
    """{'healthy': bool, 'components': {name: {'pid':..,'alive':..,'ok':..}}, ...}."""
    state = read_state(sdir)
    if not state or not state.get("complete"):
        return {"healthy": False, "running": False, "state_dir": str(sdir),
                "reason": "no complete cluster state"}
    comps = {}
    urls = health_urls(state)
    for name in COMPONENTS:
        pid = int(state["pids"].get(name, 0))
        alive = is_ours(pid, sdir)
        url, ctx = urls[name]
        comps[name] = {"pid": pid, "alive": alive, "ok": alive and http_ok(url, ctx)}
    return {
        "healthy": all(c["ok"] for c in comps.values()),
        "running": any(c["alive"] for c in comps.values()),
        "state_dir": str(sdir),
        "kubeconfig": state["kubeconfig"],
        "bin_dir": state["bin_dir"],
        "server": f"https://127.0.0.1:{state['ports']['apiserver']}",
        "ports": state["ports"],
        "components": comps,
    }
