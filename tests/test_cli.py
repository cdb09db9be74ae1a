"""Tests for the `dwfc` command line: exit codes, one-line errors, and what lands at --out."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import dwfc
from dwfc.cli import app
from dwfc.errors import InputError

ARCH = "dwfc.zoo:lenet_300_100"
TINY = ["train.epochs=1", "sparsity.finetune_epochs=0"]  # about the smallest run there is
OUTPUT_FILES = {
    "model.safetensors",
    "model.onnx",
    "report.json",
    "report.md",
    "recipe.yaml",
    "layer_sparsity.png",
    "training.png",
}

runner = CliRunner()


def invoke(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """Exit code 2, no traceback anywhere, and one `error: ...` line naming the problem."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""


# --------------------------------------------------------------------------- success


@dataclass
class CliRun:
    out: Path
    result: Result


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory, state_dict_path: Path) -> CliRun:
    """One tiny successful `dwfc compress`, into a long (but ordinary) output path."""
    out = tmp_path_factory.mktemp("cli") / "runs" / "lenet_300_100-depth3-target0.90" / "compressed"
    result = invoke(
        "compress", state_dict_path, "--arch", ARCH, "--depth", "3",
        "--target-sparsity", "0.9", "--data", "mnist5k", "--out", out, "--quiet", *TINY,
    )  # fmt: skip
    return CliRun(out=out, result=result)


def test_compress_succeeds_and_writes_the_outputs(cli_run: CliRun) -> None:
    result = cli_run.result
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert OUTPUT_FILES <= {p.name for p in cli_run.out.iterdir()}
    report = json.loads((cli_run.out / "report.json").read_text())
    assert report["sparsity"]["target"] == 0.9  # --target-sparsity reached the recipe
    assert report["recipe"]["train"]["epochs"] == 1  # so did the key=value overrides
    assert report["recipe"]["sparsity"]["finetune_epochs"] == 0
    assert "sparsity 90.00%" in result.stdout
    assert "outputs in" in result.stdout


def test_compress_prints_the_output_folder_verbatim(cli_run: CliRun) -> None:
    assert cli_run.result.exit_code == 0, cli_run.result.output
    # The path must survive intact (not folded across lines) so it can be copied or parsed.
    assert f"outputs in {cli_run.out}/" in cli_run.result.stdout


def test_trust_model_loads_a_pickled_module(tmp_path: Path, module_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "compress", module_path, "--trust-model", "--epochs", "1",
        "sparsity.finetune_epochs=0", "--out", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["parameters"] == 266_610
    assert report["recipe"]["model"]["trust_model"] is True


# --------------------------------------------------------------------------- bad inputs


@dataclass
class Files:
    """Inputs for the bad-input cases; `out` must stay absent."""

    state_dict: Path
    module: Path
    corrupt: Path
    regular_file: Path
    out: Path


@pytest.fixture
def files(tmp_path: Path, state_dict_path: Path, module_path: Path) -> Files:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(range(256)) * 16)
    regular_file = tmp_path / "a_file"
    regular_file.write_text("not a folder\n")
    return Files(state_dict_path, module_path, corrupt, regular_file, tmp_path / "out")


Case = Callable[[Files], list[object]]


def _sd(f: Files, *more: object) -> list[object]:
    """A valid state dict + --arch, so that only the flags in `more` are wrong."""
    return [f.state_dict, "--arch", ARCH, "--out", f.out, *more]


BAD_INPUTS: dict[str, tuple[Case, tuple[str, ...]]] = {
    "missing-model": (
        lambda f: [f.out.parent / "missing.pt", "--arch", ARCH, "--out", f.out],
        ("model file not found", "missing.pt"),
    ),
    "corrupt-model": (
        lambda f: [f.corrupt, "--arch", ARCH, "--out", f.out],
        ("cannot read", "corrupt.pt"),
    ),
    "module-without-trust": (
        lambda f: [f.module, "--out", f.out],
        ("--trust-model",),
    ),
    "state-dict-without-arch": (
        lambda f: [f.state_dict, "--out", f.out],
        ("state dict", "--arch"),
    ),
    "unknown-data": (lambda f: _sd(f, "--data", "nosuch"), ("data source", "nosuch")),
    "data-module-missing": (
        lambda f: _sd(f, "--data", "nosuch.module:fn"),
        ("--data", "nosuch.module"),
    ),
    "depth-1": (lambda f: _sd(f, "--depth", "1"), ("factorize.depth",)),
    "depth-0": (lambda f: _sd(f, "--depth", "0"), ("factorize.depth",)),
    "target-0": (lambda f: _sd(f, "--target-sparsity", "0"), ("sparsity.target",)),
    "target-1": (lambda f: _sd(f, "--target-sparsity", "1"), ("sparsity.target",)),
    "target-negative": (lambda f: _sd(f, "--target-sparsity", "-0.5"), ("sparsity.target",)),
    "target-1.5": (lambda f: _sd(f, "--target-sparsity", "1.5"), ("sparsity.target",)),
    "target-nan": (lambda f: _sd(f, "--target-sparsity", "nan"), ("sparsity.target",)),
    "unknown-key": (
        lambda f: _sd(f, "train.epoch=3"),
        ("train.epoch", "did you mean 'epochs'"),
    ),
    "wrong-type": (lambda f: _sd(f, "train.epochs=abc"), ("train.epochs", "abc")),
    "out-under-a-file": (
        lambda f: [f.state_dict, "--arch", ARCH, "--out", f.regular_file / "sub"],
        ("cannot write to --out",),
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(files: Files, case: str) -> None:
    build, fragments = BAD_INPUTS[case]
    before = sorted(os.listdir(files.out.parent))
    # Should a case get past its check by mistake, --epochs 1 keeps the run short; it is a flag,
    # so a case's own train.epochs=... override still wins.
    result = invoke("compress", *build(files), "--quiet", "--epochs", "1")
    assert_one_line_error(result, *fragments)
    assert not files.out.exists()
    assert sorted(os.listdir(files.out.parent)) == before  # no staging folder left either
    assert files.regular_file.read_text() == "not a folder\n"


def test_read_only_out_parent_exits_2_and_writes_nothing(files: Files) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod cannot make a folder read-only")
    parent = files.out.parent / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        out = parent / "out"
        result = invoke(
            "compress", files.state_dict, "--arch", ARCH, "--out", out, "--quiet", "--epochs", "1"
        )
        assert_one_line_error(result, "cannot write to --out")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_failed_compress_creates_no_parent_folders(files: Files) -> None:
    out = files.out.parent / "runs" / "experiment" / "out"
    result = invoke(
        "compress", files.out.parent / "missing.pt", "--arch", ARCH, "--out", out, "--quiet"
    )
    assert_one_line_error(result, "model file not found")
    assert not (files.out.parent / "runs").exists()


def test_nonempty_out_exits_2_without_overwrite(files: Files) -> None:
    files.out.mkdir()
    (files.out / "notes.txt").write_text("mine\n")
    result = invoke("compress", *_sd(files), "--quiet", "--epochs", "1")
    assert_one_line_error(result, "not empty", "--overwrite")
    assert [p.name for p in files.out.iterdir()] == ["notes.txt"]
    assert (files.out / "notes.txt").read_text() == "mine\n"


def test_library_messages_name_recipe_keys_and_the_cli_shows_flags(files: Files) -> None:
    """Only what the library marks as a key becomes a flag: an output folder that happens to be
    called out_dir stays as it is, and so do `key=value` examples."""
    out = files.out.parent / "out_dir"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(InputError) as info:
        dwfc.compress(files.state_dict, out, dwfc.load_recipe("default", [f"model.arch={ARCH}"]))
    assert str(info.value) == f"out_dir {out} is not empty: pass overwrite=True, or choose another"
    result = invoke("compress", files.state_dict, "--arch", ARCH, "--out", out, "--quiet")
    assert_one_line_error(result, f"--out {out} is not empty: pass --overwrite, or choose another")
    result = invoke("plan", files.state_dict, "--arch", ARCH, "epochs=3")
    assert_one_line_error(result, "e.g. train.epochs=10")


# --------------------------------------------------------------------------- other commands


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"dwfc {dwfc.__version__}"


def test_recipes_lists_the_builtin_recipes() -> None:
    result = invoke("recipes")
    assert result.exit_code == 0
    names = result.stdout.split()
    assert "default" in names
    assert "demo" in names


@pytest.mark.slow
def test_demo_prints_output_locations_and_hits_95_percent(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    compressed = out / "compressed"
    assert f"outputs in {compressed}/" in result.stdout
    assert str(out / "pretrained" / "lenet_300_100.pt") in result.stdout
    assert OUTPUT_FILES <= {p.name for p in compressed.iterdir()}
    report = json.loads((compressed / "report.json").read_text())
    assert report["sparsity"]["achieved"] == pytest.approx(0.95, abs=1e-12)
