"""The operator's settings: one typed object, validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from datamix.policy import PolicyParams
from datamix_operator.kube import JobApi
from datamix_operator.leader import LeaseSettings
from datamix_operator.render import DEFAULT_TRAINER_IMAGE


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty: all (cluster-wide)."""
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of experiments without spec.image."""
    log_format: str = "plain"
    """plain | json."""
    verbose: bool = False
    liveness_port: int = 8080
    """/healthz (kopf's liveness endpoint); 0: off."""
    metrics_port: int = 8081
    """Prometheus /metrics; 0: off."""
    bind_address: str = "0.0.0.0"
    resync_seconds: float = 60.0
    """Every experiment is reconciled at least this often (level-based safety net)."""
    crd_retry_seconds: float = 30.0
    """Retry interval while the PyTorchJob CRD is missing."""
    workers: int = 16
    """Threads running reconciliations (the controller's workers; one experiment at a time each)."""
    job_api: JobApi = field(default_factory=JobApi)
    """Where PyTorchJobs are served."""
    progress_interval: float = 30.0
    """Each running run's metrics endpoint is read at most this often (progress.py); 0: never."""
    progress_workers: int = 8
    """Threads reading metrics endpoints (connections at a time)."""
    policy: PolicyParams | None = None
    """The cluster's DataMix policy (--policy); None: checked at admission only."""
    lease: LeaseSettings | None = None
    """Leader election (leader.py); None: this process always acts (one replica only)."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def build(
        cls,
        *,
        namespaces: tuple[str, ...],
        trainer_image: str | None,
        log_format: str,
        verbose: bool,
        liveness_port: int,
        metrics_port: int,
        bind_address: str,
        resync_seconds: float,
        crd_retry_seconds: float,
        workers: int,
        pytorchjob_api: str,
        progress_interval: float = 30.0,
        progress_workers: int = 8,
        policy: PolicyParams | None = None,
        lease: LeaseSettings | None = None,
    ) -> OperatorConfig:
        for ns in namespaces:
            if not ns or len(ns) > 63 or not all(c.isalnum() or c == "-" for c in ns) or ns != ns.lower():
                raise ValueError(f"--namespace {ns!r} is not a namespace name")
        if log_format not in ("plain", "json"):
            raise ValueError(f"--log-format {log_format!r}: expected plain or json")
        for flag, port in (("--liveness-port", liveness_port), ("--metrics-port", metrics_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{flag} {port} is not a port")
        if resync_seconds <= 0 or crd_retry_seconds <= 0:
            raise ValueError("--resync-seconds and --crd-retry-seconds must be positive")
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        if progress_interval < 0:
            raise ValueError("--progress-interval must be 0 (off) or positive")
        if progress_workers < 1:
            raise ValueError("--progress-workers must be at least 1")
        if lease is not None:
            lease.check()
        return cls(
            namespaces=tuple(dict.fromkeys(namespaces)),
            trainer_image=trainer_image or DEFAULT_TRAINER_IMAGE,
            log_format=log_format,
            verbose=verbose,
            liveness_port=liveness_port,
            metrics_port=metrics_port,
            bind_address=bind_address,
            resync_seconds=resync_seconds,
            crd_retry_seconds=crd_retry_seconds,
            workers=workers,
            job_api=JobApi.parse(pytorchjob_api),
            progress_interval=progress_interval,
            progress_workers=progress_workers,
            policy=policy,
            lease=lease,
        )
