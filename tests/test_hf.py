"""Hugging Face model directories: loaded from local files only, compressed end to end, and
written back as a save_pretrained folder that transformers loads with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_cli import assert_one_line_error, invoke

transformers = pytest.importorskip("transformers")


def _vit_config(**extra: object) -> object:
    return transformers.ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, num_labels=10, **extra)  # fmt: skip


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT image classifier and its image processor, as save_pretrained writes them."""
    folder = tmp_path_factory.mktemp("hf") / "vit"
    torch.manual_seed(0)
    transformers.ViTForImageClassification(_vit_config()).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.13],
                                   image_std=[0.31]).save_pretrained(folder)  # fmt: skip
    return folder


def test_compress_a_hf_directory_and_transformers_loads_it(vit_dir: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "out"
    result = invoke("compress", vit_dir, "--data", "mnist5k", "--depth", "3",
                    "--target-sparsity", "0.9", "--epochs", "1", "--out", out, "--quiet",
                    "sparsity.finetune_epochs=0", "export.latency=false")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    sparsity = report["sparsity"]
    n = sparsity["factorized_weights"]
    assert sparsity["nonzero_weights"] == n - round(0.9 * n)  # exact
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert (recipe["data"]["image_size"], recipe["data"]["mean"]) == (28, [0.13])  # processor's
    layers = [row["name"] for row in report["layers"]]
    assert layers and all(".layers." in name for name in layers)  # the encoder blocks only
    assert not any("embeddings" in name or "classifier" in name for name in layers)

    reloaded = transformers.AutoModelForImageClassification.from_pretrained(
        out / "hf_model", local_files_only=True).eval()
    zeros = sum(int((reloaded.get_parameter(name.removeprefix("hf.")) == 0).sum())
                for name in layers)  # fmt: skip
    assert zeros == round(0.9 * n)  # the zeros are in what transformers loads
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(pixel_values=x).logits.numpy(), onnx_logits,
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
    verified = invoke("verify", out)
    assert verified.exit_code == 0, verified.output
    assert "hf_model/ (transformers) rebuilt, weights loaded strictly" in verified.output


def test_dry_run_lists_the_encoder_weights(vit_dir: Path) -> None:
    result = invoke("compress", vit_dir, "--data", "mnist5k", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    names = [w["name"] for w in json.loads(result.stdout)["weights"]]
    assert names and all(".layers." in n for n in names)


def _saved(folder: Path, model: object) -> Path:
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda d: d, "is a directory without config.json"),
    (lambda d: _saved(d, transformers.ViTModel(_vit_config())), "has no supported head"),
    (lambda d: (_vit_config(architectures=["ViTForImageClassification"]).save_pretrained(d), d)[1],
     "no weights file"),
])  # fmt: skip
def test_bad_hf_directories_get_one_line(tmp_path: Path, make: object, fragment: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    result = invoke("compress", make(folder), "--data", "mnist5k", "--out", tmp_path / "o",
                    "--quiet")  # fmt: skip
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "o").exists()
