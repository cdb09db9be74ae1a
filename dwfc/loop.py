"""The generic pieces of a training loop: device, precision, one epoch, evaluation."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from . import distributed as dist
from .errors import InputError, TrainingDiverged


def resolve_device(spec: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:N' are checked."""
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

    def batch(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
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


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: Precision = FP32,
    topk: int = 1,
) -> float:
    """Top-k accuracy (default top-1) of `model` over `loader`, as a fraction."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad(), precision.context(device):
        for x, y in loader:
            x, y = precision.batch(x, device), y.to(device)
            logits = model(x)
            k = min(topk, logits.shape[1])
            hits = (logits.topk(k, dim=1).indices == y.unsqueeze(1)).any(dim=1)
            correct += int(hits.sum())
            total += y.numel()
    model.train(was_training)
    return correct / total if total else 0.0


StepHook = Callable[[int], None]
LogHook = Callable[[int, float, float], None]


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    device: torch.device,
    *,
    first_step: int,
    before_step: StepHook,
    after_step: StepHook | None = None,
    on_log: LogHook | None = None,
    log_every: int = 10,
    precision: Precision = FP32,
    skip_batches: int = 0,
    restore_rng: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[int, bool]:
    """Train one epoch; returns (next global step, whether it stopped early on request).

    `skip_batches` replays an interrupted epoch: the first batches are drawn (so the shuffle
    and any augmentation randomness advance exactly as before) but not trained on; then
    `restore_rng` puts the random state back where the interrupted run left it.
    The loss is checked every step (a device sync) so divergence is caught within one step.
    """
    model.train()
    step = first_step
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    if restore_rng is not None and skip_batches == 0:
        restore_rng()
    for index, (x, y) in enumerate(loader):
        if index < skip_batches:
            if index == skip_batches - 1 and restore_rng is not None:
                restore_rng()
            continue
        x, y = precision.batch(x, device), y.to(device, non_blocking=True)
        before_step(step)
        with precision.context(device):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        value = float(loss.detach())
        if dist.any_true(not math.isfinite(value), device):  # every rank restarts together
            raise TrainingDiverged(f"loss became non-finite at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if after_step is not None:
            after_step(step)
        loss_sum += loss.detach() * y.numel()
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += y.numel()
        if on_log is not None and step % log_every == 0:
            totals = dist.all_reduce_sum(
                torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=device)])
            )
            on_log(step, float(totals[0] / totals[2]), float(totals[1] / totals[2]))
        if should_stop():
            return step, True
    return step, False
