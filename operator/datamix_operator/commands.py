"""`datamix operator`: registered into the `datamix` CLI (imports no kopf until it runs)."""

from __future__ import annotations

import argparse
import os
import socket
import uuid
from typing import Any

from datamix.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "operator",
        help="run the operator (reconciles DataMixtureExperiments into ConfigMaps and PyTorchJobs)",
        description="Run the DataMix operator in this process. Several may run at once: the holder of a "
        "Lease acts, the others stand by. Kubeconfig from $KUBECONFIG, else in-cluster, else ~/.kube/config.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", dest="namespaces", default=[], metavar="NS",
        help="watch this namespace (repeat for several); default: $DATAMIX_WATCH_NAMESPACES (comma-separated)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument(
        "--trainer-image", default=os.environ.get("DATAMIX_TRAINER_IMAGE"),
        help="trainer image for experiments without spec.image (default: $DATAMIX_TRAINER_IMAGE or "
        "datamix-trainer:0.1.0)",
    )
    p.add_argument("--log-format", choices=("plain", "json"), default=os.environ.get("DATAMIX_LOG_FORMAT", "plain"))
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p.add_argument("--liveness-port", type=int, default=8080, help="serve /healthz here (0: off)")
    p.add_argument("--metrics-port", type=int, default=8081, help="serve Prometheus /metrics here (0: off)")
    p.add_argument("--bind-address", default="0.0.0.0", help="address of the liveness and metrics endpoints")
    p.add_argument(
        "--resync-seconds", type=float, default=60.0,
        help="every experiment is reconciled at least this often (a safety net for missed events)",
    )
    p.add_argument(
        "--crd-retry-seconds", type=float, default=30.0,
        help="retry interval while the PyTorchJob CRD is missing",
    )
    p.add_argument("--workers", type=int, default=16, help="reconciliations running at once")
    p.add_argument(
        "--policy", default=os.environ.get("DATAMIX_POLICY"), metavar="PATH",
        help="the cluster's DataMix policy parameters (docs/security.md): the chart's policy ConfigMap, mounted "
        "(a directory) or as a YAML file; experiments that break it end Stalled/PolicyViolation. Default: "
        "$DATAMIX_POLICY; none: no policy check in the operator (admission only)",
    )
    p.add_argument(
        "--progress-interval", type=float, default=30.0, metavar="SECONDS",
        help="read each running run's progress from its master pod's metrics endpoint at most this often "
        "(0: never); the status is written at most this often per run, and only when a value changed",
    )
    p.add_argument("--progress-workers", type=int, default=8, help="metrics endpoints read at once")
    p.add_argument(
        "--pytorchjob-api", default="kubeflow.org/v1", metavar="GROUP/VERSION",
        help="where PyTorchJobs are served (tests point it at an absent API to exercise the missing-CRD path)",
    )
    le = p.add_argument_group("leader election (a coordination.k8s.io/v1 Lease; client-go's timing)")
    le.add_argument(
        "--leader-elect", action=argparse.BooleanOptionalAction, default=True,
        help="only the holder of the Lease reconciles (default: on; off only when exactly one operator runs)",
    )
    le.add_argument(
        "--leader-elect-namespace", metavar="NS",
        help="namespace of the Lease (default: $POD_NAMESPACE, else the pod's own namespace, else the first "
        "--namespace)",
    )
    le.add_argument("--leader-elect-id", default="datamix-operator", metavar="NAME", help="name of the Lease")
    le.add_argument("--leader-elect-lease-duration", type=float, default=15.0, metavar="SECONDS",
                    help="a standby takes over after seeing the Lease unrenewed this long")
    le.add_argument("--leader-elect-renew-deadline", type=float, default=10.0, metavar="SECONDS",
                    help="the leader stops acting when it could not renew for this long")
    le.add_argument("--leader-elect-retry-period", type=float, default=2.0, metavar="SECONDS",
                    help="seconds between attempts to acquire or renew")
    p.set_defaults(func=cmd_operator)


IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def lease_settings(args: argparse.Namespace, namespaces: list[str]) -> Any:
    """The Lease of `--leader-elect`, or None when it is off."""
    from datamix_operator.leader import LeaseSettings

    if not args.leader_elect:
        return None
    namespace = args.leader_elect_namespace or os.environ.get("POD_NAMESPACE")
    if not namespace and os.path.exists(IN_CLUSTER_NAMESPACE):
        with open(IN_CLUSTER_NAMESPACE) as f:
            namespace = f.read().strip()
    namespace = namespace or (namespaces[0].strip() if namespaces else None)
    if not namespace:
        raise UserError("operator: --all-namespaces outside a pod: give --leader-elect-namespace NS "
                        "(where the Lease lives) or --no-leader-elect")
    # The pod's name where there is one: unique among live pods, and kept when the container restarts,
    # so a crashed operator's restart holds the Lease again at once instead of a lease duration
    # later. Outside a pod, unique per process (two operators on one host are two candidates).
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    return LeaseSettings(
        namespace=namespace,
        name=args.leader_elect_id,
        identity=identity,
        lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_renew_deadline,
        retry_period=args.leader_elect_retry_period,
    )


def cmd_operator(args: argparse.Namespace) -> int:
    from datamix_operator.admission import load_policy
    from datamix_operator.config import OperatorConfig

    namespaces = list(args.namespaces)
    if not namespaces and not args.all_namespaces:
        namespaces = [n for n in (os.environ.get("DATAMIX_WATCH_NAMESPACES") or "").split(",") if n.strip()]
    if not namespaces and not args.all_namespaces:
        raise UserError("operator: give --namespace NS (repeatable) or --all-namespaces")
    try:
        config = OperatorConfig.build(
            namespaces=tuple(n.strip() for n in namespaces),
            trainer_image=args.trainer_image,
            log_format=args.log_format,
            verbose=args.verbose,
            liveness_port=args.liveness_port,
            metrics_port=args.metrics_port,
            bind_address=args.bind_address,
            resync_seconds=args.resync_seconds,
            crd_retry_seconds=args.crd_retry_seconds,
            workers=args.workers,
            pytorchjob_api=args.pytorchjob_api,
            progress_interval=args.progress_interval,
            progress_workers=args.progress_workers,
            policy=load_policy(args.policy) if args.policy else None,
            lease=lease_settings(args, namespaces),
        )
    except ValueError as err:
        raise UserError(f"operator: {err}") from err
    from datamix_operator.main import run

    run(config)
    return 0
