import pytest
import torch
from synthetic import loaders, mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dwfc
from dwfc.config import load_recipe
from dwfc.engine.device import resolve_device
from dwfc.engine.loop import evaluate
from dwfc.engine.trainer import train
from dwfc.errors import InputError
from dwfc.methods.dwf import _param_groups, _set_hyper

TINY = ["train.epochs=4", "sparsity.finetune_epochs=2", "train.log_every=2", "train.lr=0.05"]
NAMES = ["0.weight", "2.weight"]


def _run(target: float, extra: list[str] | None = None):
    train_loader, test = loaders()
    model = mlp()
    recipe = load_recipe("default", [*TINY, f"sparsity.target={target}", *(extra or [])])
    dwfc.factorize_(model, depth=recipe.factorize.depth)
    outcome = train(model, NAMES, train_loader, test, recipe, torch.device("cpu"))
    return model, outcome


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_target_sparsity_is_hit_exactly(target):
    model, _ = _run(target)
    dwfc.collapse_(model)
    weights = [model[0].weight, model[2].weight]
    n = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(target * n)


def test_masks_stay_fixed_during_the_masked_fine_tune():
    captured = {}

    def remember_cut(event, info):
        if event == "cut":
            captured.update(
                {fw.name: fw.collapsed().clone() for fw in dwfc.factorized_weights(model)}
            )

    train_loader, test = loaders()
    model = mlp()
    recipe = load_recipe("default", [*TINY, "sparsity.target=0.7", "sparsity.finetune_lr=0.05"])
    dwfc.factorize_(model, depth=3)
    train(model, NAMES, train_loader, test, recipe, torch.device("cpu"), callback=remember_cut)
    for fw in dwfc.factorized_weights(model):
        after = fw.collapsed()
        pruned = captured[fw.name] == 0
        assert torch.all(after[pruned] == 0)
        assert not torch.equal(after[~pruned], captured[fw.name][~pruned])  # kept ones trained


def test_outcome_reports_accuracies_and_history():
    _, outcome = _run(0.8)
    assert set(outcome.accuracy) == {"before_cut", "after_cut", "after_finetune"}
    assert all(0.0 <= a <= 1.0 for a in outcome.accuracy.values())
    phases = {row["phase"] for row in outcome.history}
    assert {"sparsify", "settle", "finetune"} <= phases
    assert outcome.lam > 0 and outcome.lam_max >= outcome.lam
    assert sum(row["eval_acc"] is not None for row in outcome.history) == 4 + 2


def test_seeded_cpu_runs_are_bit_for_bit_repeatable():
    first, _ = _run(0.8)
    second, _ = _run(0.8)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_only_factors_get_weight_decay():
    model = mlp()
    dwfc.factorize_(model, depth=3)
    opt = torch.optim.SGD(_param_groups(model, {"0.weight": 2.0, "2.weight": 3.0}), lr=0.1)
    _set_hyper(opt, lr=0.1, lam=0.03)
    factor_ids = {id(f) for f in dwfc.factorize.factor_parameters(model)}
    for group in opt.param_groups:
        is_factor = all(id(p) in factor_ids for p in group["params"])
        assert group["weight_decay"] == pytest.approx(0.02 if is_factor else 0.0)  # 2 lambda / 3
    lrs = sorted(group["lr"] for group in opt.param_groups)
    assert lrs == pytest.approx([0.1, 0.2, 0.3])


def test_a_relative_layer_penalty_decays_every_layer_at_the_same_pace():
    model = mlp()
    dwfc.factorize_(model, depth=3)
    scales = {"0.weight": 2.0, "2.weight": 8.0}
    opt = torch.optim.SGD(_param_groups(model, scales, relative=True), lr=0.1)
    _set_hyper(opt, lr=0.1, lam=0.03)
    factors = [g for g in opt.param_groups if g["factor"]]
    # the loss step keeps each layer's multiplier; the decay step lr * wd is 0.1 * 2 lambda / 3
    assert sorted(g["lr"] for g in factors) == pytest.approx([0.2, 0.8])
    assert [g["lr"] * g["weight_decay"] for g in factors] == pytest.approx([0.1 * 0.02] * 2)


def test_evaluate_counts_top1_accuracy():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert (
        evaluate(model, DataLoader(TensorDataset(x, y), batch_size=3), torch.device("cpu")) == 0.75
    )


def test_device_auto_and_cpu_resolve():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("spec", ["tpu", "gpu0", "mps"])
def test_unknown_device_is_rejected(spec):
    with pytest.raises(InputError, match="device"):
        resolve_device(spec)


def test_cuda_without_a_gpu_is_rejected():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda")


def test_each_weight_gets_the_decay_of_its_own_depth():
    model = mlp()
    dwfc.factorize_(model, depth=4, params=["0.weight"])
    dwfc.factorize_(model, depth=2, params=["2.weight"])
    opt = torch.optim.SGD(_param_groups(model, {"0.weight": 1.0, "2.weight": 1.0}), lr=0.1)
    _set_hyper(opt, lr=0.1, lam=0.04)
    decays = sorted(g["weight_decay"] for g in opt.param_groups if g["factor"])
    assert decays == pytest.approx([2 * 0.04 / 4, 2 * 0.04 / 2])


def test_a_second_divergence_in_an_epoch_restarts_from_the_epoch_before(monkeypatch):
    """The state at an epoch's start can itself be past saving: go back one more epoch."""
    import dwfc.engine.trainer as train_module
    from dwfc.errors import TrainingDiverged

    real_run_epoch, starts = train_module.run_epoch, []
    steps_per_epoch = len(loaders()[0])

    def run_epoch(*args, first_step, **kwargs):
        starts.append(first_step)
        if first_step == 2 * steps_per_epoch and starts.count(first_step) <= 2:
            raise TrainingDiverged(f"loss became non-finite at step {first_step + 1}")
        return real_run_epoch(*args, first_step=first_step, **kwargs)

    monkeypatch.setattr(train_module, "run_epoch", run_epoch)
    model, outcome = _run(0.8)
    s = steps_per_epoch
    # epochs 0, 1; epoch 2 diverges, restarts at its start, diverges again, goes back to epoch 1
    assert starts[:6] == [0, s, 2 * s, 2 * s, s, 2 * s]
    assert outcome.retries == 2 and outcome.lr_factor == 0.25
    dwf_epochs = [row["epoch"] for row in outcome.history if row["phase"] != "finetune"]
    assert dwf_epochs == sorted(dwf_epochs) and dwf_epochs[-1] == 4  # history rewound too
    assert "after_finetune" in outcome.accuracy


def test_dwf_sparsifies_only_the_weights_it_is_given():
    """Factorized but not named: trained without decay and never cut."""
    train_loader, test = loaders()
    model = mlp()
    dwfc.factorize_(model, depth=3)
    recipe = load_recipe("default", [*TINY, "sparsity.target=0.8"])
    train(model, ["0.weight"], train_loader, test, recipe, torch.device("cpu"))
    dwfc.collapse_(model)
    assert int((model[0].weight == 0).sum()) == round(0.8 * model[0].weight.numel())
    assert int((model[2].weight == 0).sum()) == 0
    with pytest.raises(InputError, match="no weight selected"):
        train(mlp(), [], train_loader, test, recipe, torch.device("cpu"))
