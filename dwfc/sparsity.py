"""Sparsity: measuring it, the lambda controller that steers DWF to a target, and the exact cut.

The controller (docs/controller.md) treats the fraction of *negligible* weights
(|w| < relative_threshold * the layer's initial RMS) as the plant output and log(lambda) as the
input. It follows a cubic ramp from the starting sparsity to the target, then holds the target,
with a bounded multiplicative update on lambda driven by the log ratio of the densities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .factorize import factorized_weights


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
    masks, offset = {}, 0
    for name in names:
        n = weights[name].numel()
        masks[name] = keep_flat[offset : offset + n].view(weights[name].shape)
        offset += n
    return masks


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
    gain: float = 2.0
    max_step: float = 0.25
    history_max: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.history_max = self.lam

    def setpoint(self, progress: float) -> float:
        """Cubic ramp (Zhu & Gupta's shape) from `start` at 0 to `target` at 1, then flat."""
        p = min(max(progress, 0.0), 1.0)
        start = min(self.start, self.target)
        return self.target + (start - self.target) * (1.0 - p) ** 3

    def update(self, progress: float, measured: float) -> float:
        """One feedback step; returns lambda, raised when too dense and lowered when too sparse."""
        wanted_density = max(1.0 - self.setpoint(progress), 1e-6)
        density = max(1.0 - measured, 1e-6)
        step = self.gain * math.log(density / wanted_density)
        step = max(-self.max_step, min(self.max_step, step))
        self.lam = min(self.lam_max, max(self.lam_min, self.lam * math.exp(step)))
        self.history_max = max(self.history_max, self.lam)
        return self.lam

    def state_dict(self) -> dict[str, float]:
        return {"lam": self.lam, "start": self.start, "history_max": self.history_max}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.lam, self.start, self.history_max = state["lam"], state["start"], state["history_max"]
