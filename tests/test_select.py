import json
import re

import pytest
import torch
from torch import nn

import dwfc
from dwfc.cli.text import format_plan
from dwfc.config import FactorizeConfig
from dwfc.errors import InputError
from dwfc.factorize import apply_plan_, retie_
from dwfc.select import plan, plan_summary

EXPECTED_DEFAULT = [
    ("emb.weight", "Embedding"),
    ("conv.weight", "Conv2d"),
    ("deconv.weight", "ConvTranspose2d"),
    ("attn.in_proj_weight", "MultiheadAttention"),
    ("attn.out_proj.weight", "MultiheadAttention"),
    ("lstm.weight_ih_l0", "LSTM"),
    ("lstm.weight_hh_l0", "LSTM"),
    ("lstm.weight_ih_l0_reverse", "LSTM"),
    ("lstm.weight_hh_l0_reverse", "LSTM"),
    ("gru.weight_ih_l0", "GRU"),
    ("gru.weight_hh_l0", "GRU"),
    ("gru.weight_ih_l1", "GRU"),
    ("gru.weight_hh_l1", "GRU"),
    ("fc.weight", "Linear"),
]


class Mixed(nn.Module):
    """One of every default layer type, plus BatchNorm and LayerNorm that must stay dense."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.deconv = nn.ConvTranspose2d(4, 2, 3)
        self.attn = nn.MultiheadAttention(8, 2)
        self.lstm = nn.LSTM(8, 6, bidirectional=True)
        self.gru = nn.GRU(12, 5, num_layers=2)
        self.norm = nn.LayerNorm(5)
        self.fc = nn.Linear(5, 3)


class TiedLM(nn.Module):
    """Embedding tied to the output Linear, as in most language models."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.mid = nn.Linear(6, 6)
        self.head = nn.Linear(6, 12)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.emb(tokens))))


def _names(planned):
    return [pw.name for pw in planned]


def test_default_selection_is_exactly_the_weight_matrices():
    planned = plan(Mixed(), FactorizeConfig())
    assert [(pw.name, pw.module_type) for pw in planned] == EXPECTED_DEFAULT
    assert all(pw.depth == 3 and pw.numel == torch.Size(pw.shape).numel() for pw in planned)
    assert planned[3].shape == (24, 8)


def test_attention_out_proj_is_selected_without_linear_and_separate_qkv():
    attn = nn.MultiheadAttention(8, 2, kdim=3, vdim=5)
    planned = plan(attn, FactorizeConfig(layer_types=["MultiheadAttention"]))
    assert _names(planned) == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]
    only_linear = plan(Mixed(), FactorizeConfig(layer_types=["Linear"]))
    assert _names(only_linear) == ["attn.out_proj.weight", "fc.weight"]  # out_proj is a Linear


def test_rnn_and_lstm_projection_weights():
    model = nn.Sequential(nn.RNN(3, 4), nn.LSTM(4, 6, proj_size=2))
    planned = plan(model, FactorizeConfig(layer_types=["RNN", "LSTM"]))
    assert _names(planned) == [
        "0.weight_ih_l0",
        "0.weight_hh_l0",
        "1.weight_ih_l0",
        "1.weight_hh_l0",
        "1.weight_hr_l0",
    ]
    assert [pw.module_type for pw in planned] == ["RNN", "RNN", "LSTM", "LSTM", "LSTM"]


@pytest.mark.parametrize(
    ("layer_types", "message"),
    [(["Linaer"], "unknown layer type 'Linaer'"), (["BatchNorm2d"], "normalisation")],
)
def test_bad_layer_types(layer_types, message):
    with pytest.raises(InputError, match=message):
        plan(Mixed(), FactorizeConfig(layer_types=layer_types))


def test_tied_weights_are_planned_once_and_stay_tied():
    torch.manual_seed(0)
    model = TiedLM().eval()
    keys = list(model.state_dict())
    tokens = torch.randint(0, 12, (2, 5))
    expected = model(tokens)
    planned = plan(model, FactorizeConfig())
    assert _names(planned) == ["emb.weight", "mid.weight"]
    assert planned[0].aliases == ("head.weight",)
    assert plan_summary(planned, model)["total_parameters"] == 12 * 6 + 6 * 6 + 6 + 12

    apply_plan_(model, planned)
    torch.testing.assert_close(model(tokens), expected, rtol=1e-5, atol=1e-6)
    assert "head.weight" not in dict(model.named_parameters())  # no stale dense copy to train
    model(tokens).sum().backward()
    fw = next(fw for fw in dwfc.factorized_weights(model) if fw.name == "emb.weight")
    assert all(f.grad is not None for f in fw.factors)
    with torch.no_grad():
        fw.factors[0].mul_(0.5)
    assert torch.equal(model.head.weight, model.emb.weight)  # both read the same product

    with pytest.raises(InputError, match="collapse_ the model first"):
        retie_(model)
    dwfc.collapse_(model)
    retie_(model)
    assert model.head.weight is model.emb.weight
    assert type(model.head) is nn.Linear
    assert list(model.state_dict()) == keys


def test_include_exclude_globs_regex_and_types():
    model = Mixed()
    cfg = FactorizeConfig(include=["lstm.*", "re:^gru\\..*_l1$"], exclude=["*_reverse"])
    assert _names(plan(model, cfg)) == [
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "gru.weight_ih_l1",
        "gru.weight_hh_l1",
    ]
    # re: uses re.search, so an unanchored regex matches anywhere in the name.
    assert _names(plan(model, FactorizeConfig(include=["re:proj"]))) == [
        "attn.in_proj_weight",
        "attn.out_proj.weight",
    ]
    no_rnn = plan(model, FactorizeConfig(exclude=["type:LSTM", "type:GRU", "type:Embedding"]))
    assert _names(no_rnn) == [
        "conv.weight",
        "deconv.weight",
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "fc.weight",
    ]
    assert _names(plan(model, FactorizeConfig(include=["type:Linear"]))) == [
        "attn.out_proj.weight",
        "fc.weight",
    ]


def test_depth_overrides_first_match_wins():
    cfg = FactorizeConfig(depth=3, depth_overrides={"lstm.*": 4, "re:weight_hh": 2})
    depths = {pw.name: pw.depth for pw in plan(Mixed(), cfg)}
    assert depths["lstm.weight_hh_l0"] == 4  # "lstm.*" comes first
    assert depths["gru.weight_hh_l0"] == 2
    assert depths["gru.weight_ih_l0"] == 3 and depths["fc.weight"] == 3


def test_apply_plan_uses_each_depth_and_keeps_the_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(5, 4)
    expected = model(x)
    planned = plan(model, FactorizeConfig(depth_overrides={"2.*": 4}))
    apply_plan_(model, planned)
    depths = {fw.name: fw.parametrization.depth for fw in dwfc.factorized_weights(model)}
    assert depths == {"0.weight": 3, "2.weight": 4}
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (FactorizeConfig(include=["encoder.*"]), "include pattern 'encoder.*' matches no"),
        (FactorizeConfig(exclude=["re:^nothing$"]), "exclude pattern 're:^nothing$'"),
        (FactorizeConfig(depth_overrides={"head*": 4}), "depth_overrides pattern 'head*'"),
        (FactorizeConfig(exclude=["type:Bilinear"]), "matches no candidate"),
        (FactorizeConfig(include=["re:(unclosed"]), "invalid regular expression"),
        (FactorizeConfig(depth_overrides={"fc.*": 1}), "must be an integer >= 2"),
        (FactorizeConfig(exclude=["*"]), "leave no weight"),
        (FactorizeConfig(layer_types=["Conv3d"]), "no weights of the layer types Conv3d"),
    ],
)
def test_selection_errors(cfg, message):
    with pytest.raises(InputError, match=re.escape(message)) as info:
        plan(Mixed(), cfg)
    assert "\n" not in str(info.value)


def test_unmatched_pattern_error_names_candidates():
    with pytest.raises(InputError, match="candidates: emb.weight, conv.weight"):
        plan(Mixed(), FactorizeConfig(include=["decoder.*"]))


def test_format_plan_and_summary():
    model = Mixed()
    planned = plan(model, FactorizeConfig(depth_overrides={"fc.*": 4}))
    table = format_plan(planned, model)
    for pw in planned:
        assert pw.name in table
    summary = plan_summary(planned, model)
    total = sum(p.numel() for p in model.parameters())
    factorized = sum(pw.numel for pw in planned)
    assert summary["factorized_weights"] == factorized
    assert summary["total_parameters"] == total
    assert f"{factorized:,} weights of {total:,} parameters" in table
    assert "24x8" in table and "bias" not in table and "norm" not in table
    assert json.loads(json.dumps(summary))["weights"][-1] == {
        "name": "fc.weight",
        "type": "Linear",
        "shape": [3, 5],
        "numel": 15,
        "depth": 4,
        "aliases": [],
    }


# Recurrent layers: torch 2.14's RNNBase.forward calls _update_flat_weights(), which rebuilds
# _flat_weights when getattr(self, name) is not the tensor seen last time; a parametrized
# weight is a new tensor on every access, so the product is what forward uses.


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_factorized_recurrent_weights_are_used_and_trained(cls):
    torch.manual_seed(0)
    model = cls(4, 5, num_layers=2, bidirectional=True, batch_first=True)
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 4)
    expected = model(x)[0].detach()
    planned = plan(model, FactorizeConfig(layer_types=[cls.__name__]))
    assert len(planned) == 8
    apply_plan_(model, planned)
    out = model(x)[0]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)

    out.pow(2).sum().backward()
    for fw in dwfc.factorized_weights(model):
        assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fw.factors), fw.name
    fw = next(fw for fw in dwfc.factorized_weights(model) if fw.name == "weight_hh_l1_reverse")
    with torch.no_grad():
        fw.factors[1].mul_(3.0)
    changed = model(x)[0].detach()
    assert not torch.allclose(changed, expected, atol=1e-3)

    model.to(torch.float64).to(torch.float32)  # _apply re-captures _flat_weights
    torch.testing.assert_close(model(x)[0], changed)
    dwfc.collapse_(model)
    assert type(model) is cls and list(model.state_dict()) == keys
    torch.testing.assert_close(model(x)[0], changed, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_factorized_lstm_on_cuda():
    # cuDNN's flatten_parameters() runs on every refresh of _flat_weights.
    torch.manual_seed(0)
    model = nn.LSTM(4, 5, num_layers=2).cuda()
    x = torch.randn(3, 2, 4, device="cuda")
    expected = model(x)[0].detach()
    apply_plan_(model, plan(model, FactorizeConfig()))
    out = model(x)[0]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert all(f.grad is not None for fw in dwfc.factorized_weights(model) for f in fw.factors)
