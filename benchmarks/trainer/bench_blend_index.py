"""Benchmark (b): time to build the blend index for 84 sources and 10 million samples.

Three figures:
  1. megatron-core's blending index alone (`helpers.build_blending_indices`, the dataset id and
     sample id of each of the 10M positions), for the 84 weights of the seed's baseline;
  2. the trainer's whole data build, cold: `build_run_data` -> BlendedMegatronDatasetBuilder over 84
     GPTDatasets (document, sample and shuffle indices of each, then the blend), written to the
     index cache on the output volume;
  3. the same, warm: what every other rank and every restart does (loads the cache).

The 84 sources are small synthetic indexed datasets (the weights are what matters to the index);
sequence length 4096 as in the seed. Weights: the seed's data_path when ../shared/seeds is present,
else 84 deterministic pseudo-random weights.

    .venv/bin/python benchmarks/trainer/bench_blend_index.py [--samples 10000000] [--sources 84]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SEED_CONFIG = REPO.parent / "shared/seeds/openseek-configs/OpenSeek-Small-v1-Baseline/train/train_deepseek_v3_1_4b.yaml"


def seed_weights(n: int) -> tuple[list[float], str]:
    if SEED_CONFIG.exists():
        text = SEED_CONFIG.read_text()
        block = text[text.index("data_path:") :]
        weights = [float(w) for w in re.findall(r"^\s+- ([0-9.]+)\s*$", block, flags=re.M)][:n]
        if len(weights) == n:
            return weights, f"the seed's baseline ({SEED_CONFIG.name})"
    rng = np.random.default_rng(84)
    return list(rng.uniform(0.05, 2.0, n)), "pseudo-random"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--sources", type=int, default=84)
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--tokens-per-source", type=int, default=400_000)
    args = parser.parse_args()

    import torch.distributed as dist
    from datamix_trainer.config import Plan, RunPaths
    from datamix_trainer.data import build_run_data
    from datamix_trainer.megatron_imports import IndexedDatasetBuilder

    from datamix.runspec import DatasetSpec, LearningRate, ModelSpec, RunSpec, TrainingSpec, normalise

    raw, origin = seed_weights(args.sources)
    weights = normalise(raw)
    root = Path(tempfile.mkdtemp(prefix="datamix-bench-blend-"))
    try:
        rng = np.random.default_rng(0)
        docs = 100
        datasets = []
        for i in range(args.sources):
            prefix = root / "data" / f"source_{i:02d}_text_document"
            prefix.parent.mkdir(parents=True, exist_ok=True)
            builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
            for _ in range(docs):
                n = args.tokens_per_source // docs
                builder.add_document(rng.integers(0, 256, n, dtype=np.uint16), [n])
            builder.finalize(str(prefix) + ".idx")
            datasets.append(DatasetSpec(name=f"source-{i:02d}", path=str(prefix), share=weights[i]))

        from megatron.core.datasets import helpers

        w = np.array(weights, dtype=np.float64)
        index = np.zeros(args.samples, dtype=np.int16)
        sample_index = np.zeros(args.samples, dtype=np.int64)
        t0 = time.perf_counter()
        helpers.build_blending_indices(index, sample_index, w, len(w), args.samples, False)
        blend_only = time.perf_counter() - t0
        counts = np.bincount(index, minlength=len(w))
        worst = float(np.abs(counts - w * args.samples).max())

        spec = RunSpec(
            experiment="bench",
            namespace="default",
            run="blend",
            datasets=tuple(datasets),
            model=ModelSpec("tiny", {}),
            training=TrainingSpec(
                seq_length=args.seq_length,
                global_batch_size=1,
                micro_batch_size=1,
                train_samples=args.samples,
                learning_rate=LearningRate(1e-3, 0.0, 0, "constant"),
                seed=42,
                checkpoint_interval=1,
                eval_interval=1,
                eval_samples=1,
                log_interval=1,
                vocab_size=257,
                eod_token=256,
            ),
            output_dir=str(root / "out"),
            nodes=1,
            procs_per_node=1,
        )
        plan = Plan.make(spec, 1)
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        paths = RunPaths(Path(spec.output_dir))
        t0 = time.perf_counter()
        data = build_run_data(spec, plan, paths)
        cold = time.perf_counter() - t0
        assert len(data.train) >= args.samples
        t0 = time.perf_counter()
        build_run_data(dataclasses.replace(spec), plan, paths)
        warm = time.perf_counter() - t0
        cache = sum(p.stat().st_size for p in paths.data_cache.iterdir()) / 1e6

        print(
            f"blend index benchmark: {args.sources} sources (weights: {origin}), {args.samples:,} samples, "
            f"sequence length {args.seq_length}"
        )
        print(
            f"  blending index alone (helpers.build_blending_indices): {blend_only:8.2f} s "
            f"(largest deviation from weight x n: {worst:.2f} samples)"
        )
        print(f"  trainer data build, cold (84 GPTDatasets + blend, cached): {cold:8.2f} s")
        print(f"  trainer data build, warm (cache hit, other ranks/restarts): {warm:8.2f} s")
        print(f"  index cache on the output volume: {cache:.0f} MB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
