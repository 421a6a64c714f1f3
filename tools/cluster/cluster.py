#!/usr/bin/env python3
"""A real local Kubernetes control plane for DataMix tests and demos (127.0.0.1 only).

    python3 tools/cluster/cluster.py up      # build if needed, start (or reuse), print exports
    python3 tools/cluster/cluster.py down    # stop every process it started (by pid), remove state
    python3 tools/cluster/cluster.py status  # JSON; exit 0 when healthy, 1 otherwise
    python3 tools/cluster/cluster.py env     # print the export lines of a running cluster

Components (binaries from tools/k8s/build.sh): etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, the kwok controller (stages in tools/cluster/stages/) and the Kubeflow
training-operator (PyTorchJob only, CRD from the Go module cache). A pool of fake GPU nodes
managed by kwok is created.

State (PKI, kubeconfig, etcd data, logs, pids): $DATAMIX_CLUSTER_DIR or
${DATAMIX_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/datamix}/cluster. Only the standard library and
the `openssl` command are used, so any python3 >= 3.9 can run it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "tools" / "k8s" / "build.sh"
PINS_FILE = REPO / "tools" / "k8s" / "pins.env"
STAGES_DIR = Path(__file__).resolve().parent / "stages"
# Fixed by the training-operator (pkg/cert/cert.go): one operator's certificates per machine.
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"  # fake pod IPs handed out by kwok; nothing ever routes to them
CONTEXT = "datamix-local"
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
    "replicaset-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
    "clusterrole-aggregation-controller",
    "service-cidr-controller",
]
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-40GB"
# The default fake node pool: (name prefix, count, product, memory MiB, gpus per node).
DEFAULT_POOL = [
    ("gpu-h100", 2, H100, 81559, 8),
    ("gpu-a100", 2, A100, 40960, 8),
    ("cpu", 1, None, 0, 0),
]
CRD_NAME = "pytorchjobs.kubeflow.org"
START_TIMEOUT = float(os.environ.get("DATAMIX_CLUSTER_START_TIMEOUT", "180"))


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


class ClusterError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# paths and pins


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


# ----------------------------------------------------------------------------------------------
# processes


def proc_alive(pid: int) -> bool:
    """True for a live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_ours(pid: int, sdir: Path) -> bool:
    """A live process whose command line refers to files in this state dir (pid-reuse safe)."""
    if pid <= 0 or pid == os.getpid() or not proc_alive(pid):
        return False
    args = proc_cmdline(pid)
    if not args or Path(args[0]).name not in COMPONENTS:
        return False
    marker = f"{sdir}/"
    return any(marker in a for a in args[1:])


def leftover_pids(sdir: Path) -> list[int]:
    """Every live component process of this state dir: from the pid files and from /proc."""
    pids: set[int] = set()
    piddir = sdir / "pids"
    if piddir.is_dir():
        for f in piddir.glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pids.add(int(f.read_text().strip()))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pids.add(int(entry.name))
    return sorted(p for p in pids if is_ours(p, sdir))


def component_of(pid: int) -> str:
    args = proc_cmdline(pid)
    return Path(args[0]).name if args else "?"


def stop_pids(pids: list[int], sdir: Path, timeout: float = 10.0) -> None:
    """One by one in reverse start order: SIGTERM, wait up to `timeout`, then SIGKILL."""
    order = {name: i for i, name in enumerate(COMPONENTS)}
    named = [(p, component_of(p)) for p in pids]
    named.sort(key=lambda pn: -order.get(pn[1], len(COMPONENTS)))
    for pid, name in named:
        if not is_ours(pid, sdir):
            continue
        log(f"stopping {name} (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc_alive(pid):
            time.sleep(0.05)
        if proc_alive(pid):
            log(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and proc_alive(pid):
                time.sleep(0.05)


@contextlib.contextmanager
def state_lock(sdir: Path) -> Iterator[None]:
    sdir.parent.mkdir(parents=True, exist_ok=True)
    lock = sdir.parent / f".{sdir.name}.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------
# PKI (openssl CLI)


def openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed: {res.stderr.strip()}")


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
            "-subj", "/CN=datamix-local-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=pki)

    def leaf(name: str, subj: str, ext: str) -> None:
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=pki)
        (pki / f"{name}.ext").write_text(ext)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-set_serial", "0x" + secrets.token_hex(8), "-days", "3650",
                "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)

    leaf("apiserver", "/CN=kube-apiserver",
         "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
         "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,"
         "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
         "DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1\n")
    leaf("admin", "/O=system:masters/CN=datamix-admin",
         "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
         "extendedKeyUsage=clientAuth\n")
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def ensure_webhook_certs() -> None:
    """Self-signed serving certs where the training-operator's webhook server expects them.

    Shared by every local cluster on this machine and never removed by `down` (another
    cluster's operator may be using them); replaced only when missing or expiring."""
    crt, key = WEBHOOK_CERT_DIR / "tls.crt", WEBHOOK_CERT_DIR / "tls.key"
    if crt.is_file() and key.is_file():
        ok = subprocess.run(["openssl", "x509", "-checkend", "86400", "-noout", "-in", str(crt)],
                            capture_output=True)
        if ok.returncode == 0:
            return
    WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = WEBHOOK_CERT_DIR / f".tmp-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "tls.key", "-out", "tls.crt", "-days", "3650",
            "-subj", "/CN=training-operator.kubeflow.svc",
            "-addext", "subjectAltName=DNS:training-operator.kubeflow.svc,DNS:localhost,IP:127.0.0.1",
            cwd=tmp)
    for name in ("tls.key", "tls.crt"):
        os.replace(tmp / name, WEBHOOK_CERT_DIR / name)
    shutil.rmtree(tmp, ignore_errors=True)


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


# ----------------------------------------------------------------------------------------------
# health checks


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


# ----------------------------------------------------------------------------------------------
# fake nodes


def fake_node_manifest(name: str, product: str | None = None, memory_mib: int = 0, gpus: int = 0,
                       cpu: str = "96", memory: str = "1Ti", pods: str = "110",
                       labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Node managed by kwok; GPU nodes carry GPU Feature Discovery labels and the gpu taint."""
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "datamix.io/fake-node": "true",
    }
    capacity = {"cpu": cpu, "memory": memory, "pods": pods}
    spec: dict[str, Any] = {}
    if product and gpus > 0:
        node_labels.update({
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.memory": str(memory_mib),
            "nvidia.com/gpu.count": str(gpus),
        })
        capacity["nvidia.com/gpu"] = str(gpus)
        spec["taints"] = [dict(GPU_TAINT)]
    node_labels.update(labels or {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": node_labels,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": spec,
        "status": {"capacity": dict(capacity), "allocatable": dict(capacity)},
    }


def default_pool() -> list[dict[str, Any]]:
    nodes = []
    for prefix, count, product, mem, gpus in DEFAULT_POOL:
        for i in range(count):
            if product:
                nodes.append(fake_node_manifest(f"{prefix}-{i}", product, mem, gpus))
            else:
                nodes.append(fake_node_manifest(f"{prefix}-{i}", cpu="32", memory="256Gi"))
    return nodes


# ----------------------------------------------------------------------------------------------
# up / down


class Starter:
    def __init__(self, sdir: Path, bin_dir: Path):
        self.sdir = sdir
        self.bin = bin_dir
        self.logs = sdir / "logs"
        self.pids = sdir / "pids"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.state: dict[str, Any] = {}

    def save(self) -> None:
        self.state["pids"] = {n: p.pid for n, p in self.procs.items()}
        tmp = self.sdir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.sdir / "state.json")

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        logfile = self.logs / f"{name}.log"
        cmd = [str(self.bin / name), *args]
        with open(logfile, "ab") as out:
            out.write(f"### {time.strftime('%FT%T')} {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.sdir, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        self.procs[name] = proc
        (self.pids / f"{name}.pid").write_text(f"{proc.pid}\n")
        self.save()
        return proc

    def wait_healthy(self, name: str, timeout: float = START_TIMEOUT) -> None:
        url, ctx = health_urls(self.state)[name]
        wait_until(f"{name} health ({url})", lambda: http_ok(url, ctx), timeout,
                   self.procs[name], self.logs / f"{name}.log")

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / "kubectl"), "--kubeconfig", self.state["kubeconfig"], *args]
        res = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
        if check and res.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {res.stderr.strip()}")
        return res


def cluster_up(quiet: bool = False) -> dict[str, Any]:
    sdir = state_dir()
    t0 = time.monotonic()
    bin_dir = build_binaries()
    with state_lock(sdir):
        h = health(sdir)
        if h["healthy"]:
            log(f"reusing the healthy cluster in {sdir}")
            if Path(h["bin_dir"]) != bin_dir:
                log(f"warning: it runs binaries from {h['bin_dir']}, the current pins build {bin_dir}; "
                    "`cluster.py down` then `up` to switch")
            return h
        leftovers = leftover_pids(sdir)
        if leftovers or sdir.exists():
            log(f"cleaning up the leftovers of an earlier run in {sdir} (pids {leftovers})")
            stop_pids(leftovers, sdir)
            shutil.rmtree(sdir, ignore_errors=True)
        sdir.mkdir(parents=True)
        starter = Starter(sdir, bin_dir)
        try:
            _start_all(starter, sdir, bin_dir)
        except BaseException:
            log(f"start failed; stopping what was started (logs kept in {sdir / 'logs'})")
            stop_pids([p.pid for p in starter.procs.values()], sdir)
            with contextlib.suppress(OSError):
                (sdir / "state.json").unlink()
            raise
        elapsed = time.monotonic() - t0
        starter.state["up_seconds"] = round(elapsed, 1)
        starter.save()
        log(f"cluster up in {elapsed:.1f}s (state {sdir})")
        return health(sdir)


def _start_all(st: Starter, sdir: Path, bin_dir: Path) -> None:
    pki = sdir / "pki"
    make_pki(pki)
    ensure_webhook_certs()
    ports = {k: free_port() for k in ("etcd_client", "etcd_peer", "apiserver", "controller_manager",
                                        "scheduler", "kwok", "operator_probe", "operator_webhook")}
    kubeconfig = sdir / "kubeconfig"
    st.state = {"version": 1, "complete": False, "state_dir": str(sdir), "bin_dir": str(bin_dir),
                "kubeconfig": str(kubeconfig), "ports": ports, "pins": read_pins(),
                "started_at": time.strftime("%FT%T%z")}
    write_kubeconfig(kubeconfig, pki, ports["apiserver"])
    st.save()

    etcd_peer = f"http://127.0.0.1:{ports['etcd_peer']}"
    etcd_client = f"http://127.0.0.1:{ports['etcd_client']}"
    st.start("etcd", [
        "--name=datamix", f"--data-dir={sdir}/etcd",
        f"--listen-client-urls={etcd_client}", f"--advertise-client-urls={etcd_client}",
        f"--listen-peer-urls={etcd_peer}", f"--initial-advertise-peer-urls={etcd_peer}",
        f"--initial-cluster=datamix={etcd_peer}", "--initial-cluster-state=new",
        "--unsafe-no-fsync=true", "--log-level=warn", "--quota-backend-bytes=4294967296",
    ])
    st.wait_healthy("etcd")

    st.start("kube-apiserver", [
        f"--etcd-servers={etcd_client}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
        f"--cert-dir={sdir}/apiserver-certs",
        f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
        f"--client-ca-file={pki}/ca.crt",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=RBAC",
        "--endpoint-reconciler-type=none",
        "--disable-admission-plugins=TaintNodesByCondition",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ])
    st.wait_healthy("kube-apiserver")

    # The PyTorchJob CRD (about 640 KB: too big for client-side apply) from the Go module cache.
    st.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(pytorchjob_crd_path()))
    st.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kubeflow"}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "training-operator-webhook-cert", "namespace": "kubeflow"}},
    ]}))

    st.start("kube-controller-manager", [
        f"--kubeconfig={kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={ports['controller_manager']}",
        f"--cert-dir={sdir}/controller-manager-certs",
        f"--controllers={','.join(CONTROLLERS)}",
        f"--service-account-private-key-file={pki}/sa.key", f"--root-ca-file={pki}/ca.crt",
        "--use-service-account-credentials=false",
        "--concurrent-gc-syncs=5", "--v=1",
    ])
    st.start("kube-scheduler", [
        f"--kubeconfig={kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
        f"--cert-dir={sdir}/scheduler-certs", "--v=1",
    ])
    stage_args = [f"--config={p}" for p in sorted(STAGES_DIR.glob("*.yaml"))]
    st.start("kwok", [
        f"--kubeconfig={kubeconfig}",
        f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
        f"--server-address=127.0.0.1:{ports['kwok']}",
        f"--cidr={POD_CIDR}", "--node-ip=127.0.0.1",
        *stage_args,
    ])
    st.wait_healthy("kube-controller-manager")
    st.wait_healthy("kube-scheduler")
    st.wait_healthy("kwok")

    st.kubectl("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                     "items": default_pool()}))
    st.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")

    st.start("training-operator", [
        f"--kubeconfig={kubeconfig}", "--enable-scheme=pytorchjob", "--leader-elect=false",
        "--metrics-bind-address=0", f"--health-probe-bind-address=127.0.0.1:{ports['operator_probe']}",
        f"--webhook-server-port={ports['operator_webhook']}",
    ], env={"KUBECONFIG": str(kubeconfig), "MY_POD_NAMESPACE": "kubeflow",
            # read by the one-line patch of upstream's main.go (tools/k8s/build.sh)
            "TRAINING_OPERATOR_WEBHOOK_HOST": "127.0.0.1"})
    st.wait_healthy("training-operator")
    oplog = st.logs / "training-operator.log"
    wait_until("training-operator PyTorchJob controller workers",
               lambda: "Starting workers" in oplog.read_text(errors="replace"), 60,
               st.procs["training-operator"], oplog)

    wait_until("fake nodes Ready", lambda: _nodes_ready(st), 60, st.procs["kwok"], st.logs / "kwok.log")
    wait_until("default service account", lambda: st.kubectl(
        "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0, 60,
        st.procs["kube-controller-manager"], st.logs / "kube-controller-manager.log")
    st.state["complete"] = True
    st.save()


def _nodes_ready(st: Starter) -> bool:
    res = st.kubectl("get", "nodes", "-o", "json", check=False)
    if res.returncode != 0:
        return False
    items = json.loads(res.stdout)["items"]
    want = {n["metadata"]["name"] for n in default_pool()}
    ready = {n["metadata"]["name"] for n in items
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))}
    return want <= ready


def cluster_down() -> int:
    sdir = state_dir()
    with state_lock(sdir):
        pids = leftover_pids(sdir)
        stop_pids(pids, sdir)
        still = [p for p in pids if proc_alive(p)]
        if still:
            raise ClusterError(f"processes still alive after SIGKILL: {still}")
        if sdir.exists():
            shutil.rmtree(sdir)
        log(f"stopped {len(pids)} processes, removed {sdir}")
    return len(pids)


def export_lines(h: dict[str, Any]) -> str:
    return (f"# DataMix local cluster: {h['server']} (state {h['state_dir']})\n"
            f"export KUBECONFIG={h['kubeconfig']}\n"
            f"export PATH={h['bin_dir']}:$PATH  # kubectl, helm, ... of the pinned build\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "env"])
    args = ap.parse_args(argv)
    try:
        if args.command == "up":
            h = cluster_up()
            if not h["healthy"]:
                raise ClusterError("cluster not healthy after start: " + json.dumps(h["components"]))
            sys.stdout.write(export_lines(h))
        elif args.command == "down":
            cluster_down()
        elif args.command == "status":
            h = health(state_dir())
            print(json.dumps(h, indent=2))
            return 0 if h["healthy"] else 1
        elif args.command == "env":
            h = health(state_dir())
            if not h["healthy"]:
                log("no healthy cluster; run `make cluster-up`")
                return 1
            sys.stdout.write(export_lines(h))
    except ClusterError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
