"""What training hands to the report: accuracy around the cut, sparsity reached, history."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

HistoryRow = TypedDict(
    "HistoryRow",
    {
        "phase": str,  # the method's phase label (e.g. sparsify, settle, prune, masked) or finetune
        "epoch": float,
        "step": int,
        "loss": float,
        "train_acc": float,
        "eval_acc": "float | None",  # set on the last row of each epoch
        "sparsity_eps": float,
        "sparsity_rel": float,
        "sparsity_ctl": float,
        "lambda": "float | None",  # the penalty weight acting at this step, if any
        "lr": float,
    },
)


@dataclass
class TrainOutcome:
    """One training run's measurements; `accuracy` has before_cut, after_cut, after_finetune."""

    history: list[HistoryRow] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    # When training handed over to the final cut (channel methods: shares of MACs, not weights):
    sparsity_eps: float = 0.0  # share of |w| < eps
    sparsity_relative: float = 0.0  # share of |w| < relative_threshold x initial layer RMS
    sparsity_controlled: float | None = None  # DWF: share under control_threshold x RMS
    largest_cut: float | None = None  # DWF: largest |w| the exact cut removed, in layer RMS
    lam: float | None = None  # methods with a penalty: its final weight, and the largest seen
    lam_max: float | None = None
    removed: dict[str, list[int]] | None = None  # channel methods: each group's removed channels
    timing: dict[str, float] = field(default_factory=dict)
    retries: int = 0  # divergence restarts
    lr_factor: float = 1.0  # learning-rate multiplier after those restarts

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainOutcome:
        return cls(**state)
