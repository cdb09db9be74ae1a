"""The rest of the bad-input matrix (tests/test_cli.py has the first part): each case exits
with its exact code, one line naming the problem, no traceback, and nothing half-written."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from test_cli import ARCH, assert_one_line_error
from typer.testing import CliRunner

import dwfc
import dwfc.export.stage
import dwfc.pipeline
from dwfc.cli import app

TINY = ["train.epochs=1", "sparsity.finetune_epochs=1", "train.checkpoint=false"]


def run(*args: object):
    quiet = ["--quiet"] if args[0] == "compress" else []  # only the error line on stderr
    return CliRunner().invoke(app, [str(a) for a in args] + quiet)


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name or p.suffix == ".tmp"]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def test_empty_model_file(tmp_path, out):
    model = tmp_path / "empty.pt"
    model.write_bytes(b"")
    assert_one_line_error(run("compress", model, "--arch", ARCH, "--out", out), "empty")
    _nothing_written(out)


def test_truncated_model_file(tmp_path, out, state_dict_path):
    model = tmp_path / "truncated.pt"
    model.write_bytes(state_dict_path.read_bytes()[:5000])
    assert_one_line_error(run("compress", model, "--arch", ARCH, "--out", out), "truncated.pt")
    _nothing_written(out)


def test_a_file_that_is_not_pytorch(tmp_path, out):
    model = tmp_path / "notes.pt"
    model.write_text("these are my notes, not a model\n")
    assert_one_line_error(run("compress", model, "--arch", ARCH, "--out", out), "notes.pt")
    _nothing_written(out)


def test_wrong_arch_names_the_mismatched_keys(out, state_dict_path):
    result = run("compress", state_dict_path, "--arch", "dwfc.zoo:lenet5", "--out", out)
    assert_one_line_error(result, "layers.1.weight")
    _nothing_written(out)


def test_arch_that_does_not_import(out, state_dict_path):
    result = run("compress", state_dict_path, "--arch", "nosuch.module:net", "--out", out)
    assert_one_line_error(result, "nosuch.module")
    _nothing_written(out)


def test_data_of_the_wrong_shape(out, state_dict_path):
    result = run("compress", state_dict_path, "--arch", ARCH, "--data", "data_factories:rgb32",
                 "--out", out)  # fmt: skip
    assert_one_line_error(result, "cannot take the data's input of shape (3, 32, 32)")
    _nothing_written(out)


def test_data_with_more_classes_than_outputs(out, state_dict_path):
    result = run("compress", state_dict_path, "--arch", ARCH, "--data",
                 "data_factories:twenty_classes", "--out", out)  # fmt: skip
    assert_one_line_error(result, "20 classes")
    _nothing_written(out)


def test_empty_data_set(out, state_dict_path):
    result = run("compress", state_dict_path, "--arch", ARCH, "--data", "data_factories:empty",
                 "--out", out)  # fmt: skip
    assert_one_line_error(result, "empty")
    _nothing_written(out)


def test_recipe_section_of_the_wrong_type(tmp_path, out, state_dict_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train: [1, 2]\n")
    result = run("compress", state_dict_path, "--arch", ARCH, "--recipe", recipe, "--out", out)
    assert_one_line_error(result, "train")
    _nothing_written(out)


def test_unknown_recipe_key_in_a_file_suggests_the_right_one(tmp_path, out, state_dict_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("sparsity:\n  traget: 0.9\n")
    result = run("compress", state_dict_path, "--arch", ARCH, "--recipe", recipe, "--out", out)
    assert_one_line_error(result, "did you mean 'target'")


def test_disk_full_while_writing_outputs(monkeypatch, out, state_dict_path):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dwfc.pipeline, "write_report", full)
    result = run("compress", state_dict_path, "--arch", ARCH, "--out", out, *TINY)
    assert_one_line_error(result, "No space left on device", str(out))
    _nothing_written(out)


def test_ctrl_c_during_export_leaves_nothing(monkeypatch, out, state_dict_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dwfc.export.stage, "export_onnx", interrupted)
    result = run("compress", state_dict_path, "--arch", ARCH, "--out", out, *TINY)
    assert result.exit_code == 130
    assert "Traceback" not in result.output
    assert "interrupted" in result.stderr
    _nothing_written(out)


def test_verify_a_folder_that_does_not_exist(tmp_path):
    assert_one_line_error(run("verify", tmp_path / "nothing"), "nothing")


def test_inspect_a_safetensors_file_with_a_corrupt_header(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes((200).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [')
    assert_one_line_error(run("inspect", bad), "model.safetensors")


def test_inspect_an_onnx_file_that_is_not_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00\x01 definitely not a protobuf" * 10)
    assert_one_line_error(run("inspect", bad), "model.onnx")


def test_inspect_a_missing_file(tmp_path):
    assert_one_line_error(run("inspect", tmp_path / "missing.pt"), "missing.pt")


def test_divergence_restarts_then_exits_4_keeping_the_checkpoint(out, state_dict_path):
    result = run("compress", state_dict_path, "--arch", ARCH, "--out", out, "--lr", "1e12",
                 "train.epochs=2", "train.max_retries=2")  # fmt: skip
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    assert "diverged" in result.stderr and "2 restarts" in result.stderr
    assert not (out / "model.safetensors").exists()


def test_quality_gate_failure_exits_3_after_writing_the_report(out, state_dict_path):
    result = run("compress", state_dict_path, "--arch", ARCH, "--out", out, "--min-sparsity",
                 "0.99", *TINY)  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "min_sparsity" in result.stderr
    report = (out / "report.json").read_text()
    assert '"passed": false' in report


def test_json_error_document_on_stdout(out, tmp_path):
    result = run("compress", tmp_path / "missing.pt", "--out", out, "--json")
    assert result.exit_code == 2
    import json

    document = json.loads(result.stdout)
    assert document["ok"] is False and document["exit_code"] == 2
    assert "missing.pt" in document["error"]


def test_state_dict_loads_the_same_weights_it_saved(state_dict_path):
    assert isinstance(torch.load(state_dict_path, weights_only=True), dict)


def test_top5_is_reported_for_more_than_ten_classes(tmp_path):
    from dwfc.zoo import lenet_300_100

    model = tmp_path / "twenty.pt"
    torch.save(lenet_300_100(num_classes=20).state_dict(), model)
    report = dwfc.pipeline.compress(
        model, tmp_path / "out",
        dwfc.load_recipe("default", [f"model.arch={ARCH}", "model.arch_kwargs.num_classes=20",
                                     "data.source=data_factories:twenty_classes", *TINY]),
    ).to_dict()  # fmt: skip
    acc = report["accuracy"]
    assert acc["compressed_pytorch_top5"] >= acc["compressed_pytorch"]
    assert acc["original_top5"] >= acc["original"]
