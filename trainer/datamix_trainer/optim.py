"""Optimizer and learning-rate schedule.

The schedule is a pure function of consumed samples (Megatron's sample-based schedule): linear
warm-up to the peak over `warmup_samples`, then cosine, linear or constant decay to `min` at the
end of the run. A pure function makes resume exact: the checkpoint only needs the sample count.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from datamix.errors import UserError
from datamix.runspec import LearningRate, RunSpec


def learning_rate(lr: LearningRate, consumed_samples: int, total_samples: int) -> float:
    if lr.warmup_samples > 0 and consumed_samples < lr.warmup_samples:
        return lr.peak * (consumed_samples + 1) / lr.warmup_samples
    if lr.decay == "constant":
        return lr.peak
    decay_samples = max(total_samples - lr.warmup_samples, 1)
    progress = min(max(consumed_samples - lr.warmup_samples, 0) / decay_samples, 1.0)
    if lr.decay == "linear":
        factor = 1.0 - progress
    elif lr.decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise UserError(f"training.learningRate.decay: {lr.decay!r} is not one of cosine, linear, constant")
    return lr.min + (lr.peak - lr.min) * factor


class SampleSchedule:
    """Sets the optimizer's learning rate from the consumed-samples count before each step."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: LearningRate, total_samples: int) -> None:
        self.optimizer = optimizer
        self.lr = lr
        self.total_samples = total_samples
        self.consumed_samples = 0
        self.current = learning_rate(lr, 0, total_samples)

    def step(self, consumed_samples: int) -> float:
        self.consumed_samples = consumed_samples
        self.current = learning_rate(self.lr, consumed_samples, self.total_samples)
        for group in self.optimizer.param_groups:
            group["lr"] = self.current
        return self.current

    def state_dict(self) -> dict[str, Any]:
        return {
            "consumed_samples": self.consumed_samples,
            "total_samples": self.total_samples,
            "lr": vars(self.lr),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["total_samples"] != self.total_samples or state["lr"] != vars(self.lr):
            raise UserError(
                "checkpoint: its learning-rate schedule differs from the run spec's; a run's output "
                "directory must only hold that run's checkpoints"
            )
        self.step(state["consumed_samples"])


def build_optimizer(model: nn.Module, spec: RunSpec) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms and biases (1-D parameters), as Megatron and nanoGPT do."""
    s = spec.model.settings
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": float(s.get("weightDecay", 0.1))},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=spec.training.learning_rate.peak,
        betas=(float(s.get("adamBeta1", 0.9)), float(s.get("adamBeta2", 0.95))),
        eps=1e-8,
        fused=torch.cuda.is_available() and next(model.parameters()).is_cuda,
    )
