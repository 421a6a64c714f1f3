"""`datamix operator` as a subprocess of a test or benchmark.

    with OperatorProcess(kubeconfig, [namespace]) as op:   # started, /healthz answered
        ...
        op.metrics(); op.kill(); op.start(); op.log_tail()

The scope is explicit: the given namespaces (`--namespace`, repeated), or `--all-namespaces` for
none; $DATAMIX_WATCH_NAMESPACES of the calling environment is dropped so that it cannot widen it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from testsupport.clusterlib import wait_for
from testsupport.ports import free_port

# The console script of the running interpreter's environment (the project's venv).
DATAMIX = str(Path(sys.executable).parent / "datamix")
# The image the e2e PyTorchJobs name; kwok plays their pods, so it is never pulled.
TRAINER_IMAGE = "datamix/fake-trainer:0"


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body); (0, "") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except OSError:
        return 0, ""


class OperatorProcess:
    """`datamix operator` in a subprocess: start, wait until live, kill, restart, read metrics."""

    def __init__(
        self,
        kubeconfig: str | Path,
        namespaces: Sequence[str],
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        log_path: Path | None = None,
        resync_seconds: float = 15.0,
        trainer_image: str | None = TRAINER_IMAGE,
        datamix: str = DATAMIX,
    ) -> None:
        self.datamix = datamix  # another environment's `datamix` runs another version (the upgrade test)
        self.kubeconfig = str(kubeconfig)
        self.namespaces = list(namespaces)
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.resync_seconds = resync_seconds
        self.trainer_image = trainer_image
        if log_path is None:
            log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "datamix-operator-e2e"
            scope = "-".join(self.namespaces)[:60] or "all-namespaces"
            log_path = log_dir / f"operator-{scope}-{uuid.uuid4().hex[:6]}.log"
        self.log_path = log_path
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.liveness_port = 0
        self.metrics_port = 0
        self.starts = 0
        # POD_NAME as in a pod: the same across restarts of this process (the leader Lease's holder
        # identity), different between two OperatorProcesses.
        self.pod_name = f"operator-{uuid.uuid4().hex[:8]}"

    def command(self) -> list[str]:
        scope = [f"--namespace={ns}" for ns in self.namespaces] or ["--all-namespaces"]
        image = ["--trainer-image", self.trainer_image] if self.trainer_image else []
        return [
            self.datamix, "operator", *scope, *image,
            "--bind-address", "127.0.0.1",
            "--liveness-port", str(self.liveness_port),
            "--metrics-port", str(self.metrics_port),
            "--resync-seconds", str(self.resync_seconds),
            *self.extra_args,
        ]

    def start(self, env: Mapping[str, str] | None = None, wait: bool = True) -> OperatorProcess:
        """Starts (or restarts, after kill/stop) the operator; new ports each time."""
        self.liveness_port, self.metrics_port = free_port(), free_port()
        cmd = self.command()
        inherited = {k: v for k, v in os.environ.items() if k != "DATAMIX_WATCH_NAMESPACES"}
        full_env = {**inherited, "KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1", "POD_NAME": self.pod_name,
                    **self.env, **(env or {})}
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"### start {self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                         stdin=subprocess.DEVNULL)
        if wait:
            self.wait_live()
        return self

    def wait_live(self, timeout: float = 60) -> None:
        """Until /healthz answers 200; fails at once, with the log, if the operator exits."""

        def live() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"the operator exited ({self.returncode}); log:\n{self.log_tail()}")
            return http_get(f"http://127.0.0.1:{self.liveness_port}/healthz")[0] == 200

        wait_for(live, timeout, interval=0.2, description="the operator's /healthz")

    def assert_running(self) -> None:
        """Fails with the log's tail if the operator has exited (for the predicates of long waits)."""
        assert self.returncode is None, f"the operator exited ({self.returncode}); log:\n{self.log_tail()}"

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (like an OOM kill or a node loss)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None, "the operator was never started"
        return self.proc.wait(timeout)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        status, body = http_get(self.metrics_url)
        assert status == 200, f"{self.metrics_url} answered {status}"
        return body

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> OperatorProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
