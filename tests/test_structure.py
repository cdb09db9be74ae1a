"""Channel groups, gates, MACs, the cut and the physical removal (dwfc/structure/)."""

from __future__ import annotations

import copy
import math
import random
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from dwfc.config import load_recipe
from dwfc.engine.schedule import Schedule
from dwfc.errors import ExportCheckError, InputError
from dwfc.methods.gating import DGating
from dwfc.structure import (
    check_target,
    count_macs,
    fold_gates_,
    gate_,
    load_pruned,
    plan_channels,
    rebuild_,
    remove_,
)
from dwfc.structure.cut import cut_to_speedup, removal_steps, removed_by
from dwfc.structure.gates import channel_gates, gated_tensors
from dwfc.structure.groups import remove_channels, zero_channels
from dwfc.structure.plan import minimum
from dwfc.zoo import lenet5, resnet_mini


class Concat(nn.Module):
    """Two branches concatenated (one with BatchNorm), then a convolution with BatchNorm (so both
    branches' groups gate slices of its weight) and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.c = nn.Conv2d(32, 24, 3, padding=1, bias=False)
        self.bn_c = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.bn(self.b(x)))], dim=1)
        return self.fc(torch.relu(self.bn_c(self.c(y))).mean((2, 3)))


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as a trained model has."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.2, generator=generator)
                m.running_mean.normal_(0.0, 0.2, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (3, 32, 32)),
    "concat": (Concat, (3, 8, 8)),
    "lenet5": (lenet5, (1, 28, 28)),
    "resnet_mini": (resnet_mini, (1, 28, 28)),
}


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    build, shape = MODELS[name]
    return _randomize_batchnorm(build()), torch.randn(4, *shape)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_physically_smaller_model_computes_what_the_masked_one_does(name):
    """float64: removing channels with Torch-Pruning equals zeroing their gated weights, on
    residual additions (resnet18), depthwise convolutions (mobilenet_v2) and a concatenation."""
    model, x = _model(name)
    plan = plan_channels(model, x, round_to=1)
    assert plan.removable, "the model has channel groups to remove"
    rng = random.Random(0)
    removed = {g.name: sorted(rng.sample(range(g.size), rng.randint(1, g.size - g.keeps)))
               for g in plan.removable}  # fmt: skip
    masked = copy.deepcopy(model).double()
    zero_channels(masked, plan.removable, removed)
    smaller = copy.deepcopy(masked)
    remove_channels(smaller, x[:1].double(), removed)
    with torch.no_grad():
        want, got = masked(x.double()), smaller(x.double())
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=0.0, atol=1e-10 * float(want.abs().max()))
    params = sum(p.numel() for p in smaller.parameters())
    assert params < sum(p.numel() for p in model.parameters())


def test_the_classifier_outputs_are_never_removable():
    model, x = _model("resnet18")
    plan = plan_channels(model, x)
    fc = plan.group("fc")
    assert not fc.removable and "output" in fc.reason


def test_a_group_whose_zeroing_is_not_its_removal_is_not_removable():
    """sigmoid(0) = 0.5 feeds the next layer's bias path: zeroing the channel is not removing
    it, and the exactness proof on the model itself finds that."""

    class Sigmoid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 16)
            self.out = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.sigmoid(self.a(x))
            return self.out(h + torch.relu(self.b(h)))

    plan_model = Sigmoid()
    with pytest.raises(InputError, match="no removable channel group"):
        plan_channels(plan_model, torch.randn(4, 6), round_to=1)


def test_round_to_keeps_multiples_and_limits_the_speedup():
    model, x = _model("lenet5")
    assert plan_channels(model, x, round_to=8).max_speedup < 2.0  # conv1 has 6 channels
    assert plan_channels(model, x, round_to=1).max_speedup > 10.0


def test_an_unset_round_to_is_the_block_onnxruntime_computes_output_channels_in(monkeypatch):
    from dwfc.structure import blocks

    monkeypatch.setattr(blocks.platform, "machine", lambda: "x86_64")
    assert blocks.channel_block({"avx2", "avx512f"}) == 16
    assert blocks.channel_block({"avx2"}) == 8
    monkeypatch.setattr(blocks.platform, "machine", lambda: "aarch64")
    assert blocks.channel_block({"avx512f"}) == 8
    monkeypatch.setattr(blocks, "channel_block", lambda: 16)
    recipe, notes = blocks.with_round_to(load_recipe("default", ["structure.kind=channel"]))
    assert recipe.structure.round_to == 16 and "structure.round_to=16" in notes[0]
    for keys in (["structure.kind=channel", "structure.round_to=4"], []):
        kept, notes = blocks.with_round_to(load_recipe("default", keys))
        assert kept.structure.round_to == (4 if keys else None) and notes == []


@pytest.mark.parametrize("name", ["lenet5", "resnet_mini", "mobilenet_v2", "concat"])
def test_gated_forward_equals_the_original_and_folding_gives_it_back(name):
    model, x = _model(name)
    with torch.no_grad():
        want = model(x)
    keys = list(model.state_dict())
    plan = plan_channels(model, x, round_to=1)
    gates = gate_(model, plan.removable, depth=3)
    assert set(gates) == {g.name for g in plan.removable}
    with torch.no_grad():
        got = model(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    fold_gates_(model)
    assert list(model.state_dict()) == keys  # names and order as before
    with torch.no_grad():
        assert torch.allclose(model(x), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize(("depth", "name"), [(2, "resnet_mini"), (3, "resnet_mini"),
                                             (4, "resnet_mini"), (3, "concat")])  # fmt: skip
def test_the_gate_penalty_equals_the_group_penalty_at_balance(depth, name):
    """(lambda / D) (||omega_c||^2 + sum_d gamma_cd^2) = lambda ||w_c||^(2/D) per channel."""
    model, x = _model(name)
    plan = plan_channels(model, x, round_to=1)
    lam = 0.37
    group_penalty = 0.0
    for g in plan.removable:
        squares = torch.zeros(g.size, dtype=torch.float64)
        for gt in g.gated:
            squares += gt.squares(model.get_parameter(gt.param).detach().double(), g.size)
        group_penalty += lam * float(squares.sqrt().pow(2.0 / depth).sum())
    gate_(model, plan.removable, depth)
    factor_penalty = 0.0
    for gates in channel_gates(model).values():
        factor_penalty += lam / depth * float(gates.gates.detach().double().pow(2).sum())
    omegas = {id(o.parametrizations[p].original): o.parametrizations[p].original
              for o, p, _ in gated_tensors(model)}  # a tensor two groups gate counts once
    for omega in omegas.values():
        factor_penalty += lam / depth * float(omega.detach().double().pow(2).sum())
    assert factor_penalty == pytest.approx(group_penalty, rel=1e-5)


def test_the_mac_estimate_tracks_the_count_on_the_smaller_model():
    model, x = _model("resnet18")
    plan = plan_channels(model, x, round_to=1)
    assert plan.dense_macs == count_macs(model, x)[0]
    rng = random.Random(1)
    for _ in range(3):
        removed = {g.name: rng.sample(range(g.size), rng.randint(0, g.size - g.keeps))
                   for g in plan.removable}  # fmt: skip
        keep = torch.ones(plan.estimate.channels, dtype=torch.bool)
        for g in plan.removable:
            keep[[plan.estimate.offsets[g.name] + c for c in removed[g.name]]] = False
        smaller = copy.deepcopy(model)
        remove_channels(smaller, x[:1], removed)
        counted = count_macs(smaller, x)[0]
        assert plan.skeleton.count(removed)[0] == counted  # the weightless copy counts the same
        assert plan.estimate.macs(keep) == pytest.approx(counted, rel=0.03)


def test_the_cut_reaches_the_speedup_with_the_weakest_channels_and_no_more():
    model, x = _model("resnet_mini")
    plan = plan_channels(model, x, round_to=8)
    generator = torch.Generator().manual_seed(0)
    scores = {g.name: torch.rand(g.size, generator=generator) for g in plan.removable}
    removed = cut_to_speedup(plan.removable, scores, 8, 3.0, plan.speedup)
    assert plan.speedup(removed) >= 3.0
    assert _no_group_keeps_one_more_step(plan.removable, scores, 8, removed, 3.0, plan.speedup)
    for g in plan.removable:
        kept = g.size - len(removed.get(g.name, []))
        assert kept % 8 == 0 or kept == g.size
        order = torch.argsort(scores[g.name]).tolist()
        assert sorted(removed.get(g.name, [])) == sorted(order[: g.size - kept])


def _no_group_keeps_one_more_step(groups, scores, round_to, removed, target, speedup) -> bool:
    """Giving back any group's strongest removed step falls short of the target."""
    steps = removal_steps(groups, scores, round_to)
    for g in groups:
        taken = [s for s in steps if s.group == g.name
                 and set(s.channels) <= set(removed.get(g.name, []))]  # fmt: skip
        if taken:
            back = {**removed, g.name: sorted(set(removed[g.name]) - set(taken[-1].channels))}
            if speedup(back) >= target:
                return False
    return True


def test_a_large_last_step_of_the_cut_is_made_up_for_by_giving_back_weaker_ones():
    """One group whose channels cost ten times the others' (a residual stream): removing its
    block overshoots the target, so the cut gives back what it took before, strongest first."""
    groups = [SimpleNamespace(name=f"g{i}", size=32, keeps=8) for i in range(4)]
    cost = {"g0": 10.0, "g1": 1.0, "g2": 1.0, "g3": 1.0}
    dense = sum(cost[g.name] * g.size for g in groups)

    def speedup(removed: dict[str, list[int]]) -> float:
        return dense / (dense - sum(cost[n] * len(c) for n, c in removed.items()))

    scores = {g.name: torch.linspace(0.1, 1.0, 32) for g in groups}
    scores["g0"] = torch.linspace(0.8, 2.0, 32)  # its first block goes after all the others
    steps = removal_steps(groups, scores, 8)
    prefix = next(n for n in range(len(steps) + 1) if speedup(removed_by(steps, n)) >= 1.25)
    assert speedup(removed_by(steps, prefix)) > 1.5  # what the shortest prefix alone reaches
    removed = cut_to_speedup(groups, scores, 8, 1.25, speedup)
    assert 1.25 <= speedup(removed) < 1.3
    assert len(removed["g0"]) == 8  # the large step stays; weaker ones elsewhere are given back
    assert _no_group_keeps_one_more_step(groups, scores, 8, removed, 1.25, speedup)
    for g in groups:  # still each group's weakest channels
        assert removed.get(g.name, []) == sorted(
            torch.argsort(scores[g.name]).tolist()[: len(removed.get(g.name, []))])


def test_a_speedup_beyond_every_removal_is_refused_with_the_maximum():
    model, x = _model("lenet5")
    plan = plan_channels(model, x, round_to=8)
    with pytest.raises(InputError, match=f"at most {plan.max_speedup:.2f}x"):
        check_target(plan, plan.max_speedup * 1.01)
    check_target(plan, plan.max_speedup)
    assert plan.speedup(minimum(plan.removable)) == pytest.approx(plan.max_speedup)


def test_min_keep_is_a_floor_on_every_group_that_the_cut_and_the_target_respect():
    model, x = _model("resnet_mini")
    free = plan_channels(model, x, round_to=8)
    plan = plan_channels(model, x, round_to=8, min_keep=0.3)
    assert {g.name for g in plan.removable} == {g.name for g in free.removable}
    for g in plan.removable:  # 30% of the channels, rounded up to a multiple of 8
        assert g.keeps == min(g.size, max(8, -(-math.ceil(0.3 * g.size) // 8) * 8))
    assert sorted({g.keeps for g in plan.removable}) == [8, 16, 24]  # 16, 32, 64 channels
    assert 1.0 < plan.max_speedup < free.max_speedup
    scores = {g.name: torch.rand(g.size) for g in plan.removable}
    removed = cut_to_speedup(plan.removable, scores, 8, 1e9, plan.speedup)  # as far as it goes
    assert {g.name: g.size - len(removed.get(g.name, [])) for g in plan.removable} == {
        g.name: g.keeps for g in plan.removable}
    with pytest.raises(InputError, match=r"at most .*structure.min_keep=0\.3"):
        check_target(plan, plan.max_speedup * 1.01)
    with pytest.raises(InputError, match=r"no removable .*structure.min_keep=0\.9 rounded up"):
        plan_channels(model, x, round_to=8, min_keep=0.9)  # every group keeps all it has


def test_an_untraceable_model_names_the_layer():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.fc = nn.Linear(7, 2)  # wrong size: the forward fails here

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(InputError, match=r"layer fc \(Linear\) failed"):
        plan_channels(Broken(), torch.randn(2, 1, 6, 6))


def test_a_model_without_removable_groups_says_so():
    with pytest.raises(InputError, match="no removable channel group"):
        plan_channels(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), torch.randn(2, 1, 28, 28))


def test_removal_checks_the_smaller_model_against_the_masked_one():
    model, x = _model("lenet5")
    plan = plan_channels(model, x, round_to=1)
    removed = {"features.3": [0, 1, 2]}
    with pytest.raises(ExportCheckError, match="differs from the masked model"):
        remove_(copy.deepcopy(model), removed, x)  # not zeroed first: removal changes outputs
    zero_channels(model, plan.removable, removed)
    spec = remove_(model, removed, x)
    assert spec.history and spec.input_shape == [1, 28, 28]


def test_load_pruned_rebuilds_the_smaller_model_from_the_architecture(tmp_path):
    from dwfc.export.sparse_file import save_sparse
    from dwfc.structure import PRUNED_KEY

    model, x = _model("resnet_mini")
    plan = plan_channels(model, x, round_to=8)
    removed = {g.name: list(range(8)) for g in plan.removable if g.size > 8}
    zero_channels(model, plan.removable, removed)
    spec = remove_(model, removed, x)
    path = tmp_path / "model.safetensors"
    save_sparse(model.state_dict(), path, [], {PRUNED_KEY: spec.to_json()})
    loaded = load_pruned(path, resnet_mini())
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(InputError, match="does not name its architecture"):
        load_pruned(path)
    other = tmp_path / "plain.safetensors"
    save_sparse(resnet_mini().state_dict(), other, [])
    with pytest.raises(InputError, match="not from a --structure channel run"):
        load_pruned(other, resnet_mini())
    with pytest.raises(InputError, match="does not fit"):
        rebuild_(lenet5(), spec)


@pytest.mark.parametrize("depth", [2, 3])
def test_the_penalty_reads_channel_norms_in_units_of_the_group_scale(depth):
    """structure.penalty_scale=group: a group whose tensors are c times larger gets c^(-2/D)
    times the lambda, so its penalty lambda_g ||c w_c||^(2/D) is what it was; `none` keeps
    lambda_g."""
    def weighting(scale: str, factor: float) -> float:
        model, x = _model("resnet_mini")
        plan = plan_channels(model, x, round_to=1)
        first = plan.removable[0]
        with torch.no_grad():
            for gt in first.gated:
                model.get_parameter(gt.param).mul_(factor)
        recipe = load_recipe("default", ["structure.kind=channel", f"factorize.depth={depth}",
                                         f"structure.penalty_scale={scale}"])  # fmt: skip
        DGating.prepare(model, plan, recipe)
        method = DGating(model, plan, recipe, Schedule.of(recipe, steps_per_epoch=4))
        other = plan.removable[1].name
        return method.weighting[first.name] / method.weighting[other]

    assert weighting("group", 4.0) == pytest.approx(weighting("group", 1.0) * 4.0 ** (-2 / depth))
    assert weighting("none", 4.0) == pytest.approx(weighting("none", 1.0))
