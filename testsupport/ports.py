"""Free loopback ports for servers a test starts (the control plane's own helper, stdlib only)."""

from tools.cluster.processes import free_port, free_ports

__all__ = ["free_port", "free_ports"]
