"""timm models: `--arch timm:NAME` built with pretrained=False, the file's weights loaded, the
model's data config as the data defaults, and the outputs timm loads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_cli import assert_one_line_error, invoke

import dwfc
from dwfc.models import build_model, load_model_with_notes
from dwfc.models.defaults import with_model_defaults

timm = pytest.importorskip("timm")

NAME = "test_resnet"  # one of timm's own test models: 0.37M parameters
KWARGS = {"num_classes": 10, "in_chans": 1}


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict as timm users save it (safetensors), of a model built here from scratch."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, **KWARGS)
    path = tmp_path_factory.mktemp("timm") / "resnet.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def test_a_timm_arch_is_built_without_downloads_and_gets_the_file(timm_file: Path) -> None:
    model, notes = load_model_with_notes(timm_file, f"timm:{NAME}", KWARGS)
    saved = timm.create_model(NAME, pretrained=False, **KWARGS)
    saved.load_state_dict(load_file(str(timm_file)))
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model.eval()(x), saved.eval()(x))
    assert any("pretrained=False" in n for n in notes)


def test_the_timm_data_config_fills_only_unset_data_keys() -> None:
    rgb = build_model(f"timm:{NAME}", {"num_classes": 10})
    recipe = dwfc.load_recipe("default", [f"model.arch=timm:{NAME}"])
    filled, notes = with_model_defaults(recipe, rgb)
    assert (filled.data.image_size, filled.data.mean, filled.data.std) == (160, [0.5] * 3,
                                                                           [0.5] * 3)  # fmt: skip
    assert "data.image_size=160" in notes[0]
    explicit = dwfc.load_recipe("default", [f"model.arch=timm:{NAME}", "data.image_size=32"])
    assert with_model_defaults(explicit, rgb)[0].data.image_size == 32
    grey = build_model(f"timm:{NAME}", KWARGS)  # 1 channel: the 3-channel mean does not fit
    filled, notes = with_model_defaults(recipe, grey)
    assert filled.data.mean is None and "are for 3 channels" in notes[0]
    other = dwfc.load_recipe("default", ["model.arch=dwfc.zoo:lenet5"])
    assert with_model_defaults(other, rgb) == (other, [])


@pytest.mark.parametrize(("name", "extra"), [(NAME, {}), ("test_vit", {"img_size": 32})])
def test_compress_a_timm_model_and_timm_loads_the_result(
    tmp_path: Path, name: str, extra: dict[str, int]
) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    kwargs = {**KWARGS, **extra}
    save_file(timm.create_model(name, pretrained=False, **kwargs).state_dict(),
              str(tmp_path / "model.safetensors"))  # fmt: skip
    out = tmp_path / "out"
    flags = [f for key, value in kwargs.items() for f in ("--arch-kwarg", f"{key}={value}")]
    result = invoke("compress", tmp_path / "model.safetensors", "--arch", f"timm:{name}", *flags,
                    "--data", "mnist5k", "--image-size", "32", "--depth", "3",
                    "--target-sparsity", "0.9", "--epochs", "1", "--out", out, "--quiet",
                    "sparsity.finetune_epochs=0", "export.latency=false")  # fmt: skip
    assert result.exit_code == 0, result.output
    sparsity = json.loads((out / "report.json").read_text())["sparsity"]
    n = sparsity["factorized_weights"]
    assert sparsity["nonzero_weights"] == n - round(0.9 * n)  # exact
    reloaded = timm.create_model(name, pretrained=False, **kwargs).eval()
    reloaded.load_state_dict(dwfc.load_sparse(out / "model.safetensors"))
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(x).numpy(), onnx_out, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("kwarg", "fragment"), [
    (None, "timm has no model 'test_resnt'; did you mean test_resnet"),
    ("pretrained=true", "pretrained=True would load weights from elsewhere"),
])  # fmt: skip
def test_bad_timm_archs_get_one_line(timm_file: Path, tmp_path: Path, kwarg: str | None,
                                     fragment: str) -> None:  # fmt: skip
    arch = "timm:test_resnt" if kwarg is None else f"timm:{NAME}"
    extra = ["--arch-kwarg", kwarg] if kwarg else []
    result = invoke("compress", timm_file, "--arch", arch, *extra, "--out", tmp_path / "o",
                    "--quiet")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "o").exists()
