"""The method interface: a new method is one class and one registry entry, and the engine gives
it everything else (schedule, history, cut accounting, report)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import dwfc
import dwfc.engine.trainer
import dwfc.pipeline
from dwfc.config import Recipe
from dwfc.engine.trainer import Trainer
from dwfc.errors import InputError
from dwfc.methods import METHODS, method_class
from dwfc.methods.base import Method
from dwfc.methods.pruning import PrunedWeights
from dwfc.sparsity import global_magnitude_masks

LENET_WEIGHTS = ["layers.1.weight", "layers.3.weight", "layers.5.weight"]


class LastMinute(PrunedWeights):
    """A method as a new module would hold it: train dense, cut by magnitude at the very end."""

    name = "lastminute"
    title = "magnitude cut after dense training"

    def end_of_sparsify(self, trainer: Trainer) -> None:
        trainer.final_cut(global_magnitude_masks(self.weights(), self.recipe.sparsity.target))
        super().end_of_sparsify(trainer)


def test_registry_names_every_method_and_their_kind() -> None:
    assert list(METHODS) == ["dwf", "gmp", "oneshot", "random", "l1"]
    assert {name: cls.trains for name, cls in METHODS.items()} == {
        "dwf": "factors", "gmp": "weights", "oneshot": "weights", "random": "weights",
        "l1": "weights",
    }  # fmt: skip
    assert all(issubclass(cls, Method) and cls.name == name for name, cls in METHODS.items())


def test_a_new_method_is_one_class_and_one_registry_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dict_path: Path,
    tiny_recipe: Callable[..., Recipe],
) -> None:  # fmt: skip
    with pytest.raises(InputError, match="unknown sparsity.method 'lastminute'"):
        tiny_recipe(0.9, "sparsity.method=lastminute")
    monkeypatch.setitem(METHODS, LastMinute.name, LastMinute)  # the one registry line
    cuts: list[dict] = []
    report = dwfc.compress(
        state_dict_path, tmp_path / "out",
        tiny_recipe(0.9, "sparsity.method=lastminute", "export.onnx=false"),
        callback=lambda event, info: cuts.append(info) if event == "cut" else None,
    )  # fmt: skip
    assert method_class("lastminute") is LastMinute
    assert report.method.name == "lastminute"
    assert report.sparsity.achieved == pytest.approx(0.9, abs=1e-6)
    state = dwfc.load_sparse(tmp_path / "out" / "model.safetensors")
    total = sum(state[n].numel() for n in LENET_WEIGHTS)
    assert sum(int((state[n] == 0).sum()) for n in LENET_WEIGHTS) == round(0.9 * total)
    assert len(cuts) == 1 and set(cuts[0]) == {"before_cut", "after_cut"}
    assert {row.phase for row in report.history} == {"masked", "finetune"}
    assert "magnitude cut after dense training" in (tmp_path / "out" / "report.md").read_text()


def test_a_baseline_run_never_factorizes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dict_path: Path,
    tiny_recipe: Callable[..., Recipe],
) -> None:  # fmt: skip
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a baseline's weights went through factorization")

    monkeypatch.setattr(dwfc.methods.dwf, "apply_plan_", refuse)
    report = dwfc.compress(state_dict_path, tmp_path / "out",
                           tiny_recipe(0.9, "sparsity.method=gmp", "export.onnx=false"))
    assert report.method.name == "gmp" and report.method.depth is None
    with pytest.raises(AssertionError, match="factorization"):
        dwfc.compress(state_dict_path, tmp_path / "dwf", tiny_recipe(0.9, "export.onnx=false"))


def test_dwf_needs_its_weights_factorized() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 4), torch.arange(8) % 3), batch_size=4)
    recipe = dwfc.load_recipe("default", ["train.epochs=1"])
    with pytest.raises(InputError, match="call dwfc.factorize_"):
        dwfc.engine.trainer.train(model, ["0.weight"], loader, loader, recipe,
                                  torch.device("cpu"))  # fmt: skip
