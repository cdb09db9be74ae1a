"""Tests for dwfc.verify: a real tiny run verifies; each kind of tampering is caught and named."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

import dwfc
from dwfc.cli.text import format_verification
from dwfc.config import load_recipe
from dwfc.errors import InputError, VerificationError
from dwfc.export import load_sparse, read_metadata, save_sparse, tensor_digests
from dwfc.outputs import SPARSE_ONNX as SPARSE_ONNX_FILE
from dwfc.verify import raise_for_failures, verify_run

ARCH = "dwfc.zoo:lenet_300_100"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, state_dict_path: Path) -> Path:
    """One real `dwfc.compress` output folder: LeNet-300-100, 1 DWF epoch, no fine-tune."""
    out = tmp_path_factory.mktemp("verify") / "run"
    recipe = load_recipe(
        "default",
        [f"model.arch={ARCH}", "train.epochs=1", "sparsity.finetune_epochs=0",
         "sparsity.target=0.9", "train.device=cpu"],
    )  # fmt: skip
    dwfc.compress(state_dict_path, out, recipe)
    return out


@pytest.fixture
def run_dir(finished_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run, free to tamper with."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _edit_report(run: Path, edit: Any) -> None:
    report = json.loads((run / "report.json").read_text())
    edit(report)
    (run / "report.json").write_text(json.dumps(report))


def _status(result: dict[str, Any]) -> dict[str, str]:
    return {c["check"]: c["status"] for c in result["checks"]}


def _detail(result: dict[str, Any], check: str) -> str:
    return next(c["detail"] for c in result["checks"] if c["check"] == check)


def test_clean_run_verifies(run_dir: Path) -> None:
    result = verify_run(run_dir)
    assert result["ok"], format_verification(result)
    assert _status(result) == {
        "report": "passed", "files": "passed", "safetensors": "passed", "hashes": "passed",
        "sparsity": "passed", "model": "passed", "onnx": "passed", "sparse_onnx": "passed",
        "int8": "skipped", "accuracy": "skipped", "structure": "skipped",
    }  # fmt: skip
    raise_for_failures(result)
    text = format_verification(result)
    assert text.splitlines()[-1].endswith("verified") and "sparse_onnx" in text


def test_accuracy_is_remeasured_with_data(run_dir: Path) -> None:
    result = verify_run(run_dir, data_source="mnist5k")
    assert result["ok"], format_verification(result)
    assert "compressed_pytorch" in _detail(result, "accuracy")
    _edit_report(run_dir, lambda r: r["accuracy"].update(compressed_pytorch=0.5))
    result = verify_run(run_dir, data_source="mnist5k")
    assert result["failures"] == ["accuracy"]
    assert "compressed_pytorch" in _detail(result, "accuracy")


def _flip_byte_in(path: Path, tensor: str) -> None:
    """Flip one mantissa bit of the middle value of `tensor`, in place (size unchanged)."""
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8 : 8 + header_len])[tensor]["data_offsets"]
    middle = 8 + header_len + start + ((end - start) // 8) * 4
    data[middle + 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_value_byte_is_a_hash_mismatch(run_dir: Path) -> None:
    _flip_byte_in(run_dir / "model.safetensors", "layers.3.weight.compressed")
    result = verify_run(run_dir)
    assert result["failures"][0] == "hashes"
    assert "layers.3.weight" in _detail(result, "hashes")
    with pytest.raises(VerificationError, match="hashes check failed") as info:
        raise_for_failures(result)
    assert info.value.exit_code == 6 and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda r: r["sparsity"].update(achieved=0.95), "achieved"),
        (lambda r: r["layers"][1].update(nonzero=r["layers"][1]["nonzero"] + 1), "nonzero"),
        (lambda r: r["layers"][0].update(shape=[784, 300]), "shape"),
    ],
    ids=["overall", "layer-nonzero", "layer-shape"],
)
def test_edited_sparsity_is_named(run_dir: Path, edit: Any, named: str) -> None:
    _edit_report(run_dir, edit)
    result = verify_run(run_dir)
    assert result["failures"] == ["sparsity"]
    assert named in _detail(result, "sparsity")


def test_corrupted_onnx_is_named(run_dir: Path) -> None:
    path = run_dir / "model.onnx"
    data = bytearray(path.read_bytes())
    data[: len(data) // 2] = b"\xff" * (len(data) // 2)  # same size: only the ONNX check sees it
    path.write_bytes(bytes(data))
    result = verify_run(run_dir)
    assert result["failures"][0] == "onnx"
    assert "model.onnx" in _detail(result, "onnx")
    assert _status(result)["hashes"] == "passed"


@pytest.mark.parametrize("name", ["model.onnx", SPARSE_ONNX_FILE, "recipe.yaml"])
def test_missing_file_is_named(run_dir: Path, name: str) -> None:
    (run_dir / name).unlink()
    result = verify_run(run_dir)
    assert result["failures"][0] == "files"
    assert name in _detail(result, "files")


def test_missing_report_and_safetensors_are_named(run_dir: Path) -> None:
    (run_dir / "report.json").unlink()
    (run_dir / "model.safetensors").unlink()
    result = verify_run(run_dir)
    assert result["failures"][:2] == ["report", "files"]
    assert "report.json is missing" in _detail(result, "report")
    assert "model.safetensors" in _detail(result, "files")
    assert _status(result)["hashes"] == "skipped"


def test_size_differing_from_report_is_named(run_dir: Path) -> None:
    _edit_report(run_dir, lambda r: r["files"].update({"model.safetensors": 1}))
    result = verify_run(run_dir)
    assert result["failures"] == ["files"]
    assert "model.safetensors is" in _detail(result, "files")


def test_report_without_hashes_fails_the_hash_check(run_dir: Path) -> None:
    _edit_report(run_dir, lambda r: r.pop("hashes"))
    result = verify_run(run_dir)
    assert result["failures"] == ["hashes"]
    assert "no tensor hashes" in _detail(result, "hashes")


def test_metadata_hashes_must_agree_with_report(run_dir: Path) -> None:
    path = run_dir / "model.safetensors"
    meta, state = read_metadata(path), load_sparse(path)
    sparse = json.loads(meta["dwfc.sparse_keys"])
    digests = tensor_digests(state)
    for wrong in (False, True):
        stored = dict(digests, **({sparse[0]: "sha256:00"} if wrong else {}))
        save_sparse(state, path, sparse, {**meta, "dwfc.hashes": json.dumps(stored)})
        _edit_report(
            run_dir, lambda r: r["files"].update({"model.safetensors": path.stat().st_size})
        )
        result = verify_run(run_dir)
        assert result["failures"] == (["hashes"] if wrong else []), format_verification(result)
    assert "dwfc.hashes metadata" in _detail(result, "hashes")


def test_whole_module_run_skips_the_rebuild(run_dir: Path) -> None:
    recipe = (run_dir / "recipe.yaml").read_text().replace(f"arch: {ARCH}", "arch: null")
    (run_dir / "recipe.yaml").write_text(recipe)
    result = verify_run(run_dir)
    assert result["ok"], format_verification(result)
    assert _status(result)["model"] == "skipped"
    assert "pickled module" in _detail(result, "model")
    assert "no model to compare" in _detail(result, "onnx")


def test_not_a_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such output folder"):
        verify_run(tmp_path / "absent")
    with pytest.raises(InputError, match="batch size"):
        verify_run(tmp_path, batch_size=0)


def test_a_malformed_report_section_fails_only_the_report_check(run_dir: Path) -> None:
    _edit_report(run_dir, lambda r: r["timing"].update(total_s="n/a"))
    result = verify_run(run_dir)
    assert result["failures"] == ["report"]
    assert "timing.total_s" in _detail(result, "report")
    assert _status(result)["hashes"] == _status(result)["sparsity"] == "passed"


def test_numbers_written_as_strings_are_not_taken_for_numbers(run_dir: Path) -> None:
    _edit_report(run_dir, lambda r: r["layers"][0].update(nonzero=str(r["layers"][0]["nonzero"])))
    result = verify_run(run_dir)
    assert "report" in result["failures"]
    assert "layers.0.nonzero" in _detail(result, "report")


def test_onnx_metadata_differing_from_the_report_is_named(run_dir: Path) -> None:
    _edit_report(run_dir, lambda r: r["onnx"]["metadata"].update({"dwfc.num_classes": "7"}))
    result = verify_run(run_dir)
    assert result["failures"] == ["onnx"]
    assert "metadata_props" in _detail(result, "onnx")
