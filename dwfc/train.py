"""Fine-tuning a factorized model: DWF (sparsify -> settle), the exact cut, the masked fine-tune.

Only the factors get weight decay: wd = 2 * lambda / D on every factor is exactly the
L_{2/D} penalty lambda * sum |w|^(2/D) on the collapsed weights (docs/method.md).
Progress reaches the caller through `callback(event, info)`; the library prints nothing.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .config import Recipe
from .errors import DwfcError, InputError
from .factorize import factorized_weights, set_masks
from .sparsity import (
    SparsityController,
    collapsed_weights,
    fraction_below,
    global_magnitude_masks,
    layer_rms,
)

Callback = Callable[[str, dict[str, Any]], None]


class TrainingDiverged(DwfcError):
    """The loss became NaN or infinite."""

    exit_code = 4


@dataclass
class DwfOutcome:
    """What fine-tuning measured; the pipeline folds it into the report."""

    history: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    sparsity_eps: float = 0.0
    sparsity_relative: float = 0.0
    lam: float = 0.0
    lam_max: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)


def resolve_device(spec: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:N' are checked."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{spec}' asked for, but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device '{spec}': use auto, cpu, cuda or cuda:N")
    return device


@contextlib.contextmanager
def flush_denormal(enabled: bool) -> Iterator[None]:
    """Treat subnormal floats as zero on CPU: decaying factors are otherwise ~100x slower."""
    active = enabled and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if active:
            torch.set_flush_denormal(False)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy of `model` over `loader`, as a fraction."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += y.numel()
    model.train(was_training)
    return correct / total if total else 0.0


def _lr_scales(rms: dict[str, float], depth: int, mode: str, cap: float) -> dict[str, float]:
    # A weight of size |w| moves about D |w|^(2(D-1)/D) times the factor learning rate; scaling
    # each layer's factor rate by the inverse at its RMS makes `lr` the rate on typical weights.
    if mode == "none":
        return dict.fromkeys(rms, 1.0)
    return {n: min(cap, 1.0 / (depth * r ** (2.0 * (depth - 1) / depth))) for n, r in rms.items()}


def _param_groups(model: nn.Module, scales: dict[str, float]) -> list[dict[str, Any]]:
    groups, factor_ids = [], set()
    for fw in factorized_weights(model):
        groups.append({"params": fw.factors, "lr_scale": scales[fw.name], "factor": True})
        factor_ids.update(id(f) for f in fw.factors)
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in factor_ids]
    if others:
        groups.append({"params": others, "lr_scale": 1.0, "factor": False})
    return groups


def _cosine(progress: float, min_ratio: float) -> float:
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _set_hyper(opt: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_scale"]
        group["weight_decay"] = weight_decay if group["factor"] else 0.0


def _train_steps(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    epochs: int,
    on_step: Callable[[int, torch.optim.Optimizer], None],
    on_log: Callable[[int, float, float], None],
    on_epoch: Callable[[int], None],
    opt: torch.optim.Optimizer,
    log_every: int,
) -> None:
    step = 0
    model.train()
    for epoch in range(epochs):
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            on_step(step, opt)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(dim=1) == y).sum()
            seen += y.numel()
            if step % log_every == 0:
                mean_loss = float(loss_sum) / seen  # a device sync, only every log_every steps
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"training diverged at step {step} (loss {mean_loss}); "
                        "lower train.lr or sparsity.lambda_max"
                    )
                on_log(step, mean_loss, float(correct) / seen)
        on_epoch(epoch + 1)


def train_dwf(
    model: nn.Module,
    train_loader: DataLoader,
    eval_loader: DataLoader,
    recipe: Recipe,
    device: torch.device,
    callback: Callback | None = None,
) -> DwfOutcome:
    """Fine-tune a factorized `model` to `recipe.sparsity.target`, cut exactly, fine-tune masked.

    Example:
        dwfc.factorize_(model, depth=3)
        outcome = train_dwf(model, train_loader, eval_loader, load_recipe(), torch.device("cpu"))
    """
    emit = callback or (lambda event, info: None)
    tc, sc, depth = recipe.train, recipe.sparsity, recipe.factorize.depth
    out = DwfOutcome()
    rms = layer_rms(collapsed_weights(model))
    rel = {n: sc.relative_threshold * r for n, r in rms.items()}
    ctl = SparsityController(
        target=sc.target,
        lam=sc.lambda_init,
        start=fraction_below(collapsed_weights(model), rel),
        lam_min=sc.lambda_min,
        lam_max=sc.lambda_max,
        gain=sc.gain,
        max_step=sc.max_step,
    )
    scales = _lr_scales(rms, depth, tc.lr_scaling, tc.max_lr_scale)
    opt = torch.optim.SGD(_param_groups(model, scales), lr=tc.lr, momentum=tc.momentum)
    steps_per_epoch = len(train_loader)
    total = tc.epochs * steps_per_epoch
    ramp = max(1, round(sc.ramp_fraction * total))
    warmup = round(tc.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return tc.lr * (step + 1) / warmup
        return tc.lr * (_cosine(step / total, tc.min_lr_ratio) if tc.schedule == "cosine" else 1.0)

    def on_step(step: int, optimizer: torch.optim.Optimizer) -> None:
        _set_hyper(optimizer, lr_at(step), 2.0 * ctl.lam / depth)

    def record(phase: str, step: int, loss: float | None, acc: float | None, **extra: Any) -> None:
        weights = collapsed_weights(model)
        row = {
            "phase": phase,
            "epoch": step / steps_per_epoch,
            "step": step,
            "loss": loss,
            "train_acc": acc,
            "eval_acc": None,
            "sparsity_eps": fraction_below(weights, sc.eps),
            "sparsity_rel": fraction_below(weights, rel),
            "lambda": ctl.lam,
            "lr": lr_at(min(step, total - 1)),
            **extra,
        }
        out.history.append(row)
        emit("log", row)

    def on_log(step: int, loss: float, acc: float) -> None:
        record("sparsify" if step <= ramp else "settle", step, loss, acc)
        ctl.update(step / ramp, out.history[-1]["sparsity_rel"])

    def on_epoch(epoch: int) -> None:
        acc = evaluate(model, eval_loader, device)
        out.history[-1]["eval_acc"] = acc
        emit("eval", {"phase": "dwf", "epoch": epoch, "eval_acc": acc})

    started = time.perf_counter()
    emit("phase", {"phase": "dwf", "total_steps": total})
    with flush_denormal(tc.flush_denormal and device.type == "cpu"):
        _train_steps(
            model, train_loader, device, tc.epochs, on_step, on_log, on_epoch, opt, tc.log_every
        )
        out.timing["train_s"] = time.perf_counter() - started

        weights = collapsed_weights(model)
        out.sparsity_eps = fraction_below(weights, sc.eps)
        out.sparsity_relative = fraction_below(weights, rel)
        out.lam, out.lam_max = ctl.lam, ctl.history_max
        out.accuracy["before_cut"] = evaluate(model, eval_loader, device)
        set_masks(model, global_magnitude_masks(weights, sc.target))
        out.accuracy["after_cut"] = evaluate(model, eval_loader, device)
        emit("cut", dict(out.accuracy))

        started = time.perf_counter()
        out.accuracy["after_finetune"] = _masked_finetune(
            model, train_loader, eval_loader, recipe, device, scales, emit, out.history
        )
        out.timing["finetune_s"] = time.perf_counter() - started
    return out


def _masked_finetune(
    model: nn.Module,
    train_loader: DataLoader,
    eval_loader: DataLoader,
    recipe: Recipe,
    device: torch.device,
    scales: dict[str, float],
    emit: Callback,
    history: list[dict[str, Any]],
) -> float:
    """Short fine-tune with the masks fixed and no decay: pruned entries stay exactly zero."""
    sc, tc = recipe.sparsity, recipe.train
    if sc.finetune_epochs == 0 or sc.finetune_lr == 0:
        return evaluate(model, eval_loader, device)
    opt = torch.optim.SGD(_param_groups(model, scales), lr=sc.finetune_lr, momentum=tc.momentum)
    steps_per_epoch = len(train_loader)
    total = sc.finetune_epochs * steps_per_epoch
    offset = tc.epochs * steps_per_epoch
    emit("phase", {"phase": "finetune", "total_steps": total, "first_step": offset})

    def on_step(step: int, optimizer: torch.optim.Optimizer) -> None:
        _set_hyper(optimizer, sc.finetune_lr * _cosine(step / total, 0.0), 0.0)

    def on_log(step: int, loss: float, acc: float) -> None:
        row = {
            "phase": "finetune",
            "epoch": (offset + step) / steps_per_epoch,
            "step": offset + step,
            "loss": loss,
            "train_acc": acc,
            "eval_acc": None,
            "sparsity_eps": None,
            "sparsity_rel": None,
            "lambda": None,
            "lr": sc.finetune_lr * _cosine(step / total, 0.0),
        }
        history.append(row)
        emit("log", row)

    def on_epoch(epoch: int) -> None:
        acc = evaluate(model, eval_loader, device)
        if history and history[-1]["phase"] == "finetune":
            history[-1]["eval_acc"] = acc
        emit("eval", {"phase": "finetune", "epoch": epoch, "eval_acc": acc})

    _train_steps(
        model,
        train_loader,
        device,
        sc.finetune_epochs,
        on_step,
        on_log,
        on_epoch,
        opt,
        tc.log_every,
    )
    return evaluate(model, eval_loader, device)
