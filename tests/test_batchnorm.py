import copy

import pytest
import torch
from torch import nn

from dwfc.batchnorm import has_batchnorm, recalibrate_batchnorm_
from dwfc.errors import InputError


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, momentum=0.3),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):  # pixel noise around a per-image, per-channel level
        level = 3.0 * torch.randn(4, 3, 1, 1, generator=g)
        x = 2.0 + level + 3.0 * torch.randn(4, 3, 6, 6, generator=g)
        batches.append((x, torch.zeros(4, dtype=torch.long)))
    return batches


def _direct_stats(conv: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """What a cumulative average over the batches gives: the mean of per-batch statistics."""
    means, variances = [], []
    with torch.no_grad():
        for x, _ in batches:
            a = conv(x)
            means.append(a.mean(dim=(0, 2, 3)))
            variances.append(a.transpose(0, 1).reshape(a.shape[1], -1).var(dim=1))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


def _corrupt(model: nn.Sequential) -> None:
    with torch.no_grad():
        model[1].running_mean.add_(5.0)
        model[1].running_var.mul_(10.0)


def test_has_batchnorm():
    assert has_batchnorm(_net())
    assert not has_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    assert not has_batchnorm(nn.BatchNorm1d(3, track_running_stats=False))


def test_recalibration_restores_the_data_statistics():
    model = _net().eval()
    batches = _batches()
    mean, var = _direct_stats(model[0], batches)
    reference = copy.deepcopy(model)
    reference[1].running_mean.copy_(mean)
    reference[1].running_var.copy_(var)
    x_eval = torch.cat([x for x, _ in batches])
    with torch.no_grad():
        want = reference(x_eval)
    labels = want.argmax(1)

    _corrupt(model)
    with torch.no_grad():
        before = model(x_eval)
    recalibrate_batchnorm_(model, batches, "cpu")
    with torch.no_grad():
        after = model(x_eval)

    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-5)
    assert int(model[1].num_batches_tracked) == len(batches)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)
    assert (after - want).abs().max() < 0.01 * (before - want).abs().max()
    assert (before.argmax(1) == labels).float().mean() < 1.0
    assert (after.argmax(1) == labels).float().mean() == 1.0


def test_modes_and_momentum_are_restored():
    model = _net().eval()
    recalibrate_batchnorm_(model, _batches(), "cpu")
    assert not any(m.training for m in model.modules())
    assert model[1].momentum == 0.3

    model.train()
    model[3].eval()  # a mixed state survives too
    recalibrate_batchnorm_(model, _batches(), "cpu")
    assert [m.training for m in model] == [True, True, True, False, True, True, True]


def test_dropout_is_off_during_the_pass():
    # With dropout active the statistics of later BatchNorms would be those of a noisy input.
    model = nn.Sequential(nn.Dropout(0.9), nn.BatchNorm1d(3)).train()
    x = torch.randn(8, 3)
    recalibrate_batchnorm_(model, [x], "cpu")  # a batch may be a bare tensor
    torch.testing.assert_close(model[1].running_mean, x.mean(0))
    torch.testing.assert_close(model[1].running_var, x.var(0))


def test_max_batches_limits_the_pass():
    model = _net().eval()
    batches = _batches(3)
    recalibrate_batchnorm_(model, batches, "cpu", max_batches=1)
    mean, _ = _direct_stats(model[0], batches[:1])
    assert int(model[1].num_batches_tracked) == 1
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-5)


def test_empty_loader_keeps_the_old_statistics():
    model = _net().eval()
    _corrupt(model)
    old = {k: v.clone() for k, v in model[1].state_dict().items()}
    with pytest.raises(InputError, match="no batches"):
        recalibrate_batchnorm_(model, [], "cpu")
    for key, value in model[1].state_dict().items():
        assert torch.equal(value, old[key])
    assert model[1].momentum == 0.3 and not model.training


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_max_batches(bad):
    with pytest.raises(InputError, match="max_batches"):
        recalibrate_batchnorm_(_net(), _batches(), "cpu", max_batches=bad)


def test_model_without_batchnorm_is_untouched():
    model = nn.Linear(3, 2)
    recalibrate_batchnorm_(model, [], "cpu")  # nothing to do, so an empty loader is fine
    assert model.training
