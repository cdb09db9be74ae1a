"""Pruning baselines compared against DWF, with the same training budget (docs/baselines.md).

`sparsity.method` picks one:

- `gmp`: gradual magnitude pruning (Zhu & Gupta 2017): global magnitude masks whose sparsity
  follows a cubic ramp from 0 to the target over `ramp_fraction` of the `train.epochs` steps,
  then training with the mask fixed for the rest of the budget.
- `oneshot`: global magnitude cut to the target at step 0, then masked fine-tuning throughout.
- `random`: a uniformly random mask with the exact count (seeded by `train.seed`), then masked
  fine-tuning throughout: the floor any pruning method must beat.
- `l1`: proximal SGD on `lambda * sum |w|` (soft-thresholding by `lr * lambda` after each step),
  lambda steered to the target by the same controller as DWF, for `train.epochs`; then the exact
  global magnitude cut and the masked fine-tune.

Every method trains `train.epochs + sparsity.finetune_epochs` epochs on the same loader (same
data order per seed) with SGD + momentum: `train.lr` on a cosine schedule (floor
`train.min_lr_ratio`) for the first `train.epochs`, then `sparsity.finetune_lr` decaying to 0,
as DWF does. Plain weight decay (`train.weight_decay`) acts on the pruned weights only, and
not during the fine-tune epochs (as under DWF).
Masks are kept exact: pruned weights and their momentum are zeroed after every step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from . import distributed as dist
from .checkpoint import StopRequest
from .config import Recipe
from .errors import InputError, Interrupted
from .loop import FP32, Precision, evaluate, flush_denormal, run_epoch
from .sparsity import (
    SparsityController,
    fraction_below,
    global_magnitude_masks,
    layer_rms,
    split_flat,
)
from .train import Callback, DwfOutcome

METHODS = ("gmp", "oneshot", "random", "l1")
DEFAULT_WEIGHT_DECAY = 5e-4
DEFAULT_L1_LAMBDA = 2e-3  # L1's lambda lives on another scale than DWF's L_{2/D} lambda
__all__ = ["METHODS", "gmp_sparsity", "random_masks", "train_baseline"]


def gmp_sparsity(step: int, target: float, ramp_steps: int, start: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: `start` at step 0, `target` from `ramp_steps` on.

    Example:
        >>> gmp_sparsity(0, 0.9, 100), gmp_sparsity(100, 0.9, 100)
        (0.0, 0.9)
    """
    p = min(max(step / max(ramp_steps, 1), 0.0), 1.0)
    return target + (start - target) * (1.0 - p) ** 3


def random_masks(
    weights: dict[str, Tensor], sparsity: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """Uniformly random masks over all weights keeping exactly N - round(sparsity * N) entries."""
    names = list(weights)
    total = sum(weights[n].numel() for n in names)
    keep = total - round(sparsity * total)
    keep_flat = torch.zeros(total, dtype=torch.bool)
    keep_flat[torch.randperm(total, generator=generator)[:keep]] = True
    return split_flat(keep_flat, {n: weights[n] for n in names})


def _cosine(progress: float, min_ratio: float) -> float:
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _controller(sc: Any, start: float, updates_in_ramp: int) -> SparsityController:
    """DWF's lambda controller with the recipe's settings (those this version of it has)."""
    known = {f.name for f in fields(SparsityController) if f.init}
    extra = {k: getattr(sc, k) for k in ("lookahead", "down_gain") if k in known and hasattr(sc, k)}
    lam = float(getattr(sc, "l1_lambda_init", None) or DEFAULT_L1_LAMBDA)
    return SparsityController(
        target=sc.target, lam=lam, start=start, lam_min=sc.lambda_min, lam_max=sc.lambda_max,
        gain=sc.gain, max_step=max(sc.max_step, getattr(sc, "ramp_log_range", 0.0) /
                                   max(1, updates_in_ramp)), **extra,
    )  # fmt: skip


class _BaselineRun:
    """One baseline run: the optimizer, the masks and the schedules over the whole budget."""

    def __init__(
        self, method: str, names: list[str], model: nn.Module, train_loader: DataLoader,
        eval_loader: DataLoader, recipe: Recipe, device: torch.device, emit: Callback,
        precision: Precision, forward_model: nn.Module, stop: StopRequest | None,
    ) -> None:  # fmt: skip
        self.method, self.model, self.forward_model = method, model, forward_model
        self.train_loader, self.eval_loader = train_loader, eval_loader
        self.recipe, self.device, self.emit, self.precision = recipe, device, emit, precision
        self.stop = stop
        tc, sc = recipe.train, recipe.sparsity
        try:
            self.params = {n: model.get_parameter(n) for n in names}
        except AttributeError as exc:
            raise InputError(f"sparsity.method={method}: {exc}") from None
        if not self.params:
            raise InputError(f"sparsity.method={method}: no weight selected to prune")
        rms = layer_rms(self.weights())
        self.rel = {n: sc.relative_threshold * r for n, r in rms.items()}
        control = getattr(sc, "control_threshold", sc.relative_threshold)
        self.controlled = {n: control * r for n, r in rms.items()}
        pruned = {id(p) for p in self.params.values()}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in pruned]
        self.weight_decay = float(getattr(tc, "weight_decay", DEFAULT_WEIGHT_DECAY))
        groups: list[dict[str, Any]] = [{"params": list(self.params.values()), "pruned": True}]
        if others:
            groups.append({"params": others, "pruned": False})
        self.opt = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum)
        self.steps_per_epoch = len(train_loader)
        self.total = tc.epochs * self.steps_per_epoch
        self.ramp = max(1, round(sc.ramp_fraction * self.total))
        every = getattr(sc, "prune_every", None)
        self.prune_every = max(1, int(every if every else tc.log_every))
        self.masks: dict[str, Tensor] | None = None
        self.final = False
        self.ctl: SparsityController | None = None
        if method == "l1":
            start = fraction_below(self.weights(), self.controlled)
            self.ctl = _controller(sc, start, self.ramp // tc.log_every)
        self.out = DwfOutcome()

    # -- weights and masks -----------------------------------------------------------------
    def weights(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.params.items()}

    def set_masks(self, masks: dict[str, Tensor]) -> None:
        """Fix the masks (the same on every rank) and zero pruned weights and their momentum."""
        shared = dist.broadcast_tensors({n: m.to(torch.uint8) for n, m in masks.items()})
        self.masks = {n: m.to(self.params[n].device).bool() for n, m in shared.items()}
        self.apply_masks()

    def apply_masks(self) -> None:
        if self.masks is None:
            return
        with torch.no_grad():
            for name, p in self.params.items():
                mask = self.masks[name]
                p.mul_(mask)
                buf = self.opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buf.mul_(mask)

    def evaluate(self) -> float:
        return evaluate(self.model, self.eval_loader, self.device, self.precision)

    def final_cut(self, masks: dict[str, Tensor]) -> None:
        """Make `masks` final, recording accuracy just before and just after."""
        self.out.accuracy["before_cut"] = self.evaluate()
        self.final = True
        self.set_masks(masks)
        self.out.accuracy["after_cut"] = self.evaluate()
        self.emit("cut", dict(self.out.accuracy))

    # -- schedules and hooks ---------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        tc, sc = self.recipe.train, self.recipe.sparsity
        if step >= self.total:
            total = max(1, sc.finetune_epochs * self.steps_per_epoch)
            return sc.finetune_lr * _cosine((step - self.total) / total, 0.0)
        warmup = round(tc.warmup_epochs * self.steps_per_epoch)
        if step < warmup:
            return tc.lr * (step + 1) / warmup
        if tc.schedule == "cosine":
            return tc.lr * _cosine(step / self.total, tc.min_lr_ratio)
        return tc.lr

    def before_step(self, step: int) -> None:
        decay = self.weight_decay if step < self.total else 0.0  # none in the fine-tune, as DWF
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
            group["weight_decay"] = decay if group["pruned"] else 0.0
        due = step % self.prune_every == 0 or step == self.ramp
        if self.method == "gmp" and not self.final and step <= self.ramp and due:
            self.gmp_prune(step)

    def gmp_prune(self, step: int) -> None:
        sparsity = gmp_sparsity(step, self.recipe.sparsity.target, self.ramp)
        masks = global_magnitude_masks(self.weights(), sparsity)
        if step == self.ramp:
            self.final_cut(masks)
        else:
            self.set_masks(masks)

    def after_step(self, step: int) -> None:
        if self.ctl is not None and not self.final:  # l1 before its cut: proximal step
            threshold = self.lr_at(step - 1) * self.ctl.lam
            with torch.no_grad():
                for p in self.params.values():
                    p.copy_(torch.sign(p) * (p.abs() - threshold).clamp_min(0.0))
        self.apply_masks()

    def on_log(self, step: int, loss: float, acc: float) -> None:
        weights = self.weights()
        phase = self.phase_name(step)
        row = {
            "phase": phase, "epoch": step / self.steps_per_epoch, "step": step, "loss": loss,
            "train_acc": acc, "eval_acc": None,
            "sparsity_eps": fraction_below(weights, self.recipe.sparsity.eps),
            "sparsity_rel": fraction_below(weights, self.rel),
            "sparsity_ctl": fraction_below(weights, self.controlled),
            "lambda": self.ctl.lam if self.ctl is not None else None, "lr": self.lr_at(step - 1),
        }  # fmt: skip
        self.out.history.append(row)
        self.emit("log", row)
        if self.ctl is not None and not self.final:
            self.ctl.update(step / self.ramp, row["sparsity_ctl"])
            self.ctl.lam = dist.broadcast_float(self.ctl.lam, self.device)

    def phase_name(self, step: int) -> str:
        if step > self.total:
            return "finetune"
        if self.method == "gmp":
            return "prune" if step <= self.ramp else "masked"
        if self.method == "l1":
            return "sparsify" if step <= self.ramp else "settle"
        return "masked"

    # -- the run ---------------------------------------------------------------------------
    def epoch(self, step: int, epoch_index: int) -> int:
        if isinstance(self.train_loader.sampler, DistributedSampler):
            self.train_loader.sampler.set_epoch(epoch_index)
        step, stopped = run_epoch(
            self.forward_model, self.train_loader, self.opt, self.device, first_step=step,
            before_step=self.before_step, after_step=self.after_step, on_log=self.on_log,
            log_every=self.recipe.train.log_every, precision=self.precision,
            should_stop=lambda: self.stop is not None
            and dist.any_true(self.stop.requested, self.device),
        )  # fmt: skip
        if stopped:
            raise Interrupted("interrupted: baselines keep no checkpoint; rerun from the start")
        acc = self.evaluate()
        if self.out.history:
            self.out.history[-1]["eval_acc"] = acc
        phase = "finetune" if step > self.total else self.method
        self.emit("eval", {"phase": phase, "epoch": epoch_index + 1, "eval_acc": acc})
        return step

    def start_masks(self) -> None:
        """oneshot/random: the final mask at step 0."""
        target = self.recipe.sparsity.target
        if self.method == "oneshot":
            self.final_cut(global_magnitude_masks(self.weights(), target))
        elif self.method == "random":
            generator = torch.Generator().manual_seed(self.recipe.train.seed)
            self.final_cut(random_masks(self.weights(), target, generator))

    def run(self) -> DwfOutcome:
        tc, sc = self.recipe.train, self.recipe.sparsity
        with flush_denormal(tc.flush_denormal and self.device.type == "cpu"):
            self.start_masks()
            self.emit("phase", {"phase": self.method, "total_steps": self.total, "first_step": 0})
            started, step = time.perf_counter(), 0
            for e in range(tc.epochs):
                step = self.epoch(step, e)
            if not self.final:  # l1; gmp when its ramp ends with the budget
                self.final_cut(global_magnitude_masks(self.weights(), sc.target))
            self.out.timing["train_s"] = time.perf_counter() - started
            weights = self.weights()
            self.out.sparsity_eps = fraction_below(weights, sc.eps)
            self.out.sparsity_relative = fraction_below(weights, self.rel)
            if self.ctl is not None:
                self.out.lam, self.out.lam_max = self.ctl.lam, self.ctl.history_max
            if sc.finetune_epochs > 0:
                total = sc.finetune_epochs * self.steps_per_epoch
                self.emit("phase", {"phase": "finetune", "total_steps": total,
                                    "first_step": self.total})  # fmt: skip
                started = time.perf_counter()
                for e in range(sc.finetune_epochs):
                    step = self.epoch(step, tc.epochs + e)
                self.out.timing["finetune_s"] = time.perf_counter() - started
        self.out.accuracy["after_finetune"] = self.evaluate()
        return self.out


def train_baseline(
    method: str,
    names: list[str],
    model: nn.Module,
    train_loader: DataLoader,
    eval_loader: DataLoader,
    recipe: Recipe,
    device: torch.device,
    callback: Callback | None = None,
    *,
    precision: Precision = FP32,
    forward_model: nn.Module | None = None,
    checkpoint: Path | None = None,
    resume: dict[str, Any] | None = None,
    loader_generator: torch.Generator | None = None,
    stop: StopRequest | None = None,
) -> DwfOutcome:
    """Prune the plain weights `names` of `model` to `recipe.sparsity.target` with a baseline.

    Called like `train_dwf` (the pipeline binds `method` and `names`). Accuracy `before_cut` /
    `after_cut` are measured around the moment the mask becomes final (step 0 for oneshot and
    random, the end of the ramp for gmp, the end of `train.epochs` for l1). Baselines keep no
    checkpoint: `checkpoint` is ignored and `resume` is refused.

    Example:
        outcome = train_baseline("gmp", ["0.weight"], model, train, test, recipe, cpu)
    """
    if method not in METHODS:
        raise InputError(f"unknown sparsity.method '{method}': use dwf, {', '.join(METHODS)}")
    if resume is not None:
        raise InputError(f"--resume is not supported for sparsity.method={method}")
    emit: Callable[[str, dict[str, Any]], None] = callback or (lambda e, i: None)
    run = _BaselineRun(
        method, names, model, train_loader, eval_loader, recipe, device, emit, precision,
        forward_model or model, stop,
    )  # fmt: skip
    return run.run()
