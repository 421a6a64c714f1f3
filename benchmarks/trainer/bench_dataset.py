"""Benchmark (a): samples/s of the blended dataset against reading the same indexed datasets directly.

Reads the quickstart's blend (six demo datasets, sequence length 128) in order, four ways:
  direct    the same dataset sequence, each sample a contiguous window of seq_length + 1 tokens
            sliced from that dataset's memory-mapped .bin (no shuffling, no document index):
            the floor of what any reader costs;
  gpt       megatron-core GPTDataset.__getitem__ on each dataset, in the blend's order;
  blended   megatron-core BlendedDataset.__getitem__ (what the trainer indexes);
  loader    the trainer's DataLoader: in-order sharded sampler + collate into micro-batches.

    .venv/bin/python benchmarks/trainer/bench_dataset.py [--samples 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import quickstart


def rate(fn, n: int) -> float:
    fn(min(n, 500))  # warm the page cache and lazy state
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20_000)
    args = parser.parse_args()

    import torch
    import torch.distributed as dist
    from datamix_trainer.config import Plan, RunPaths
    from datamix_trainer.data import build_run_data, train_loader
    from datamix_trainer.megatron_imports import IndexedDataset

    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="datamix-bench-data-"))
    n = args.samples
    spec = quickstart(out, {"trainSteps": -(-n // 16)})
    plan = Plan.make(spec, 1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    data = build_run_data(spec, plan, RunPaths(Path(spec.output_dir)))
    ids = data.dataset_ids(0, n)
    seq = spec.training.seq_length

    bins = [IndexedDataset(d.path).bin_reader for d in spec.datasets]
    tokens = [np.memmap(d.path + ".bin", dtype=np.uint16, mode="r") for d in spec.datasets]

    def direct(k: int) -> None:
        cursor = [0] * len(tokens)
        for i in range(k):
            d = ids[i]
            start = cursor[d]
            if start + seq + 1 > len(tokens[d]):
                start = 0
            torch.from_numpy(tokens[d][start : start + seq + 1].astype(np.int64))
            cursor[d] = start + seq + 1

    per_dataset_index = data.train.dataset_sample_index

    def gpt(k: int) -> None:
        for i in range(k):
            data.train.datasets[ids[i]][per_dataset_index[i]]

    def blended(k: int) -> None:
        for i in range(k):
            data.train[i]

    def loader(k: int) -> None:
        seen = 0
        for batch in train_loader(data, plan, 0, 0, 0):
            seen += len(batch["tokens"])
            if seen >= k:
                break

    del bins
    results = {
        name: rate(fn, n) for name, fn in (("direct", direct), ("gpt", gpt), ("blended", blended), ("loader", loader))
    }
    print(f"dataset read benchmark: {n:,} samples of {seq} tokens, {len(spec.datasets)} datasets, 1 thread")
    for name, r in results.items():
        print(
            f"  {name:<8} {r:>10,.0f} samples/s  {r * seq / 1e6:7.2f} M tokens/s  "
            f"({r / results['direct']:.2f} x direct)"
        )
    print(f"  blended / gpt: {results['blended'] / results['gpt']:.3f}  (cost of the blend itself)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
