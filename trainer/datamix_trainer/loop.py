"""The training loop: what `datamix train` runs in every process.

Order of events, and why:
1. check every data file (no torch needed; fails in a second with the file named, on every rank);
2. process group, then the launch's log folder (rank 0's timestamp and attempt number, shared);
3. datasets (rank 0 builds megatron's index cache, the others read it), model, optimizer;
4. resume from the latest complete checkpoint, if any;
5. steps: a step's global batch is the samples [step x gbs, (step+1) x gbs) of the blend, the same
   for any number of ranks; the loss is the mean over every unmasked token of that batch;
6. evaluation, checkpoints and metrics at their intervals; the run result at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from datamix.errors import UserError
from datamix.runspec import NON_FINITE_LOSS_EXIT_CODE, TERMINATION_LOG_PATH, RunResult, RunSpec
from datamix_trainer import distributed as dist
from datamix_trainer.checkpoint import Checkpointer
from datamix_trainer.config import DistEnv, Plan, RunPaths, TrainerSettings
from datamix_trainer.data import RunData, build_run_data, train_loader, validation_batches
from datamix_trainer.indexed import check_run_data
from datamix_trainer.logs import (
    flush_all,
    iteration_line,
    launch_timestamp,
    next_attempt,
    process_log_dir,
    process_logs,
    validation_line,
)
from datamix_trainer.metrics import TrainerMetrics, peak_flops
from datamix_trainer.model import BuiltModel, build_model
from datamix_trainer.optim import SampleSchedule, build_optimizer


@dataclass
class StepRecord:
    """What hooks see after each optimizer step (tests and benchmarks use them)."""

    step: int  # steps done, 1-based
    consumed_samples: int
    loss: float
    learning_rate: float
    grad_norm: float
    seconds: float
    dataset_ids: list[torch.Tensor]  # this rank's micro-batches, in the order they were consumed


StepHook = Callable[[StepRecord], None]


class Stopped(Exception):
    """SIGTERM arrived (pod deleted or suspended): a checkpoint was saved at a step boundary."""

    exit_code = 143  # 128 + SIGTERM: not a success, so the PyTorchJob does not count it as done


class NonFiniteLoss(Exception):
    """The loss or the gradient norm of a step is NaN or infinite: the run cannot recover by itself.

    Raised on every rank at the same step (both values are global), before the optimizer applies
    the step, so that no non-finite weights are saved and the last good checkpoints stay.
    """

    exit_code = NON_FINITE_LOSS_EXIT_CODE


@dataclass
class TrainState:
    """Everything besides model and optimizer that a checkpoint carries."""

    step: int = 0
    consumed_samples: int = 0
    tokens: list[int] = field(default_factory=list)  # per dataset, training tokens consumed
    wall_seconds: float = 0.0  # training time of earlier attempts
    recent_losses: list[float] = field(default_factory=list)  # the last log interval's step losses
    validation: list[float | None] = field(default_factory=list)  # the last evaluation


def train(
    spec: RunSpec,
    env: DistEnv | None = None,
    settings: TrainerSettings | None = None,
    hooks: Sequence[StepHook] = (),
) -> RunResult:
    """Train the run described by `spec` in this process (one of `env.world_size`)."""
    env = env or DistEnv.from_env()
    settings = settings or TrainerSettings.from_env()
    check_run_data(spec)
    plan = Plan.make(spec, env.world_size)
    paths = RunPaths(Path(spec.output_dir))
    device = dist.pick_device(env)
    dist.init_process_group(env, device)
    try:
        # One launch = one log folder on every host: rank 0 names it, the others follow.
        launch: tuple[str, int] | None = None
        if env.is_main:
            stamp = launch_timestamp()
            launch = (stamp, next_attempt(paths.logs, env, stamp))
        timestamp, attempt = cast(tuple[str, int], dist.broadcast_object(launch))
        log_dir = process_log_dir(paths.logs, env, timestamp, attempt)
        with process_logs(log_dir, echo_stdout=env.is_main and settings.console):
            try:
                trainer = Trainer(spec, env, settings, plan, paths, device, attempt, hooks)
                with stop_on_sigterm(trainer):
                    return trainer.run()
            except Stopped:
                raise
            except NonFiniteLoss as err:
                print(f"error: {err}", file=sys.stderr, flush=True)  # into stderr.log and the console
                raise
            except BaseException:
                # Into this process's stderr.log (the console gets it from the CLI or Python).
                getattr(sys.stderr, "file", sys.stderr).write(traceback.format_exc())
                raise
            finally:
                flush_all()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def stop_on_sigterm(trainer: Trainer) -> Iterator[None]:
    """SIGTERM asks the trainer to checkpoint and stop at the next step boundary.

    The kubelet sends SIGTERM when a pod is deleted (suspend, preemption, a new run) and SIGKILL
    after the grace period; torchrun forwards SIGTERM to its workers. Saving at a step boundary
    keeps the resumed run on exactly the same sample sequence.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        trainer.stop_requested = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Trainer:
    def __init__(
        self,
        spec: RunSpec,
        env: DistEnv,
        settings: TrainerSettings,
        plan: Plan,
        paths: RunPaths,
        device: torch.device,
        attempt: int,
        hooks: Sequence[StepHook],
    ) -> None:
        self.spec, self.env, self.settings, self.plan, self.paths = spec, env, settings, plan, paths
        self.device, self.attempt, self.hooks = device, attempt, list(hooks)
        self.names = [d.name for d in spec.datasets]
        self.state = TrainState(tokens=[0] * len(spec.datasets), validation=[None] * len(spec.datasets))
        self.started = time.time()
        self.stop_requested = False  # set by SIGTERM; agreed on by all ranks at the next step

        self.log(
            f"run {spec.experiment}/{spec.run}: {len(spec.datasets)} datasets, {plan.train_steps} steps of "
            f"{plan.global_batch_size} x {plan.seq_length} tokens, {env.world_size} process(es), device {device}, "
            f"attempt {attempt}"
        )
        for d in spec.datasets:
            note = "" if d.validation_path else " (no validationPath: validation loss reported as null)"
            self.log(f"  dataset {d.name}: share {d.share:.4f} {d.path}{note}")
        if env.is_main:
            paths.root.mkdir(parents=True, exist_ok=True)
            paths.run_spec.write_text(spec.to_json() + "\n")

        # The endpoint comes up first, so that a long index build shows as a live target.
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        self.metrics = TrainerMetrics(spec, peak_flops(spec, device_name))
        if env.is_local_main and settings.metrics_port is not None:
            port = self.metrics.serve(settings.metrics_port)
            print(f"metrics: serving Prometheus metrics on port {port} (/metrics)", flush=True)

        # Same seed on every rank: identical initial weights (DDP would broadcast them anyway).
        random.seed(spec.training.seed)
        np.random.seed(spec.training.seed)
        torch.manual_seed(spec.training.seed)

        t0 = time.perf_counter()
        self.data: RunData = build_run_data(spec, plan, paths)
        self.log(f"datasets ready in {time.perf_counter() - t0:.1f}s (index cache {paths.data_cache})")

        self.built: BuiltModel = build_model(settings.model, spec, device)
        self.module = self.built.module
        self.log(self.built.description)
        self.model: torch.nn.Module = self.module
        if env.world_size > 1:
            self.model = DistributedDataParallel(
                self.module,
                device_ids=[device.index] if device.type == "cuda" else None,
                forward_sync_buffers=False,  # the only buffers are rotary tables, identical everywhere
            )
        self.optimizer = build_optimizer(self.module, spec)
        self.schedule = SampleSchedule(self.optimizer, spec.training.learning_rate, plan.total_samples)
        clip = float(spec.model.settings.get("clipGrad", 1.0))
        self.clip = clip if clip > 0 else math.inf

        self.checkpointer = Checkpointer(
            paths.checkpoints,
            env.rank,
            env.world_size,
            dist.barrier,
            settings.keep_checkpoints,
            run=spec.run,
            all_ok=dist.all_true,
        )
        self.checkpointer.remove_partial()
        self.resume()

        self.metrics.start(self.state.consumed_samples, plan.total_samples, self.state.tokens)
        if any(v is not None for v in self.state.validation):
            # evaluations run every evalInterval steps and after the last one
            step, every = self.state.step, spec.training.eval_interval
            self.metrics.evaluation(self.state.validation, step if step == plan.train_steps else step - step % every)

    # Helpers ------------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        print(message, flush=True)

    def history(self, record: dict[str, Any]) -> None:
        if self.env.is_main:
            with open(self.paths.history, "a") as f:
                f.write(json.dumps({**record, "attempt": self.attempt}) + "\n")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.built.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.built.autocast_dtype)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # Checkpoints --------------------------------------------------------------------------------

    def resume(self) -> None:
        found = self.checkpointer.load_latest(self.device, self.log)
        if found is None:
            self.log("no checkpoint: starting from step 0")
            return
        checkpoint, state = found
        saved = state["trainer"]
        if saved.get("run") != self.spec.run:
            raise UserError(
                f"output.path: {checkpoint.path} belongs to run {saved.get('run')}, not {self.spec.run}; "
                "give each run its own output directory"
            )
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.state = TrainState(**{k: v for k, v in saved.items() if k != "run"})
        self.log(
            f"resumed from {checkpoint.path.name}: step {self.state.step}, "
            f"consumed samples {self.state.consumed_samples}"
        )

    def save(self) -> None:
        t0 = time.perf_counter()
        # Finite losses can still leave overflowed weights behind; such a checkpoint would replace
        # (and prune) the good ones. DDP keeps the parameters identical, so every rank agrees.
        bad = next((name for name, p in self.module.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise NonFiniteLoss(
                f"non-finite weights ({bad}) after step {self.state.step}: not saved; lower "
                "training.learningRate.peak (or raise warmupSamples) and start again"
            )

        def state() -> dict[str, Any]:
            trainer = asdict(self.state)
            trainer["wall_seconds"] = self.wall_seconds()
            return {
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "trainer": {**trainer, "run": self.spec.run},
            }

        saved = self.checkpointer.save(self.state.step, self.state.consumed_samples, state)
        self.metrics.checkpoint(time.time())
        self.log(f" [checkpoint] saved {saved.path} in {time.perf_counter() - t0:.2f}s")

    def wall_seconds(self) -> float:
        return self.state.wall_seconds + (time.time() - self.started)

    # Steps --------------------------------------------------------------------------------------

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, float, list[int], bool]:
        """One optimizer step over this rank's micro-batches; returns global loss, grad norm,
        per-dataset sample counts of the global batch, and whether any rank was asked to stop."""
        n = len(self.names)
        # Counts first: the loss of every micro-batch is normalised by the global token count, so
        # the gradient is the same for any number of ranks and micro-batches. The same all-reduce
        # tells every rank whether one of them got SIGTERM, so that all stop at the same step.
        counts = torch.zeros(n + 2, dtype=torch.float64)
        counts[1] = float(self.stop_requested)
        for mb in micro_batches:
            counts[0] += mb["loss_mask"].sum(dtype=torch.float64)
            counts[2:] += torch.bincount(mb["dataset_id"], minlength=n).to(torch.float64)
        dist.all_reduce_sum(counts)
        global_tokens = max(counts[0].item(), 1.0)
        scale = self.plan.data_parallel_size / global_tokens  # DDP averages over the ranks

        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, mb in enumerate(micro_batches):
            batch = self.to_device(mb)
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.env.world_size == 1 else self.model.no_sync()  # type: ignore[operator]
            with sync:
                with self.autocast():
                    per_token = self.model(batch["tokens"], batch["position_ids"], batch["labels"])
                masked = (per_token.float() * batch["loss_mask"]).sum()
                (masked * scale).backward()
            loss_sum += masked.detach().double()
        loss_global = dist.all_reduce_sum(loss_sum.cpu().reshape(1))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        loss, norm = float(loss_global.item() / global_tokens), float(grad_norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            step = self.state.step + 1
            raise NonFiniteLoss(
                f"non-finite training at step {step}: loss {loss}, grad norm {norm}; no checkpoint saved after "
                f"step {self.state.step}; lower training.learningRate.peak (or raise warmupSamples) and start again"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.built.after_step is not None:
            self.built.after_step(self.module)
        samples = [int(c) for c in counts[2:].tolist()]
        return loss, norm, samples, counts[1].item() > 0

    @torch.no_grad()
    def evaluate(self) -> list[float | None]:
        """Mean loss per token on each dataset's first `eval_samples` validation samples."""
        self.module.eval()
        n = len(self.names)
        sums = torch.zeros(2 * n, dtype=torch.float64)
        for i, dataset in enumerate(self.data.validation):
            if dataset is None:
                continue
            for mb in validation_batches(
                dataset, self.spec.training.eval_samples, self.plan.micro_batch_size, self.env.rank, self.env.world_size
            ):
                batch = self.to_device(mb)
                with self.autocast():
                    per_token = self.module(batch["tokens"], batch["position_ids"], batch["labels"])
                sums[2 * i] += (per_token.float() * batch["loss_mask"]).sum().double().cpu()
                sums[2 * i + 1] += batch["loss_mask"].sum().double().cpu()
        dist.all_reduce_sum(sums)
        self.module.train()
        return [
            float(sums[2 * i] / sums[2 * i + 1])
            if self.data.validation[i] is not None and sums[2 * i + 1] > 0
            else None
            for i in range(n)
        ]

    def run_evaluation(self) -> None:
        t0 = time.perf_counter()
        losses = self.evaluate()
        self.state.validation = losses
        self.metrics.evaluation(losses, self.state.step)
        self.log(validation_line(self.state.step, self.names, losses) + f" ({time.perf_counter() - t0:.1f}s)")
        self.history(
            {"kind": "eval", "step": self.state.step, "validation_loss": dict(zip(self.names, losses, strict=True))}
        )

    def run(self) -> RunResult:
        spec, plan, state = self.spec, self.plan, self.state
        t = spec.training
        loader = iter(train_loader(self.data, plan, state.consumed_samples, self.env.rank, self.settings.data_workers))
        interval_start, interval_steps = time.perf_counter(), 0
        interval_compute = 0.0
        last_eval = last_save = -1
        self.module.train()
        while state.step < plan.train_steps:
            t0 = time.perf_counter()
            micro_batches = [next(loader) for _ in range(plan.micro_batches_per_step)]
            lr = self.schedule.step(state.consumed_samples)
            loss, grad_norm, samples, stop = self.train_step(micro_batches)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - t0

            state.step += 1
            state.consumed_samples += plan.global_batch_size
            dataset_tokens = [c * plan.seq_length for c in samples]
            state.tokens = [a + b for a, b in zip(state.tokens, dataset_tokens, strict=True)]
            state.recent_losses = ([*state.recent_losses, loss])[-t.log_interval :]
            self.metrics.step(
                loss,
                lr,
                grad_norm,
                seconds,
                plan.tokens_per_step,
                state.consumed_samples,
                dataset_tokens,
                self.built.flops_per_token,
                self.env.world_size,
            )
            self.history(
                {
                    "kind": "train",
                    "step": state.step,
                    "consumed_samples": state.consumed_samples,
                    "loss": loss,
                    "learning_rate": lr,
                    "grad_norm": grad_norm,
                    "seconds": seconds,
                }
            )
            record = StepRecord(
                state.step,
                state.consumed_samples,
                loss,
                lr,
                grad_norm,
                seconds,
                [mb["dataset_id"] for mb in micro_batches],
            )
            for hook in self.hooks:
                hook(record)

            interval_steps += 1
            interval_compute += seconds
            done = state.step == plan.train_steps
            if state.step % t.log_interval == 0 or done:
                elapsed = time.perf_counter() - interval_start
                self.log(
                    iteration_line(
                        state.step,
                        plan.train_steps,
                        state.consumed_samples,
                        1000 * elapsed / interval_steps,
                        plan.tokens_per_step * interval_steps / max(interval_compute, 1e-9),
                        lr,
                        plan.global_batch_size,
                        sum(state.recent_losses) / len(state.recent_losses),
                        grad_norm,
                    )
                )
            if state.step % t.eval_interval == 0 or done:
                self.run_evaluation()
                last_eval = state.step
            if state.step % t.checkpoint_interval == 0 or done:
                self.save()
                last_save = state.step
            if state.step in (last_eval, last_save) or state.step % t.log_interval == 0:
                interval_start, interval_steps, interval_compute = time.perf_counter(), 0, 0.0
            if stop and not done:
                if last_save != state.step:
                    self.save()
                self.log(f"stopping on SIGTERM after step {state.step}; the next start resumes here")
                raise Stopped(f"stopped on SIGTERM at step {state.step} (checkpoint saved)")

        # A run resumed from its final checkpoint trains nothing and reports what that checkpoint holds.
        return self.finish()

    def finish(self) -> RunResult:
        state = self.state
        result = RunResult(
            run=self.spec.run,
            train_loss=sum(state.recent_losses) / len(state.recent_losses) if state.recent_losses else None,
            validation_loss=tuple(state.validation),
            tokens=tuple(state.tokens),
            steps=state.step,
            consumed_samples=state.consumed_samples,
            wall_seconds=self.wall_seconds(),
            # a pass over every dataset's sequence lengths: only where the result is written
            epoch_tokens=tuple(self.data.epoch_tokens()) if self.env.is_main else (),
        )
        if self.env.is_main:
            write_result(result, self.paths, self.settings.termination_log)
            shares = ", ".join(
                f"{n} {s:.3f}/{d.share:.3f}"
                for n, s, d in zip(self.names, result.realised_shares, self.spec.datasets, strict=True)
            )
            self.log(f"done: {state.step} steps, train loss {result.train_loss}, realised/target shares: {shares}")
            self.log(f"results: {self.paths.results}")
        return result


def write_result(result: RunResult, paths: RunPaths, termination_log: str) -> None:
    """`results.json` (pretty, every field of RunResult) and, in a pod, the termination message."""
    tmp = paths.results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2, sort_keys=True) + "\n")
    tmp.replace(paths.results)
    termination = Path(termination_log)
    if termination.parent.is_dir() and (termination.exists() or termination_log != TERMINATION_LOG_PATH):
        termination.write_text(result.encode())
