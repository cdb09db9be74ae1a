"""One training epoch and one evaluation pass: the steps every method shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from dwfc import inputs
from dwfc.engine import distributed as dist
from dwfc.engine.device import FP32, Precision
from dwfc.errors import TrainingDiverged


def _eval_batches(model: nn.Module, loader: DataLoader, device: torch.device,
                  precision: Precision) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """(logits, labels) of every batch of `loader`, the model in eval mode under no_grad."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), precision.context(device):
            for x, y in loader:
                x, y = precision.batch(x, device), y.to(device)
                yield inputs.call(model, x), y
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: Precision = FP32,
    topk: int = 1,
) -> float:
    """Top-k accuracy (default top-1) of `model` over `loader`, as a fraction."""
    correct = total = 0
    for logits, y in _eval_batches(model, loader, device, precision):
        k = min(topk, logits.shape[1])
        hits = (logits.topk(k, dim=1).indices == y.unsqueeze(1)).any(dim=1)
        correct += int(hits.sum())
        total += y.numel()
    return correct / total if total else 0.0


def evaluate_f1(model: nn.Module, loader: DataLoader, device: torch.device,
                precision: Precision = FP32, positive: int = 1) -> float:  # fmt: skip
    """F1 score of class `positive` (two-class data): 2 TP / (2 TP + FP + FN); 0 when the
    class is neither predicted nor present."""
    tp = fp = fn = 0
    for logits, y in _eval_batches(model, loader, device, precision):
        pred, true = logits.argmax(dim=1) == positive, y == positive
        tp += int((pred & true).sum())
        fp += int((pred & ~true).sum())
        fn += int((~pred & true).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


StepHook = Callable[[int], None]
LogHook = Callable[[int, float, float], None]


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: Callable[[], torch.optim.Optimizer],
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
    `optimizer()` is asked for the optimizer at every step: a method may replace it mid-epoch.
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
            logits = inputs.call(model, x)
            loss = F.cross_entropy(logits.float(), y)
        value = float(loss.detach())
        if dist.any_true(not math.isfinite(value), device):  # every rank restarts together
            raise TrainingDiverged(f"loss became non-finite at step {step}")
        opt = optimizer()
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
