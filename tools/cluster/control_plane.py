"""`up` and `down` of the local control plane. A start goes through named stages, in order:
PKI and kubeconfig, etcd, the API server, the cluster objects the others need (PyTorchJob CRD,
kubeflow namespace), controller manager + scheduler + kwok, the fake node pool, the
training-operator, and the readiness checks. A failed start stops whatever it started."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .binaries import build_binaries, pytorchjob_crd_path
from .certs import ensure_webhook_certs, make_pki
from .health import health, health_urls, http_ok, read_state, wait_until
from .kubeconfig import write_kubeconfig
from .nodes import KWOK_ANNOTATION, default_pool
from .processes import free_ports, is_ours, leftover_pids, proc_alive, state_lock, stop_pids
from .settings import (
    CONTROLLERS,
    CRD_NAME,
    POD_CIDR,
    SERVICE_CIDR,
    STAGES_DIR,
    START_TIMEOUT,
    ClusterError,
    log,
    read_pins,
    state_dir,
)

PORTS = ("etcd_client", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok", "operator_probe",
         "operator_webhook")


def spawn(sdir: Path, bin_dir: Path, name: str, args: list[str],
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """One component as a process of its own session, its output appended to logs/<name>.log."""
    cmd = [str(bin_dir / name), *args]
    with open(sdir / "logs" / f"{name}.log", "ab") as out:
        out.write(f"### {time.strftime('%FT%T')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=sdir, start_new_session=True, env={**os.environ, **(env or {})})
    (sdir / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


class Starter:
    """The processes of one start, their log and pid files, and the state.json that records them."""

    def __init__(self, sdir: Path, bin_dir: Path):
        self.sdir = sdir
        self.bin = bin_dir
        self.logs = sdir / "logs"
        self.pids = sdir / "pids"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.state: dict[str, Any] = {}

    @property
    def pki(self) -> Path:
        return self.sdir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.sdir / "kubeconfig"

    @property
    def ports(self) -> dict[str, int]:
        return dict(self.state["ports"])

    def save(self) -> None:
        self.state["pids"] = {n: p.pid for n, p in self.procs.items()}
        tmp = self.sdir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.sdir / "state.json")

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = spawn(self.sdir, self.bin, name, args, env)
        self.procs[name] = proc
        # Kept so that one component can be stopped and started again (fault-injection tests).
        self.state.setdefault("commands", {})[name] = {"args": args, "env": env or {}}
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


# ----------------------------------------------------------------------------------------------
# up / down


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
            start_all(starter)
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


def stop_component(name: str) -> None:
    """Stop one component of the running cluster (SIGTERM, then SIGKILL), e.g. the API server or
    etcd for an outage test. Its command stays in the state for `start_component`."""
    sdir = state_dir()
    with state_lock(sdir):
        state = read_state(sdir)
        if not state or name not in state.get("pids", {}):
            raise ClusterError(f"no running cluster with a {name} in {sdir}")
        stop_pids([int(state["pids"][name])], sdir)


def start_component(name: str, timeout: float = START_TIMEOUT) -> None:
    """Start a component stopped by `stop_component` again, with the same command line."""
    sdir = state_dir()
    with state_lock(sdir):
        state = read_state(sdir)
        command = (state or {}).get("commands", {}).get(name)
        if not state or not command:
            raise ClusterError(f"no recorded command of {name} in {sdir}")
        if is_ours(int(state["pids"].get(name, 0)), sdir):
            raise ClusterError(f"{name} is running")
        proc = spawn(sdir, Path(state["bin_dir"]), name, command["args"], command["env"])
        state["pids"][name] = proc.pid
        tmp = sdir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, sdir / "state.json")
        url, ctx = health_urls(state)[name]
        wait_until(f"{name} health ({url})", lambda: http_ok(url, ctx), timeout, proc, sdir / "logs" / f"{name}.log")


# ----------------------------------------------------------------------------------------------
# the start stages


def start_all(st: Starter) -> None:
    prepare_state(st)
    start_etcd(st)
    start_apiserver(st)
    create_cluster_objects(st)
    start_controllers(st)
    create_node_pool(st)
    start_training_operator(st)
    wait_ready(st)
    st.state["complete"] = True
    st.save()


def prepare_state(st: Starter) -> None:
    """PKI, webhook certificates, ports and the kubeconfig; state.json written (not complete)."""
    make_pki(st.pki)
    ensure_webhook_certs()
    picked = free_ports(len(PORTS))  # all different
    ports = {name: picked[i] for i, name in enumerate(PORTS)}
    st.state = {"version": 1, "complete": False, "state_dir": str(st.sdir), "bin_dir": str(st.bin),
                "kubeconfig": str(st.kubeconfig), "ports": ports, "pins": read_pins(),
                "started_at": time.strftime("%FT%T%z")}
    write_kubeconfig(st.kubeconfig, st.pki, ports["apiserver"])
    st.save()


def _etcd_urls(st: Starter) -> tuple[str, str]:
    return f"http://127.0.0.1:{st.ports['etcd_client']}", f"http://127.0.0.1:{st.ports['etcd_peer']}"


def start_etcd(st: Starter) -> None:
    etcd_client, etcd_peer = _etcd_urls(st)
    st.start("etcd", [
        "--name=datamix", f"--data-dir={st.sdir}/etcd",
        f"--listen-client-urls={etcd_client}", f"--advertise-client-urls={etcd_client}",
        f"--listen-peer-urls={etcd_peer}", f"--initial-advertise-peer-urls={etcd_peer}",
        f"--initial-cluster=datamix={etcd_peer}", "--initial-cluster-state=new",
        "--unsafe-no-fsync=true", "--log-level=warn", "--quota-backend-bytes=4294967296",
    ])
    st.wait_healthy("etcd")


def start_apiserver(st: Starter) -> None:
    etcd_client, _ = _etcd_urls(st)
    pki = st.pki
    st.start("kube-apiserver", [
        f"--etcd-servers={etcd_client}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={st.ports['apiserver']}",
        f"--cert-dir={st.sdir}/apiserver-certs",
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
        # e.g. an audit log for a benchmark that counts the API requests of a client
        *os.environ.get("DATAMIX_CLUSTER_APISERVER_ARGS", "").split(),
    ])
    st.wait_healthy("kube-apiserver")


def create_cluster_objects(st: Starter) -> None:
    """The PyTorchJob CRD and the training-operator's namespace and (empty) webhook Secret."""
    # The PyTorchJob CRD (about 640 KB: too big for client-side apply) from the Go module cache.
    st.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(pytorchjob_crd_path()))
    st.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kubeflow"}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "training-operator-webhook-cert", "namespace": "kubeflow"}},
    ]}))


def start_controllers(st: Starter) -> None:
    """Controller manager, scheduler and kwok, started together and then waited for."""
    kubeconfig, pki = st.kubeconfig, st.pki
    st.start("kube-controller-manager", [
        f"--kubeconfig={kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={st.ports['controller_manager']}",
        f"--cert-dir={st.sdir}/controller-manager-certs",
        f"--controllers={','.join(CONTROLLERS)}",
        f"--service-account-private-key-file={pki}/sa.key", f"--root-ca-file={pki}/ca.crt",
        "--use-service-account-credentials=false",
        "--concurrent-gc-syncs=5", "--v=1",
    ])
    st.start("kube-scheduler", [
        f"--kubeconfig={kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={st.ports['scheduler']}",
        f"--cert-dir={st.sdir}/scheduler-certs", "--v=1",
    ])
    stage_args = [f"--config={p}" for p in sorted(STAGES_DIR.glob("*.yaml"))]
    st.start("kwok", [
        f"--kubeconfig={kubeconfig}",
        f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
        f"--server-address=127.0.0.1:{st.ports['kwok']}",
        f"--cidr={POD_CIDR}", "--node-ip=127.0.0.1",
        *stage_args,
    ])
    st.wait_healthy("kube-controller-manager")
    st.wait_healthy("kube-scheduler")
    st.wait_healthy("kwok")


def create_node_pool(st: Starter) -> None:
    st.kubectl("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                     "items": default_pool()}))
    st.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")


# The init container the training-operator adds to every Worker pod (it waits for the master's
# DNS name). Its built-in template sets no security context, so Pod Security `restricted` refuses
# the Worker pods; a cluster that enforces it configures one like this (docs/security.md).
RESTRICTED_INIT_CONTAINER = """\
- name: init-pytorch
  image: {{.InitContainerImage}}
  imagePullPolicy: IfNotPresent
  resources:
    limits: {cpu: 100m, memory: 20Mi}
    requests: {cpu: 50m, memory: 10Mi}
  securityContext:
    allowPrivilegeEscalation: false
    capabilities: {drop: [ALL]}
    runAsNonRoot: true
    runAsUser: 65534
    seccompProfile: {type: RuntimeDefault}
  command: ['sh', '-c', 'for i in $(seq {{.MaxTries}}); do nslookup {{.MasterAddr}} && exit 0; sleep 2; done; exit 1']
"""


def start_training_operator(st: Starter) -> None:
    init_template = st.sdir / "pytorch-init-container.yaml"
    init_template.write_text(RESTRICTED_INIT_CONTAINER)
    st.start("training-operator", [
        f"--kubeconfig={st.kubeconfig}", "--enable-scheme=pytorchjob", "--leader-elect=false",
        f"--pytorch-init-container-template-file={init_template}",
        "--metrics-bind-address=0", f"--health-probe-bind-address=127.0.0.1:{st.ports['operator_probe']}",
        f"--webhook-server-port={st.ports['operator_webhook']}",
    ], env={"KUBECONFIG": str(st.kubeconfig), "MY_POD_NAMESPACE": "kubeflow",
            # read by the one-line patch of upstream's main.go (tools/k8s/build.sh)
            "TRAINING_OPERATOR_WEBHOOK_HOST": "127.0.0.1"})
    st.wait_healthy("training-operator")
    oplog = st.logs / "training-operator.log"
    wait_until("training-operator PyTorchJob controller workers",
               lambda: "Starting workers" in oplog.read_text(errors="replace"), 60,
               st.procs["training-operator"], oplog)


def wait_ready(st: Starter) -> None:
    """The fake nodes Ready and the default ServiceAccount made (pods are refused before it)."""
    wait_until("fake nodes Ready", lambda: _nodes_ready(st), 60, st.procs["kwok"], st.logs / "kwok.log")
    wait_until("default service account", lambda: st.kubectl(
        "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0, 60,
        st.procs["kube-controller-manager"], st.logs / "kube-controller-manager.log")


def _nodes_ready(st: Starter) -> bool:
    res = st.kubectl("get", "nodes", "-o", "json", check=False)
    if res.returncode != 0:
        return False
    items = json.loads(res.stdout)["items"]
    want = {n["metadata"]["name"] for n in default_pool()}
    ready = {n["metadata"]["name"] for n in items
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))}
    return want <= ready
