"""Multi-process training with PyTorch's own engine (``torchrun``): gloo on CPU, nccl on GPU.

    torchrun --nproc_per_node=2 -m kd_utils pipeline ...                 # one machine, 2 processes
    torchrun --nnodes=2 --node_rank=0 --rdzv_endpoint=HOST:29500 ...     # several machines

``fit`` shards every global batch across processes, averages gradients with
DistributedDataParallel (the frozen teacher is never synchronised), and only rank 0 writes files.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes checkpoints, metrics and plots."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (no-op otherwise).
    Returns True when running distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def local_device(device: torch.device) -> torch.device:
    """Each process its own GPU (LOCAL_RANK); CPU stays CPU."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def cleanup() -> None:
    """Leave the process group. Every rank waits for the others first: a rank that tears gloo down while
    another still works (rank 0 saving a checkpoint) can abort the process ("terminate called without an
    active exception")."""
    if dist.is_available() and dist.is_initialized():
        if world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
