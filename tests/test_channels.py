"""`dwfc compress --structure channel`: structured DWF and its baselines through the whole
pipeline, the CLI, bad input, verify, inspect and resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import dwfc
from dwfc.config import load_recipe
from dwfc.engine.checkpoint import load_checkpoint
from dwfc.inspect import inspect_file
from dwfc.methods import CHANNEL_METHODS
from dwfc.outputs import CHECKPOINT, ONNX, SAFETENSORS
from dwfc.structure.blocks import channel_block
from dwfc.verify import verify_run
from dwfc.zoo import lenet5, resnet_mini

LENET5, RESNET = "dwfc.zoo:lenet5", "dwfc.zoo:resnet_mini"
TINY = ("train.epochs=2", "sparsity.finetune_epochs=1", "train.log_every=5",
        "structure.kind=channel", "structure.round_to=8", "export.latency_rounds=1")  # fmt: skip


def _pretrained(folder: Path, build, name: str, mnist) -> Path:
    torch.manual_seed(0)
    model = build()
    train, _ = mnist
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in DataLoader(train, batch_size=128, shuffle=True,
                           generator=torch.Generator().manual_seed(0)):  # fmt: skip
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    path = folder / f"{name}.pt"
    torch.save(model.eval().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def lenet5_path(tmp_path_factory, mnist_splits) -> Path:
    return _pretrained(tmp_path_factory.mktemp("lenet5"), lenet5, "lenet5", mnist_splits)


@pytest.fixture(scope="module")
def resnet_path(tmp_path_factory, mnist_splits) -> Path:
    return _pretrained(tmp_path_factory.mktemp("resnet"), resnet_mini, "resnet_mini", mnist_splits)


def _recipe(arch: str, *overrides: str):
    return load_recipe("default", [f"model.arch={arch}", *TINY, *overrides])


@pytest.fixture(scope="module")
def lenet5_run(lenet5_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    report = dwfc.compress(lenet5_path, out, _recipe(LENET5, "structure.target_speedup=3",
                                                     "structure.round_to=2"))  # fmt: skip
    return out, report


def test_a_channel_run_reaches_the_speedup_on_the_smaller_model(lenet5_run):
    out, report = lenet5_run
    st = report.structure
    assert st is not None and report.sparsity is None
    assert st.speedup >= 3.0 and st.speedup == pytest.approx(st.dense_macs / st.macs)
    assert st.parameters < st.dense_parameters
    kept = {row.name: row for row in st.layers}
    assert kept["classifier.5"].kept_out == 10  # the classifier keeps its outputs
    assert all(row.kept_out % 2 == 0 or row.kept_out == row.out_channels for row in st.layers)
    assert report.method.structure == "channel" and report.method.name == "dwf"
    assert report.latency is not None
    assert {r.model for r in report.latency.rows} == {"original", "compressed"}
    assert {(r.batch, r.threads) for r in report.latency.rows} == {
        (1, 1),
        (1, 0),
        (64, 1),
        (64, 0),
    }


def test_the_smaller_onnx_model_matches_pytorch_and_load_pruned(lenet5_run, mnist_splits):
    out, report = lenet5_run
    model = dwfc.load_pruned(out / SAFETENSORS)  # the public API
    _, test = mnist_splits
    x = test.tensors[0][:64]
    session = ort.InferenceSession(str(out / ONNX), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() <= report.onnx.tolerance
    assert report.onnx.full_check == "passed"
    first = session.get_inputs()[0]
    assert first.shape[0] in ("batch", None) or isinstance(first.shape[0], str)
    conv = model.features[0]
    assert conv.out_channels == next(r.kept_out for r in report.structure.layers
                                     if r.name == "features.0")  # fmt: skip


def test_verify_and_inspect_understand_a_channel_run(lenet5_run):
    out, _ = lenet5_run
    result = verify_run(out, data_source="mnist5k")
    assert result["ok"], result["failures"]
    status = {c["check"]: c["status"] for c in result["checks"]}
    assert status["structure"] == "passed" and status["sparsity"] == "skipped"
    assert status["accuracy"] == "passed"
    info = inspect_file(out / SAFETENSORS)
    assert info["pruned"]["channels_removed"] == report_removed(out)


def report_removed(out: Path) -> int:
    return json.loads((out / "report.json").read_text())["structure"]["channels_removed"]


def test_verify_finds_a_tampered_structure(lenet5_run, tmp_path):
    out, _ = lenet5_run
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    report = json.loads((copy / "report.json").read_text())
    report["structure"]["macs"] += 1
    (copy / "report.json").write_text(json.dumps(report))
    result = verify_run(copy)
    assert "structure" in result["failures"]


@pytest.mark.parametrize("method", list(CHANNEL_METHODS))
def test_every_channel_method_reaches_the_speedup_on_a_residual_batchnorm_net(
    method, resnet_path, tmp_path
):
    overrides = [f"sparsity.method={method}", "structure.target_speedup=2", "export.onnx=false",
                 "train.epochs=1"]  # fmt: skip
    report = dwfc.compress(resnet_path, tmp_path / "out", _recipe(RESNET, *overrides))
    assert report.structure.speedup >= 2.0
    assert report.method.name == method and report.method.structure == "channel"
    assert report.accuracy.compressed_pytorch > 0.5  # trained, not broken


def test_d_gating_at_depth_two_and_four_runs(resnet_path, tmp_path):
    for depth in (2, 4):
        report = dwfc.compress(resnet_path, tmp_path / f"d{depth}", _recipe(
            RESNET, f"factorize.depth={depth}", "structure.target_speedup=2",
            "export.onnx=false", "train.epochs=1"))  # fmt: skip
        assert report.method.depth == depth and report.structure.speedup >= 2.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dwfc", *args], capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_cli_refuses_a_speedup_no_removal_reaches_before_training(lenet5_path, tmp_path):
    out = tmp_path / "out"
    done = _cli("compress", str(lenet5_path), "--arch", LENET5, "--structure", "channel",
                "--target-speedup", "4", "--round-to", "8", "--out", str(out))  # at most 1.70x
    assert done.returncode == 2
    assert "--target-speedup=4 is more than" in done.stderr and "at most 1.70x" in done.stderr
    assert "--round-to=8" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_cli_dry_run_lists_the_groups(lenet5_path):
    done = _cli("compress", str(lenet5_path), "--arch", LENET5, "--structure", "channel",
                "--round-to", "2", "--target-speedup", "3", "--dry-run", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    names = {g["name"]: g for g in plan["groups"]}
    assert not names["classifier.5"]["removable"]
    assert names["features.0"]["removable"] and plan["max_speedup"] > 3


def test_a_dry_run_without_round_to_rounds_to_the_block_of_this_machine(resnet_path):
    done = _cli("compress", str(resnet_path), "--arch", RESNET, "--structure", "channel",
                "--target-speedup", "1.2", "--dry-run", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["round_to"] == channel_block()


def test_cli_refuses_weight_sparsity_with_channels(lenet5_path, tmp_path):
    done = _cli("compress", str(lenet5_path), "--arch", LENET5, "--structure", "channel",
                "--target-sparsity", "0.9", "--out", str(tmp_path / "o"))  # fmt: skip
    assert done.returncode == 2
    assert "does not combine" in done.stderr and "--target-sparsity" in done.stderr


def test_cli_refuses_an_unstructured_method_for_channels(lenet5_path, tmp_path):
    done = _cli("compress", str(lenet5_path), "--arch", LENET5, "--structure", "channel",
                "sparsity.method=gmp", "--out", str(tmp_path / "o"))  # fmt: skip
    assert done.returncode == 2
    assert "not a method of" in done.stderr and "group_gmp" in done.stderr


def test_slimming_refuses_a_model_without_batchnorm(lenet5_path, tmp_path):
    with pytest.raises(dwfc.InputError, match="no removable channel group has a BatchNorm"):
        dwfc.compress(lenet5_path, tmp_path / "o", _recipe(
            LENET5, "sparsity.method=slimming", "structure.round_to=2"))  # fmt: skip
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_channel_run_killed_after_its_first_checkpoint_resumes_to_the_same_weights(
    resnet_path, tmp_path, wait_for
):
    args = ["--arch", RESNET, "--structure", "channel", "--target-speedup", "2", "--epochs", "3",
            "--quiet", "sparsity.finetune_epochs=1", "train.log_every=5", "export.onnx=false",
            "structure.round_to=8"]

    def run(out: Path, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "dwfc", "compress", str(resnet_path),
                                 "--out", str(out), *args, *extra], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    full = tmp_path / "full"
    proc = run(full)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    killed = tmp_path / "killed"
    proc = run(killed)
    wait_for(killed / CHECKPOINT, proc, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert load_checkpoint(killed / CHECKPOINT)["epoch"] >= 1
    resumed = run(killed, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    first, again = dwfc.load_sparse(full / SAFETENSORS), dwfc.load_sparse(killed / SAFETENSORS)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    report = json.loads((killed / "report.json").read_text())
    assert report["resumed"] is True
    assert report["structure"] == json.loads((full / "report.json").read_text())["structure"]



def test_the_steps_after_a_cut_mid_epoch_use_the_fresh_optimizer(
    lenet5_path, tmp_path, monkeypatch
):
    """D-Gating cuts at the end of the ramp, mid-epoch here (3 epochs, ramp 1.5), moves the gates
    into omega and starts a fresh optimizer with plain rates: the loop must step that one (the
    old one's per-factor rates and momentum blew the plain weights up: 10% accuracy)."""
    from dwfc.engine.trainer import Trainer

    stepped, fresh = [], []
    real_step, real_reset = torch.optim.SGD.step, Trainer.reset_optimizer

    def step(self, *args, **kwargs):
        stepped.append(id(self))
        return real_step(self, *args, **kwargs)

    def reset(self):
        real_reset(self)
        fresh.append((len(stepped), id(self.opt)))

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    monkeypatch.setattr(Trainer, "reset_optimizer", reset)
    dwfc.compress(lenet5_path, tmp_path / "out", _recipe(
        LENET5, "train.epochs=3", "structure.target_speedup=2", "structure.round_to=1",
        "export.onnx=false"))  # fmt: skip
    at, new = fresh[0]
    assert 0 < at < len(stepped) and at % 32  # the cut came mid-epoch (32 steps an epoch)
    assert set(stepped[at: at + 10]) == {new}
