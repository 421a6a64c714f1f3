"""A stand-in for `datamix run` in tests of `datamix sweep run`'s orchestration: it writes the
run's results.json where the local runner would, with per-domain validation losses from a known
law of the manifest's mixture (as the e2e test hands results to kwok's fake pods).

    python fake_trainer.py MANIFEST DATA_DIR OUTPUT_DIR

$FAKE_TRAINER_LOG: a file to append `start|end <name> <time>` lines to (to check parallelism);
$FAKE_TRAINER_FAIL: comma-separated experiment names that fail with a user error;
$FAKE_TRAINER_EPOCH_TOKENS: a JSON map of domain -> tokens per epoch to report as epoch_tokens.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from datamix.experiment import DEFAULT_NAMESPACE, run_id, run_output_dir
from tests.search.laws import MixingLaw

LAW_SEED = 11


def law(domains: int) -> MixingLaw:
    return MixingLaw.random(np.random.default_rng(LAW_SEED), domains)


def main() -> int:
    manifest_path, _data, output = sys.argv[1:4]
    manifest = yaml.safe_load(Path(manifest_path).read_text())
    name = manifest["metadata"]["name"]
    log = os.environ.get("FAKE_TRAINER_LOG")
    if log:
        with open(log, "a") as stream:
            stream.write(f"start {name} {time.time()}\n")
    time.sleep(0.3)
    if name in os.environ.get("FAKE_TRAINER_FAIL", "").split(","):
        print("error: spec.datasets.mixture[0].path: file not found (fake)", flush=True)
        return 2
    weights = np.array([float(d["weight"]) for d in manifest["spec"]["datasets"]["mixture"]])
    shares = weights / weights.sum()
    losses = law(len(shares)).losses(shares)[0]
    namespace = manifest["metadata"].get("namespace") or DEFAULT_NAMESPACE
    run_dir = Path(run_output_dir(output, namespace, name, run_id(manifest)))
    run_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "run": run_id(manifest),
        "train_loss": float(losses.mean()),
        "validation_loss": [float(v) for v in losses],
        "tokens": [int(1000 * s) for s in shares],
        "steps": 10,
        "consumed_samples": 160,
        "wall_seconds": 0.3,
    }
    sizes = os.environ.get("FAKE_TRAINER_EPOCH_TOKENS")
    if sizes:
        result["epoch_tokens"] = [json.loads(sizes)[d["name"]] for d in manifest["spec"]["datasets"]["mixture"]]
    (run_dir / "results.json").write_text(json.dumps(result))
    if log:
        with open(log, "a") as stream:
            stream.write(f"end {name} {time.time()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
