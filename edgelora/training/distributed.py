"""Data-parallel training under ``accelerate launch`` / ``torchrun`` (one process per GPU).

The launcher sets RANK, WORLD_SIZE and LOCAL_RANK. Every rank builds the same
seeded micro-batch stream and takes every ``world``-th micro-batch; after the
backward passes the LoRA gradients (only they train) are summed across ranks in
one flat all-reduce. Losses are normalised by the global number of targets, so a
step equals the single-process step on the union of the ranks' micro-batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env(device: str) -> World:
    """Join the process group the launcher set up (nccl on CUDA, gloo on CPU); World() when alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.startswith("cuda"):
            # bind this rank to its GPU before NCCL builds its communicator: otherwise every rank
            # starts on GPU 0 and the first barrier has to guess the device
            torch.cuda.set_device(local_rank)
            os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # no NVLink multicast on shared hosts
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend="gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)


def all_reduce_sum(values: list[float], device: str, world: World) -> list[float]:
    """Element-wise sum of small numbers across ranks (identity when alone)."""
    if world.size == 1:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_grads(params: list, world: World) -> None:
    """Sum the gradients of ``params`` across ranks in one flat buffer."""
    if world.size == 1:
        return
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    at = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[at : at + n].view_as(g).to(g.dtype)
        at += n


def barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()
