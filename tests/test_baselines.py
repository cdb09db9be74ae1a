"""Tests for the pruning baselines: exact sparsity, fixed masks, the GMP schedule, the pipeline,
and what running in the one engine gives them: plain weights, restarts, checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from synthetic import loaders, mlp
from torch import nn

import dwfc
from dwfc.config import Recipe, load_recipe
from dwfc.engine.trainer import fused_sgd, train
from dwfc.errors import InputError
from dwfc.methods import METHODS, method_class
from dwfc.methods.gmp import gmp_sparsity
from dwfc.methods.random import random_masks
from dwfc.sparsity import global_magnitude_masks

TINY = ["train.epochs=4", "sparsity.finetune_epochs=2", "train.log_every=2", "train.lr=0.05"]
NAMES = ["0.weight", "2.weight"]
CPU = torch.device("cpu")
BASELINES = [name for name, cls in METHODS.items() if cls.trains == "weights"]


def _run(method: str, target: float, extra: tuple[str, ...] = (), callback=None):
    train_loader, test = loaders()
    model = mlp()
    recipe = load_recipe("default", [*TINY, f"sparsity.method={method}",
                                     f"sparsity.target={target}", *extra])  # fmt: skip
    outcome = train(model, NAMES, train_loader, test, recipe, CPU, callback)
    return model, outcome


def _zeros(model: nn.Module) -> tuple[int, int]:
    weights = [model.get_parameter(n) for n in NAMES]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("target", [0.5, 0.9, 0.97])
def test_each_baseline_hits_the_target_exactly(method: str, target: float) -> None:
    model, outcome = _run(method, target)
    zeros, total = _zeros(model)
    assert zeros == round(target * total)
    assert outcome.sparsity_eps == pytest.approx(zeros / total)
    assert set(outcome.accuracy) == {"before_cut", "after_cut", "after_finetune"}
    assert all(0.0 <= a <= 1.0 for a in outcome.accuracy.values())


@pytest.mark.parametrize("method", BASELINES)
def test_masks_stay_fixed_during_masked_fine_tuning(method: str) -> None:
    model = mlp()
    captured: dict[str, torch.Tensor] = {}

    def remember_cut(event: str, info: dict) -> None:
        if event == "cut":
            captured.update({n: model.get_parameter(n).detach().clone() for n in NAMES})

    train_loader, test = loaders()
    recipe = load_recipe("default", [*TINY, f"sparsity.method={method}", "sparsity.target=0.8",
                                     "sparsity.finetune_lr=0.05"])  # fmt: skip
    train(model, NAMES, train_loader, test, recipe, CPU, remember_cut)
    assert set(captured) == set(NAMES)
    for name in NAMES:
        after, at_cut = model.get_parameter(name).detach(), captured[name]
        pruned = at_cut == 0
        assert torch.all(after[pruned] == 0)
        assert not torch.equal(after[~pruned], at_cut[~pruned])  # kept weights kept training


def test_gmp_schedule_is_monotone_and_cubic() -> None:
    values = [gmp_sparsity(t, 0.9, 100) for t in range(0, 151)]
    assert values[0] == 0.0 and values[100] == pytest.approx(0.9) and values[150] == 0.9
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    for t in (10, 37, 50, 80):
        assert values[t] == pytest.approx(0.9 * (1 - (1 - t / 100) ** 3))


def test_gmp_sparsity_rises_during_the_ramp_then_holds() -> None:
    _, outcome = _run("gmp", 0.9, ("sparsity.ramp_fraction=0.5",))
    rows = [r for r in outcome.history if r["phase"] == "prune"]
    assert len(rows) >= 3
    eps = [r["sparsity_eps"] for r in rows]
    assert all(b >= a - 1e-9 for a, b in zip(eps, eps[1:], strict=False)) and eps[-1] < 0.9
    after = [r["sparsity_eps"] for r in outcome.history if r["phase"] in ("masked", "finetune")]
    assert after and all(s == pytest.approx(0.9, abs=1e-3) for s in after)


def test_l1_steers_lambda_upwards_and_uses_the_same_budget() -> None:
    _, outcome = _run("l1", 0.9)
    assert outcome.lam_max > load_recipe().sparsity.lambda_init
    phases = [r["phase"] for r in outcome.history]
    assert phases[0] == "sparsify" and phases[-1] == "finetune"
    assert sum(r["eval_acc"] is not None for r in outcome.history) == 4 + 2


def test_random_masks_are_seeded_and_exact() -> None:
    weights = {"a": torch.randn(10, 10), "b": torch.randn(7)}
    first = random_masks(weights, 0.7, torch.Generator().manual_seed(3))
    second = random_masks(weights, 0.7, torch.Generator().manual_seed(3))
    kept = sum(int(m.sum()) for m in first.values())
    assert kept == 107 - round(0.7 * 107)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(InputError, match="unknown sparsity.method"):
        load_recipe("default", [*TINY, "sparsity.method=snip"])
    with pytest.raises(InputError, match="unknown sparsity.method"):
        method_class("snip")


def test_compress_runs_gmp_end_to_end(
    tmp_path: Path, state_dict_path: Path, tiny_recipe: Callable[..., Recipe]
) -> None:
    recipe = tiny_recipe(0.9, "sparsity.method=gmp", "export.onnx=false")
    report = dwfc.compress(state_dict_path, tmp_path / "out", recipe).to_dict()
    assert report["sparsity"]["achieved"] == pytest.approx(0.9, abs=1e-6)
    state = dwfc.load_sparse(tmp_path / "out" / "model.safetensors")
    weights = [state[k] for k in ("layers.1.weight", "layers.3.weight", "layers.5.weight")]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.9 * total)
    assert report["accuracy"]["compressed_pytorch"] > 0.5
    assert {"before_cut", "after_cut", "after_finetune"} <= set(report["accuracy"])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_restarts_an_epoch_after_a_non_finite_loss(method: str) -> None:
    """A NaN in the 8th training forward (epoch 2 of 4, 6 steps each): the epoch is run again
    from its start at half the learning rate, and the run ends as usual: DWF and baselines
    alike."""
    model = mlp()
    if METHODS[method].trains == "factors":
        dwfc.factorize_(model, depth=3)
    forwards = 0

    def poison(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        nonlocal forwards
        if not module.training:
            return None
        forwards += 1
        return output * float("nan") if forwards == 8 else None

    model[2].register_forward_hook(poison)
    events: list[str] = []
    train_loader, test = loaders()
    recipe = load_recipe("default", [*TINY, f"sparsity.method={method}", "sparsity.target=0.9"])
    outcome = train(model, NAMES, train_loader, test, recipe, CPU,
                    lambda event, info: events.append(event))  # fmt: skip
    assert events.count("diverged") == 1
    assert (outcome.retries, outcome.lr_factor) == (1, 0.5)
    steps = [row["step"] for row in outcome.history]
    assert steps == sorted(set(steps))  # the failed epoch's rows were rewound, not repeated
    assert sum(row["eval_acc"] is not None for row in outcome.history) == 4 + 2
    if METHODS[method].trains == "factors":
        dwfc.collapse_(model)
    zeros, total = _zeros(model)
    assert zeros == round(0.9 * total)


def test_a_baseline_trains_the_plain_weights_exactly_as_masked_sgd() -> None:
    """oneshot is masked SGD on the pretrained weights themselves: no factorize/collapse round
    trip (which would change them in the last bits) stands between."""
    extra = ["sparsity.method=oneshot", "sparsity.target=0.8", "train.schedule=constant",
             "sparsity.finetune_epochs=0", "train.flush_denormal=false"]  # fmt: skip
    recipe = load_recipe("default", [*TINY, *extra])
    tc = recipe.train
    model = mlp()
    train(model, NAMES, loaders()[0], loaders()[1], recipe, CPU)

    reference = mlp()
    pruned = [reference.get_parameter(n) for n in NAMES]
    masks = global_magnitude_masks({n: p.detach() for n, p in zip(NAMES, pruned, strict=True)},
                                   0.8)  # fmt: skip
    others = [p for p in reference.parameters() if all(p is not q for q in pruned)]
    opt = fused_sgd([{"params": pruned, "weight_decay": tc.weight_decay},
                     {"params": others, "weight_decay": 0.0}], tc.lr, tc.momentum)  # fmt: skip

    def apply_masks() -> None:
        with torch.no_grad():
            for name, p in zip(NAMES, pruned, strict=True):
                p.mul_(masks[name])
                if "momentum_buffer" in opt.state.get(p, {}):
                    opt.state[p]["momentum_buffer"].mul_(masks[name])

    apply_masks()
    train_loader = loaders()[0]  # the same data order as the engine's run
    for _ in range(tc.epochs):
        for x, y in train_loader:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(reference(x), y).backward()
            opt.step()
            apply_masks()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)

    round_trip = mlp()
    dwfc.factorize_(round_trip, depth=2)
    dwfc.collapse_(round_trip)  # what the baselines went through before the one engine
    assert not all(torch.equal(a, b) for a, b in zip(round_trip.parameters(),
                                                     mlp().parameters(), strict=True))  # fmt: skip
