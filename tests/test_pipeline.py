"""Tests for dwfc.compress, the Python API of `dwfc compress`, on tiny runs of LeNet-300-100."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from onnx import numpy_helper
from torch.utils.data import DataLoader, TensorDataset

import dwfc
import dwfc.export.stage
from dwfc.config import Recipe
from dwfc.errors import ExportCheckError, InputError
from dwfc.export import read_metadata
from dwfc.zoo import lenet_300_100

OUTPUT_FILES = {
    "model.safetensors",
    "model.onnx",
    "report.json",
    "report.md",
    "recipe.yaml",
    "layer_sparsity.png",
    "training.png",
}
LENET_WEIGHTS = ["layers.1.weight", "layers.3.weight", "layers.5.weight"]
LENET_PARAMETERS = 266_610
CHECKPOINT_NAME = "checkpoint.pt"  # dwfc's per-epoch resume checkpoint inside --out
QUICK = ("train.epochs=1", "sparsity.finetune_epochs=0")  # tinier still: 1 DWF epoch


@dataclass
class Run:
    """One finished compression: its output folder, the folder around it, recipe and report."""

    out: Path
    parent: Path
    recipe: Recipe
    report: dict[str, Any]

    def load_json(self) -> dict[str, Any]:
        return json.loads((self.out / "report.json").read_text(encoding="utf-8"))


def _run(tmp_path_factory: pytest.TempPathFactory, model: Path, recipe: Recipe, name: str) -> Run:
    parent = tmp_path_factory.mktemp(name)
    out = parent / "out"
    report = dwfc.compress(model, out, recipe).to_dict()
    return Run(out=out, parent=parent, recipe=recipe, report=report)


@pytest.fixture(scope="module")
def run_90(
    tmp_path_factory: pytest.TempPathFactory,
    state_dict_path: Path,
    tiny_recipe: Callable[..., Recipe],
) -> Run:
    """The shared tiny run at target sparsity 0.9."""
    return _run(tmp_path_factory, state_dict_path, tiny_recipe(0.9), "run90")


@pytest.fixture(scope="module")
def run_50(
    tmp_path_factory: pytest.TempPathFactory,
    state_dict_path: Path,
    tiny_recipe: Callable[..., Recipe],
) -> Run:
    """A second, tinier run at target sparsity 0.5 (1 DWF epoch, no masked fine-tune)."""
    recipe = tiny_recipe(0.5, *QUICK)
    return _run(tmp_path_factory, state_dict_path, recipe, "run50")


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` (hidden ones too), with its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _eval_loader(splits: tuple[TensorDataset, TensorDataset]) -> DataLoader:
    return DataLoader(splits[1], batch_size=1000)


def _accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    return correct / total


def _reloaded_model(run: Run) -> torch.nn.Module:
    model = lenet_300_100()
    model.load_state_dict(dwfc.load_sparse(run.out / "model.safetensors"), strict=True)
    return model.eval()


# --------------------------------------------------------------------------- outputs


def _leftovers(names: set[str]) -> set[str]:
    """Names that only an unfinished run leaves: hidden/temporary files, a resume checkpoint."""
    return {n for n in names if n.startswith(".") or n.endswith(".tmp") or n == CHECKPOINT_NAME}


def test_outputs_exist_and_nothing_else_is_left(run_90: Run) -> None:
    names = {p.name for p in run_90.out.iterdir()}
    assert OUTPUT_FILES <= names
    for name in OUTPUT_FILES:
        assert (run_90.out / name).stat().st_size > 0, name
    assert _leftovers(names) == set()
    # No staging folder (".out.partial-*") or temporary file beside the output folder.
    assert [p.name for p in run_90.parent.iterdir()] == ["out"]


@pytest.mark.parametrize("run_name, target", [("run_90", 0.9), ("run_50", 0.5)])
def test_target_sparsity_is_hit_exactly(
    request: pytest.FixtureRequest, run_name: str, target: float
) -> None:
    run: Run = request.getfixturevalue(run_name)
    names = [layer["name"] for layer in run.report["layers"]]
    assert names == LENET_WEIGHTS
    state = dwfc.load_sparse(run.out / "model.safetensors")
    total = sum(state[n].numel() for n in names)
    zeros = sum(int((state[n] == 0).sum()) for n in names)
    expected_zeros = round(target * total)
    assert zeros == expected_zeros
    sparsity = run.report["sparsity"]
    assert sparsity["target"] == target
    assert sparsity["factorized_weights"] == total
    assert sparsity["nonzero_weights"] == total - expected_zeros
    assert sparsity["achieved"] == pytest.approx(expected_zeros / total, abs=1e-12)
    assert run.load_json()["sparsity"]["achieved"] == sparsity["achieved"]


def test_onnx_initializers_equal_load_sparse_tensors(run_90: Run) -> None:
    state = dwfc.load_sparse(run_90.out / "model.safetensors")
    graph = onnx.load(str(run_90.out / "model.onnx")).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    assert set(LENET_WEIGHTS) <= set(initializers)
    assert set(initializers) <= set(state)
    for name, array in initializers.items():
        tensor = state[name].numpy()
        assert array.dtype == tensor.dtype, name
        assert array.shape == tensor.shape, name
        # Value equality: the sparse format stores -0.0 as 0.0 (docs/format.md).
        assert np.array_equal(array, tensor), name


def test_load_sparse_into_fresh_model_reproduces_accuracy(
    run_90: Run, mnist_splits: tuple[TensorDataset, TensorDataset]
) -> None:
    model = _reloaded_model(run_90)  # strict=True: exactly LeNet-300-100's keys and shapes
    accuracy = _accuracy(model, _eval_loader(mnist_splits))
    assert accuracy == run_90.report["accuracy"]["compressed_pytorch"]


def test_onnxruntime_matches_reloaded_pytorch(
    run_90: Run, mnist_splits: tuple[TensorDataset, TensorDataset]
) -> None:
    x, _ = next(iter(_eval_loader(mnist_splits)))
    session = ort.InferenceSession(
        str(run_90.out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = _reloaded_model(run_90)(x).numpy()
    assert got.shape == want.shape == (len(x), 10)
    assert float(np.max(np.abs(got.astype(np.float64) - want))) <= 1e-4
    assert run_90.report["onnx"]["max_abs_diff"] <= 1e-4


# --------------------------------------------------------------------------- report


def test_report_json_is_the_returned_report(run_90: Run) -> None:
    assert run_90.load_json() == json.loads(json.dumps(run_90.report))


def test_report_json_has_the_required_keys(run_90: Run) -> None:
    report = run_90.load_json()

    for layer in report["layers"]:
        assert {"name", "shape", "weights", "nonzero", "sparsity"} <= set(layer)
        assert layer["weights"] == math.prod(layer["shape"])
        assert 0 < layer["nonzero"] <= layer["weights"]
        assert layer["sparsity"] == pytest.approx(1 - layer["nonzero"] / layer["weights"])

    sp = report["sparsity"]
    weights = sum(layer["weights"] for layer in report["layers"])
    nonzero = sum(layer["nonzero"] for layer in report["layers"])
    assert sp["factorized_weights"] == weights
    assert sp["nonzero_weights"] == nonzero
    assert sp["total_parameters"] == LENET_PARAMETERS
    assert sp["compression_ratio"] == pytest.approx(weights / nonzero)
    for key in ("reached_by_training_eps", "reached_by_training_relative"):
        assert 0.0 <= sp[key] <= 1.0, key
    assert sp["eps"] == run_90.recipe.sparsity.eps
    assert sp["relative_threshold"] == run_90.recipe.sparsity.relative_threshold

    acc = report["accuracy"]
    for key in ("original", "compressed_pytorch", "compressed_onnxruntime"):
        assert 0.0 <= acc[key] <= 1.0, key
    for key in ("before_cut", "after_cut"):
        assert 0.0 <= acc[key] <= 1.0, key

    files = report["files"]
    assert files["dense_fp32_bytes"] == 4 * LENET_PARAMETERS
    for name in ("model.safetensors", "model.onnx"):
        assert files[name] == (run_90.out / name).stat().st_size, name

    timing = report["timing"]
    for key in ("load_s", "train_s", "export_s", "total_s"):
        assert timing[key] >= 0.0, key
    assert timing["total_s"] >= timing["train_s"]

    method = report["method"]
    assert method["depth"] == 3
    assert method["lambda"] > 0
    assert method["weight_decay"] == pytest.approx(2 * method["lambda"] / 3, rel=1e-12)

    recipe_yaml = yaml.safe_load((run_90.out / "recipe.yaml").read_text(encoding="utf-8"))
    assert report["recipe"] == recipe_yaml == run_90.recipe.model_dump(mode="json")


def test_recipe_yaml_loads_back_to_an_equal_recipe(run_90: Run) -> None:
    assert dwfc.load_recipe(run_90.out / "recipe.yaml") == run_90.recipe


def test_safetensors_metadata_holds_the_resolved_recipe(run_90: Run) -> None:
    metadata = read_metadata(run_90.out / "model.safetensors")
    assert json.loads(metadata["dwfc.recipe"]) == run_90.recipe.model_dump(mode="json")


# --------------------------------------------------------------------------- the output folder


def _occupied_out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    (out / "model.onnx").write_bytes(b"stale onnx")
    (out / "report.json").write_text("{}\n")
    return out


def test_nonempty_out_without_overwrite_is_refused_and_untouched(
    tmp_path: Path, state_dict_path: Path, tiny_recipe: Callable[..., Recipe]
) -> None:
    out = _occupied_out(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match="not empty"):
        dwfc.compress(state_dict_path, out, tiny_recipe(0.9))
    assert _snapshot(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_overwrite_replaces_the_outputs(
    tmp_path: Path, state_dict_path: Path, tiny_recipe: Callable[..., Recipe]
) -> None:
    out = _occupied_out(tmp_path)
    report = dwfc.compress(
        state_dict_path, out, tiny_recipe(0.9, *QUICK), overwrite=True
    ).to_dict()
    assert OUTPUT_FILES <= {p.name for p in out.iterdir()}
    onnx.checker.check_model(str(out / "model.onnx"))  # the stale bytes are gone
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    # --overwrite replaces dwfc's outputs, not the user's other files.
    assert (out / "notes.txt").read_text() == "mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _fail_export(*args: Any, **kwargs: Any) -> None:
    raise ExportCheckError("injected ONNX export failure")


def _no_checkpoint() -> list[str]:
    """Override turning off the per-epoch resume checkpoint (out/checkpoint.pt), where dwfc
    has one: that file is meant to outlive a failed run, so --resume can continue it."""
    train_fields = Recipe.model_fields["train"].annotation.model_fields
    return ["train.checkpoint=false"] if "checkpoint" in train_fields else []


def test_failure_midway_without_checkpoint_leaves_no_out(
    tmp_path: Path,
    state_dict_path: Path,
    tiny_recipe: Callable[..., Recipe],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dwfc.export.stage, "export_onnx", _fail_export)
    out = tmp_path / "out"
    with pytest.raises(ExportCheckError, match="injected"):
        dwfc.compress(state_dict_path, out, tiny_recipe(0.9, *QUICK, *_no_checkpoint()))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_with_overwrite_leaves_existing_out_untouched(
    tmp_path: Path,
    state_dict_path: Path,
    tiny_recipe: Callable[..., Recipe],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dwfc.export.stage, "export_onnx", _fail_export)
    out = _occupied_out(tmp_path)
    before = _snapshot(tmp_path)
    recipe = tiny_recipe(0.9, *QUICK, *_no_checkpoint())
    with pytest.raises(ExportCheckError, match="injected"):
        dwfc.compress(state_dict_path, out, recipe, overwrite=True)
    assert _snapshot(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]
