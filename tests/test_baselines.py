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
from dwfc.engine.trainer import train
from dwfc.errors import InputError
from dwfc.methods import METHODS, method_class
from dwfc.methods.gmp import gmp_sparsity
from dwfc.methods.random import random_masks

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
