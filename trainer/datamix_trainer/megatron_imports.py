"""megatron-core's dataset classes, imported once and quietly.

Importing `megatron.core` on a machine without Transformer Engine or Apex warns four times that it
falls back to PyTorch implementations; the trainer uses no fused kernel from either, so the warnings
only hide the lines that matter.
"""

import warnings

warnings.filterwarnings("ignore", message=r".*Transformer Engine and Apex are not installed")

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder  # noqa: E402
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig  # noqa: E402
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder  # noqa: E402

__all__ = ["BlendedMegatronDatasetBuilder", "GPTDataset", "GPTDatasetConfig", "IndexedDataset", "IndexedDatasetBuilder"]
