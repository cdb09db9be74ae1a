"""The interface of a sparsification method; the engine (dwfc/engine/trainer.py) drives it.

A method says what it trains (`trains`: the Hadamard factors of the selected weights, or the
plain weights), gives the optimizer its parameter groups, and answers the engine's hooks:

    start            before the first step of a fresh run (one-shot masks are set here)
    before_step      every step: learning rates and weight decay per group; pruning steps
    after_step       every step: proximal steps, masks kept exact
    on_log           every train.log_every steps, with the history row just measured
    end_of_sparsify  after the last sparsify epoch: the exact cut to the target

The engine owns the loop, the schedule, evaluation, history, checkpoints, restarts and stops;
a method's own state (masks, its lambda controller) travels in checkpoints via `state_dict`.
A new method is one module with one such class, and one line in dwfc/methods/__init__.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from torch import Tensor, nn
from torch.optim import Optimizer

from dwfc.config import Recipe
from dwfc.engine import distributed as dist
from dwfc.engine.schedule import SPARSIFY, Schedule
from dwfc.sparsity import SparsityController, fraction_below, layer_rms

if TYPE_CHECKING:
    from dwfc.engine.outcome import HistoryRow, TrainOutcome
    from dwfc.engine.trainer import Trainer

class Method(ABC):
    """One sparsification method over the weights `names` of `model`.

    Example:
        method = METHODS["gmp"](model, ["fc.weight"], recipe, Schedule.of(recipe, 100))
    """

    name: ClassVar[str]  # the value of sparsity.method
    title: ClassVar[str]  # how reports name it
    trains: ClassVar[Literal["factors", "gates", "weights"]]  # what `prepare` made, or the weights
    structure: ClassVar[str] = "unstructured"  # the structure.kind it removes

    def __init__(self, model: nn.Module, names: list[str], recipe: Recipe, schedule: Schedule):
        self.model, self.names, self.recipe, self.schedule = model, names, recipe, schedule
        self.masks: dict[str, Tensor] | None = None
        self.final = False  # the masks are final: the cut to the target has happened
        self.ctl: SparsityController | None = None  # methods with a penalty steer it
        sc = recipe.sparsity
        self.rms = layer_rms(self.weights())  # initial scale of each weight
        self.relative = {n: sc.relative_threshold * r for n, r in self.rms.items()}
        self.controlled = {n: sc.control_threshold * r for n, r in self.rms.items()}

    # -- what it trains ------------------------------------------------------------------
    @classmethod  # noqa: B027 - an optional hook
    def prepare(cls, model: nn.Module, selection: Any, recipe: Recipe) -> None:
        """Reparametrize `model` for this method, in place, before training (and before a
        checkpoint is loaded into it): DWF factorizes, D-Gating gates; `dwfc.collapse_` undoes it.
        An optional hook: the default does nothing (the method trains the plain weights).
        """

    @abstractmethod
    def weights(self) -> dict[str, Tensor]:
        """The current values of the weights being sparsified (no autograd)."""

    @abstractmethod
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: every trainable parameter of the model."""

    def attach(self, opt: Optimizer) -> None:  # noqa: B027 - an optional hook
        """Called with each optimizer the engine makes (e.g. to register step hooks)."""

    @abstractmethod
    def set_masks(self, masks: dict[str, Tensor] | None, opt: Optimizer | None) -> None:
        """Put `masks` (1 keeps, 0 prunes; the same on every rank) into force; None: none."""

    def measure(self) -> tuple[float, float, float]:
        """The sparsity now: the shares under eps, under the relative threshold and under the
        controlled threshold (what the controller steers)."""
        weights, eps = self.weights(), self.recipe.sparsity.eps
        return (fraction_below(weights, eps), fraction_below(weights, self.relative),
                fraction_below(weights, self.controlled))  # fmt: skip

    @property
    def target(self) -> float:
        """The share the controller steers to."""
        return cast(float, self.recipe.sparsity.target)  # set for every unstructured recipe

    # -- hooks ---------------------------------------------------------------------------
    def start(self, trainer: Trainer) -> None:  # noqa: B027 - an optional hook
        """Before the first step of a fresh run (not on resume)."""

    @abstractmethod
    def before_step(self, trainer: Trainer, step: int, lr: float) -> None:
        """Set each group's learning rate and weight decay for global step `step`."""

    def after_step(self, trainer: Trainer, step: int) -> None:  # noqa: B027 - optional
        """After the optimizer step that made the global step count `step`."""

    def on_log(self, trainer: Trainer, step: int, row: HistoryRow) -> None:
        """Steer lambda from the measured controlled sparsity while the sparsify phase runs."""
        if self.ctl is not None and trainer.phase == SPARSIFY and not self.final:
            self.ctl.update(step / self.schedule.ramp, row["sparsity_ctl"])
            self.ctl.lam = dist.broadcast_float(self.ctl.lam, trainer.device)

    @abstractmethod
    def end_of_sparsify(self, trainer: Trainer) -> None:
        """The exact cut to the target (if not done yet); record what training reached."""

    def phase(self, step: int) -> str:
        """The history label of a sparsify-phase step."""
        return "sparsify" if step <= self.schedule.ramp else "settle"

    @property
    def lam(self) -> float | None:
        """The penalty weight acting now, or None."""
        return self.ctl.lam if self.ctl is not None and not self.final else None

    # -- helpers for methods -------------------------------------------------------------
    def make_controller(self, lam: float) -> SparsityController:
        """DWF's lambda controller (docs/controller.md) with the recipe's settings."""
        sc = self.recipe.sparsity
        # A short run has few controller updates: let lambda still span e^ramp_log_range.
        updates_in_ramp = max(1, self.schedule.ramp // self.recipe.train.log_every)
        return SparsityController(
            target=self.target, lam=lam, start=self.measure()[2],
            lam_min=sc.lambda_min, lam_max=sc.lambda_max, gain=sc.gain,
            max_step=max(sc.max_step, sc.ramp_log_range / updates_in_ramp),
            lookahead=sc.lookahead, down_gain=sc.down_gain,
        )  # fmt: skip

    def record_penalty(self, outcome: TrainOutcome) -> None:
        if self.ctl is not None:
            outcome.lam, outcome.lam_max = self.ctl.lam, self.ctl.history_max

    # -- report --------------------------------------------------------------------------
    @classmethod
    def summary(cls, recipe: Recipe, outcome: TrainOutcome) -> dict[str, Any]:
        """The method's own entries of the report's `method` section."""
        return {"depth": None, "init": None, "weight_decay": None,
                "lambda": outcome.lam, "lambda_history_max": outcome.lam_max}  # fmt: skip

    @classmethod
    def warnings(cls, accuracy: dict[str, float]) -> list[str]:
        """Plain-language warnings about a finished run of this method."""
        return []

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks, "final": self.final,
                "controller": self.ctl.state_dict() if self.ctl is not None else None}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore masks and controller; called before the model's own state is loaded."""
        self.final = state["final"]
        self.set_masks(state["masks"], None)
        if self.ctl is not None:
            self.ctl.load_state_dict(state["controller"])
