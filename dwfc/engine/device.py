"""Where and how training runs: the device, bf16 autocast and channels_last, subnormal flushing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dwfc import inputs
from dwfc.engine import distributed as dist
from dwfc.errors import InputError
from dwfc.inputs import Inputs


def resolve_device(spec: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:N' are checked.

    Example:
        resolve_device("auto")  # device(type='cpu') on a machine without a GPU
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device '{spec}': use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{spec}' asked for, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"device '{spec}' does not exist: {torch.cuda.device_count()} CUDA device(s)"
            )
        if device.index is None:
            device = torch.device("cuda", dist.local_rank() % torch.cuda.device_count())
    return device


def device_name(device: torch.device) -> str:
    """A human name for the report, e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)' or 'cpu'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: bf16 autocast and channels_last on CUDA, plain fp32 on CPU."""

    autocast: bool
    channels_last: bool

    @classmethod
    def for_device(cls, device: torch.device, model: nn.Module, enabled: bool = True) -> Precision:
        has_conv2d = any(isinstance(m, nn.Conv2d) for m in model.modules())
        on_cuda = device.type == "cuda" and enabled
        return cls(autocast=on_cuda, channels_last=on_cuda and has_conv2d)

    def context(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def batch(self, x: Inputs, device: torch.device) -> Inputs:
        x = inputs.to(x, device, non_blocking=True)
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> str:
        parts = ["bf16 autocast" if self.autocast else "fp32"]
        if self.channels_last:
            parts.append("channels_last")
        return ", ".join(parts)


FP32 = Precision(autocast=False, channels_last=False)


@contextlib.contextmanager
def flush_denormal(enabled: bool) -> Iterator[None]:
    """Treat subnormal floats as zero on CPU: decaying factors are otherwise ~100x slower."""
    active = enabled and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if active:
            torch.set_flush_denormal(False)
