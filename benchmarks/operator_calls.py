"""Operator calls of one training step, from torch.profiler: a launch count that needs no GPU.

Counted are the aten operators the step dispatches at the top level (those not called by
another aten operator). Each is *compute* if anything in it does work (a kernel on a GPU), and
*metadata* if it and everything under it only makes views (view, reshape without a copy, split,
permute, detach, t): those launch no kernel and move no data. On CUDA, the kernels the step
launched are counted too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

ALIAS_WITHOUT_SCHEMA = frozenset({"aten::_unsafe_view", "aten::_reshape_alias"})


@dataclass(frozen=True)
class OperatorCalls:
    compute: int
    metadata: int
    kernels: int | None  # CUDA kernels launched; None on CPU


@functools.cache
def _makes_views(name: str) -> bool:
    """Whether operator `name` returns views of its inputs (its schema says so)."""
    if name in ALIAS_WITHOUT_SCHEMA:
        return True
    packet = getattr(torch.ops.aten, name.removeprefix("aten::"), None)
    if packet is None:
        return False
    for overload in packet.overloads():
        returns = getattr(packet, overload)._schema.returns
        if returns and all(r.alias_info is not None and not r.alias_info.is_write
                           for r in returns):  # fmt: skip
            return True
    return False


def _metadata_only(event: object) -> bool:
    return _makes_views(event.name) and all(
        _metadata_only(child) for child in event.cpu_children if child.name.startswith("aten::")
    )


def operator_calls(step: Callable[[], None], device: torch.device) -> OperatorCalls:
    """The operator calls of one call of `step` (run it once before, to warm up)."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.events()
    top = [e for e in events if e.name.startswith("aten::") and
           (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]  # fmt: skip
    metadata = sum(_metadata_only(e) for e in top)
    kernels = (sum(e.device_type == torch.autograd.DeviceType.CUDA for e in events)
               if cuda else None)  # fmt: skip
    return OperatorCalls(len(top) - metadata, metadata, kernels)
