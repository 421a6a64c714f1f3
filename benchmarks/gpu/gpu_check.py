"""The steps of benchmarks/gpu/check.sh (one subcommand each); run from the repository root.

Each step trains through the trainer's own entry points (`python -m datamix_cli train`, and
`datamix launch` for two processes) on the demo data, reads the trainer's own outputs (its
Prometheus endpoint, `history.jsonl`) and prints one `RESULT` line; the exit code says pass (0) or
fail (1). `--cpu` runs the same steps on the CPU with the tiny preset: what the test suite runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# (b): the largest |GPU loss - CPU loss| allowed over 20 fp32 steps of the tiny preset. Both runs
# compute the same model from the same initial weights (built on the CPU from the seed) on the same
# batches; only the order of floating-point sums differs (cuBLAS and CPU kernels), about 1e-6 per
# step, which AdamW can grow to about 1e-4 in 20 steps. 5e-3 is 0.1% of the initial loss of 5.5:
# far below any real difference (a wrong mask, a wrong batch or another dtype moves it by > 0.05).
PARITY_TOLERANCE = 5e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_data(directory: Path, small: bool) -> Path:
    from datamix_trainer import demo_data as demo

    if not demo.is_built(directory):
        if small:  # the test suite's size: builds in seconds, holds more than the CPU steps read
            demo.build(directory, log=lambda _: None, max_domain_bytes=250_000)
        else:
            demo.build(directory, log=lambda _: None)
    return directory


def run_spec(data: Path, out: Path, preset: str, steps: int, nproc: int, gpus: int = 0, **training: Any) -> Path:
    """The quickstart manifest with another preset and length, as `datamix run` would map it
    (`gpus`: resources.gpusPerNode; GPU-only presets such as openseek-small need it)."""
    from datamix.experiment import build_run_spec, load_manifest

    manifest = load_manifest(REPO / "examples" / "quickstart.yaml")
    manifest["metadata"]["name"] = f"gpu-check-{preset}-{nproc}p"
    manifest["spec"]["model"] = {"preset": preset, "overrides": training.pop("overrides", {})}
    manifest["spec"]["resources"]["gpusPerNode"] = gpus
    t = manifest["spec"]["training"]
    t.pop("trainSamples", None)
    t.update({"trainSteps": steps, "checkpointInterval": steps, "evalInterval": steps, "logInterval": 10})
    t.update(training)
    spec = build_run_spec(manifest, base_dir=str(data), output_dir=str(out), procs_per_node=nproc, nodes=1)
    path = out / f"{spec.experiment}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.to_json())
    return path


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "dataset" not in s.labels
    }


def train(spec_path: Path, nproc: int, log: Path, **env: str) -> tuple[int, list[dict[str, float]], dict[int, float]]:
    """Run the trainer; return its exit code, the metrics scraped while it ran, and step -> loss."""
    port = free_port()
    environment = {**os.environ, "DATAMIX_METRICS_PORT": str(port), "PYTHONWARNINGS": "ignore", **env}
    train_args = ["-m", "datamix_cli", "train", "--run-spec", str(spec_path)]
    if nproc == 1:
        command = [sys.executable, *train_args]
    else:
        command = [sys.executable, "-m", "datamix_cli", "launch", "--standalone", f"--nproc-per-node={nproc}"]
        command += train_args
    snapshots: list[dict[str, float]] = []
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=REPO)
        while process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                snapshots.append(scrape(port))
            time.sleep(1.0)
    spec = json.loads(spec_path.read_text())
    history = Path(spec["output_dir"]) / "history.jsonl"
    losses: dict[int, float] = {}
    if history.exists():
        for line in history.read_text().splitlines():
            record = json.loads(line)
            if record["kind"] == "train":
                losses[record["step"]] = record["loss"]
    return process.returncode, snapshots, losses


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def loss_falls(losses: dict[int, float], window: int) -> tuple[float, float, bool]:
    steps = sorted(losses)
    first = statistics.fmean(losses[s] for s in steps[:window])
    last = statistics.fmean(losses[s] for s in steps[-window:])
    return first, last, last <= 0.9 * first


def throughput(snapshots: list[dict[str, float]]) -> tuple[float, float | None]:
    """Median tokens/s and MFU over the second half of the run (start-up and compilation excluded)."""
    running = [s for s in snapshots if s.get("datamix_consumed_samples")]
    later = running[len(running) // 2 :] or running
    if not later:
        return 0.0, None
    tokens = statistics.median(s.get("datamix_tokens_per_second", 0.0) for s in later)
    mfu = [s["datamix_model_flops_utilization"] for s in later if "datamix_model_flops_utilization" in s]
    return tokens, statistics.median(mfu) if mfu else None


def step_train(args: argparse.Namespace, work: Path, data: Path) -> bool:
    """(a) the preset through the trainer for a few hundred steps: the loss falls; tokens/s, MFU."""
    preset = "tiny" if args.cpu else "openseek-small"
    # openseek-small: 8 x 1024 tokens per step; its own bf16, learning rate of a small run.
    extra: dict[str, Any] = (
        {}
        if args.cpu
        else {
            "seqLength": 1024,
            "globalBatchSize": 8,
            "microBatchSize": 8,
            "learningRate": {"peak": 1e-3, "min": 1e-4, "warmupSamples": 160, "decay": "cosine"},
        }
    )
    spec = run_spec(data, work / "a", preset, args.steps, 1, gpus=0 if args.cpu else 1, **extra)
    log = work / "a.log"
    started = time.time()
    code, snapshots, losses = train(spec, 1, log)
    if code != 0 or len(losses) < args.steps:
        print(f"RESULT (a) {preset}: FAILED (exit {code}, {len(losses)} steps)\n{tail(log)}")
        return False
    first, last, falls = loss_falls(losses, 10)
    tokens, mfu = throughput(snapshots)
    model = next((line for line in log.read_text().splitlines() if "parameters" in line), "?")
    print(f"    model: {model.strip()}")
    print(
        f"RESULT (a) {preset}: {args.steps} steps in {time.time() - started:.0f}s, loss {first:.3f} -> {last:.3f} "
        f"({'falls' if falls else 'DOES NOT FALL'}), {tokens:,.0f} tokens/s, "
        f"MFU {'n/a (no known peak on this device)' if mfu is None else f'{mfu:.3f}'}"
    )
    return falls


def step_parity(args: argparse.Namespace, work: Path, data: Path) -> bool:
    """(b) the tiny preset, 20 fp32 steps on the GPU and on the CPU, same data and seed."""
    fp32 = {"overrides": {"bf16": False}}
    results: dict[str, dict[int, float]] = {}
    for device in ("cpu",) if args.cpu else ("cpu", "cuda"):
        spec = run_spec(data, work / f"b-{device}", "tiny", 20, 1, gpus=int(device == "cuda"), **fp32)
        env = {"DATAMIX_MODEL": "torch", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        log = work / f"b-{device}.log"
        code, _, losses = train(spec, 1, log, **env)
        if code != 0 or len(losses) != 20:
            print(f"RESULT (b) tiny on {device}: FAILED (exit {code}, {len(losses)} steps)\n{tail(log)}")
            return False
        results[device] = losses
    cpu = results["cpu"]
    if "cuda" not in results:
        print(
            f"RESULT (b) tiny fp32, 20 steps: CPU half only (--cpu): loss {cpu[1]:.4f} -> {cpu[20]:.4f}; "
            "the GPU half runs without --cpu"
        )
        return True
    gpu = results["cuda"]
    worst = max(abs(gpu[s] - cpu[s]) for s in range(1, 21))
    ok = worst <= PARITY_TOLERANCE
    print(
        f"RESULT (b) tiny fp32, 20 steps, GPU vs CPU: max |loss difference| {worst:.2e} "
        f"(tolerance {PARITY_TOLERANCE:.0e}): {'ok' if ok else 'TOO LARGE'}; "
        f"step 20 GPU {gpu[20]:.6f} CPU {cpu[20]:.6f}"
    )
    return ok


def step_two_processes(args: argparse.Namespace, work: Path, data: Path) -> bool:
    """(c) the trainer under the launcher with 2 processes (on the one GPU if memory allows)."""
    where = "2 CPU processes"
    env: dict[str, str] = {}
    if args.cpu:
        env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    else:
        import torch

        free, total = torch.cuda.mem_get_info()
        if free < 8 * 2**30:
            print(f"RESULT (c) skipped: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB; 2 processes want 8 GiB")
            return True
        where = f"2 processes on one GPU ({free / 2**30:.0f} GiB free)"
    spec = run_spec(data, work / "c", "tiny", args.two_process_steps, 2, gpus=0 if args.cpu else 1)
    log = work / "c.log"
    code, snapshots, losses = train(spec, 2, log, **env)
    if code != 0 or len(losses) != args.two_process_steps:
        print(f"RESULT (c) {where}: FAILED (exit {code}, {len(losses)} steps)\n{tail(log)}")
        return False
    tokens, _ = throughput(snapshots)
    shared = "GPU(s): gloo for all collectives" in log.read_text()
    backend = "gloo (shared GPU)" if shared else ("gloo" if args.cpu else "NCCL")
    print(
        f"RESULT (c) {where}, {backend}: {len(losses)} steps, loss {losses[1]:.3f} -> "
        f"{losses[max(losses)]:.3f}, {tokens:,.0f} tokens/s"
    )
    return True


STEPS = {"train": step_train, "parity": step_parity, "two-processes": step_two_processes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--cpu", action="store_true", help="the CPU half: tiny preset, no GPU needed")
    parser.add_argument("--work", required=True, help="scratch directory (data, outputs, logs)")
    parser.add_argument("--steps", type=int, default=300, help="(a): training steps")
    parser.add_argument("--two-process-steps", type=int, default=20, help="(c): training steps")
    args = parser.parse_args()
    work = Path(args.work)
    data = demo_data(work / "demo-data", small=args.cpu)
    return 0 if STEPS[args.step](args, work, data) else 1


if __name__ == "__main__":
    sys.exit(main())
