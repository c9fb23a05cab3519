"""torchrun support: the tasks of a meta-batch are sharded across ranks; their contributions are summed.

Every rank samples the same episode (sampling is a pure function of seed and step), processes the tasks
`episode[rank::world]`, and the per-task gradient sums are all-reduced, so each rank takes the identical outer
step (shared-adam-chain's moments: see algorithms.py). A rank that drew no task (fewer tasks than ranks)
contributes zeros, and the sum is divided by the meta-batch's task count, so the average is exact. Only rank 0
writes files. Launch lines are in the README; e.g. two nodes of eight GPUs:

    torchrun --nnodes 2 --node_rank R --master_addr HOST --master_port 29500 --nproc_per_node 8 \\
        -m maml_en_llm train --method maml ... tasks_per_step=16

The communication device. NCCL (the backend when training on CUDA) only moves CUDA tensors, and only those of
the rank's own GPU; gloo (CPU training) only CPU tensors. Callers may hand the helpers below tensors on any
device (e.g. a CPU statistics vector, AdamW's CPU step counters): each helper copies them to `comm_device()`,
runs the collective there, and copies the result back in place. Nothing else in the package calls
`torch.distributed` collectives directly.

Gradients are all-reduced in buckets: same-dtype tensors are flattened into buffers of up to `BUCKET_BYTES`
(one call per bucket instead of one per parameter; a LoRA model has hundreds of small adapter tensors), and a
single tensor larger than a bucket, already on the communication device, is reduced in place without a copy.
The bucket layout depends only on the tensors' order, dtypes and sizes, so every rank issues the same calls.

With one process nothing here communicates.
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

from .errors import UserError

T = TypeVar("T")

BUCKET_BYTES = 64 << 20  # per all-reduce call; NCCL reaches full bandwidth well below this
# Rank 0 writes checkpoints (optimizer state of a billion-parameter model: tens of GB) while the other ranks wait
# at the next collective; the default 10-minute limit would kill such a run.
TIMEOUT = datetime.timedelta(minutes=60)


def init_from_env(device: str | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group when torchrun started us.

    The backend follows the training device (`device`, or cuda when available): NCCL with each rank on the GPU
    `LOCAL_RANK`, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        from .models import pick_device

        picked = pick_device(device)
        if picked.type == "cuda":
            if picked.index is not None:
                raise UserError(f"--device {device}: under torchrun every rank would use that one GPU; pass "
                                "--device cuda (each rank takes the GPU of its LOCAL_RANK)")
            if local_rank >= torch.cuda.device_count():
                raise UserError(f"torchrun started local rank {local_rank} but this node has "
                                f"{torch.cuda.device_count()} GPU(s); lower --nproc_per_node")
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank), timeout=TIMEOUT)
        else:
            dist.init_process_group("gloo", timeout=TIMEOUT)
        atexit.register(_destroy)
    return rank(), world_size(), local_rank


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def comm_device() -> torch.device:
    """Where a tensor must be when it is handed to a collective: this rank's GPU under NCCL, else the CPU."""
    if dist.is_initialized() and "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of a meta-batch (round robin: ranks >= len(items) get none)."""
    return list(items[rank()::world_size()])


def buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """Indices of `tensors` grouped by dtype, in order, into runs of at most `bucket_bytes` (a tensor larger
    than that forms its own bucket)."""
    done: list[list[int]] = []
    filling: dict[torch.dtype, tuple[list[int], int]] = {}
    for index, tensor in enumerate(tensors):
        members, size = filling.get(tensor.dtype, ([], 0))
        nbytes = tensor.numel() * tensor.element_size()
        if members and size + nbytes > bucket_bytes:
            done.append(members)
            members, size = [], 0
        filling[tensor.dtype] = (members + [index], size + nbytes)
    return done + [members for members, _ in filling.values() if members]


def all_reduce_sum_(tensors: Sequence[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Sum tensors (any devices, any dtypes) across ranks in place, in buckets (no-op with one process)."""
    _all_reduce_(tensors, dist.ReduceOp.SUM, bucket_bytes)


def all_reduce_max_(tensor: torch.Tensor) -> None:
    """Elementwise maximum across ranks, in place (no-op with one process)."""
    _all_reduce_([tensor], dist.ReduceOp.MAX, BUCKET_BYTES)


def _all_reduce_(tensors: Sequence[torch.Tensor], op, bucket_bytes: int) -> None:
    if world_size() == 1:
        return
    device = comm_device()
    for bucket in buckets(tensors, bucket_bytes):
        members = [tensors[i] for i in bucket]
        if len(members) == 1 and members[0].device == device and members[0].is_contiguous():
            dist.all_reduce(members[0], op=op)
            continue
        flat = torch.cat([t.reshape(-1).to(device) for t in members])
        dist.all_reduce(flat, op=op)
        offset = 0
        for tensor in members:
            tensor.copy_(flat[offset:offset + tensor.numel()].view(tensor.shape))
            offset += tensor.numel()


def check_same_on_all_ranks(value: int, what: str, fix: str) -> None:
    """Raise (on every rank alike) when ranks disagree on an integer that must be shared, e.g. the step a
    resumed run starts from."""
    if world_size() == 1:
        return
    extremes = torch.tensor([value, -value], dtype=torch.float64)
    all_reduce_max_(extremes)
    highest, lowest = int(extremes[0]), -int(extremes[1])
    if highest != lowest:
        raise UserError(f"{what} differs between ranks (from {lowest} to {highest}); {fix}")


def barrier() -> None:
    if world_size() > 1:
        if comm_device().type == "cuda":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
