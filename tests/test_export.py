"""Tests for dwfc.export: sparse-bitmask safetensors files and ONNX export checks."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dwfc.errors import ExportCheckError, InputError
from dwfc.export import (
    export_onnx,
    export_sparse_onnx,
    load_sparse,
    onnx_accuracy,
    onnx_max_abs_diff,
    read_metadata,
    save_sparse,
    tensor_digests,
)
from dwfc.export.onnx_file import FLUSH_BELOW


def _sparse(shape: tuple[int, ...], zero_frac: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g)
    return t * (torch.rand(shape, generator=g) >= zero_frac)


def _roundtrip(tmp_path: Path, tensors: dict[str, torch.Tensor], sparse: list[str]) -> dict:
    path = tmp_path / "m.safetensors"
    save_sparse(tensors, path, sparse)
    return load_sparse(path)


@pytest.mark.parametrize(
    "tensor",
    [
        _sparse((64, 100), 0.9),
        _sparse((8, 3, 3, 3), 0.5),
        _sparse((37,), 0.4),
        _sparse((5, 13), 0.3),
        torch.zeros(6, 10),
        torch.randn(4, 9) + 10.0,
        _sparse((16, 20), 0.7).to(torch.bfloat16),
    ],
    ids=["linear-90pct", "conv4d", "1d", "cols-not-mult-8", "all-zero", "dense", "bf16"],
)
def test_sparse_roundtrip_is_bit_exact(tmp_path: Path, tensor: torch.Tensor) -> None:
    out = _roundtrip(tmp_path, {"w": tensor}, ["w"])
    assert out["w"].dtype == tensor.dtype
    assert out["w"].shape == tensor.shape
    assert torch.equal(out["w"], tensor)


def test_dense_keys_and_metadata_roundtrip(tmp_path: Path) -> None:
    sd = {
        "fc.weight": _sparse((10, 20), 0.9),
        "fc.bias": torch.randn(10),
        "bn.num_batches_tracked": torch.tensor(7),
        "idx": torch.arange(5, dtype=torch.int32),
    }
    path = tmp_path / "m.safetensors"
    save_sparse(sd, path, ["fc.weight"], metadata={"recipe": "dwf-l2", "sparsity": "0.9"})
    out = load_sparse(path)
    assert set(out) == set(sd)
    for key, value in sd.items():
        assert out[key].dtype == value.dtype and torch.equal(out[key], value), key
    meta = read_metadata(path)
    assert meta["recipe"] == "dwf-l2" and meta["sparsity"] == "0.9"
    assert meta["dwfc.format"] == "sparse-bitmask"
    assert json.loads(meta["dwfc.sparse_keys"]) == ["fc.weight"]


def test_negative_zero_loads_as_positive_zero(tmp_path: Path) -> None:
    w = torch.tensor([[1.0, -0.0, 2.0]])
    out = _roundtrip(tmp_path, {"w": w}, ["w"])["w"]
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 2.0]]))
    assert not torch.signbit(out[0, 1])


def test_tied_weights_save(tmp_path: Path) -> None:
    shared = torch.randn(4, 4)
    out = _roundtrip(tmp_path, {"a": shared, "b": shared, "c": _sparse((4, 4), 0.5)}, ["c"])
    assert torch.equal(out["a"], shared) and torch.equal(out["b"], shared)


def test_on_disk_layout_is_bitmask(tmp_path: Path) -> None:
    w = torch.tensor([[0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.5], [3.0] + [0.0] * 8])
    path = tmp_path / "m.safetensors"
    save_sparse({"fc.weight": w}, path, ["fc.weight"])
    with safe_open(str(path), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert set(stored) == {
        f"fc.weight.{s}" for s in ("compressed", "bitmask", "shape", "row_offsets")
    }
    assert torch.equal(stored["fc.weight.compressed"], torch.tensor([1.5, 2.5, 3.0]))
    assert stored["fc.weight.bitmask"].dtype == torch.uint8
    # little bit order: column j is bit (j % 8) of byte j // 8
    assert stored["fc.weight.bitmask"].tolist() == [[0b00000010, 0b00000001], [0b00000001, 0]]
    assert stored["fc.weight.shape"].tolist() == [2, 9]
    assert stored["fc.weight.shape"].dtype == torch.int64
    assert stored["fc.weight.row_offsets"].tolist() == [0, 2]
    assert stored["fc.weight.row_offsets"].dtype == torch.int64


def test_conv_weight_uses_flattened_bitmask_and_keeps_shape(tmp_path: Path) -> None:
    w = _sparse((8, 3, 3, 3), 0.5)
    path = tmp_path / "m.safetensors"
    save_sparse({"conv.weight": w}, path, ["conv.weight"])
    with safe_open(str(path), framework="pt") as f:
        assert tuple(f.get_tensor("conv.weight.bitmask").shape) == (8, 4)
        assert f.get_tensor("conv.weight.shape").tolist() == [8, 3, 3, 3]
        assert f.get_tensor("conv.weight.compressed").numel() == int((w != 0).sum())


def test_sparse_file_is_smaller_than_dense(tmp_path: Path) -> None:
    w = _sparse((300, 784), 0.95)
    dense, sparse = tmp_path / "dense.safetensors", tmp_path / "sparse.safetensors"
    save_file({"w": w}, str(dense))
    save_sparse({"w": w}, sparse, ["w"])
    with safe_open(str(sparse), framework="pt") as f:
        assert f.get_tensor("w.compressed").numel() == int((w != 0).sum())
    assert os.path.getsize(sparse) < 0.25 * os.path.getsize(dense)


def test_save_rejects_unknown_sparse_key(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope"):
        save_sparse({"w": torch.ones(2, 2)}, tmp_path / "m.safetensors", ["nope"])
    assert not (tmp_path / "m.safetensors").exists()


def test_save_rejects_name_collision(tmp_path: Path) -> None:
    sd = {"w": torch.ones(2, 2), "w.shape": torch.ones(1)}
    with pytest.raises(InputError, match="w.shape"):
        save_sparse(sd, tmp_path / "m.safetensors", ["w"])


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_sparse(tmp_path / "absent.safetensors")


def test_garbage_bytes_raise_input_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(os.urandom(256))
    with pytest.raises(InputError, match="garbage.safetensors"):
        load_sparse(path)


def test_truncated_file_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_sparse({"w": _sparse((50, 50), 0.5)}, path, ["w"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError, match="m.safetensors"):
        load_sparse(path)


def _craft(path: Path, w: torch.Tensor, **override: torch.Tensor) -> None:
    """Write a sparse entry for `w` by hand, with some companion tensors replaced."""
    mask = (w != 0).reshape(w.shape[0], -1)
    counts = mask.sum(1)
    parts = {
        "w.compressed": w.reshape(w.shape[0], -1)[mask],
        "w.bitmask": torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little")),
        "w.shape": torch.tensor(list(w.shape)),
        "w.row_offsets": torch.cumsum(counts, 0) - counts,
    }
    parts.update({f"w.{k}": v for k, v in override.items()})
    meta = {"dwfc.format": "sparse-bitmask", "dwfc.sparse_keys": json.dumps(["w"])}
    save_file(parts, str(path), metadata=meta)


def test_crafted_file_without_overrides_loads(tmp_path: Path) -> None:
    w = _sparse((6, 11), 0.5)
    _craft(tmp_path / "m.safetensors", w)
    assert torch.equal(load_sparse(tmp_path / "m.safetensors")["w"], w)


def test_set_bits_disagreeing_with_compressed_raise(tmp_path: Path) -> None:
    w = _sparse((6, 11), 0.5)
    values = w[w != 0]
    _craft(tmp_path / "m.safetensors", w, compressed=values[:-1])
    with pytest.raises(InputError, match="set bits"):
        load_sparse(tmp_path / "m.safetensors")


def test_shape_disagreeing_with_bitmask_raises(tmp_path: Path) -> None:
    w = _sparse((6, 11), 0.5)
    _craft(tmp_path / "m.safetensors", w, shape=torch.tensor([6, 40]))
    with pytest.raises(InputError, match="bitmask"):
        load_sparse(tmp_path / "m.safetensors")


def test_huge_claimed_shape_raises_without_allocating(tmp_path: Path) -> None:
    w = _sparse((6, 11), 0.5)
    _craft(tmp_path / "m.safetensors", w, shape=torch.tensor([2**40, 2**40]))
    with pytest.raises(InputError, match="implausible shape"):
        load_sparse(tmp_path / "m.safetensors")
    _craft(tmp_path / "m.safetensors", w, shape=torch.tensor([2**20, 2**20]))
    with pytest.raises(InputError, match="bitmask"):
        load_sparse(tmp_path / "m.safetensors")


def test_bad_row_offsets_raise(tmp_path: Path) -> None:
    w = _sparse((6, 11), 0.5)
    _craft(tmp_path / "m.safetensors", w, row_offsets=torch.zeros(6, dtype=torch.int64))
    with pytest.raises(InputError, match="row_offsets"):
        load_sparse(tmp_path / "m.safetensors")


def test_missing_companion_tensor_raises(tmp_path: Path) -> None:
    w = _sparse((6, 11), 0.5)
    path = tmp_path / "m.safetensors"
    _craft(path, w)
    with safe_open(str(path), framework="pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if k != "w.row_offsets"}
        meta = f.metadata()
    save_file(kept, str(path), metadata=meta)
    with pytest.raises(InputError, match=r"no w\.row_offsets"):
        load_sparse(path)


def test_header_only_file_claiming_large_tensor_raises(tmp_path: Path) -> None:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}}
    )
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    with pytest.raises(InputError, match="m.safetensors"):
        load_sparse(path)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    )


def _zero_out(model: nn.Module, frac: float) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(torch.rand_like(p) >= frac)
    return model


@pytest.mark.parametrize("make", [_mlp, _convnet], ids=["mlp", "convnet"])
def test_export_onnx_matches_pytorch(tmp_path: Path, make) -> None:
    model = _zero_out(make(), 0.8)
    path = tmp_path / "model.onnx"
    export_onnx(model, torch.randn(1, 1, 8, 8), path)
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["output"]
    assert onnx_max_abs_diff(path, model, torch.randn(7, 1, 8, 8)) <= 1e-4


def test_export_sets_weights_whose_products_would_be_subnormal_to_zero(tmp_path: Path) -> None:
    """A filter a penalty has shrunk to 1e-15, BatchNorm scale 1e-12: folded, 1e-27, whose
    products with an activation under 1e-12 are subnormal (slow on CPUs) and hold nothing."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight[0].fill_(1e-15)
        model[0].bias[0] = 0.0
        model[1].weight[0] = 1e-12
        model[1].bias[0] = 0.0
    path = tmp_path / "model.onnx"
    assert export_onnx(model, torch.randn(1, 1, 8, 8), path) == 9  # the first filter, folded
    values = np.concatenate([numpy_helper.to_array(i).ravel()
                             for i in onnx.load(str(path)).graph.initializer])  # fmt: skip
    assert not ((values != 0) & (np.abs(values) < FLUSH_BELOW)).any()
    assert (values != 0).sum() == 3 * 9 + 3  # the other filters and biases are untouched
    assert onnx_max_abs_diff(path, model, torch.randn(7, 1, 8, 8)) <= 1e-6


def test_export_restores_training_mode(tmp_path: Path) -> None:
    model = _mlp().train()
    export_onnx(model, torch.randn(2, 1, 8, 8), tmp_path / "model.onnx")
    assert model.training


def test_export_failure_raises_and_leaves_no_file(tmp_path: Path) -> None:
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigvals(x).real

    path = tmp_path / "model.onnx"
    with pytest.raises(ExportCheckError):
        export_onnx(Bad(), torch.randn(1, 3, 3), path)
    assert list(tmp_path.iterdir()) == []


def test_onnx_accuracy_equals_pytorch_accuracy(tmp_path: Path) -> None:
    model = _zero_out(_convnet(), 0.5).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 1, 8, 8, generator=g)
    with torch.no_grad():
        logits = model(x)
    # labels agree with the model on ~60% of samples, so accuracy is neither 0 nor 1
    y = torch.where(
        torch.rand(100, generator=g) < 0.6,
        logits.argmax(1),
        torch.randint(0, 5, (100,), generator=g),
    )
    torch_acc = int((logits.argmax(1) == y).sum()) / len(y)
    path = tmp_path / "model.onnx"
    export_onnx(model, x[:1], path)
    acc = onnx_accuracy(path, DataLoader(TensorDataset(x, y), batch_size=32))
    assert 0.0 < acc < 1.0
    assert acc == torch_acc


def test_tensor_digests_ignore_zero_sign_and_survive_sparse_roundtrip(tmp_path: Path) -> None:
    w = torch.tensor([[1.0, -0.0, 2.0], [0.0, 0.0, -3.0]])
    sd = {"w": w, "b": torch.arange(3), "s": torch.tensor(2.5, dtype=torch.bfloat16)}
    digests = tensor_digests(sd)
    assert set(digests) == set(sd) and all(d.startswith("sha256:") for d in digests.values())
    plus_zero = torch.where(w == 0, torch.zeros_like(w), w)
    assert tensor_digests({"w": plus_zero})["w"] == digests["w"]  # -0.0 hashes as +0.0
    restored = _roundtrip(tmp_path, sd, ["w"])
    assert tensor_digests(restored) == digests


def test_tensor_digests_see_values_dtype_and_shape() -> None:
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    base = tensor_digests({"w": w})["w"]
    changed = [w.reshape(4), w.reshape(1, 4), w.double(), w.t().contiguous(), w + 1e-7]
    assert all(tensor_digests({"w": c})["w"] != base for c in changed)
    header = b"float32|2,2|"
    assert base == "sha256:" + hashlib.sha256(header + w.numpy().tobytes()).hexdigest()


def _session_out(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize("make", [_mlp, _convnet], ids=["mlp", "convnet"])
def test_sparse_onnx_is_smaller_checked_and_identical(tmp_path: Path, make) -> None:
    model = _zero_out(make(), 0.95)
    dense, sparse = tmp_path / "model.onnx", tmp_path / "model.sparse.onnx"
    export_onnx(model, torch.randn(1, 1, 8, 8), dense)
    assert export_sparse_onnx(dense, sparse)
    onnx.checker.check_model(str(sparse))
    graph = onnx.load(str(sparse)).graph
    assert len(graph.sparse_initializer) >= 1
    for sp in graph.sparse_initializer:
        assert sp.indices.data_type == onnx.TensorProto.INT64 and len(sp.indices.dims) == 1
    assert os.path.getsize(sparse) < os.path.getsize(dense)
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_session_out(sparse, x), _session_out(dense, x), rtol=0, atol=1e-6)


def test_sparse_onnx_not_written_when_not_smaller(tmp_path: Path) -> None:
    dense, sparse = tmp_path / "model.onnx", tmp_path / "model.sparse.onnx"
    export_onnx(_mlp(), torch.randn(1, 1, 8, 8), dense)  # dense weights: nothing to gain
    assert not export_sparse_onnx(dense, sparse)
    assert not export_sparse_onnx(dense, sparse, min_sparsity=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_sparse_onnx_rejects_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08garbage")
    with pytest.raises(InputError, match="bad.onnx"):
        export_sparse_onnx(bad, tmp_path / "out.onnx")
    with pytest.raises(InputError, match="min_sparsity"):
        export_sparse_onnx(bad, tmp_path / "out.onnx", min_sparsity=1.5)
