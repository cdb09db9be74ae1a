"""The one training loop every method runs in.

Two phases on one loader: `sparsify` (`train.epochs`), which ends in the method's exact cut,
and the masked `finetune` (`sparsity.finetune_epochs`). The engine owns the schedule, the
epochs, evaluation after each of them, the history rows, checkpoints after each epoch and on a
stop request, `--resume`, restarts after a non-finite loss and DDP; the method
(dwfc/methods/base.py) decides what is trained and how it becomes sparse.
Progress reaches the caller through `callback(event, info)`; the library prints nothing.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from dwfc.config import Recipe
from dwfc.engine import distributed as dist
from dwfc.engine.checkpoint import StopRequest, rng_state, save_checkpoint, set_rng_state
from dwfc.engine.device import FP32, Precision, flush_denormal
from dwfc.engine.loop import evaluate, run_epoch
from dwfc.engine.outcome import HistoryRow, TrainOutcome
from dwfc.engine.schedule import FINETUNE, SPARSIFY, Schedule
from dwfc.errors import Interrupted, OutputError, TrainingDiverged, named
from dwfc.fused import fused
from dwfc.methods import Method, method_class
from dwfc.structure.plan import ChannelPlan

Callback = Callable[[str, dict[str, Any]], None]


def _cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor on the CPU: snapshots must not grow GPU memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def fused_sgd(groups: list[dict[str, Any]], lr: float, momentum: float) -> torch.optim.SGD:
    """SGD in one fused kernel per parameter group. Its momentum buffers start at zero, which
    steps exactly as torch's first step does (buffer = gradient), because the fused kernel
    fails on a parameter whose gradient first arrives after the others' buffers exist."""
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=True)
    if momentum > 0:
        for group in opt.param_groups:
            for param in group["params"]:
                opt.state[param]["momentum_buffer"] = torch.zeros_like(param)
    return opt


class Trainer:
    """One run of `method`, so that it can be checkpointed, resumed and restarted."""

    def __init__(
        self, method: Method, train_loader: DataLoader, eval_loader: DataLoader,
        device: torch.device, emit: Callback, precision: Precision, forward_model: nn.Module,
        checkpoint: Path | None, loader_generator: torch.Generator | None,
        stop: StopRequest | None,
    ) -> None:  # fmt: skip
        self.method, self.model, self.forward_model = method, method.model, forward_model
        self.recipe: Recipe = method.recipe
        self.schedule: Schedule = method.schedule
        self.train_loader, self.eval_loader = train_loader, eval_loader
        self.device, self.emit, self.precision = device, emit, precision
        self.checkpoint, self.loader_generator, self.stop = checkpoint, loader_generator, stop
        self.opt = self.make_optimizer()
        self.outcome = TrainOutcome()
        self.phase, self.epoch, self.step = SPARSIFY, 0, 0
        self.epoch_start: dict[str, Any] | None = None  # the snapshot a restart goes back to

    # -- what methods call ---------------------------------------------------------------
    def make_optimizer(self) -> torch.optim.Optimizer:
        opt = fused_sgd(self.method.param_groups(), self.schedule.lr, self.recipe.train.momentum)
        self.method.attach(opt)
        return opt

    def reset_optimizer(self) -> None:
        """A fresh optimizer (no momentum) over the method's parameter groups."""
        self.opt = self.make_optimizer()

    def lr_at(self, step: int) -> float:
        """The rate of global step `step`, halved once per divergence restart."""
        return self.schedule.lr_at(step) * self.outcome.lr_factor

    def evaluate(self) -> float:
        return evaluate(self.model, self.eval_loader, self.device, self.precision)

    def final_cut(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """Make `masks` final (rank 0's on every rank), with the accuracy just before and after.

        Returns the masks now in force.
        """
        self.outcome.accuracy["before_cut"] = self.evaluate()
        shared = dist.broadcast_masks(masks)
        self.method.final = True
        self.method.set_masks(shared, self.opt)
        self.outcome.accuracy["after_cut"] = self.evaluate()
        self.emit("cut", dict(self.outcome.accuracy))
        return shared

    # -- per step ------------------------------------------------------------------------
    def _before_step(self, step: int) -> None:
        self.method.before_step(self, step, self.lr_at(step))

    def _after_step(self, step: int) -> None:
        self.method.after_step(self, step)

    def _row(self, step: int, loss: float, acc: float) -> HistoryRow:
        eps, relative, controlled = self.method.measure()
        return {
            "phase": self.method.phase(step) if self.phase == SPARSIFY else FINETUNE,
            "epoch": step / self.schedule.steps_per_epoch, "step": step, "loss": loss,
            "train_acc": acc, "eval_acc": None,
            "sparsity_eps": eps, "sparsity_rel": relative, "sparsity_ctl": controlled,
            "lambda": self.method.lam, "lr": self.lr_at(step - 1),
        }  # fmt: skip

    def _log(self, step: int, loss: float, acc: float) -> None:
        row = self._row(step, loss, acc)
        self.outcome.history.append(row)
        self.emit("log", row)
        self.method.on_log(self, step, row)

    def _should_stop(self) -> bool:
        return self.stop is not None and dist.any_true(self.stop.requested, self.device)

    # -- checkpoints ---------------------------------------------------------------------
    def state(self, batches_done: int = 0, epoch_start_loader: Any = None) -> dict[str, Any]:
        return {
            "phase": self.phase, "epoch": self.epoch, "step": self.step,
            "batches_done": batches_done, "epoch_start_loader": epoch_start_loader,
            "model": _cpu_copy(self.model.state_dict()),
            "optimizer": _cpu_copy(self.opt.state_dict()),
            "method": _cpu_copy(self.method.state_dict()),
            "rng": rng_state(self.loader_generator), "outcome": self.outcome.state_dict(),
            "recipe": self.recipe.model_dump(mode="json"),
        }  # fmt: skip

    def restore(self, payload: dict[str, Any]) -> None:
        self.phase, self.epoch, self.step = payload["phase"], payload["epoch"], payload["step"]
        self.method.load_state_dict(payload["method"])  # DWF's masks are part of the model state
        self.model.load_state_dict(payload["model"])
        self.opt.load_state_dict(copy.deepcopy(payload["optimizer"]))  # SGD updates in place
        self.outcome = TrainOutcome.from_state_dict(copy.deepcopy(payload["outcome"]))
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

    # -- epochs --------------------------------------------------------------------------
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
                offset = 0 if self.phase == SPARSIFY else self.recipe.train.epochs
                self.train_loader.sampler.set_epoch(self.epoch + offset)
            try:
                step, stopped = run_epoch(
                    self.forward_model, self.train_loader, lambda: self.opt, self.device,
                    first_step=self.step, log_every=self.recipe.train.log_every,
                    before_step=self._before_step, after_step=self._after_step,
                    on_log=self._log, precision=self.precision, skip_batches=skip,
                    restore_rng=partial(set_rng_state, good["rng"], None) if skip else None,
                    should_stop=self._should_stop,
                )  # fmt: skip
            except TrainingDiverged as exc:
                if self.outcome.retries >= self.recipe.train.max_retries:
                    kept = self.checkpoint is not None and self.checkpoint.exists()
                    penalty = self.method.ctl is not None
                    lower = "train.lr" + (" or sparsity.lambda_max" if penalty else "")
                    raise TrainingDiverged(
                        f"training diverged: {exc}, and {self.outcome.retries} restarts with "
                        f"halved learning rates did not help; lower {lower}"
                        + (f"; the last good checkpoint stays in {self.checkpoint}" if kept else "")
                    ) from None
                retries, factor = self.outcome.retries + 1, self.outcome.lr_factor * 0.5
                restarts += 1
                if restarts > 1 and earlier is not None:
                    good, earlier = earlier, None
                    self.epoch_start = good
                self.restore(good)
                self.outcome.retries, self.outcome.lr_factor = retries, factor
                self.emit("diverged", {"retry": retries, "lr_factor": factor})
                skip = good.get("batches_done", 0) if good is resume else 0
                continue
            batches_done = step - self.step + skip
            self.step = step
            if stopped:
                self._save(self.state(batches_done, start_loader))
                if self.checkpoint is None:
                    raise Interrupted("interrupted: no checkpoint (checkpoints are off), no "
                                      "output was written")  # fmt: skip
                raise Interrupted(f"interrupted: checkpoint saved in {self.checkpoint}; rerun "
                                  f"with {named('resume=True')} to continue")  # fmt: skip
            return

    def _end_of_epoch(self) -> None:
        self.epoch += 1
        acc = self.evaluate()
        if self.outcome.history:
            self.outcome.history[-1]["eval_acc"] = acc
        label = self.method.name if self.phase == SPARSIFY else FINETUNE
        self.emit("eval", {"phase": label, "epoch": self.epoch, "eval_acc": acc,
                           "step": self.step})  # fmt: skip
        self._save(self.state())

    def _phase(self, epochs: int, first_step: int, timing_key: str,
               resume: dict[str, Any] | None) -> None:  # fmt: skip
        label = self.method.name if self.phase == SPARSIFY else FINETUNE
        total = epochs * self.schedule.steps_per_epoch
        self.emit("phase", {"phase": label, "total_steps": total, "first_step": first_step})
        started = time.perf_counter() - self.outcome.timing.get(timing_key, 0.0)
        resume = resume if resume is not None and resume["phase"] == self.phase else None
        while self.epoch < epochs:
            self._epoch(resume)
            resume = None
            self._end_of_epoch()
            self.outcome.timing[timing_key] = time.perf_counter() - started

    def run(self, resume: dict[str, Any] | None = None) -> TrainOutcome:
        """Sparsify, cut, fine-tune; from the start, or from the checkpoint `resume`."""
        if resume is not None:
            self.restore(resume)
        tc, sc = self.recipe.train, self.recipe.sparsity
        with (
            flush_denormal(tc.flush_denormal and self.device.type == "cpu"),
            fused(self.model, enabled=tc.fused is not False, compile=tc.fused == "compile"),
        ):
            if self.phase == SPARSIFY:
                if resume is None:
                    self.method.start(self)
                self._phase(tc.epochs, 0, "train_s", resume)
                self.method.end_of_sparsify(self)
                self.phase, self.epoch = FINETUNE, 0
                self._save(self.state())
            if sc.finetune_epochs > 0 and sc.finetune_lr > 0:
                self._phase(sc.finetune_epochs, self.schedule.total, "finetune_s", resume)
        self.outcome.accuracy["after_finetune"] = self.evaluate()
        return self.outcome


def train(
    model: nn.Module,
    names: list[str] | ChannelPlan,
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
) -> TrainOutcome:
    """Sparsify the weights `names` of `model` to `recipe.sparsity.target` (structure.kind=channel:
    the channels of the plan `names` to `recipe.structure.target_speedup`) with the recipe's
    method (`sparsity.method`): train, cut exactly, fine-tune masked.

    A method that trains factors or gates needs its `prepare` (factorize, gate) first.
    `forward_model` is what the training forward runs (a DDP wrapper of `model`); `checkpoint` is
    written after every epoch and on a stop request; `resume` is a loaded checkpoint.

    Example:
        dwfc.factorize_(model, depth=3)
        names = [fw.name for fw in dwfc.factorized_weights(model)]
        outcome = train(model, names, train_loader, eval_loader, load_recipe(), torch.device("cpu"))
    """
    schedule = Schedule.of(recipe, len(train_loader))
    method = method_class(recipe.sparsity.method, recipe.structure.kind)(model, names, recipe,
                                                                          schedule)  # fmt: skip
    trainer = Trainer(
        method, train_loader, eval_loader, device, callback or (lambda e, i: None), precision,
        forward_model or model, checkpoint, loader_generator, stop,
    )  # fmt: skip
    return trainer.run(resume)
