"""The run's data: megatron-core's blended GPT dataset, read in order and sharded across ranks.

- Training: one `BlendedMegatronDatasetBuilder` over `GPTDataset`s with the run spec's normalised
  weights. megatron-core's blending index puts at every position the dataset furthest below its
  target share, so the counts of samples per dataset track `weight x n` at every prefix.
- Validation: each dataset's `validation_path` is its own `GPTDataset` (megatron's "multiple
  validation sets"), so every evaluation reports one loss per dataset. A dataset without a
  validation path is skipped and reported as null. Its samples are shuffled with a fixed seed, not
  the training seed: runs of any seed and mixture are scored on the same samples of a domain.
- Order: shuffling happens inside each dataset, so the blend is read in order; the only state is
  the number of consumed samples (Megatron-LM's pretraining sampler), which checkpoints restore.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from datamix.runspec import RunSpec
from datamix_trainer.config import Plan, RunPaths
from datamix_trainer.megatron_imports import BlendedMegatronDatasetBuilder, GPTDataset, GPTDatasetConfig


class IdsTokenizer:
    """What megatron-core's GPT dataset needs of a tokenizer when the data is already token ids.

    The trainer never tokenizes: it needs the vocabulary size (for the token dtype) and the
    end-of-document id (for masks). No `pad` attribute: megatron then pads with -1, an id that
    cannot collide with real tokens. `unique_identifiers` enters the index cache's hash.
    """

    def __init__(self, vocab_size: int, eod: int) -> None:
        self.vocab_size = vocab_size
        self.eod = eod
        self.unique_identifiers = {"class": "IdsTokenizer", "vocab_size": vocab_size, "eod": eod}


@dataclass
class RunData:
    train: Any  # BlendedDataset (or one GPTDataset when the mixture has one source)
    validation: list[Any | None]  # per dataset of the run spec; None where it has no validation path
    dataset_names: list[str]

    def dataset_ids(self, start: int, stop: int) -> np.ndarray:
        """Dataset ids of training samples [start, stop): what the blend will feed, without reading."""
        index = getattr(self.train, "dataset_index", None)
        if index is None:
            return np.zeros(stop - start, dtype=np.int16)
        return np.asarray(index[start:stop])

    def epoch_tokens(self) -> list[int]:
        """Per dataset of the run spec, the tokens of one epoch of its training data: the sum of
        the sequence lengths of the documents in its train split, the count megatron-core's
        GPTDataset repeats its data by (a sample takes seq_length of them). Read from the built
        datasets, so it is what this run trained on: the whole prefix today (`blend_per_split`)."""
        parts = getattr(self.train, "datasets", None) or [self.train]  # a one-source run is a bare GPTDataset
        return [int(np.sum(d.dataset.sequence_lengths[d.indices], dtype=np.int64)) for d in parts]


# The seed of the validation samples' order (whose first `eval_samples` are evaluated). Fixed:
# with the training seed, two seeds of one mixture would be scored on different samples and a
# comparison would partly measure that. It is the default training seed, so runs with the default
# keep the samples they had.
VALIDATION_SEED = 1234


def gpt_config(spec: RunSpec, paths: RunPaths, seed: int, **blend: Any) -> GPTDatasetConfig:
    t = spec.training
    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=t.seq_length,
        tokenizer=IdsTokenizer(t.vocab_size, t.eod_token),
        path_to_cache=str(paths.data_cache),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        # The models build their own causal masks; a [1, s, s] mask per sample would only cost time.
        create_attention_mask=False,
        **blend,
    )


def build_run_data(spec: RunSpec, plan: Plan, paths: RunPaths) -> RunData:
    """Build (rank 0 first, then the others from the cache) the training blend and validation sets.

    Must be called on every rank after the process group exists: megatron-core builds the index
    files on rank 0 and has the other ranks load them after a barrier.
    """
    prefixes = [d.path for d in spec.datasets]
    weights = [d.share for d in spec.datasets]
    val_positions = [i for i, d in enumerate(spec.datasets) if d.validation_path]
    val_prefixes = [spec.datasets[i].validation_path for i in val_positions]
    train_blend = (prefixes, weights if len(prefixes) > 1 else None)
    train_config = gpt_config(spec, paths, spec.training.seed, blend_per_split=[train_blend, None, None])
    train = build(train_config, [plan.total_samples, 0, 0])[0]
    valid: Any = None
    if val_prefixes:
        valid_config = gpt_config(
            spec, paths, VALIDATION_SEED, blend_per_split=[None, (val_prefixes, None), None],
            multiple_validation_sets=True,
        )
        valid = build(valid_config, [0, spec.training.eval_samples, 0])[1]
    if isinstance(valid, GPTDataset):  # one validation set comes back bare, several as a list
        valid = [valid]
    validation: list[Any | None] = [None] * len(spec.datasets)
    for position, dataset in zip(val_positions, valid or [], strict=True):
        validation[position] = dataset
    return RunData(train=train, validation=validation, dataset_names=[d.name for d in spec.datasets])


def build(config: GPTDatasetConfig, sizes: list[int]) -> list[Any]:
    # every data-parallel rank reads its own shard: each builds (or loads) the datasets
    return list(BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build())


class InOrderShardedSampler:
    """Micro-batches of sample indices for one data-parallel rank, from `consumed_samples` on.

    Like Megatron-LM's `MegatronPretrainingSampler`: the blend is cut into consecutive chunks of
    `micro_batch_size x dp` samples and rank r takes the r-th slice of each. A step's global batch is
    therefore the same samples [step x gbs, (step + 1) x gbs) for any number of ranks, and resuming
    at a consumed-samples count replays exactly the same sequence.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, rank: int, size: int):
        if consumed_samples > total_samples:
            raise ValueError(f"consumed samples {consumed_samples} exceed the {total_samples} planned")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.size = size

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // (self.micro_batch_size * self.size)

    def __iter__(self) -> Iterator[list[int]]:
        chunk = self.micro_batch_size * self.size
        first = self.rank * self.micro_batch_size
        for start in range(self.consumed_samples, self.total_samples - chunk + 1, chunk):
            yield list(range(start + first, start + first + self.micro_batch_size))


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack a micro-batch; a sample without `dataset_id` (a one-source run) belongs to dataset 0."""
    batch = {
        key: torch.stack([torch.as_tensor(s[key]) for s in samples])
        for key in ("tokens", "labels", "loss_mask", "position_ids")
    }
    batch["dataset_id"] = torch.tensor([int(s.get("dataset_id", 0)) for s in samples], dtype=torch.long)
    return batch


def train_loader(
    data: RunData, plan: Plan, consumed_samples: int, rank: int, workers: int
) -> torch.utils.data.DataLoader:
    sampler = InOrderShardedSampler(
        plan.total_samples, consumed_samples, plan.micro_batch_size, rank, plan.data_parallel_size
    )
    return torch.utils.data.DataLoader(
        data.train,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def validation_batches(dataset: Any, samples: int, micro_batch_size: int, rank: int, size: int) -> Iterator[dict]:
    """The first `samples` validation samples (the same ones at every evaluation), rank r taking
    every size-th micro-batch."""
    starts = range(0, samples, micro_batch_size)
    for n, start in enumerate(starts):
        if n % size == rank:
            yield collate([dataset[i] for i in range(start, min(start + micro_batch_size, samples))])
