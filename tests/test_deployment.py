"""What a deployment takes from `dwfc compress`: int8 ONNX with every pruned weight still zero,
ONNX files every tool accepts (or a report that says which checks fail), metadata, dynamic
spatial axes, latency, and sparse safetensors that are dwfc's own and unpack to plain ones."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

import dwfc
from dwfc.bench import bench_run
from dwfc.cli import app
from dwfc.config import Recipe
from dwfc.errors import InputError
from dwfc.inspect import FOREIGN_BITMASK, inspect_file
from dwfc.zoo import lenet5

INT8_ACCURACY_POINTS = 1.0  # int8 accuracy within this many points of the fp32 ONNX model
LENET300_WEIGHTS = ["layers.1.weight", "layers.3.weight", "layers.5.weight"]
runner = CliRunner()


def _run(tmp_path_factory: pytest.TempPathFactory, model: Path, recipe: Recipe) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "out"
    dwfc.compress(model, out, recipe)
    return out


@pytest.fixture(scope="module")
def dynamic_run(tmp_path_factory, state_dict_path, tiny_recipe) -> Path:
    """LeNet-300-100 at 90%, with dynamic int8 and a quality gate."""
    recipe = tiny_recipe(0.9, "export.quantize=dynamic", "gates.max_accuracy_drop=100",
                         "export.latency_rounds=2")  # fmt: skip
    return _run(tmp_path_factory, state_dict_path, recipe)


@pytest.fixture(scope="module")
def lenet5_path(tmp_path_factory, mnist_splits) -> Path:
    """LeNet-5 trained two epochs on mnist5k: a conv net for static int8."""
    torch.manual_seed(0)
    model = lenet5().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    loader = DataLoader(mnist_splits[0], batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    for _ in range(2):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    path = tmp_path_factory.mktemp("lenet5") / "lenet5.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def static_run(tmp_path_factory, lenet5_path, tiny_recipe) -> Path:
    recipe = tiny_recipe(0.8, "model.arch=dwfc.zoo:lenet5", "export.quantize=static",
                         "export.calibration_batches=4", "export.latency_rounds=2")  # fmt: skip
    return _run(tmp_path_factory, lenet5_path, recipe)


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _dequantized_zeros(int8: Path, name: str) -> np.ndarray:
    """Where the int8 model's copy of weight `name` is zero, read from its own initializers by
    onnxruntime's naming convention (the library reads the consuming nodes instead)."""
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(int8)).graph.initializer}
    base = next(n for n in (f"{name}_quantized", f"{name}_Transposed_quantized") if n in stored)
    q = stored[base].astype(np.int32)
    zp = stored[base.removesuffix("_quantized") + "_zero_point"].astype(np.int32)
    transposed = base.endswith("_Transposed_quantized")  # (in, out): one zero point per column
    shape = [1] * q.ndim
    shape[1 if transposed else 0] = zp.size
    zero = q == (zp.reshape(shape) if zp.size > 1 else zp.reshape(()))
    return zero.T if transposed else zero


@pytest.mark.parametrize("fixture", ["dynamic_run", "static_run"])
def test_int8_model_keeps_accuracy_and_every_pruned_weight_zero(
    request: pytest.FixtureRequest, fixture: str, mnist_splits: tuple[TensorDataset, ...]
) -> None:
    out: Path = request.getfixturevalue(fixture)
    report = _report(out)
    int8 = out / "model.int8.onnx"
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    x, y = mnist_splits[1].tensors
    predicted = session.run(None, {"input": x.numpy()})[0].argmax(axis=1)
    accuracy = float((predicted == y.numpy()).mean())
    assert accuracy == pytest.approx(report["accuracy"]["compressed_int8"], abs=1e-9)
    assert abs(accuracy - report["accuracy"]["compressed_onnxruntime"]) * 100 <= (
        INT8_ACCURACY_POINTS
    )
    weights = dwfc.load_sparse(out / "model.safetensors")
    checked = 0
    for layer in report["layers"]:
        pruned = (weights[layer["name"]] == 0).numpy()
        if layer["name"] in report["int8"]["quantized"]:
            assert np.all(_dequantized_zeros(int8, layer["name"])[pruned]), layer["name"]
            checked += int(pruned.sum())
    assert checked == report["int8"]["zeros"] == report["int8"]["zeros_kept"] > 0
    assert report["int8"]["mode"] == fixture.removesuffix("_run")


def test_the_accuracy_gate_applies_to_the_int8_model(dynamic_run: Path) -> None:
    gates = {g["gate"]: g for g in _report(dynamic_run)["gates"]}
    assert set(gates) == {"max_accuracy_drop", "max_accuracy_drop_int8"}
    acc = _report(dynamic_run)["accuracy"]
    assert gates["max_accuracy_drop_int8"]["value"] == pytest.approx(
        100 * (acc["original"] - acc["compressed_int8"]))


@pytest.mark.parametrize("fixture", ["dynamic_run", "static_run"])
def test_every_onnx_file_passes_the_full_checker_or_the_report_says_why_not(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    out: Path = request.getfixturevalue(fixture)
    report = _report(out)
    for name in ("model.onnx", "model.int8.onnx"):
        onnx.checker.check_model(str(out / name), full_check=True)
    assert report["onnx"]["full_check"] == report["int8"]["full_check"] == "passed"
    if (out / "model.sparse.onnx").exists():
        with pytest.raises(Exception) as info:
            onnx.checker.check_model(str(out / "model.sparse.onnx"), full_check=True)
        recorded = report["onnx"]["sparse_variant_full_check"]
        assert recorded.startswith("failed: ") and str(info.value).strip().splitlines()[0] in (
            recorded)
        assert "failed:" in (out / "report.md").read_text()


def test_reference_evaluator_agrees_with_onnxruntime(static_run: Path) -> None:
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1)).numpy()
    path = str(static_run / "model.onnx")
    (want,) = ReferenceEvaluator(path).run(None, {"input": x})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    assert np.max(np.abs(np.asarray(want) - got)) <= 1e-4


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx"])
def test_onnx_metadata_says_how_to_feed_the_model(dynamic_run: Path, name: str) -> None:
    props = {p.key: p.value for p in onnx.load(str(dynamic_run / name)).metadata_props}
    assert json.loads(props["dwfc.input_shape"]) == [1, 28, 28]
    assert json.loads(props["dwfc.mean"]) == [0.1307] and json.loads(props["dwfc.std"]) == [0.3081]
    assert json.loads(props["dwfc.num_classes"]) == 10
    assert float(props["dwfc.sparsity"]) == pytest.approx(0.9, abs=1e-6)
    assert props["dwfc.version"] == dwfc.__version__


def _fully_convolutional() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip


def test_spatial_axes_are_dynamic_where_the_model_allows_them(
    tmp_path: Path, tiny_recipe: Callable[..., Recipe], static_run: Path
) -> None:
    model_path = tmp_path / "fcn.pt"
    torch.save(_fully_convolutional().state_dict(), model_path)
    recipe = tiny_recipe(0.5, "model.arch=test_deployment:_fully_convolutional",
                         "export.latency=false")  # fmt: skip
    report = dwfc.compress(model_path, tmp_path / "out", recipe)
    assert report.onnx.dynamic_axes == ["batch", "height", "width"]
    x = torch.randn(2, 1, 40, 52, generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    got = session.run(None, {"input": x.numpy()})[0]
    model = _fully_convolutional()
    model.load_state_dict(dwfc.load_sparse(tmp_path / "out" / "model.safetensors"))
    with torch.no_grad():
        assert np.max(np.abs(got - model.eval()(x).numpy())) <= 1e-4
    assert _report(static_run)["onnx"]["dynamic_axes"] == ["batch"]  # LeNet-5: a fixed flatten


def test_latency_of_original_compressed_and_int8_is_in_the_report(dynamic_run: Path) -> None:
    latency = _report(dynamic_run)["latency"]
    assert latency["onnxruntime"] == ort.__version__ and latency["cpu"] and latency["rounds"] == 2
    settings = {(r["model"], r["batch"], r["threads"]) for r in latency["rows"]}
    models = ("original", "compressed", "sparse", "int8")
    assert settings == {(m, b, t) for m in models for b in (1, 64) for t in (1, 0)}
    assert all(0 < r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] for r in latency["rows"])
    assert "## Latency" in (dynamic_run / "report.md").read_text()


def test_bench_measures_again_and_refuses_a_folder_without_onnx(
    dynamic_run: Path, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["bench", str(dynamic_run), "--rounds", "1", "--batch", "4"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines()[3:] if not line.startswith("note:")]
    assert {line.split()[0] for line in lines} == {"original", "compressed", "sparse", "int8"}
    result = runner.invoke(app, ["bench", str(tmp_path)])
    assert result.exit_code == 2 and "no model.onnx" in result.stderr


def test_bench_without_the_original_file_measures_the_rest(
    dynamic_run: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(dynamic_run, tmp_path / "run"))
    report = json.loads((copy / "report.json").read_text())
    report["model"]["source"] = str(tmp_path / "gone.pt")
    (copy / "report.json").write_text(json.dumps(report))
    latency = bench_run(copy, rounds=1, batches=[2])
    assert {r.model for r in latency.rows} == {"compressed", "sparse", "int8"}
    assert any("gone.pt is not there" in n for n in latency.notes)


def _compressed_tensors_like(path: Path) -> None:
    """A sparse-bitmask file as compressed-tensors writes it: parts named after the module."""
    weight = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]])
    mask = weight != 0
    safetensors.torch.save_file({
        "fc.compressed": weight[mask], "fc.shape": torch.tensor([2, 3]),
        "fc.bitmask": torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little")),
        "fc.row_offsets": torch.tensor([0, 1]), "fc.bias": torch.ones(2),
    }, str(path))  # fmt: skip


def test_a_compressed_tensors_file_is_refused_and_recognised(tmp_path: Path) -> None:
    path = tmp_path / "ct.safetensors"
    _compressed_tensors_like(path)
    with pytest.raises(InputError, match="not written by dwfc .*fc.compressed"):
        dwfc.load_sparse(path)
    info = inspect_file(path)
    assert info["format"] == FOREIGN_BITMASK
    rows = {r["name"]: r for r in info["layers"]}
    assert rows["fc"]["shape"] == [2, 3] and rows["fc"]["nonzero"] == 2
    assert rows["fc.bias"]["stored"] == "dense"


def test_unpack_writes_dense_safetensors_any_loader_reads(
    dynamic_run: Path, tmp_path: Path
) -> None:
    target = tmp_path / "dense.safetensors"
    result = runner.invoke(app, ["unpack", str(dynamic_run), "--to", str(target)])
    assert result.exit_code == 0, result.output
    dense = safetensors.torch.load_file(str(target))
    model = dwfc.zoo.lenet_300_100()
    model.load_state_dict(dense)
    sparse = dwfc.load_sparse(dynamic_run / "model.safetensors")
    assert all(torch.equal(dense[k], sparse[k]) for k in sparse)


def test_summary_lists_what_was_written(
    state_dict_path: Path, tmp_path: Path
) -> None:  # fmt: skip
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", str(state_dict_path), "--arch",
                                 "dwfc.zoo:lenet_300_100", "--out", str(out), "--quiet",
                                 "--epochs", "1", "sparsity.finetune_epochs=0",
                                 "--quantize", "dynamic", "export.latency_rounds=1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    listed = next(line for line in result.stdout.splitlines() if line.startswith("outputs in"))
    written = {p.name for p in out.iterdir()} & {"model.safetensors", "model.onnx",
                                                 "model.sparse.onnx", "model.int8.onnx"}
    assert all(name in listed for name in written) and "model.int8.onnx" in written
    assert "(int8)" in result.stdout and "latency (onnxruntime" in result.stdout


def test_image_size_flag_reaches_the_recipe(state_dict_path: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["compress", str(state_dict_path), "--arch",
                                 "dwfc.zoo:lenet_300_100", "--image-size", "32",
                                 "--out", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    assert result.exit_code == 2 and "input of shape (1, 32, 32)" in result.stderr


def test_a_state_dict_with_other_classes_suggests_num_classes(tmp_path: Path) -> None:
    path = tmp_path / "lenet5_3.pt"
    torch.save(lenet5(num_classes=3).state_dict(), path)
    result = runner.invoke(app, ["compress", str(path), "--arch", "dwfc.zoo:lenet5",
                                 "--out", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    assert result.exit_code == 2
    assert "--arch-kwarg num_classes=3" in result.stderr


def test_an_untrained_original_is_flagged(tmp_path: Path, tiny_recipe) -> None:
    path = tmp_path / "untrained.pt"
    torch.manual_seed(3)
    torch.save(dwfc.zoo.lenet_300_100().state_dict(), path)
    with torch.no_grad():  # make it worse than chance, as a model of other data would be
        state = torch.load(path, weights_only=True)
        state["layers.5.bias"] += torch.tensor([50.0] + [0.0] * 9)
        torch.save(state, path)
    report = dwfc.compress(path, tmp_path / "out",
                           tiny_recipe(0.5, "export.onnx=false", "sparsity.finetune_epochs=0"))
    assert report.accuracy.original < 0.2
    assert any("near or below chance" in w for w in report.warnings)


def square_mlp() -> nn.Module:
    """A 128 x 128 Linear: onnxruntime stores it transposed, in the weight's own shape."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128),
                         nn.ReLU(), nn.Linear(128, 10))  # fmt: skip


def pooled_to_a_grid() -> nn.Module:
    """Adaptive pooling to 2 x 2: the exporter refuses dynamic height and width."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 10))  # fmt: skip


class Tokens(nn.Module):
    """A model of int64 token ids: embedding, mean, linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(50, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(dim=1))


def token_data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50, (96, 12), generator=g)
    return TensorDataset(x[:64], x[:64, 0] % 4), TensorDataset(x[64:], x[64:, 0] % 4)


@pytest.mark.parametrize("factory, data, extra", [
    ("square_mlp", "mnist5k", ["export.quantize=dynamic"]),
    ("pooled_to_a_grid", "mnist5k", []),
    ("tokens", "test_deployment:token_data", ["export.quantize=dynamic"]),
], ids=["square-linear", "adaptive-pool", "int64-input"])  # fmt: skip
def test_models_the_export_must_cope_with(
    tmp_path: Path, tiny_recipe: Callable[..., Recipe], factory: str, data: str,
    extra: list[str],
) -> None:  # fmt: skip
    build = {"square_mlp": square_mlp, "pooled_to_a_grid": pooled_to_a_grid, "tokens": Tokens}
    path = tmp_path / "model.pt"
    torch.save(build[factory]().state_dict(), path)
    arch = f"test_deployment:{build[factory].__name__}"
    recipe = tiny_recipe(0.7, f"model.arch={arch}", f"data.source={data}",
                         "export.latency_rounds=1", "export.latency_batches=[2]", *extra)
    report = dwfc.compress(path, tmp_path / "out", recipe)
    assert report.onnx.full_check == "passed" and report.latency.rows
    assert {r.model for r in report.latency.rows} >= {"original", "compressed"}
    if report.int8 is not None:
        assert report.int8.zeros == report.int8.zeros_kept > 0 and not report.int8.unchecked
    assert report.onnx.dynamic_axes == ["batch"]
