"""Checkpoints: a run killed (SIGKILL) or stopped (SIGINT) and resumed ends where an
uninterrupted run with the same seed ends, bit for bit on CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dwfc
from dwfc.engine.checkpoint import load_checkpoint
from dwfc.outputs import CHECKPOINT as CHECKPOINT_NAME

ARGS = ["--arch", "dwfc.zoo:lenet_300_100", "--epochs", "3", "--quiet",
        "sparsity.finetune_epochs=1", "train.log_every=5", "export.onnx=false"]  # fmt: skip


def _compress(model: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dwfc", "compress", str(model), "--out", str(out), *ARGS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(state_dict_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "out"
    proc = _compress(state_dict_path, out)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return out


@pytest.fixture(scope="module")
def killed(
    state_dict_path: Path, tmp_path_factory: pytest.TempPathFactory, wait_for
) -> Path:
    """The --out of a run killed with SIGKILL after its first checkpoint (copy before use)."""
    out = tmp_path_factory.mktemp("killed") / "out"
    proc = _compress(state_dict_path, out)
    wait_for(out / CHECKPOINT_NAME, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "out"))


def _same_weights(a: Path, b: Path) -> None:
    first = dwfc.load_sparse(a / "model.safetensors")
    second = dwfc.load_sparse(b / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_sigkill_then_resume_matches_an_uninterrupted_run(
    state_dict_path, uninterrupted, killed, tmp_path
):
    out = _copy(killed, tmp_path)
    assert not (out / "model.safetensors").exists()
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] >= 1

    resumed = _compress(state_dict_path, out, "--resume")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    _same_weights(uninterrupted, out)
    full = json.loads((uninterrupted / "report.json").read_text())
    again = json.loads((out / "report.json").read_text())
    assert again["accuracy"] == full["accuracy"]
    assert again["resumed"] is True
    assert not (out / CHECKPOINT_NAME).exists()  # a finished run leaves nothing to resume


def test_sigint_saves_a_checkpoint_mid_epoch_and_resume_finishes_the_run(
    state_dict_path, uninterrupted, tmp_path, wait_for
):
    out = tmp_path / "out"
    proc = _compress(state_dict_path, out)
    wait_for(out / CHECKPOINT_NAME, proc)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not (out / "model.safetensors").exists()

    resumed = _compress(state_dict_path, out, "--resume")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    _same_weights(uninterrupted, out)


def test_resume_without_a_checkpoint_is_bad_input(state_dict_path, tmp_path):
    proc = _compress(state_dict_path, tmp_path / "nothing", "--resume")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "no checkpoint" in stderr


def test_resume_with_different_settings_is_refused(state_dict_path, killed, tmp_path):
    out = _copy(killed, tmp_path)
    resumed = _compress(state_dict_path, out, "--resume", "sparsity.target=0.9")
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 2
    assert "sparsity.target" in stderr


def test_a_leftover_checkpoint_needs_resume_or_overwrite(state_dict_path, killed, tmp_path):
    out = _copy(killed, tmp_path)
    again = _compress(state_dict_path, out)
    _, stderr = again.communicate(timeout=120)
    assert again.returncode == 2
    assert "--resume" in stderr and "--overwrite" in stderr


@pytest.mark.parametrize("method", ["gmp", "l1"])
def test_a_baseline_killed_after_its_first_checkpoint_resumes_to_the_same_weights(
    method, state_dict_path, tmp_path, wait_for
):
    """Baselines run in the same engine as DWF: they checkpoint and resume bit for bit too."""
    extra = [f"sparsity.method={method}"]
    full = tmp_path / "full"
    proc = _compress(state_dict_path, full, *extra)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr

    out = tmp_path / "killed"
    proc = _compress(state_dict_path, out, *extra)
    wait_for(out / CHECKPOINT_NAME, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "model.safetensors").exists()
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] >= 1

    resumed = _compress(state_dict_path, out, *extra, "--resume")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    _same_weights(full, out)
    first = json.loads((full / "report.json").read_text())
    again = json.loads((out / "report.json").read_text())
    assert again["accuracy"] == first["accuracy"] and again["resumed"] is True
    assert again["method"]["name"] == method
