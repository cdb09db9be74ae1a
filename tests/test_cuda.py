"""CUDA paths: bf16 autocast with fp32 factors, channels_last, a full compress on the GPU.
Skipped where no CUDA device is present (CI has none)."""

import pytest
import torch
from torch import nn

import dwfc
from dwfc.engine.device import Precision, resolve_device

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


def test_precision_on_cuda_is_bf16_and_channels_last_for_conv_nets(cuda):
    conv = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert Precision.for_device(cuda, conv) == Precision(autocast=True, channels_last=True)
    assert Precision.for_device(cuda, nn.Linear(2, 2)).channels_last is False
    assert Precision.for_device(torch.device("cpu"), conv) == Precision(False, False)


def test_factors_and_their_gradients_stay_fp32_under_autocast(cuda):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 30 * 30, 10)).to(cuda)
    dwfc.factorize_(model, depth=3)
    precision = Precision.for_device(cuda, model)
    x = precision.batch(torch.randn(4, 3, 32, 32), cuda)
    with precision.context(cuda):
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    for fw in dwfc.factorized_weights(model):
        assert all(f.dtype == torch.float32 and f.grad.dtype == torch.float32 for f in fw.factors)


def test_auto_picks_cuda(cuda):
    assert resolve_device("auto").type == "cuda"


def test_compress_runs_on_cuda(cuda, state_dict_path, tmp_path):
    recipe = dwfc.load_recipe(
        "default",
        [
            "model.arch=dwfc.zoo:lenet_300_100",
            "train.epochs=2",
            "sparsity.finetune_epochs=1",
            "train.device=cuda",
        ],
    )
    report = dwfc.compress(state_dict_path, tmp_path / "out", recipe).to_dict()
    assert report["device"].startswith("cuda")
    assert report["precision"].startswith("bf16")
    n = report["sparsity"]["factorized_weights"]
    assert report["sparsity"]["nonzero_weights"] == n - round(0.95 * n)
    assert report["onnx"]["max_abs_diff"] <= 1e-4
