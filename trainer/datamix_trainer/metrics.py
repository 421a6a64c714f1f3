"""The trainer's Prometheus metrics.

One private registry per process; local rank 0 serves it, so a pod has one endpoint however many
processes it runs. Every value exported is global (all-reduced over the data-parallel ranks), so
the one endpoint tells the whole job's state. Labels are `experiment`, `run` and, for
per-dataset series, `dataset`: nothing unbounded (no steps, paths or ranks). Names follow
Prometheus conventions: one prefix, base units (seconds, ratios), counters end in `_total`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from datamix.runspec import RunSpec

# Dense bf16 peak FLOP/s per GPU, by a substring of `torch.cuda.get_device_name()`. The first match
# wins, so longer names come first. RunSpec.accelerator_peak_flops (resources.gpu.peakTFLOPS)
# overrides; an unknown device exports no utilisation rather than a wrong one.
KNOWN_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("H20", 148e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("V100", 125e12),
)

STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def peak_flops(spec: RunSpec, device_name: str | None) -> float | None:
    if spec.accelerator_peak_flops:
        return spec.accelerator_peak_flops
    if device_name:
        for key, flops in KNOWN_PEAK_FLOPS:
            if key in device_name:
                return flops
    return None


class TrainerMetrics:
    def __init__(self, spec: RunSpec, peak_flops_per_device: float | None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.peak = peak_flops_per_device
        self.names = [d.name for d in spec.datasets]
        run = ("experiment", "run")
        per_dataset = (*run, "dataset")
        r = self.registry

        def gauge(name: str, doc: str, labels: Sequence[str] = run) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        self.train_loss = gauge(
            "datamix_train_loss", "Training loss (mean cross-entropy per token, nats) of the last step."
        )
        self.validation_loss = gauge(
            "datamix_validation_loss",
            "Validation loss (mean cross-entropy per token, nats) on each dataset's held-out data, last evaluation.",
            per_dataset,
        )
        self.learning_rate = gauge("datamix_learning_rate", "Learning rate of the last step.")
        self.grad_norm = gauge(
            "datamix_grad_norm", "Global L2 norm of the gradients of the last step, before clipping."
        )
        self.step_duration = Histogram(
            "datamix_step_duration_seconds",
            "Wall time of one optimizer step (forward, backward, all-reduce, update), evaluation excluded.",
            run,
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = gauge(
            "datamix_tokens_per_second", "Training tokens per second of the whole job, last step."
        )
        self.dataset_tokens = Counter(
            "datamix_dataset_tokens_total",
            "Training tokens consumed from each dataset; the realised mixture is the ratio of their rates.",
            per_dataset,
            registry=r,
        )
        self.target_share = gauge(
            "datamix_dataset_target_share",
            "Each dataset's target share of the mixture (normalised weight, 0-1).",
            per_dataset,
        )
        self.validation_step = gauge(
            "datamix_validation_step", "Optimizer step of the last evaluation (the step datamix_validation_loss is of)."
        )
        self.consumed_samples = gauge("datamix_consumed_samples", "Training samples consumed so far.")
        self.target_samples = gauge("datamix_target_samples", "Training samples the run will consume.")
        self.mfu = (
            gauge(
                "datamix_model_flops_utilization",
                "Model FLOPs utilisation: achieved training FLOP/s over the devices' peak (ratio 0-1).",
            )
            if peak_flops_per_device
            else None
        )
        self.last_checkpoint = gauge(
            "datamix_last_checkpoint_timestamp_seconds", "Unix time of the last complete checkpoint."
        )

        self.run_labels = {"experiment": spec.experiment, "run": spec.run}
        for d in spec.datasets:
            labels = {**self.run_labels, "dataset": d.name}
            self.target_share.labels(**labels).set(d.share)
            self.dataset_tokens.labels(**labels)  # present (at 0) from the start

    def serve(self, port: int) -> int:
        """Start the HTTP endpoint; returns the port actually bound (useful with port 0)."""
        server, _thread = start_http_server(port, registry=self.registry)
        return int(server.server_port)

    def start(self, consumed_samples: int, target_samples: int, tokens: Sequence[int]) -> None:
        """Values known before the first step (on resume: where the run stands)."""
        self.consumed_samples.labels(**self.run_labels).set(consumed_samples)
        self.target_samples.labels(**self.run_labels).set(target_samples)
        for name, count in zip(self.names, tokens, strict=True):
            if count:
                self.dataset_tokens.labels(**self.run_labels, dataset=name).inc(count)

    def step(
        self,
        loss: float,
        lr: float,
        grad_norm: float,
        seconds: float,
        tokens: int,
        consumed_samples: int,
        dataset_tokens: Sequence[int],
        flops_per_token: float,
        devices: int,
    ) -> None:
        labels = self.run_labels
        if math.isfinite(loss):
            self.train_loss.labels(**labels).set(loss)
        self.learning_rate.labels(**labels).set(lr)
        self.grad_norm.labels(**labels).set(grad_norm)
        self.step_duration.labels(**labels).observe(seconds)
        rate = tokens / seconds if seconds > 0 else 0.0
        self.tokens_per_second.labels(**labels).set(rate)
        self.consumed_samples.labels(**labels).set(consumed_samples)
        for name, count in zip(self.names, dataset_tokens, strict=True):
            if count:
                self.dataset_tokens.labels(**labels, dataset=name).inc(count)
        if self.mfu is not None and self.peak:
            self.mfu.labels(**labels).set(rate * flops_per_token / (self.peak * devices))

    def evaluation(self, losses: Sequence[float | None], step: int) -> None:
        for name, loss in zip(self.names, losses, strict=True):
            if loss is not None:
                self.validation_loss.labels(**self.run_labels, dataset=name).set(loss)
        self.validation_step.labels(**self.run_labels).set(step)

    def checkpoint(self, timestamp: float) -> None:
        self.last_checkpoint.labels(**self.run_labels).set(timestamp)
