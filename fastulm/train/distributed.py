"""Data-parallel training through torch.distributed, started by torchrun.

The same command runs on one device or many: under torchrun (``WORLD_SIZE`` > 1) each rank
joins the process group, reads its own slice of every batch (the loaders take ``rank`` and
``world_size``) and averages gradients with one all-reduce per step. Gradients are reduced by
hand rather than through DistributedDataParallel because freezing and unfreezing layer groups
changes which parameters have gradients, which DDP's fixed hooks do not allow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def current() -> DistContext:
    """The running process group's coordinates (a single process when none is set up)."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistContext(dist.get_rank(), dist.get_world_size(), local)
    return DistContext()


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return current()


def default_device(ctx: DistContext | None = None) -> torch.device:
    ctx = ctx or current()
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def all_reduce_mean_grads(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Average the gradients over ranks in one flat all-reduce."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world_size)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def broadcast_state(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, 0)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values
