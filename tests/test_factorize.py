import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import dwfc
from dwfc.errors import InputError
from dwfc.factorize import factor_parameters, factor_penalty, misalignment, set_masks


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )


def _x() -> torch.Tensor:
    return torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_balanced_factorize_keeps_the_forward(depth):
    model = _net().eval()
    expected = model(_x())
    dwfc.factorize_(model, depth=depth)
    torch.testing.assert_close(model(_x()), expected, rtol=1e-5, atol=1e-6)


def test_factorize_selects_linear_and_conv_weights_only():
    model = _net()
    dwfc.factorize_(model, depth=3)
    names = [fw.name for fw in dwfc.factorized_weights(model)]
    assert names == ["0.weight", "4.weight"]
    assert not parametrize.is_parametrized(model[1])  # BatchNorm untouched
    assert isinstance(model[0]._parameters["bias"], nn.Parameter)  # biases stay plain


def test_factors_are_d_tensors_of_the_weight_shape():
    model = _net()
    shape = model[4].weight.shape
    dwfc.factorize_(model, depth=4)
    fw = next(fw for fw in dwfc.factorized_weights(model) if fw.name == "4.weight")
    assert [tuple(f.shape) for f in fw.factors] == [tuple(shape)] * 4
    assert len(factor_parameters(model)) == 8


def test_balanced_factors_have_equal_magnitudes():
    model = _net()
    dwfc.factorize_(model, depth=3)
    for fw in dwfc.factorized_weights(model):
        first = fw.factors[0].abs()
        for other in fw.factors[1:]:
            assert torch.equal(first, other)
    assert abs(misalignment(model)) < 1e-4


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_balanced_penalty_equals_l_2_over_d_of_the_weight(depth):
    model = _net()
    weights = [model[0].weight.detach().clone(), model[4].weight.detach().clone()]
    lam = 0.3
    dwfc.factorize_(model, depth=depth)
    expected = lam * sum(w.abs().pow(2.0 / depth).sum() for w in weights)
    torch.testing.assert_close(factor_penalty(model, lam), expected, rtol=1e-5, atol=0)


def test_weight_decay_is_the_penalty_gradient():
    # PyTorch weight_decay wd adds wd * w_d to each factor's gradient: the gradient of
    # (lambda / D) * ||w_d||^2 with lambda = D * wd / 2.
    model = _net()
    depth, wd = 3, 0.02
    dwfc.factorize_(model, depth=depth)
    lam = depth * wd / 2
    factor_penalty(model, lam).backward()
    for f in factor_parameters(model):
        torch.testing.assert_close(f.grad, wd * f.detach())


def test_collapse_equals_the_product_of_the_factors():
    model = _net()
    dwfc.factorize_(model, depth=3)
    with torch.no_grad():
        for f in factor_parameters(model):
            f.mul_(torch.rand_like(f) * 2)
    products = {}
    for fw in dwfc.factorized_weights(model):
        p = fw.factors[0].detach().clone()
        for f in fw.factors[1:]:
            p = p * f.detach()
        products[fw.name] = p
    dwfc.collapse_(model)
    state = model.state_dict()
    for name, product in products.items():
        assert torch.equal(state[name], product)


def test_collapse_restores_classes_and_state_dict_keys():
    model = _net()
    keys = list(model.state_dict())
    classes = [type(m) for m in model.modules()]
    dwfc.factorize_(model, depth=3)
    assert list(model.state_dict()) != keys
    dwfc.collapse_(model)
    assert list(model.state_dict()) == keys
    assert [type(m) for m in model.modules()] == classes
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_collapse_applies_masks_as_exact_zeros():
    model = _net()
    dwfc.factorize_(model, depth=3)
    mask = torch.rand(model[4].weight.shape) > 0.7
    set_masks(model, {"4.weight": mask})
    dwfc.collapse_(model)
    weight = model[4].weight.detach()
    assert torch.all(weight[~mask] == 0)
    assert torch.all(weight[mask] != 0)


def test_masked_entries_get_no_gradient():
    model = _net()
    dwfc.factorize_(model, depth=3)
    mask = torch.rand(model[4].weight.shape) > 0.5
    set_masks(model, {"4.weight": mask})
    model(_x()).sum().backward()
    fw = next(fw for fw in dwfc.factorized_weights(model) if fw.name == "4.weight")
    for f in fw.factors:
        assert torch.all(f.grad[~mask] == 0)
        assert torch.any(f.grad[mask] != 0)


def test_gradients_reach_every_factor():
    model = _net()
    dwfc.factorize_(model, depth=3)
    model(_x()).pow(2).sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in factor_parameters(model))


def test_filter_fn_selects_by_module_and_name():
    model = _net()
    dwfc.factorize_(model, depth=2, filter_fn=lambda m, fqn: fqn == "4")
    assert [fw.name for fw in dwfc.factorized_weights(model)] == ["4.weight"]


def test_params_factorize_any_tensor_by_name():
    attn = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    expected = attn(x, x, x)[0]
    dwfc.factorize_(attn, depth=3, params=["in_proj_weight", "out_proj.weight"])
    assert {fw.name for fw in dwfc.factorized_weights(attn)} == {
        "in_proj_weight",
        "out_proj.weight",
    }
    torch.testing.assert_close(attn(x, x, x)[0], expected, rtol=1e-5, atol=1e-6)


def test_shared_weight_is_factorized_once():
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    dwfc.factorize_(model, depth=3)
    assert len(list(dwfc.factorized_weights(model))) == 1


def test_varmatch_init_matches_kaiming_scale_and_truncation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 300))
    depth = 3
    dwfc.factorize_(model, depth=depth, init="varmatch", generator=torch.Generator().manual_seed(0))
    s = (2.0 / 400) ** 0.5
    fw = next(iter(dwfc.factorized_weights(model)))
    for f in fw.factors:
        assert f.abs().min() > (0.25 * s) ** (1 / depth)
        assert f.abs().max() < min(1.0, (2 * s) ** (1 / depth))
    product_std = float(fw.collapsed().std())
    assert 0.5 * s < product_std < 1.5 * s


def test_varmatch_product_has_no_mass_at_zero():
    # Plain Gaussian factors give a heavy-tailed product with most weights near 0; truncation
    # keeps every |w| above eps = 0.25 s.
    model = nn.Sequential(nn.Linear(256, 256))
    dwfc.factorize_(model, depth=4, init="varmatch", generator=torch.Generator().manual_seed(0))
    s = (2.0 / 256) ** 0.5
    assert float(next(iter(dwfc.factorized_weights(model))).collapsed().abs().min()) > 0.25 * s


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_layer_init_keeps_the_forward_and_starts_every_weight_alike(depth):
    model, x = _net(), _x()
    want = model.eval()(x)
    rms = {n: float(p.detach().pow(2).mean().sqrt()) for n, p in model.named_parameters()
           if n.endswith("weight") and p.dim() > 1}  # fmt: skip
    dwfc.factorize_(model, depth=depth, init="layer")
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
    for fw in dwfc.factorized_weights(model):
        c = rms[fw.name] ** (1 / depth)
        for later in fw.factors[1:]:  # d >= 2: one value, so every entry has the same gradient
            torch.testing.assert_close(later, torch.full_like(later, c))
    assert misalignment(model) > 0  # unbalanced: weight decay balances it during training


@pytest.mark.parametrize("depth", [1, 0, -2, 2.5, True])
def test_depth_below_two_is_rejected(depth):
    with pytest.raises(InputError, match="depth"):
        dwfc.factorize_(_net(), depth=depth)


def test_unknown_param_name_is_rejected():
    with pytest.raises(InputError, match="nosuch.weight"):
        dwfc.factorize_(_net(), depth=3, params=["nosuch.weight"])


def test_empty_selection_is_rejected():
    with pytest.raises(InputError, match="no weight matched"):
        dwfc.factorize_(_net(), depth=3, filter_fn=lambda m, fqn: False)


class _EveryLayerType(nn.Module):
    """One layer of each kind `dwfc compress` factorizes by default, and some it never does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.deconv = nn.ConvTranspose1d(8, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)


def test_factorize_selects_what_compress_selects_by_default():
    from dwfc.select import plan

    model = _EveryLayerType()
    planned = [p.name for p in plan(model, dwfc.load_recipe("default").factorize)]
    dwfc.factorize_(model)
    assert [fw.name for fw in dwfc.factorized_weights(model)] == planned
    assert {"embed.weight", "attn.in_proj_weight", "attn.out_proj.weight", "lstm.weight_hh_l0",
            "gru.weight_ih_l0", "conv.weight", "deconv.weight", "head.weight"} <= set(planned)
    assert not any(name.startswith(("norm.", "bn.")) or "bias" in name for name in planned)


def test_factorizing_twice_is_refused():
    model = _net()
    dwfc.factorize_(model, depth=3)
    with pytest.raises(InputError, match="already parametrized"):
        dwfc.factorize_(model, depth=3)
