"""Process group set-up: gloo on CPU, NCCL on GPUs; a world of one without torchrun.

megatron-core's dataset builder calls `torch.distributed.get_rank()` whenever an index cache path
is set, so even a single process gets a (one-member, in-memory) process group.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from datamix_trainer.config import DistEnv

# Long enough for rank 0 to build large blend indices while the others wait at a barrier.
TIMEOUT = timedelta(minutes=int(os.environ.get("DATAMIX_DIST_TIMEOUT_MINUTES", "30")))


def pick_device(env: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def init_process_group(env: DistEnv, device: torch.device) -> None:
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "MASTER_ADDR" in os.environ and "RANK" in os.environ:  # torchrun (or a hand-made equivalent)
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=TIMEOUT)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_object(value: object) -> object:
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value
