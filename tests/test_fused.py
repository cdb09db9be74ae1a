"""dwfc.fuse_: every factor product of a model in flat buffers, bit for bit the per-weight path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from synthetic import loaders, mlp
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dwfc  # noqa: E402
from benchmarks.operator_calls import operator_calls  # noqa: E402
from dwfc.config import FactorizeConfig, load_recipe  # noqa: E402
from dwfc.engine.trainer import train  # noqa: E402
from dwfc.factorize import apply_plan_, set_masks  # noqa: E402
from dwfc.fused import is_fused  # noqa: E402
from dwfc.select import plan  # noqa: E402

CPU = torch.device("cpu")


class Net(nn.Module):
    """Convolutions with BatchNorm, a Linear pair sharing one weight, a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn = nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv1(x)))
        x = F.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.head(self.b(F.relu(self.a(x))))


def _factorized(depth: int, channels_last: bool = False) -> nn.Module:
    model = Net()
    apply_plan_(model, plan(model, FactorizeConfig(depth=depth,
                                                   depth_overrides={"head.*": 2})))  # fmt: skip
    if channels_last:
        model.to(memory_format=torch.channels_last)
    mask = torch.rand(8, 8, 3, 3, generator=torch.Generator().manual_seed(1)) > 0.5
    set_masks(model, {"conv2.weight": mask})
    return model


def _train(model: nn.Module, steps: int = 4) -> list[Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x, y = torch.randn(6, 2, 7, 7, generator=g), torch.randint(0, 3, (6,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
    return grads


@pytest.mark.parametrize(("depth", "channels_last"), [(2, False), (3, False), (4, False),
                                                      (3, True)])  # fmt: skip
def test_fused_training_is_bit_for_bit_the_per_weight_path(depth: int, channels_last: bool) -> None:
    reference, fused = _factorized(depth, channels_last), _factorized(depth, channels_last)
    dwfc.fuse_(fused)
    banks = fused._dwfc_fusion.banks
    assert sorted(b.depth for b in banks) == sorted({depth, 2})  # the head is its own depth
    grads_ref, grads = _train(reference), _train(fused)
    ref_state, state = reference.state_dict(), fused.state_dict()
    assert list(ref_state) == list(state)  # the same keys, in the same order
    names = [n for n, _ in reference.named_parameters()]
    for name, a, b in zip(names, grads_ref, grads, strict=True):
        if name.startswith("a.parametrizations"):
            # the tied weight: per weight, each use is multiplied out and differentiated
            # apart; fused, once, its gradients summed first: equal to rounding only
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)
            assert torch.allclose(ref_state[name], state[name], rtol=1e-5, atol=1e-8)
        else:
            assert torch.equal(a, b), name
            assert torch.equal(ref_state[name], state[name]), name
    if channels_last:
        factor = fused.conv2.parametrizations.weight.original0
        assert factor.is_contiguous(memory_format=torch.channels_last)
    pruned = ~fused.conv2.parametrizations.weight[0].mask
    dwfc.collapse_(fused)
    assert not is_fused(fused)
    assert bool((fused.conv2.weight[pruned] == 0).all())
    assert fused.b.weight is fused.a.weight  # the tie came back


@pytest.mark.parametrize("depth", [3, 4])
def test_compiled_products_are_bit_for_bit_the_fused_path(depth: int) -> None:
    reference, compiled = _factorized(depth, True), _factorized(depth, True)
    dwfc.fuse_(reference)
    dwfc.fuse_(compiled, compile=True)
    assert all(b.compiled for b in compiled._dwfc_fusion.banks)
    grads_ref, grads = _train(reference), _train(compiled)
    assert all(torch.equal(a, b) for a, b in zip(grads_ref, grads, strict=True))
    ref_state, state = reference.state_dict(), compiled.state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)
    pruned = ~compiled.conv2.parametrizations.weight[0].mask
    dwfc.collapse_(compiled)
    assert bool((compiled.conv2.weight[pruned] == 0).all())


def test_a_compiler_that_fails_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import dwfc.fused as fused_module

    def broken(fn: object, **kwargs: object) -> object:
        def run(*args: object) -> object:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\ndetails")
        return run

    monkeypatch.setattr(fused_module, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    model = _factorized(3)
    with pytest.raises(dwfc.InputError, match=r"train.fused=compile: torch.compile failed on "
                       r"cpu \(InvalidCxxCompiler: No working C\+\+ compiler found\); use "
                       r"train.fused=true$"):  # fmt: skip
        dwfc.fuse_(model, compile=True)
    assert not is_fused(model)


def test_the_recipe_takes_compile_and_refuses_other_words() -> None:
    assert load_recipe("default", ["train.fused=compile"]).train.fused == "compile"
    assert load_recipe("default", ["train.fused=false"]).train.fused is False
    with pytest.raises(dwfc.InputError, match="must be true, false or compile"):
        load_recipe("default", ["train.fused=compiled"])


def test_the_flat_buffers_hold_the_factors_and_follow_moves() -> None:
    model = _factorized(3)
    dwfc.fuse_(model)
    bank = next(b for b in model._dwfc_fusion.banks if b.depth == 3)
    first = model.conv1.parametrizations.weight.original0
    assert first.untyped_storage().data_ptr() == bank.flat[0].untyped_storage().data_ptr()
    x = torch.randn(2, 2, 5, 5)
    expected = _factorized(3)(x)
    model.to(torch.float64)  # replaces every parameter: the bank lays them out again
    assert torch.allclose(model(x.double()), expected.double(), atol=1e-6)
    assert bank.flat[0].dtype == torch.float64 and bank.bound()


def test_unfuse_gives_every_factor_its_own_storage() -> None:
    model = _factorized(3)
    dwfc.fuse_(model)
    dwfc.unfuse_(model)
    assert not model._forward_pre_hooks and not model._forward_hooks
    factors = {n: p.detach() for n, p in model.named_parameters() if "original" in n}
    save_file(factors, str(Path(__import__("tempfile").mkdtemp()) / "f.safetensors"))


def test_a_forward_that_raises_leaves_no_stale_weights() -> None:
    model = _factorized(3)
    dwfc.fuse_(model)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 5, 7, 7))  # wrong channel count
    hadamards = [fw.parametrization for fw in dwfc.factorized_weights(model)]
    assert all(h.fused_value is None for h in hadamards)


def _saved_bytes(model: nn.Module) -> int:
    """Bytes of the distinct non-parameter storages the forward saves for backward."""
    owned = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.untyped_storage().data_ptr() not in owned:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(4, 20)).sum().backward()
    return sum(saved.values())


def test_fused_keeps_only_the_products_for_backward() -> None:
    dense = mlp()
    weights = sum(p.numel() * 4 for n, p in dense.named_parameters() if n.endswith("weight"))
    unfused, fused = mlp(), mlp()
    for model in (unfused, fused):
        dwfc.factorize_(model, depth=4)
    dwfc.fuse_(fused)
    extra = _saved_bytes(fused) - _saved_bytes(dense)
    assert extra == weights  # the products the layers read; no intermediate of the factors
    assert _saved_bytes(unfused) - _saved_bytes(dense) >= 2 * weights  # D - 2 intermediates


def _deep_mlp(hidden_layers: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(16, 16), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(16, 4))


def _compute_calls(hidden_layers: int, mode: str) -> int:
    model = _deep_mlp(hidden_layers)
    if mode != "dense":
        dwfc.factorize_(model, depth=3)
    if mode == "fused":
        dwfc.fuse_(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    return operator_calls(step, CPU).compute


def test_fused_operator_calls_are_dense_plus_a_constant() -> None:
    extra = {n: _compute_calls(n, "fused") - _compute_calls(n, "dense") for n in (1, 4)}
    assert extra[1] == extra[4] == 8  # D=3: 2 products, 5 in backward, 1 concatenation
    unfused = {n: _compute_calls(n, "unfused") - _compute_calls(n, "dense") for n in (1, 4)}
    assert unfused[4] > unfused[1]  # per weight: grows with the layers


@pytest.mark.parametrize("method", ["dwf", "gmp"])
def test_the_engine_fuses_and_matches_train_fused_false(method: str) -> None:
    recipe_args = ["train.epochs=3", "sparsity.finetune_epochs=1", "train.log_every=2",
                   "sparsity.target=0.8", f"sparsity.method={method}"]  # fmt: skip
    results, seen = {}, []
    for fuse in (True, False):
        model = mlp()
        recipe = load_recipe("default", [*recipe_args, f"train.fused={str(fuse).lower()}"])
        names = ["0.weight", "2.weight"]
        if method == "dwf":
            dwfc.factorize_(model, depth=3)
        train(model, names, *loaders(), recipe, CPU,
              lambda event, info, m=model, f=fuse: seen.append((f, is_fused(m))))  # fmt: skip
        assert not is_fused(model)
        if method == "dwf":
            dwfc.collapse_(model)
        results[fuse] = model.state_dict()
    assert all(torch.equal(results[True][k], results[False][k]) for k in results[True])
    fused_during = {state for fuse, state in seen if fuse}
    assert fused_during == ({True} if method == "dwf" else {False})  # nothing to fuse in gmp
    assert {state for fuse, state in seen if not fuse} == {False}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compile", [False, True])
def test_fused_on_cuda_under_autocast_matches_the_per_weight_path(compile: bool) -> None:
    cuda = torch.device("cuda")
    reference, fused = _factorized(3).to(cuda), _factorized(3).to(cuda)
    for model in (reference, fused):
        model.to(memory_format=torch.channels_last)
    dwfc.fuse_(fused, compile=compile)
    x = torch.randn(6, 2, 7, 7, device=cuda).contiguous(memory_format=torch.channels_last)
    for model in (reference, fused):
        with torch.autocast("cuda", torch.bfloat16):
            model(x).float().sum().backward()
    for (name, a), b in zip(reference.named_parameters(), fused.parameters(), strict=True):
        assert b.grad.dtype == torch.float32
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name


def test_banks_are_cut_at_the_cap_and_stay_exact() -> None:
    reference, capped = _factorized(3), _factorized(3)
    dwfc.fuse_(capped, max_elements=600)  # in order: conv1 144, conv2 576, a 64 entries
    sizes = [sum(b.sizes) for b in capped._dwfc_fusion.banks]
    assert sizes == [144, 576, 64, 24]  # each next weight would overflow; the head is D=2
    assert all(sum(b.sizes) <= 600 for b in capped._dwfc_fusion.banks)
    _train(reference), _train(capped)
    conv = "conv2.parametrizations.weight.original1"
    assert torch.equal(reference.get_parameter(conv), capped.get_parameter(conv))


def test_on_the_cpu_big_models_get_several_banks() -> None:
    model = nn.Sequential(nn.Linear(1500, 1500), nn.Linear(1500, 1500))  # 2.25M each
    dwfc.factorize_(model, depth=3)
    dwfc.fuse_(model)
    assert len(model._dwfc_fusion.banks) == 2
