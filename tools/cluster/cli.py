"""The command line: up, down, status, env."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import __doc__ as package_doc
from .control_plane import cluster_down, cluster_up, start_component, stop_component
from .health import health
from .settings import COMPONENTS, ClusterError, log, state_dir


def export_lines(h: dict[str, Any]) -> str:
    return (f"# DataMix local cluster: {h['server']} (state {h['state_dir']})\n"
            f"export KUBECONFIG={h['kubeconfig']}\n"
            f"export PATH={h['bin_dir']}:$PATH  # kubectl, helm, ... of the pinned build\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/cluster", description=package_doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "env", "stop-component", "start-component"])
    ap.add_argument("component", nargs="?", choices=COMPONENTS,
                    help="stop-component/start-component: one component of the running cluster (outage tests)")
    args = ap.parse_args(argv)
    try:
        if args.command in ("stop-component", "start-component") and not args.component:
            raise ClusterError(f"{args.command} needs a component: {', '.join(COMPONENTS)}")
        if args.command == "stop-component":
            stop_component(args.component)
        elif args.command == "start-component":
            start_component(args.component)
        elif args.command == "up":
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
