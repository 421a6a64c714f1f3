"""Benchmark (c): training tokens/s of the CPU model through the trainer against a bare PyTorch loop.

Both train the quickstart's tiny model (same initial weights) on the same batches, one thread:
  trainer  `datamix_trainer.loop.train` in this process, with everything a real run does per step:
           reading the blend, per-dataset counting, loss normalisation, clipping, the learning-rate
           schedule, the Prometheus metrics (endpoint served), history and log lines;
  bare     a plain loop over the same micro-batches, read into memory beforehand: forward, masked
           mean loss, backward, clip, AdamW step; nothing else.
Each side's rate is tokens per step over the median time between step ends (the first steps,
evaluation and checkpoint excluded): robust to other processes' bursts. The two alternate for
--rounds rounds, so that a busy machine slows both alike; the median ratio counts.

    .venv/bin/python benchmarks/trainer/bench_throughput.py [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import quickstart

WARMUP = 5


def median_step(marks: list[float]) -> float:
    """Median time between consecutive step ends: robust to other processes' bursts on a shared machine."""
    timed = marks[WARMUP:]
    return statistics.median(b - a for a, b in itertools.pairwise(timed))


def trainer_rate(steps: int, workers: int) -> float:
    from datamix_trainer.config import DistEnv, TrainerSettings
    from datamix_trainer.loop import StepRecord, train

    spec = quickstart(
        Path(tempfile.mkdtemp(prefix="datamix-bench-tp-")),
        {"trainSteps": steps, "evalInterval": 10_000, "checkpointInterval": 10_000, "logInterval": 10},
    )
    marks: list[float] = []

    def mark(_: StepRecord) -> None:
        marks.append(time.perf_counter())

    settings = TrainerSettings(
        metrics_port=0, termination_log=os.devnull + ".none", console=False, data_workers=workers
    )
    train(spec, DistEnv(), settings, hooks=[mark])
    return spec.training.global_batch_size * spec.training.seq_length / median_step(marks)


def bare_rate(steps: int) -> float:
    import torch
    import torch.distributed as dist
    from datamix_trainer.config import Plan, RunPaths
    from datamix_trainer.data import build_run_data, train_loader
    from datamix_trainer.model import build_torch_gpt
    from datamix_trainer.optim import learning_rate

    spec = quickstart(Path(tempfile.mkdtemp(prefix="datamix-bench-bare-")), {"trainSteps": steps})
    plan = Plan.make(spec, 1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    data = build_run_data(spec, plan, RunPaths(Path(spec.output_dir)))
    batches = list(train_loader(data, plan, 0, 0, 0))
    dist.destroy_process_group()
    torch.manual_seed(spec.training.seed)
    model = build_torch_gpt(spec, torch.device("cpu")).module
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    per_step = plan.micro_batches_per_step
    marks = []
    for step in range(steps):
        for group in optimizer.param_groups:  # the same schedule, so that both compute the same
            group["lr"] = learning_rate(spec.training.learning_rate, step * plan.global_batch_size, plan.total_samples)
        for mb in batches[step * per_step : (step + 1) * per_step]:
            loss = (model(mb["tokens"], mb["position_ids"], mb["labels"]) * mb["loss_mask"]).sum()
            (loss / (plan.global_batch_size * plan.seq_length)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
    return plan.tokens_per_step / median_step(marks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DATAMIX_DATA_WORKERS of the trainer")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    ratios = []
    for r in range(args.rounds):
        # Alternate which goes first: the second of a pair runs on warmer caches.
        if r % 2:
            bare, trainer = bare_rate(args.steps), trainer_rate(args.steps, args.workers)
        else:
            trainer, bare = trainer_rate(args.steps, args.workers), bare_rate(args.steps)
        ratios.append(trainer / bare)
        print(
            f"  round {r + 1}: trainer {trainer:9,.0f} tokens/s   bare loop {bare:9,.0f} tokens/s   "
            f"ratio {trainer / bare:.3f}",
            flush=True,
        )
    print(f"throughput benchmark: tiny model, {args.steps} steps x 16 x 128 tokens, 1 thread, metrics served")
    print(
        f"  trainer / bare loop: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
