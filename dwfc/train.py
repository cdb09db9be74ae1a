"""DWF fine-tuning: sparsify -> settle (lambda steered by the controller), exact cut, masked
fine-tune; resumable from checkpoints, restartable after divergence, DDP-aware.

Only the factors get weight decay: wd = 2 * lambda / D on every factor is exactly the L_{2/D}
penalty lambda * sum |w|^(2/D) on the collapsed weights (docs/method.md).
Progress reaches the caller through `callback(event, info)`; the library prints nothing.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from . import distributed as dist
from .checkpoint import StopRequest, rng_state, save_checkpoint, set_rng_state
from .config import Recipe
from .errors import Interrupted, OutputError, TrainingDiverged
from .factorize import factorized_weights, set_masks
from .loop import (
    FP32,
    Precision,
    evaluate,
    flush_denormal,
    resolve_device,
    run_epoch,
)
from .sparsity import (
    SparsityController,
    collapsed_weights,
    fraction_below,
    global_magnitude_masks,
    largest_cut,
    layer_rms,
)

Callback = Callable[[str, dict[str, Any]], None]
__all__ = ["Callback", "DwfOutcome", "TrainingDiverged", "evaluate", "resolve_device", "train_dwf"]


@dataclass
class DwfOutcome:
    """What fine-tuning measured; the pipeline folds it into the report."""

    history: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    sparsity_eps: float = 0.0
    sparsity_relative: float = 0.0
    sparsity_controlled: float | None = None  # DWF only: share under control_threshold x RMS
    largest_cut: float | None = None  # largest |w| the exact cut removed, in its layer's RMS
    lam: float = 0.0
    lam_max: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    lr_factor: float = 1.0


def _cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor on the CPU: snapshots must not grow GPU memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def _lr_scales(
    rms: dict[str, float], depths: dict[str, int], mode: str, cap: float
) -> dict[str, float]:
    # A weight of size |w| moves about D |w|^(2(D-1)/D) times the factor learning rate; scaling
    # each layer's factor rate by the inverse at its RMS makes `lr` the rate on typical weights.
    if mode == "none":
        return dict.fromkeys(rms, 1.0)
    return {
        n: min(cap, 1.0 / (depths[n] * r ** (2.0 * (depths[n] - 1) / depths[n])))
        for n, r in rms.items()
    }


def _param_groups(model: nn.Module, scales: dict[str, float]) -> list[dict[str, Any]]:
    groups, factor_ids = [], set()
    for fw in factorized_weights(model):
        groups.append({"params": fw.factors, "lr_scale": scales[fw.name], "factor": True,
                       "depth": fw.parametrization.depth})  # fmt: skip
        factor_ids.update(id(f) for f in fw.factors)
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in factor_ids]
    if others:
        groups.append({"params": others, "lr_scale": 1.0, "factor": False})
    return groups


def _cosine(progress: float, min_ratio: float) -> float:
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _set_hyper(opt: torch.optim.Optimizer, lr: float, lam: float) -> None:
    """Learning rates, and weight decay 2 lambda / D on each factor (its own weight's D)."""
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_scale"]
        group["weight_decay"] = 2.0 * lam / group["depth"] if group["factor"] else 0.0


class _DwfRun:
    """The state of one DWF fine-tuning run, so it can be checkpointed and resumed."""

    def __init__(
        self, model: nn.Module, train_loader: DataLoader, eval_loader: DataLoader,
        recipe: Recipe, device: torch.device, emit: Callback, precision: Precision,
        forward_model: nn.Module, checkpoint: Path | None, loader_generator: torch.Generator | None,
        stop: StopRequest | None,
    ) -> None:  # fmt: skip
        self.model, self.forward_model = model, forward_model
        self.train_loader, self.eval_loader = train_loader, eval_loader
        self.recipe, self.device, self.emit, self.precision = recipe, device, emit, precision
        self.checkpoint, self.loader_generator, self.stop = checkpoint, loader_generator, stop
        tc, sc = recipe.train, recipe.sparsity
        weights = collapsed_weights(model)
        rms = layer_rms(weights)
        self.rms = rms
        self.rel = {n: sc.relative_threshold * r for n, r in rms.items()}
        self.controlled = {n: sc.control_threshold * r for n, r in rms.items()}
        self.steps_per_epoch = len(train_loader)
        self.total = tc.epochs * self.steps_per_epoch
        self.ramp = max(1, round(sc.ramp_fraction * self.total))
        # A short run has few controller updates: let lambda still span e^ramp_log_range.
        updates_in_ramp = max(1, self.ramp // tc.log_every)
        max_step = max(sc.max_step, sc.ramp_log_range / updates_in_ramp)
        self.ctl = SparsityController(
            target=sc.target, lam=sc.lambda_init, start=fraction_below(weights, self.controlled),
            lam_min=sc.lambda_min, lam_max=sc.lambda_max, gain=sc.gain, max_step=max_step,
            lookahead=sc.lookahead, down_gain=sc.down_gain,
        )  # fmt: skip
        depths = {fw.name: fw.parametrization.depth for fw in factorized_weights(model)}
        self.scales = _lr_scales(rms, depths, tc.lr_scaling, tc.max_lr_scale)
        self.opt = torch.optim.SGD(
            _param_groups(model, self.scales), lr=tc.lr, momentum=tc.momentum
        )
        self.out = DwfOutcome()
        self.phase, self.epoch, self.step = "dwf", 0, 0
        self.masks: dict[str, torch.Tensor] | None = None
        self.epoch_start: dict[str, Any] | None = None  # the snapshot a restart goes back to

    # -- schedules -------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        tc = self.recipe.train
        warmup = round(tc.warmup_epochs * self.steps_per_epoch)
        if step < warmup:
            base = tc.lr * (step + 1) / warmup
        elif tc.schedule == "cosine":
            base = tc.lr * _cosine(step / self.total, tc.min_lr_ratio)
        else:
            base = tc.lr
        return base * self.out.lr_factor

    def finetune_lr_at(self, step: int) -> float:
        sc = self.recipe.sparsity
        total = max(1, sc.finetune_epochs * self.steps_per_epoch)
        return sc.finetune_lr * _cosine((step - self.total) / total, 0.0) * self.out.lr_factor

    # -- hooks -----------------------------------------------------------------------------
    def _before_dwf_step(self, step: int) -> None:
        _set_hyper(self.opt, self.lr_at(step), self.ctl.lam)

    def _before_finetune_step(self, step: int) -> None:
        _set_hyper(self.opt, self.finetune_lr_at(step), 0.0)

    def _row(self, phase: str, step: int, loss: float | None, acc: float | None) -> dict[str, Any]:
        row = {
            "phase": phase, "epoch": step / self.steps_per_epoch, "step": step, "loss": loss,
            "train_acc": acc, "eval_acc": None, "sparsity_eps": None, "sparsity_rel": None,
            "sparsity_ctl": None, "lambda": None, "lr": None,
        }  # fmt: skip
        if phase == "finetune":
            row["lr"] = self.finetune_lr_at(step - 1)
        else:
            weights = collapsed_weights(self.model)
            row.update(
                sparsity_eps=fraction_below(weights, self.recipe.sparsity.eps),
                sparsity_rel=fraction_below(weights, self.rel),
                sparsity_ctl=fraction_below(weights, self.controlled),
                **{"lambda": self.ctl.lam, "lr": self.lr_at(step - 1)},
            )
        return row

    def _log_dwf(self, step: int, loss: float, acc: float) -> None:
        row = self._row("sparsify" if step <= self.ramp else "settle", step, loss, acc)
        self.out.history.append(row)
        self.emit("log", row)
        self.ctl.update(step / self.ramp, row["sparsity_ctl"])
        self.ctl.lam = dist.broadcast_float(self.ctl.lam, self.device)

    def _log_finetune(self, step: int, loss: float, acc: float) -> None:
        row = self._row("finetune", step, loss, acc)
        self.out.history.append(row)
        self.emit("log", row)

    def _should_stop(self) -> bool:
        return self.stop is not None and dist.any_true(self.stop.requested, self.device)

    # -- checkpoints -----------------------------------------------------------------------
    def state(self, batches_done: int = 0, epoch_start_loader: Any = None) -> dict[str, Any]:
        return {
            "phase": self.phase, "epoch": self.epoch, "step": self.step,
            "batches_done": batches_done, "epoch_start_loader": epoch_start_loader,
            "model": _cpu_copy(self.model.state_dict()),
            "masks": self.masks, "optimizer": _cpu_copy(self.opt.state_dict()),
            "controller": self.ctl.state_dict(), "rng": rng_state(self.loader_generator),
            "outcome": copy.deepcopy(vars(self.out)),
            "recipe": self.recipe.model_dump(mode="json"),
        }  # fmt: skip

    def restore(self, payload: dict[str, Any]) -> None:
        self.phase, self.epoch, self.step = payload["phase"], payload["epoch"], payload["step"]
        self.masks = payload["masks"]
        if self.masks is not None:
            set_masks(self.model, self.masks)
        self.model.load_state_dict(payload["model"])
        self.opt.load_state_dict(copy.deepcopy(payload["optimizer"]))  # SGD updates in place
        self.ctl.load_state_dict(payload["controller"])
        self.out = DwfOutcome(**copy.deepcopy(payload["outcome"]))
        set_rng_state(payload["rng"], self.loader_generator)

    def _save(self, payload: dict[str, Any]) -> None:
        if self.checkpoint is not None and dist.is_main():
            try:
                save_checkpoint(self.checkpoint, payload)
            except OSError as exc:
                raise OutputError(
                    f"cannot write checkpoint {self.checkpoint}: {exc.strerror or exc} "
                    "(train.checkpoint=false turns checkpoints off)"
                ) from None

    # -- phases ----------------------------------------------------------------------------
    def _epoch(self, resume: dict[str, Any] | None) -> None:
        """One epoch of the current phase, restarted at most `max_retries` times on divergence.

        The first restart goes back to this epoch's start; the state there can already be past
        saving (the loss non-finite on its first batch at any rate), so later restarts go back
        to the previous epoch's start when it belongs to the same phase.
        """
        good = resume or self.state()
        earlier, self.epoch_start = self.epoch_start, good
        if earlier is not None and earlier["phase"] != self.phase:
            earlier = None
        skip = good.get("batches_done", 0) if resume else 0
        restarts = 0
        while True:
            if skip and good.get("epoch_start_loader") is not None and self.loader_generator:
                self.loader_generator.set_state(good["epoch_start_loader"])
            start_loader = self.loader_generator.get_state() if self.loader_generator else None
            if isinstance(self.train_loader.sampler, DistributedSampler):
                offset = 0 if self.phase == "dwf" else self.recipe.train.epochs
                self.train_loader.sampler.set_epoch(self.epoch + offset)
            try:
                dwf = self.phase == "dwf"
                step, stopped = run_epoch(
                    self.forward_model, self.train_loader, self.opt, self.device,
                    first_step=self.step, log_every=self.recipe.train.log_every,
                    before_step=self._before_dwf_step if dwf else self._before_finetune_step,
                    on_log=self._log_dwf if dwf else self._log_finetune,
                    precision=self.precision, skip_batches=skip,
                    restore_rng=partial(set_rng_state, good["rng"], None) if skip else None,
                    should_stop=self._should_stop,
                )  # fmt: skip
            except TrainingDiverged as exc:
                if self.out.retries >= self.recipe.train.max_retries:
                    kept = self.checkpoint is not None and self.checkpoint.exists()
                    raise TrainingDiverged(
                        f"training diverged: {exc}, and {self.out.retries} restarts with halved "
                        "learning rates did not help; lower train.lr or sparsity.lambda_max"
                        + (f"; the last good checkpoint stays in {self.checkpoint}" if kept else "")
                    ) from None
                retries, factor = self.out.retries + 1, self.out.lr_factor * 0.5
                restarts += 1
                if restarts > 1 and earlier is not None:
                    good, earlier = earlier, None
                    self.epoch_start = good
                self.restore(good)
                self.out.retries, self.out.lr_factor = retries, factor
                self.emit("diverged", {"retry": retries, "lr_factor": factor})
                skip = good.get("batches_done", 0) if good is resume else 0
                continue
            batches_done = step - self.step + skip
            self.step = step
            if stopped:
                self._save(self.state(batches_done, start_loader))
                raise Interrupted(
                    f"interrupted: checkpoint saved in {self.checkpoint}; rerun with --resume "
                    "to continue" if self.checkpoint else "interrupted: no checkpoint (checkpoints "
                    "are off), no output was written"
                )  # fmt: skip
            return

    def _end_of_epoch(self) -> None:
        self.epoch += 1
        acc = evaluate(self.model, self.eval_loader, self.device, self.precision)
        if self.out.history:
            self.out.history[-1]["eval_acc"] = acc
        self.emit("eval", {"phase": self.phase, "epoch": self.epoch, "eval_acc": acc,
                           "step": self.step})  # fmt: skip
        self._save(self.state())

    def _cut(self) -> None:
        sc = self.recipe.sparsity
        weights = collapsed_weights(self.model)
        self.out.sparsity_eps = fraction_below(weights, sc.eps)
        self.out.sparsity_relative = fraction_below(weights, self.rel)
        self.out.sparsity_controlled = fraction_below(weights, self.controlled)
        self.out.lam, self.out.lam_max = self.ctl.lam, self.ctl.history_max
        self.out.accuracy["before_cut"] = evaluate(
            self.model, self.eval_loader, self.device, self.precision
        )
        masks = global_magnitude_masks(weights, sc.target)
        shared = dist.broadcast_tensors({n: m.to(torch.uint8) for n, m in masks.items()})
        self.masks = {n: m.bool() for n, m in shared.items()}
        self.out.largest_cut = largest_cut(weights, self.masks, self.rms)
        set_masks(self.model, self.masks)
        self.out.accuracy["after_cut"] = evaluate(
            self.model, self.eval_loader, self.device, self.precision
        )
        self.emit("cut", dict(self.out.accuracy))
        self.phase, self.epoch = "finetune", 0
        self.opt = torch.optim.SGD(
            _param_groups(self.model, self.scales), lr=sc.finetune_lr,
            momentum=self.recipe.train.momentum,
        )  # fmt: skip

    def run(self, resume: dict[str, Any] | None) -> DwfOutcome:
        if resume is not None:
            if resume["phase"] == "finetune" and self.masks is None:
                self.opt = torch.optim.SGD(
                    _param_groups(self.model, self.scales), lr=self.recipe.sparsity.finetune_lr,
                    momentum=self.recipe.train.momentum,
                )  # fmt: skip
            self.restore(resume)
        tc, sc = self.recipe.train, self.recipe.sparsity
        with flush_denormal(tc.flush_denormal and self.device.type == "cpu"):
            if self.phase == "dwf":
                self.emit("phase", {"phase": "dwf", "total_steps": self.total, "first_step": 0})
                started = time.perf_counter() - self.out.timing.get("train_s", 0.0)
                while self.epoch < tc.epochs:
                    self._epoch(resume if resume and resume["phase"] == "dwf" else None)
                    resume = None
                    self._end_of_epoch()
                    self.out.timing["train_s"] = time.perf_counter() - started
                self._cut()
                self._save(self.state())
            if sc.finetune_epochs > 0 and sc.finetune_lr > 0:
                total = sc.finetune_epochs * self.steps_per_epoch
                self.emit("phase", {"phase": "finetune", "total_steps": total,
                                    "first_step": self.total})  # fmt: skip
                started = time.perf_counter() - self.out.timing.get("finetune_s", 0.0)
                while self.epoch < sc.finetune_epochs:
                    self._epoch(resume)
                    resume = None
                    self._end_of_epoch()
                    self.out.timing["finetune_s"] = time.perf_counter() - started
        self.out.accuracy["after_finetune"] = evaluate(
            self.model, self.eval_loader, self.device, self.precision
        )
        return self.out


def train_dwf(
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
    """Fine-tune a factorized `model` to `recipe.sparsity.target`, cut exactly, fine-tune masked.

    `forward_model` is what the training forward runs (a DDP wrapper of `model`); `checkpoint`
    is written after every epoch and on a stop request; `resume` is a loaded checkpoint.

    Example:
        dwfc.factorize_(model, depth=3)
        outcome = train_dwf(model, train_loader, eval_loader, load_recipe(), torch.device("cpu"))
    """
    run = _DwfRun(
        model, train_loader, eval_loader, recipe, device, callback or (lambda e, i: None),
        precision, forward_model or model, checkpoint, loader_generator, stop,
    )  # fmt: skip
    return run.run(resume)
