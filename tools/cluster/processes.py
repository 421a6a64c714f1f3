"""The component processes of a state dir: liveness, ownership (pid-reuse safe), stopping;
the state dir's lock; free loopback ports."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .settings import COMPONENTS, log


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


def free_ports(n: int) -> list[int]:
    """`n` different TCP ports free on 127.0.0.1 right now (the kernel's picks, all held until
    every one is picked, so none repeats)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(n):
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return free_ports(1)[0]
