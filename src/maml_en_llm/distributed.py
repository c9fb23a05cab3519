"""torchrun support: the tasks of a meta-batch are sharded across ranks; their contributions are summed.

Every rank samples the same episode (sampling is a pure function of seed and step), processes the tasks
`episode[rank::world]`, and the per-task gradient sums are all-reduced, so each rank takes the identical outer
step (shared-adam's moments: see algorithms.py). Only rank 0 writes files. Launch, e.g.:

    torchrun --nproc_per_node 4 -m maml_en_llm.cli train --method maml ... tasks_per_step=8
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 -m maml_en_llm.cli train ...

With one process nothing here does anything.
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def init_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank(), world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of a meta-batch (round robin)."""
    return list(items[rank()::world_size()])


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum tensors across ranks in place (no-op with one process)."""
    if world_size() == 1:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def all_reduce_max_(tensor: torch.Tensor) -> None:
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
