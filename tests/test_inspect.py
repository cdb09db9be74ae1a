"""Tests for dwfc.inspect: every supported file kind, totals, the table, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dwfc.cli.text import format_inspection
from dwfc.errors import InputError
from dwfc.export import export_onnx, export_sparse_onnx, save_sparse
from dwfc.inspect import inspect_file


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 30, generator=g) * (torch.rand(20, 30, generator=g) < 0.1)
    return {"fc.weight": w, "fc.bias": torch.ones(20), "steps": torch.tensor(3)}


def _rows(info: dict) -> dict[str, dict]:
    return {r["name"]: r for r in info["layers"]}


def test_dwfc_sparse_safetensors(tmp_path: Path) -> None:
    sd = _state()
    path = tmp_path / "model.safetensors"
    save_sparse(sd, path, ["fc.weight"])
    info = inspect_file(path)
    rows = _rows(info)
    assert info["format"] == "dwfc sparse safetensors" and set(rows) == set(sd)
    w = rows["fc.weight"]
    assert w["stored"] == "sparse-bitmask" and w["shape"] == [20, 30] and w["weights"] == 600
    assert w["nonzero"] == int((sd["fc.weight"] != 0).sum())
    assert w["sparsity"] == pytest.approx(1 - w["nonzero"] / 600)
    assert rows["fc.bias"]["stored"] == "dense" and rows["fc.bias"]["nonzero"] == 20
    assert rows["steps"]["shape"] == [] and rows["steps"]["weights"] == 1
    totals = info["totals"]
    assert totals["tensors"] == 3 and totals["weights"] == 621
    assert totals["nonzero"] == w["nonzero"] + 21
    assert totals["file_bytes"] == os.path.getsize(path)


def test_plain_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "dense.safetensors"
    save_file(_state(), str(path))
    info = inspect_file(path)
    assert info["format"] == "safetensors"
    assert {r["stored"] for r in info["layers"]} == {"dense"}
    assert _rows(info)["fc.weight"]["dtype"] == "float32"


def _onnx_pair(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))
    with torch.no_grad():
        model[1].weight.mul_(torch.rand_like(model[1].weight) >= 0.95)
    dense, sparse = tmp_path / "model.onnx", tmp_path / "model.sparse.onnx"
    export_onnx(model, torch.randn(1, 1, 8, 8), dense)
    assert export_sparse_onnx(dense, sparse)
    return dense, sparse


def test_onnx_initializers_and_sparse_initializers(tmp_path: Path) -> None:
    dense, sparse = _onnx_pair(tmp_path)
    d, s = inspect_file(dense), inspect_file(sparse)
    assert d["format"] == s["format"] == "onnx"
    assert {r["stored"] for r in d["layers"]} == {"initializer"}
    assert _rows(s)["1.weight"]["stored"] == "sparse_initializer"
    assert _rows(s)["1.weight"]["shape"] == [32, 64]
    for key in ("tensors", "weights", "nonzero"):
        assert d["totals"][key] == s["totals"][key]
    assert s["totals"]["file_bytes"] < d["totals"]["file_bytes"]
    assert d["totals"]["sparsity"] > 0.5


def test_state_dict_pt_and_checkpoint(tmp_path: Path) -> None:
    sd = _state()
    torch.save(sd, tmp_path / "sd.pt")
    torch.save({"epoch": 3, "state_dict": sd, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pth")
    plain, ckpt = inspect_file(tmp_path / "sd.pt"), inspect_file(tmp_path / "ckpt.pth")
    assert plain["format"] == "pytorch" and set(_rows(plain)) == set(sd)
    assert plain["layers"] == ckpt["layers"]
    assert {r["stored"] for r in plain["layers"]} == {"dense"}


def test_pickled_module_is_refused_without_running_it(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(InputError, match="weights_only"):
        inspect_file(tmp_path / "module.pt")


@pytest.mark.parametrize("name", ["x.safetensors", "x.onnx", "x.pt", "x.weird"])
def test_corrupt_files_raise_one_line_input_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x08\x01garbage" * 10)
    with pytest.raises(InputError, match=name.replace(".", r"\.")) as info:
        inspect_file(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        inspect_file(tmp_path / "absent.safetensors")


def test_table_lists_rows_and_totals(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_sparse(_state(), path, ["fc.weight"])
    text = format_inspection(inspect_file(path))
    lines = text.splitlines()
    assert lines[0].startswith(str(path)) and "dwfc sparse safetensors" in lines[0]
    assert lines[1].split() == [
        "name",
        "shape",
        "dtype",
        "stored",
        "weights",
        "nonzero",
        "sparsity",
    ]
    assert any(line.startswith("fc.weight") and "20x30" in line for line in lines)
    assert any("scalar" in line for line in lines)
    assert lines[-1].startswith("total") and "3 tensors" in lines[-1] and "621" in lines[-1]
