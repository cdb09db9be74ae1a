"""Re-estimate BatchNorm running statistics after the cut.

Zeroing most weights shifts every activation's mean and variance, so the running statistics
a BatchNorm layer collected before (or during DWF training, while the weights were still
moving) no longer match the sparse network. One pass over training data in BatchNorm-train
mode with a cumulative average fixes them; nothing is trained. See docs/selection.md.

Example:
    if has_batchnorm(model):
        recalibrate_batchnorm_(model, train_loader, "cpu", max_batches=50)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dwfc import inputs
from dwfc.errors import InputError


def _batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    """True if `model` has a BatchNorm layer that keeps running statistics.

    Example:
        has_batchnorm(torchvision.models.resnet18())  # True
    """
    return bool(_batchnorms(model))


def _inputs(batch: Any) -> Any:
    """The model input of a loader batch: the batch itself, or the first item of (x, y)."""
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise InputError("recalibrate_batchnorm_: the loader yielded an empty batch")
        return batch[0]
    return batch


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def recalibrate_batchnorm_(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device | str,
    max_batches: int | None = None,
) -> None:
    """Reset and re-estimate the running mean/variance of every BatchNorm layer, in place.

    Runs forward passes under no_grad over `loader` (batches `x` or `(x, y, ...)`), at most
    `max_batches` of them, with the BatchNorm layers in train mode and a cumulative average
    (momentum None), while every other layer stays in eval mode (dropout off). Afterwards the
    momenta and each module's train/eval mode are restored. Models without BatchNorm are left
    as they are.

    Example:
        recalibrate_batchnorm_(model, train_loader, "cpu", max_batches=100)
    """
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise InputError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    norms = _batchnorms(model)
    if not norms:
        return
    device = torch.device(device)
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(bn, bn.momentum) for bn in norms]
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in norms]
    seen = 0
    try:
        model.eval()
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            for batch in loader:
                if max_batches is not None and seen >= max_batches:
                    break
                inputs.call(model, _to(_inputs(batch), device))
                seen += 1
    finally:
        if seen == 0:  # interrupted before any batch, or no data: keep the old statistics
            for bn, state in zip(norms, saved, strict=True):
                bn.load_state_dict(state)
        for bn, momentum in momenta:
            bn.momentum = momentum
        for module, training in modes:
            module.training = training
    if seen == 0:
        raise InputError("recalibrate_batchnorm_: the loader yielded no batches")


def recalibrate_and_measure(
    model: nn.Module, enabled: bool, train_loader: Iterable[Any], evaluate: Callable[[], float],
    device: torch.device,
) -> dict[str, float]:  # fmt: skip
    """The pipeline's BatchNorm stage: when `enabled` and the model has BatchNorm, re-estimate
    its statistics and return the accuracy (`evaluate()`) before and after; else nothing."""
    if not (enabled and has_batchnorm(model)):
        return {}
    before = evaluate()
    recalibrate_batchnorm_(model, train_loader, device)
    return {"before_bn_recalibration": before, "after_bn_recalibration": evaluate()}
