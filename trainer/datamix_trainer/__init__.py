"""The DataMix trainer: mixture-driven pre-training on megatron-core datasets.

Layers import downwards only: `commands` (argparse, no torch) -> `local_run` / `loop` ->
`data`, `model`, `checkpoint`, `metrics`, `logs` -> `config`. Nothing here imports torch or
megatron at module import time except the modules that train (`loop` and what it uses), so
`datamix --help` works in images without torch.
"""
