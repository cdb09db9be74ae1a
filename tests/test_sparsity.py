import math

import pytest
import torch

from dwfc.sparsity import (
    SparsityController,
    fraction_below,
    global_magnitude_masks,
    layer_rms,
    layer_stats,
)


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(30, 17, generator=g), "b": torch.randn(5, 3, 3, 3, generator=g) * 4}


@pytest.mark.parametrize("target", [0.1, 0.5, 0.9, 0.95, 0.99, 0.999])
def test_global_cut_keeps_exactly_the_requested_count(target):
    weights = _weights()
    n = sum(w.numel() for w in weights.values())
    masks = global_magnitude_masks(weights, target)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == n - round(target * n)


def test_global_cut_is_exact_with_ties():
    weights = {"a": torch.zeros(10, 10), "b": torch.ones(4, 25)}
    masks = global_magnitude_masks(weights, 0.3)
    assert sum(int(m.sum()) for m in masks.values()) == 140


def test_global_cut_keeps_the_largest_magnitudes():
    weights = _weights()
    masks = global_magnitude_masks(weights, 0.8)
    kept = torch.cat([weights[n][masks[n]].abs() for n in weights])
    dropped = torch.cat([weights[n][~masks[n]].abs() for n in weights])
    assert kept.min() >= dropped.max()


def test_fraction_below_counts_per_layer_thresholds():
    weights = {"a": torch.tensor([0.0, 1e-9, 0.5, 2.0]), "b": torch.tensor([10.0, 20.0])}
    assert fraction_below(weights, 1.19e-7) == pytest.approx(2 / 6)
    assert fraction_below(weights, {"a": 1.0, "b": 15.0}) == pytest.approx(4 / 6)


def test_layer_rms_and_stats():
    weights = {"a": torch.tensor([[3.0, 0.0], [0.0, 4.0]])}
    assert layer_rms(weights)["a"] == pytest.approx(math.sqrt(25 / 4))
    stats = layer_stats(weights)[0]
    assert (stats.weights, stats.nonzero, stats.shape) == (4, 2, [2, 2])
    assert stats.sparsity == pytest.approx(0.5)


def test_setpoint_ramps_cubically_from_start_to_target():
    ctl = SparsityController(target=0.9, lam=1e-4, start=0.1)
    assert ctl.setpoint(0.0) == pytest.approx(0.1)
    assert ctl.setpoint(0.5) == pytest.approx(0.9 - 0.8 * 0.125)
    assert ctl.setpoint(1.0) == pytest.approx(0.9)
    assert ctl.setpoint(3.0) == pytest.approx(0.9)


def test_controller_raises_lambda_when_too_dense_and_lowers_it_when_too_sparse():
    ctl = SparsityController(target=0.9, lam=1e-3)
    assert ctl.update(progress=1.0, measured=0.5) > 1e-3
    ctl = SparsityController(target=0.9, lam=1e-3)
    assert ctl.update(progress=1.0, measured=0.99) < 1e-3
    ctl = SparsityController(target=0.9, lam=1e-3)
    assert ctl.update(progress=1.0, measured=0.9) == pytest.approx(1e-3)


def test_controller_steps_are_bounded_and_lambda_clamped():
    ctl = SparsityController(target=0.99, lam=1e-3, max_step=0.05, lam_max=2e-3)
    assert ctl.update(progress=1.0, measured=0.0) == pytest.approx(1e-3 * math.exp(0.05))
    for _ in range(100):
        ctl.update(progress=1.0, measured=0.0)
    assert ctl.lam == pytest.approx(2e-3)
    assert ctl.history_max == pytest.approx(2e-3)
