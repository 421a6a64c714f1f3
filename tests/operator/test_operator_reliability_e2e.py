"""The operator under failure, on the real local control plane: several operators at once (leader
election on a Lease), a leader killed or stalled, the API server or etcd stopped mid-run.

Each test runs its own operators (`datamix operator --namespace <its namespace>`); their Lease
lives in the test's namespace, so tests and other users of the cluster do not share a leader.
The leader-election timing is the default (lease 15 s, renew deadline 10 s, retry 2 s).

The outage tests stop a control-plane component, so they run on a private cluster of their own
(tools/cluster/cluster.py with a temporary DATAMIX_CLUSTER_DIR, `stop-component`/`start-component`),
never on the shared one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testsupport import clusterlib
from testsupport.clusterlib import A100, CLUSTER_CLI, wait_for
from testsupport.experiments import (
    apply_crd,
    condition,
    core,
    e2e_manifest,
    experiment_events,
    get_experiment,
    kubectl_apply,
    list_configmaps,
    list_jobs,
    posted_events,
    times_posted,
    wait_condition,
    wait_phase,
)
from testsupport.operator_process import OperatorProcess, http_get
from tools.cluster.health import health as cluster_health

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]

LEASE = "datamix-operator"
LEASE_DURATION, RETRY_PERIOD = 15.0, 2.0


def lease_holder(api: Any, namespace: str) -> str:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace)
    except ApiException as err:
        if err.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "")


def wait_holder(api: Any, namespace: str, who: str, timeout: float = 60) -> str:
    """Wait until the process named `who` (its POD_NAME, its identity) holds the Lease."""
    return wait_for(lambda: lease_holder(api, namespace) == who, timeout, interval=0.1,
                    description=f"{who} holding the Lease")


def metric(op: OperatorProcess, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", op.metrics(), re.MULTILINE)
    assert match, f"{name} not in the operator's metrics"
    return float(match.group(1))


def reconciles(op: OperatorProcess) -> float:
    return metric(op, "datamix_operator_reconcile_duration_seconds_count")


def start_pair(api: Any, namespace: str, start_operator: Any) -> tuple[OperatorProcess, OperatorProcess]:
    """op-a, which takes the Lease, then op-b, which stands by."""
    a = start_operator([namespace], start_env={"POD_NAME": "op-a"})
    wait_holder(api, namespace, "op-a")
    b = start_operator([namespace], start_env={"POD_NAME": "op-b"})
    return a, b


def test_two_operators_on_one_namespace_exactly_one_acts(
    k8s_client: Any, cluster: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    a, b = start_pair(k8s_client, namespace, start_operator)
    names = [f"pair-{i}" for i in range(3)]
    for name in names:
        kubectl_apply(cluster, namespace, e2e_manifest(name, pool=gpu_pool, duration="4s"))
    for name in names:
        wait_phase(k8s_client, namespace, name, "Succeeded", op=a)
    time.sleep(3)  # time for a duplicate job or event to appear, if the standby made one
    for name in names:
        assert len(list_jobs(k8s_client, namespace, name)) == 1, name
        created = posted_events(k8s_client, namespace, name, "JobCreated")
        assert times_posted(created) == 1, [e.message for e in created]
        assert created[0].reporting_instance == "op-a"
    assert metric(a, "datamix_operator_runs_created_total") == len(names)
    assert reconciles(b) == 0, "the standby reconciled"
    assert b.returncode is None
    assert lease_holder(k8s_client, namespace) == "op-a"


def test_killing_the_leader_hands_over_within_the_lease_duration_and_the_run_goes_on(
    k8s_client: Any, cluster: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    a, b = start_pair(k8s_client, namespace, start_operator)
    kubectl_apply(cluster, namespace, e2e_manifest("handover", pool=gpu_pool, duration="40s", loss=2.25))
    running = wait_phase(k8s_client, namespace, "handover", "Running", op=a)
    (job,) = list_jobs(k8s_client, namespace, "handover")

    a.kill()  # SIGKILL: no release of the Lease
    killed = time.monotonic()
    wait_holder(k8s_client, namespace, "op-b", timeout=LEASE_DURATION * 3)
    handover = time.monotonic() - killed
    print(f"\nhandover {handover:.1f} s after SIGKILL of the leader (lease duration {LEASE_DURATION:.0f} s)")
    # The standby saw the last renewal at most one jittered retry period after it was made.
    assert handover <= LEASE_DURATION + 1.2 * RETRY_PERIOD + 1.0

    # The run goes on under the new leader: the same job, followed to its result.
    done = wait_phase(k8s_client, namespace, "handover", "Succeeded", timeout=120, op=b)
    assert done["status"]["result"]["trainLoss"] == 2.25
    assert done["status"]["run"]["id"] == running["status"]["run"]["id"]
    (after,) = list_jobs(k8s_client, namespace, "handover")
    assert after["metadata"]["uid"] == job["metadata"]["uid"], "the job was re-created"
    (succeeded,) = posted_events(k8s_client, namespace, "handover", "JobSucceeded")
    assert succeeded.reporting_instance == "op-b"
    assert times_posted(posted_events(k8s_client, namespace, "handover", "JobCreated")) == 1

    # ... and it acts on new experiments.
    kubectl_apply(cluster, namespace, e2e_manifest("after-handover", pool=gpu_pool, duration="2s"))
    wait_phase(k8s_client, namespace, "after-handover", "Succeeded", op=b)
    (created,) = posted_events(k8s_client, namespace, "after-handover", "JobCreated")
    assert created.reporting_instance == "op-b"


def test_a_stalled_leader_stops_acting_and_does_not_resume_when_it_wakes(
    k8s_client: Any, cluster: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    """SIGSTOP freezes the leader as a partition or a long GC pause would: it cannot renew, the
    standby takes over; when it wakes, its watches deliver what it missed and it must act on none
    of it (its renew deadline passed while it slept)."""
    a, b = start_pair(k8s_client, namespace, start_operator)
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_holder(k8s_client, namespace, "op-b", timeout=LEASE_DURATION * 3)
        kubectl_apply(cluster, namespace, e2e_manifest("while-stalled", pool=gpu_pool, duration="20s"))
        wait_phase(k8s_client, namespace, "while-stalled", "Running", op=b)
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: "stopped acting" in a.log_path.read_text(errors="replace"), 30,
             description="the woken leader noticing it lost the Lease")
    time.sleep(3)  # the woken process's watches have delivered the new experiment and its job
    assert reconciles(a) == 0, "the old leader acted after waking"
    (created,) = posted_events(k8s_client, namespace, "while-stalled", "JobCreated")
    assert created.reporting_instance == "op-b"
    assert len(list_jobs(k8s_client, namespace, "while-stalled")) == 1
    assert lease_holder(k8s_client, namespace) == "op-b"


def test_the_non_finite_loss_exit_code_fails_the_run_as_non_finite_loss(
    k8s_client: Any, cluster: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    from datamix.runspec import NON_FINITE_LOSS_EXIT_CODE

    op = start_operator([namespace])
    kubectl_apply(cluster, namespace, e2e_manifest("nan", pool=gpu_pool, duration="2s", result=False,
                                                   exit_code=NON_FINITE_LOSS_EXIT_CODE))
    failed = wait_condition(k8s_client, namespace, "nan", "Failed", "NonFiniteLoss", op=op)
    assert failed["status"]["phase"] == "Failed"
    assert f"exited with code {NON_FINITE_LOSS_EXIT_CODE}" in condition(failed, "Failed")["message"]
    (event,) = posted_events(k8s_client, namespace, "nan", "NonFiniteLoss")
    assert event.type == "Warning"


def delete_job(api: Any, namespace: str, name: str) -> None:
    from kubernetes import client

    client.CustomObjectsApi(api).delete_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs",
                                                                 name, propagation_policy="Background")


def test_a_finished_runs_job_deleted_by_hand_is_not_run_again(
    k8s_client: Any, cluster: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    op = start_operator([namespace], resync_seconds=3)
    kubectl_apply(cluster, namespace, e2e_manifest("done-once", pool=gpu_pool, duration="2s", loss=2.75))
    done = wait_phase(k8s_client, namespace, "done-once", "Succeeded", op=op)
    (job,) = list_jobs(k8s_client, namespace, "done-once")
    delete_job(k8s_client, namespace, job["metadata"]["name"])
    wait_for(lambda: not list_jobs(k8s_client, namespace, "done-once"), 60, description="the job gone")
    time.sleep(8)  # the job's DELETED event and two resync passes
    assert list_jobs(k8s_client, namespace, "done-once") == [], "the finished run was started again"
    after = get_experiment(k8s_client, namespace, "done-once")
    assert after["status"]["phase"] == "Succeeded"
    assert after["status"]["result"] == done["status"]["result"]
    assert after["status"]["run"] == done["status"]["run"]
    assert times_posted(posted_events(k8s_client, namespace, "done-once", "JobCreated")) == 1


def test_a_running_runs_job_deleted_by_hand_is_created_again_and_said_so(
    k8s_client: Any, cluster: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    op = start_operator([namespace], resync_seconds=3)
    kubectl_apply(cluster, namespace, e2e_manifest("deleted-mid-run", pool=gpu_pool, duration="20s", loss=2.5))
    wait_phase(k8s_client, namespace, "deleted-mid-run", "Running", op=op)
    (job,) = list_jobs(k8s_client, namespace, "deleted-mid-run")
    delete_job(k8s_client, namespace, job["metadata"]["name"])
    (recreated,) = wait_for(lambda: [j for j in list_jobs(k8s_client, namespace, "deleted-mid-run")
                                     if j["metadata"]["uid"] != job["metadata"]["uid"]], 60,
                            description="the job created again")
    assert recreated["metadata"]["name"] == job["metadata"]["name"], "the same run, the same name"
    (said,) = posted_events(k8s_client, namespace, "deleted-mid-run", "JobRecreated")
    assert "resumes from the run's newest checkpoint" in said.message
    done = wait_phase(k8s_client, namespace, "deleted-mid-run", "Succeeded", timeout=120, op=op)
    assert done["status"]["result"]["trainLoss"] == 2.5


def test_a_running_runs_configmap_deleted_by_hand_is_created_again_byte_identical(
    k8s_client: Any, cluster: Any, namespace: str, gpu_pool: str, start_operator: Any
) -> None:
    op = start_operator([namespace])
    kubectl_apply(cluster, namespace, e2e_manifest("cm-deleted", pool=gpu_pool, duration="20s", loss=2.5))
    wait_phase(k8s_client, namespace, "cm-deleted", "Running", op=op)
    (cm,) = list_configmaps(k8s_client, namespace, "cm-deleted")
    core(k8s_client).delete_namespaced_config_map(cm.metadata.name, namespace)
    (again,) = wait_for(lambda: [c for c in list_configmaps(k8s_client, namespace, "cm-deleted")
                                 if c.metadata.uid != cm.metadata.uid], 30, description="the ConfigMap created again")
    assert again.metadata.name == cm.metadata.name
    assert again.data == cm.data, "byte-identical run spec"
    assert again.immutable is True
    assert again.metadata.labels == cm.metadata.labels
    assert [r.uid for r in again.metadata.owner_references] == [r.uid for r in cm.metadata.owner_references]
    (said,) = posted_events(k8s_client, namespace, "cm-deleted", "ConfigMapRecreated")
    assert cm.metadata.name in said.message
    assert len(list_jobs(k8s_client, namespace, "cm-deleted")) == 1, "the job is kept"
    done = wait_phase(k8s_client, namespace, "cm-deleted", "Succeeded", timeout=120, op=op)
    assert done["status"]["result"]["trainLoss"] == 2.5


# ----------------------------------------------------------------------------------------------
# the API server or etcd stopped for 90 s mid-run (a private cluster)

OUTAGE_SECONDS = 90.0


class PrivateCluster:
    """A control plane of this module's own (tools/cluster/cluster.py in a temporary state dir)."""

    def __init__(self, sdir: Path) -> None:
        self.sdir = sdir
        self.env = {**os.environ, "DATAMIX_CLUSTER_DIR": str(sdir)}

    def run(self, *args: str, timeout: float = 1800) -> None:
        res = subprocess.run([*CLUSTER_CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                             cwd=REPO)
        assert res.returncode == 0, f"cluster.py {' '.join(args)}: {res.stderr[-3000:]}"

    def up(self) -> clusterlib.Cluster:
        self.run("up")
        health = cluster_health(self.sdir)
        assert health["healthy"], health
        return clusterlib.Cluster(kubeconfig=Path(health["kubeconfig"]), bin_dir=Path(health["bin_dir"]),
                                  state_dir=self.sdir, server=health["server"], started_here=True)


@pytest.fixture(scope="module")
def outage_cluster() -> Iterator[tuple[PrivateCluster, clusterlib.Cluster]]:
    root = Path(tempfile.mkdtemp(prefix="dmx-outage-"))
    private = PrivateCluster(root / "cluster")
    try:
        cluster = private.up()
        apply_crd(cluster)
        yield private, cluster
    finally:
        private.run("down", timeout=300)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_outage_mid_run(
    outage_cluster: tuple[PrivateCluster, clusterlib.Cluster], component: str, tmp_path: Path
) -> None:
    """`component` stopped for 90 s while one run is about to end and another runs on: the run that
    ended during the outage is reported, none is duplicated, and an experiment created afterwards
    gets its job within 5 s. The operator either recovers by itself or says it cannot (/healthz
    fails, and a restart, as the kubelet would do, recovers)."""
    private, cluster = outage_cluster
    api = cluster.api_client()
    namespace = clusterlib.create_namespace(api, f"outage-{component}")
    op = OperatorProcess(cluster.kubeconfig, [namespace], log_dir=tmp_path).start()
    try:
        kubectl_apply(cluster, namespace, e2e_manifest("ends-during", duration="25s", loss=2.125))
        kubectl_apply(cluster, namespace, e2e_manifest("runs-through", duration="600s"))
        for name in ("ends-during", "runs-through"):
            wait_phase(api, namespace, name, "Running", op=op)
        jobs = {name: list_jobs(api, namespace, name)[0]["metadata"]["uid"] for name in ("ends-during", "runs-through")}

        private.run("stop-component", component)
        stopped = time.monotonic()
        health_during = set()
        while time.monotonic() - stopped < OUTAGE_SECONDS:
            assert op.returncode is None, f"the operator exited during the outage:\n{op.log_tail()}"
            health_during.add(http_get(f"http://127.0.0.1:{op.liveness_port}/healthz")[0])
            time.sleep(2)
        private.run("start-component", component)
        back = time.monotonic()

        # Recovery: the run that ended during the outage is reported; or /healthz says it cannot be.
        restarted = False

        def reported() -> bool:
            nonlocal restarted
            if not restarted and (op.returncode is not None or
                                  http_get(f"http://127.0.0.1:{op.liveness_port}/healthz")[0] != 200):
                print(f"\n/healthz failed {time.monotonic() - back:.0f} s after {component} came back: restarting")
                op.stop()
                op.start()
                restarted = True
            exp = get_experiment(api, namespace, "ends-during")
            return (exp.get("status") or {}).get("phase") == "Succeeded"

        wait_for(reported, 180, interval=1, description="the run that ended during the outage, reported")
        recovered = time.monotonic() - back
        done = get_experiment(api, namespace, "ends-during")
        assert done["status"]["result"]["trainLoss"] == 2.125

        created = time.monotonic()
        kubectl_apply(cluster, namespace, e2e_manifest("after-outage", products=(A100,), duration="60s"))
        wait_for(lambda: list_jobs(api, namespace, "after-outage"), 30, interval=0.1,
                 description="the job of an experiment created after the outage")
        to_job = time.monotonic() - created
        print(f"\n{component} down {OUTAGE_SECONDS:.0f} s: /healthz during the outage {sorted(health_during)}; "
              f"{'recovered after an operator restart' if restarted else 'recovered without a restart'}; "
              f"the finished run reported {recovered:.1f} s after {component} came back; "
              f"a new experiment's job after {to_job:.2f} s")
        assert to_job <= 5.0
        for name, uid in jobs.items():
            (job,) = list_jobs(api, namespace, name)
            assert job["metadata"]["uid"] == uid, f"{name}: job re-created"
            assert times_posted(posted_events(api, namespace, name, "JobCreated")) == 1, name
        assert len(list_jobs(api, namespace, "after-outage")) == 1
        assert wait_phase(api, namespace, "runs-through", "Running", op=op)
    finally:
        op.stop()
        clusterlib.delete_namespace(api, namespace)
        api.close()


# ----------------------------------------------------------------------------------------------
# an upgrade: the previous operator's experiments taken over by this one

UPGRADE_FROM_ENV = "DATAMIX_UPGRADE_FROM"


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def previous_operator_revision() -> str:
    """$DATAMIX_UPGRADE_FROM, else the operator as it was before its newest change: the parent of
    the newest commit that changed the operator, the core it imports or the dependencies."""
    if os.environ.get(UPGRADE_FROM_ENV):
        return git("rev-parse", os.environ[UPGRADE_FROM_ENV])
    newest = git("log", "-1", "--format=%H", "--", "operator", "src/datamix", "pyproject.toml")
    return git("rev-parse", f"{newest}~1")


@pytest.fixture(scope="module")
def previous_operator(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(revision, its `datamix` command): the previous operator installed from git history into an environment of
    its own with the operator extra only (`pip install '.[operator]'`, from the package index)."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no history to install the previous operator from")
    rev = previous_operator_revision()
    root = tmp_path_factory.mktemp("previous-operator")
    src, venv = root / "src", root / "venv"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    res = subprocess.run([python, "-m", "pip", "install", "--quiet", f"{src}[operator]"], capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, f"installing the operator of {rev[:12]}: {res.stderr[-3000:]}"
    check = subprocess.run([python, "-c", "import torch"], capture_output=True)
    assert check.returncode != 0, "the operator extra alone must not bring torch"
    return rev, str(venv / "bin" / "datamix")


@pytest.mark.timeout(1200)
def test_upgrade_takes_over_the_previous_operators_experiments(
    k8s_client: Any, cluster: Any, namespace: str, gpu_pool: str, start_operator: Any,
    previous_operator: tuple[str, str], tmp_path: Path,
) -> None:
    rev, datamix = previous_operator
    api = k8s_client
    old = OperatorProcess(cluster.kubeconfig, [namespace], datamix=datamix, log_dir=tmp_path,
                          env={"POD_NAME": "old"}).start()
    try:
        kubectl_apply(cluster, namespace, e2e_manifest("up-done", pool=gpu_pool, duration="2s", loss=2.5))
        kubectl_apply(cluster, namespace, e2e_manifest("up-ends", pool=gpu_pool, duration="45s", loss=2.25))
        kubectl_apply(cluster, namespace, e2e_manifest("up-runs", pool=gpu_pool, duration="600s"))
        finished = wait_phase(api, namespace, "up-done", "Succeeded", op=old)
        for name in ("up-ends", "up-runs"):
            wait_phase(api, namespace, name, "Running", op=old)
        names = ("up-done", "up-ends", "up-runs")
        jobs = {n: list_jobs(api, namespace, n)[0]["metadata"]["uid"] for n in names}

        # A rolling update: the new operator starts while the old one still runs (a standby, if the old
        # one holds the Lease), then the old one stops (and hands the Lease over).
        new = start_operator([namespace], start_env={"POD_NAME": "new"})
        old.stop()
        wait_holder(api, namespace, "new")

        done = wait_phase(api, namespace, "up-ends", "Succeeded", timeout=120, op=new)
        assert done["status"]["result"]["trainLoss"] == 2.25
        time.sleep(3)  # a resync pass and the watches' echoes, for a wrong deletion to show
        still = get_experiment(api, namespace, "up-done")
        assert still["status"]["phase"] == "Succeeded"
        assert still["status"]["result"] == finished["status"]["result"]
        assert get_experiment(api, namespace, "up-runs")["status"]["phase"] == "Running"
        for name, uid in jobs.items():
            live = list_jobs(api, namespace, name)
            assert [j["metadata"]["uid"] for j in live] == [uid], f"{name}: job deleted or re-created after {rev[:12]}"
            assert times_posted(posted_events(api, namespace, name, "JobCreated")) == 1, name
            assert not experiment_events(api, namespace, name, "RunRetired"), name
        assert metric(new, "datamix_operator_runs_created_total") == 0
        print(f"\nupgrade from {rev[:12]}: {len(names)} experiments taken over, no job deleted or re-created")
    finally:
        old.stop()


def test_pytorchjob_crd_removed_and_reapplied_leaves_finished_runs_finished(
    outage_cluster: tuple[PrivateCluster, clusterlib.Cluster], tmp_path: Path
) -> None:
    """Removing the PyTorchJob CRD deletes every job; a finished run must not run again once the
    CRD is back (on the private cluster: the shared one's CRD is everyone's)."""
    from tools.cluster.binaries import pytorchjob_crd_path

    _, cluster = outage_cluster
    api = cluster.api_client()
    namespace = clusterlib.create_namespace(api, "crd-reapplied")
    op = OperatorProcess(cluster.kubeconfig, [namespace], log_dir=tmp_path, resync_seconds=3).start()
    try:
        kubectl_apply(cluster, namespace, e2e_manifest("finished-before", duration="2s", loss=2.625))
        done = wait_phase(api, namespace, "finished-before", "Succeeded", op=op)
        cluster.kubectl("delete", "crd", "pytorchjobs.kubeflow.org", "--wait=true", "--timeout=120s")
        wait_for(lambda: cluster.kubectl("get", "crd", "pytorchjobs.kubeflow.org", check=False).returncode != 0, 120,
                 description="the PyTorchJob CRD gone")
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(pytorchjob_crd_path()))
        wait_for(lambda: cluster.kubectl("wait", "--for=condition=Established", "crd/pytorchjobs.kubeflow.org",
                                         "--timeout=10s", check=False).returncode == 0, 120,
                 description="the PyTorchJob CRD established again")
        time.sleep(10)  # kopf notices the CRD again; resync passes
        assert list_jobs(api, namespace, "finished-before") == [], "the finished run was started again"
        after = get_experiment(api, namespace, "finished-before")
        assert after["status"]["phase"] == "Succeeded"
        assert after["status"]["result"] == done["status"]["result"]
    finally:
        op.stop()
        clusterlib.delete_namespace(api, namespace)
        api.close()
