"""Process group set-up: gloo on CPU, NCCL on GPUs; a world of one without torchrun.

megatron-core's dataset builder calls `torch.distributed.get_rank()` whenever an index cache path
is set, so even a single process gets a (one-member, in-memory) process group.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import torch
import torch.distributed as dist

from datamix_trainer.config import DistEnv

# Long enough for rank 0 to build large blend indices while the others wait at a barrier.
TIMEOUT = timedelta(minutes=int(os.environ.get("DATAMIX_DIST_TIMEOUT_MINUTES", "30")))


# A collective failed because another process went away (on another node, its pod died): not this
# program's error. The process exits like a signal death, 128 + SIGHUP ("the other end hung up"),
# so that the ExitCode restart policy restarts this pod too instead of failing the job.
PEER_LOST_EXIT_CODE = 128 + signal.SIGHUP
# gloo's messages for a vanished peer, NCCL's for a dead remote or a collective that timed out.
_PEER_LOST_MESSAGES = (
    "Connection closed by peer",
    "Connection reset by peer",
    "remote process exited",
    "collective operation timeout",
)


def peer_lost(err: BaseException) -> bool:
    """Whether `err` says that another process of the job is gone (not a bug of this one)."""
    if isinstance(err, dist.DistNetworkError | dist.DistStoreError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _PEER_LOST_MESSAGES)


def pick_device(env: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        # More processes than GPUs (a check on one GPU) share them round-robin.
        index = env.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def backend_for(env: DistEnv, device: torch.device) -> str:
    """gloo on CPU; on GPUs NCCL for CUDA tensors and gloo for the CPU ones (the step's counts and
    losses, the evaluation sums): a plain "nccl" process group has no backend for CPU tensors.
    NCCL refuses two ranks on one GPU, so processes that share a GPU use gloo for everything."""
    if device.type != "cuda":
        return "gloo"
    if env.local_world_size > torch.cuda.device_count():
        print(
            f"{env.local_world_size} processes share {torch.cuda.device_count()} GPU(s): gloo for all collectives "
            "(NCCL needs one GPU per process; slower, for checks only)",
            flush=True,
        )
        return "gloo"
    return "cpu:gloo,cuda:nccl"


def init_process_group(env: DistEnv, device: torch.device) -> None:
    if dist.is_initialized():
        return
    backend = backend_for(env, device)
    if "MASTER_ADDR" in os.environ and "RANK" in os.environ:  # torchrun (or a hand-made equivalent)
        device_id = device if "nccl" in backend else None
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device_id)
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


def all_true(value: bool) -> bool:
    """Whether `value` is True on every rank."""
    flag = torch.tensor([0.0 if value else 1.0], dtype=torch.float64)
    return bool(all_reduce_sum(flag).item() == 0)
