"""Data: file checks, the in-order sharded sampler, and the realised mixture of what was trained on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datamix_trainer.indexed import check_indexed, check_run_data

from datamix.errors import UserError
from tests.trainer.runs import REPO, quickstart_spec, trainer_env, write_spec


def copy_demo(demo_dir: Path, target: Path) -> Path:
    shutil.copytree(demo_dir, target)
    return target


def test_demo_data_has_five_or_more_domains_with_validation(demo_dir: Path) -> None:
    spec = quickstart_spec(demo_dir, demo_dir / "unused")
    assert len(spec.datasets) >= 5
    assert len({round(d.share, 6) for d in spec.datasets}) == len(spec.datasets), "weights must be uneven"
    for train, valid in check_run_data(spec):
        assert valid is not None
        assert train.tokens > 10 * valid.tokens / 2  # roughly 9:1 documents, held out by document
        assert train.documents > 0, "training split empty"
        assert valid.documents > 0, "validation split empty"


def test_check_indexed_names_missing_and_corrupt_files(demo_dir: Path, tmp_path: Path) -> None:
    data = copy_demo(demo_dir, tmp_path / "data")
    prefix = str(data / "licenses" / "train_text_document")
    info = check_indexed(prefix, vocab_size=257)
    assert info.tokens == (data / "licenses" / "train_text_document.bin").stat().st_size // 2

    with pytest.raises(UserError, match="vocabSize is 200"):
        check_indexed(prefix, vocab_size=200)

    bin_path = Path(prefix + ".bin")
    with open(bin_path, "r+b") as f:
        f.truncate(bin_path.stat().st_size - 10)
    with pytest.raises(UserError, match=f"{bin_path} is corrupt"):
        check_indexed(prefix)

    idx_path = Path(prefix + ".idx")
    idx_path.write_bytes(b"garbage" + idx_path.read_bytes()[7:])
    with pytest.raises(UserError, match=f"{idx_path} is corrupt.*bad magic"):
        check_indexed(prefix)

    idx_path.unlink()
    with pytest.raises(UserError, match=f"{idx_path} does not exist"):
        check_indexed(prefix)


@pytest.mark.parametrize("damage", ["missing-idx", "truncated-bin", "missing-validation-bin"])
def test_bad_data_file_fails_before_step_one_with_the_file_named(demo_dir: Path, tmp_path: Path, damage: str) -> None:
    data = copy_demo(demo_dir, tmp_path / "data")
    if damage == "missing-idx":
        victim = data / "comments" / "train_text_document.idx"
        victim.unlink()
    elif damage == "truncated-bin":
        victim = data / "html-docs" / "train_text_document.bin"
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size // 2)
    else:
        victim = data / "licenses" / "validation_text_document.bin"
        victim.unlink()
    spec = quickstart_spec(data, tmp_path / "out", training={"trainSteps": 5})
    result = subprocess.run(
        [sys.executable, "-m", "datamix_cli", "train", "--run-spec", str(write_spec(spec, tmp_path))],
        capture_output=True,
        text=True,
        env=trainer_env(),
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert str(victim) in lines[0]
    assert "Traceback" not in result.stderr
    assert "iteration" not in result.stdout
    # Nothing was trained: no checkpoint, no history, not even a process group or log folder.
    assert not Path(spec.output_dir).exists()


def test_sampler_gives_every_rank_its_slice_of_the_same_global_batches() -> None:
    from datamix_trainer.data import InOrderShardedSampler

    total, micro, consumed = 96, 4, 16
    single = [i for batch in InOrderShardedSampler(total, consumed, micro, 0, 1) for i in batch]
    assert single == list(range(consumed, total))
    ranks = [list(InOrderShardedSampler(total, consumed, micro, r, 2)) for r in range(2)]
    interleaved = [i for pair in zip(*ranks, strict=True) for batch in pair for i in batch]
    assert interleaved == single  # each chunk of micro x dp samples: rank 0's slice, then rank 1's
    assert set(ranks[0][0]).isdisjoint(ranks[1][0])


@pytest.mark.training
def test_consumed_samples_per_dataset_track_target_shares_at_every_prefix(demo_dir: Path, tmp_path: Path) -> None:
    """Run the real loop (in this process) and count the dataset_id of every sample it trained on."""
    import torch
    from datamix_trainer.config import DistEnv, TrainerSettings
    from datamix_trainer.loop import StepRecord, train

    steps = 30
    spec = quickstart_spec(
        demo_dir, tmp_path / "out", training={"trainSteps": steps, "evalInterval": 1000, "checkpointInterval": 1000}
    )
    weights = np.array(spec.shares)
    assert len(weights) >= 5, weights
    assert len(set(weights.round(6))) == len(weights), f"weights not all different: {weights}"
    consumed: list[int] = []

    def record(step: StepRecord) -> None:
        for ids in step.dataset_ids:
            consumed.extend(int(i) for i in ids)

    settings = TrainerSettings(metrics_port=None, termination_log=str(tmp_path / "termination-log"), console=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess runs do; two threads on two busy cores crawl
    try:
        result = train(spec, DistEnv(), settings, hooks=[record])
    finally:
        torch.set_num_threads(threads)

    n = spec.training.global_batch_size * steps
    assert len(consumed) == n
    counts = np.zeros(len(weights))
    worst = 0.0
    for prefix, dataset in enumerate(consumed, start=1):
        counts[dataset] += 1
        worst = max(worst, float(np.abs(counts - weights * prefix).max()))
    assert worst <= 2.0, f"a dataset strayed {worst:.2f} samples from its target share"
    assert all(c > 0 for c in counts)
    # The run result's token counts are the same samples, seq_length tokens each.
    assert list(result.tokens) == [int(c) * spec.training.seq_length for c in counts]


@pytest.mark.training
@pytest.mark.parametrize("sources", [1, 3])
def test_run_result_reports_each_datasets_epoch_tokens(demo_dir: Path, tmp_path: Path, sources: int) -> None:
    """The sizes maxEpochs divides by: per dataset, the tokens in its training data, as megatron-core's
    dataset counts them (a blend, and a one-source run's bare dataset), in the result and the
    termination message. Checked against the .bin files' sizes (uint16 tokens, no reader shared)."""
    import dataclasses

    import torch
    from datamix_trainer.config import DistEnv, TrainerSettings
    from datamix_trainer.loop import train

    from datamix.runspec import RunResult, normalise

    spec = quickstart_spec(
        demo_dir, tmp_path / "out", training={"trainSteps": 2, "evalInterval": 1000, "checkpointInterval": 1000}
    )
    chosen = spec.datasets[:sources]
    shares = normalise([d.share for d in chosen])
    spec = dataclasses.replace(
        spec, datasets=tuple(dataclasses.replace(d, share=s) for d, s in zip(chosen, shares, strict=True))
    )
    termination = tmp_path / "termination-log"
    settings = TrainerSettings(metrics_port=None, termination_log=str(termination), console=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(spec, DistEnv(), settings)
    finally:
        torch.set_num_threads(threads)

    on_disk = [Path(d.path + ".bin").stat().st_size // 2 for d in spec.datasets]
    assert list(result.epoch_tokens) == on_disk
    assert RunResult.decode(termination.read_text()).epoch_tokens == result.epoch_tokens


def test_validation_samples_do_not_depend_on_the_training_seed(demo_dir: Path, tmp_path: Path) -> None:
    """Two seeds of a mixture are scored on the same validation samples; they train on different orders."""
    import dataclasses

    import torch.distributed as dist
    from datamix_trainer.config import Plan, RunPaths
    from datamix_trainer.data import build_run_data

    def built(seed: int) -> tuple[list[list[int]], list[int]]:
        spec = quickstart_spec(demo_dir, tmp_path / f"seed-{seed}", training={"trainSteps": 4, "evalSamples": 8})
        spec = dataclasses.replace(spec, training=dataclasses.replace(spec.training, seed=seed))
        data = build_run_data(spec, Plan.make(spec, 1), RunPaths(Path(spec.output_dir)))
        valid = data.validation[0]
        assert valid is not None
        return [list(valid[i]["tokens"][:16]) for i in range(8)], list(data.train[0]["tokens"][:16])

    # megatron-core's builder synchronises the ranks: a one-process group
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        valid_1, train_1 = built(1)
        valid_2, train_2 = built(2)
    finally:
        dist.destroy_process_group()
    assert valid_1 == valid_2, "the validation samples changed with the training seed"
    assert train_1 != train_2, "the training order should follow the seed"
