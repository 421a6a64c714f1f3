"""`python -m tools.cluster` up/down/crash recovery, on a second cluster with its own state dir and
ports, so the session's shared cluster (the `cluster` fixture) is never touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testsupport.clusterlib import CLUSTER_CLI, wait_for
from tools.cluster.processes import proc_alive
from tools.cluster.settings import REPO

pytestmark = pytest.mark.cluster


def _listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def _listen_addresses(pid: int) -> set[tuple[str, int]]:
    """(hex address, port) of every listening TCP socket of a process."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                addr, port = fields[1].rsplit(":", 1)
                found.add((addr, int(port, 16)))
    return found


class Lifecycle:
    def __init__(self, sdir: Path):
        self.sdir = sdir
        self.env = {**os.environ, "DATAMIX_CLUSTER_DIR": str(sdir)}

    def run(self, cmd: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLUSTER_CLI, cmd], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)

    def up(self) -> subprocess.CompletedProcess[str]:
        res = self.run("up")
        assert res.returncode == 0, res.stderr[-4000:]
        assert f"export KUBECONFIG={self.sdir}/kubeconfig" in res.stdout
        return res

    def state(self) -> dict[str, Any]:
        return json.loads((self.sdir / "state.json").read_text())

    def status(self) -> dict[str, Any]:
        res = self.run("status", timeout=60)
        return json.loads(res.stdout)


@pytest.fixture
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    lc = Lifecycle(tmp_path_factory.mktemp("lifecycle") / "cluster")
    yield lc
    lc.run("down", timeout=120)  # whatever a failed test left


def assert_all_alive(pids: dict[str, int]) -> None:
    dead = sorted(name for name, pid in pids.items() if not proc_alive(pid))
    assert not dead, f"not running: {dead}"


def assert_all_gone(pids: dict[str, int]) -> None:
    alive = sorted(name for name, pid in pids.items() if proc_alive(pid))
    assert not alive, f"still running: {alive}"


def assert_down(lifecycle: Lifecycle, state: dict[str, Any]) -> None:
    """`down` succeeds and leaves no process, listening port or state dir behind."""
    res = lifecycle.run("down", timeout=120)
    assert res.returncode == 0, res.stderr
    assert_all_gone(state["pids"])
    still_listening = set(state["ports"].values()) & _listening_ports()
    assert not still_listening, f"ports still listening: {still_listening}"
    assert not lifecycle.sdir.exists(), f"{lifecycle.sdir} left behind"
    assert not lifecycle.status()["healthy"]


def test_up_reuse_down_leaves_nothing_behind(lifecycle: Lifecycle) -> None:
    lifecycle.up()
    state = lifecycle.state()
    pids, ports = state["pids"], state["ports"]
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                         "training-operator"}
    assert_all_alive(pids)
    served = {ports["etcd_client"], ports["apiserver"], ports["scheduler"], ports["kwok"], ports["operator_probe"]}
    not_listening = served - _listening_ports()
    assert not not_listening, f"ports not listening: {not_listening}"
    assert lifecycle.status()["healthy"]
    for name, pid in pids.items():  # 127.0.0.1 only
        addrs = _listen_addresses(pid)
        assert addrs, f"{name} listens nowhere"
        assert {a for a, _ in addrs} <= LOOPBACK, (name, addrs)

    lifecycle.up()  # healthy: reused, not restarted
    assert lifecycle.state()["pids"] == pids

    assert_down(lifecycle, state)


def test_up_after_up_itself_was_killed_midway(lifecycle: Lifecycle) -> None:
    """The starter SIGKILLed in the middle of `up` leaves etcd/apiserver running; the next `up`
    stops them and starts a whole new cluster."""
    proc = subprocess.Popen([*CLUSTER_CLI, "up"], env=lifecycle.env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (lifecycle.sdir / "pids" / "kube-apiserver.pid").exists(), 1800, 0.05,
                 "kube-apiserver started by the first up")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    crashed = lifecycle.state()["pids"]
    assert proc_alive(crashed["etcd"]), "etcd left running by the killed up"

    lifecycle.up()
    state = lifecycle.state()
    assert_all_gone(crashed)
    assert_all_alive(state["pids"])
    assert lifecycle.status()["healthy"]
    assert_down(lifecycle, state)


def test_up_replaces_a_cluster_whose_etcd_and_apiserver_died(lifecycle: Lifecycle) -> None:
    lifecycle.up()
    state = lifecycle.state()
    for name in ("etcd", "kube-apiserver"):
        os.kill(state["pids"][name], signal.SIGKILL)
    wait_for(lambda: not proc_alive(state["pids"]["kube-apiserver"]), 10, 0.05, "apiserver dead")
    assert not lifecycle.status()["healthy"]

    lifecycle.up()
    replaced = lifecycle.state()
    assert_all_gone(state["pids"])
    assert_all_alive(replaced["pids"])
    assert lifecycle.status()["healthy"]
    assert_down(lifecycle, replaced)


def test_the_script_runs_from_any_directory(tmp_path: Path) -> None:
    """`python3 tools/cluster/cluster.py` (the documented command) is the package's command line."""
    env = {**os.environ, "DATAMIX_CLUSTER_DIR": str(tmp_path / "none")}
    res = subprocess.run([sys.executable, str(REPO / "tools" / "cluster" / "cluster.py"), "status"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 1, res.stderr  # no cluster there
    assert json.loads(res.stdout)["reason"] == "no complete cluster state"
