"""Sparsity: measuring it, the lambda controller that steers DWF to a target, and the exact cut.

The controller (docs/controller.md) treats the fraction of *small* weights (|w| <
control_threshold * the layer's initial RMS, a leading indicator of collapse) as the plant output
and log(lambda) as the input. It follows a cubic ramp from the starting sparsity to the target,
then holds it, with a bounded multiplicative update on lambda driven by the log ratio of the
density predicted `lookahead` updates ahead and the wanted density; lambda rises with `gain` and
falls with the smaller `down_gain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dwfc.factorize import factorized_weights


@dataclass
class LayerStats:
    name: str
    shape: list[int]
    weights: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.weights if self.weights else 0.0


def collapsed_weights(model: nn.Module) -> dict[str, Tensor]:
    """Name -> current collapsed value of every factorized weight (no autograd)."""
    return {fw.name: fw.collapsed() for fw in factorized_weights(model)}


def layer_rms(weights: dict[str, Tensor]) -> dict[str, float]:
    """Root mean square of each weight: the scale that `relative_threshold` is relative to."""
    return {name: float(w.float().pow(2).mean().sqrt()) or 1.0 for name, w in weights.items()}


def fraction_below(weights: dict[str, Tensor], thresholds: dict[str, float] | float) -> float:
    """Fraction of all entries with |w| < threshold (a number, or one per weight name)."""
    below = total = 0
    for name, w in weights.items():
        t = thresholds if isinstance(thresholds, float) else thresholds[name]
        below += int((w.abs() < t).sum())
        total += w.numel()
    return below / total if total else 0.0


def global_magnitude_masks(weights: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Masks keeping exactly N - round(sparsity * N) largest-magnitude entries over all weights.

    Ties are broken by position, so the count is exact whatever the values.
    """
    names = list(weights)
    flat = torch.cat([weights[n].detach().abs().flatten().float().cpu() for n in names])
    keep = flat.numel() - round(sparsity * flat.numel())
    keep_flat = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep > 0:
        keep_flat[torch.topk(flat, keep, sorted=False).indices] = True
    return split_flat(keep_flat, weights)


def split_flat(flat: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Cut a flat tensor over all weights (in `like`'s order) back into per-weight shapes."""
    parts, offset = {}, 0
    for name, weight in like.items():
        parts[name] = flat[offset : offset + weight.numel()].view(weight.shape)
        offset += weight.numel()
    return parts


def largest_cut(
    weights: dict[str, Tensor], masks: dict[str, Tensor], scale: dict[str, float]
) -> float:
    """The largest |w| that `masks` remove, in units of its layer's `scale` (0.0: none)."""
    largest = 0.0
    for name, w in weights.items():
        removed = w.detach().abs()[~masks[name].to(w.device)]
        if removed.numel():
            largest = max(largest, float(removed.max()) / scale[name])
    return largest


def layer_stats(weights: dict[str, Tensor]) -> list[LayerStats]:
    """Per-weight shape, size and count of non-zeros."""
    return [
        LayerStats(name, list(w.shape), w.numel(), int(torch.count_nonzero(w)))
        for name, w in weights.items()
    ]


@dataclass
class SparsityController:
    """Steers lambda so that the negligible fraction tracks a ramp to `target`.

    Example:
        ctl = SparsityController(target=0.95, lam=1e-4, start=0.0)
        lam = ctl.update(progress=0.3, measured=0.4)
    """

    target: float
    lam: float
    start: float = 0.0
    lam_min: float = 1e-7
    lam_max: float = 1.0
    gain: float = 1.0
    max_step: float = 0.05
    lookahead: float = 0.0
    down_gain: float | None = None
    history_max: float = field(init=False, default=0.0)
    previous_density: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.history_max = self.lam

    def setpoint(self, progress: float) -> float:
        """Cubic ramp (Zhu & Gupta's shape) from `start` at 0 to `target` at 1, then flat."""
        p = min(max(progress, 0.0), 1.0)
        start = min(self.start, self.target)
        return self.target + (start - self.target) * (1.0 - p) ** 3

    def update(self, progress: float, measured: float) -> float:
        """One feedback step; returns lambda, raised when too dense and lowered when too sparse."""
        density = max(1.0 - measured, 1e-6)
        previous = self.previous_density if self.previous_density is not None else density
        self.previous_density = density
        # Predict the density `lookahead` updates ahead from its falling log trend: sparsity
        # appears late and then fast, and lambda must stop rising before the target, not at it.
        trend = min(0.0, math.log(density / previous))
        predicted = density * math.exp(self.lookahead * trend)
        error = math.log(predicted / max(1.0 - self.setpoint(progress), 1e-6))
        gain = self.gain if error > 0 or self.down_gain is None else self.down_gain
        step = max(-self.max_step, min(self.max_step, gain * error))
        self.lam = min(self.lam_max, max(self.lam_min, self.lam * math.exp(step)))
        self.history_max = max(self.history_max, self.lam)
        return self.lam

    def state_dict(self) -> dict[str, float | None]:
        return {"lam": self.lam, "start": self.start, "history_max": self.history_max,
                "previous_density": self.previous_density}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam, self.start = state["lam"], state["start"]
        self.history_max, self.previous_density = state["history_max"], state["previous_density"]
