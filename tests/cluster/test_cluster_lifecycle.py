"""cluster.py up/down/crash recovery, on a second cluster with its own state dir and ports, so
the session's shared cluster (the `cluster` fixture) is never touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterlib import CLUSTER_PY, cluster_module, wait_for

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


def _alive(pid: int) -> bool:
    return cluster_module().proc_alive(pid)


class Lifecycle:
    def __init__(self, sdir: Path):
        self.sdir = sdir
        self.env = {**os.environ, "DATAMIX_CLUSTER_DIR": str(sdir)}

    def run(self, cmd: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(CLUSTER_PY), cmd], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

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


def test_up_reuse_down_leaves_nothing_behind(lifecycle: Lifecycle) -> None:
    lifecycle.up()
    state = lifecycle.state()
    pids, ports = state["pids"], state["ports"]
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                         "training-operator"}
    assert all(_alive(p) for p in pids.values())
    listening = _listening_ports()
    assert {ports["etcd_client"], ports["apiserver"], ports["scheduler"], ports["kwok"],
            ports["operator_probe"]} <= listening
    assert lifecycle.status()["healthy"]
    for name, pid in pids.items():  # 127.0.0.1 only
        addrs = _listen_addresses(pid)
        assert addrs, name
        assert {a for a, _ in addrs} <= LOOPBACK, (name, addrs)

    t0 = time.monotonic()
    lifecycle.up()  # healthy: reused, not restarted
    assert time.monotonic() - t0 < 30
    assert lifecycle.state()["pids"] == pids

    res = lifecycle.run("down", timeout=120)
    assert res.returncode == 0, res.stderr
    assert not any(_alive(p) for p in pids.values())
    assert not (set(ports.values()) & _listening_ports())
    assert not lifecycle.sdir.exists()
    assert not lifecycle.status()["healthy"]


def test_up_after_killed_runs(lifecycle: Lifecycle) -> None:
    # 1. cluster.py itself SIGKILLed in the middle of `up`: etcd/apiserver are left running.
    proc = subprocess.Popen([sys.executable, str(CLUSTER_PY), "up"], env=lifecycle.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (lifecycle.sdir / "pids" / "kube-apiserver.pid").exists(), 1800, 0.05,
                 "kube-apiserver started by the first up")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    crashed = lifecycle.state()["pids"]
    assert _alive(crashed["etcd"])

    lifecycle.up()
    state = lifecycle.state()
    assert not any(_alive(p) for p in crashed.values())
    assert all(_alive(p) for p in state["pids"].values())
    assert lifecycle.status()["healthy"]

    # 2. etcd and the apiserver SIGKILLed under a running cluster: `up` replaces the whole cluster.
    for name in ("etcd", "kube-apiserver"):
        os.kill(state["pids"][name], signal.SIGKILL)
    wait_for(lambda: not _alive(state["pids"]["kube-apiserver"]), 10, 0.05, "apiserver dead")
    assert not lifecycle.status()["healthy"]
    lifecycle.up()
    state2 = lifecycle.state()
    assert not any(_alive(p) for p in state["pids"].values())
    assert lifecycle.status()["healthy"]

    res = lifecycle.run("down", timeout=120)
    assert res.returncode == 0, res.stderr
    assert not any(_alive(p) for p in state2["pids"].values())
    assert not (set(state2["ports"].values()) & _listening_ports())
