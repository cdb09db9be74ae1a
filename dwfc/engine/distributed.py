"""Multi-process training with torch.distributed, launched by torchrun; no-ops when alone.

`torchrun --nproc_per_node N -m dwfc compress ...` sets RANK/WORLD_SIZE/LOCAL_RANK; dwfc then
uses NCCL on GPUs and gloo on CPUs. Every rank holds the same weights (DDP keeps them in sync),
so the sparsity controller computes the same lambda everywhere; rank 0's values are broadcast
anyway so a rounding difference can never split the ranks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the process that writes outputs and shows progress."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> bool:
    """Join the process group torchrun set up; returns whether training is distributed."""
    if not launched_by_torchrun() or tdist.is_initialized():
        return tdist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity when alone)."""
    if tdist.is_initialized():
        t = t.clone()
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any rank."""
    if not tdist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's value on every rank."""
    if not tdist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    tdist.broadcast(t, src=0)
    return float(t.item())


def broadcast_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's tensors (same names, shapes and dtypes on every rank) on every rank."""
    if not tdist.is_initialized():
        return tensors
    nccl = tdist.get_backend() == "nccl"  # NCCL moves only CUDA tensors
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    shared = {}
    for name, t in tensors.items():
        moved = t.to(device)
        tdist.broadcast(moved, src=0)
        shared[name] = moved.to(t.device)
    return shared


def barrier() -> None:
    if tdist.is_initialized():
        tdist.barrier()


def broadcast_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's boolean masks on every rank, so that every rank prunes the same weights."""
    shared = broadcast_tensors({n: m.to(torch.uint8) for n, m in masks.items()})
    return {n: m.bool() for n, m in shared.items()}


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel when training is distributed, else `model` itself."""
    if not tdist.is_initialized():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
