"""Six architectures through factorize -> train -> collapse -> ONNX, with the default selection.

Each case: the dense forward after `apply_plan_` equals the original, two SGD steps with weight
decay on the factors change it, `collapse_` gives plain weights, and onnxruntime matches PyTorch.
torchvision models are built with weights=None (nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dwfc
from dwfc.batchnorm import has_batchnorm, recalibrate_batchnorm_
from dwfc.config import FactorizeConfig
from dwfc.export import export_onnx, onnx_max_abs_diff
from dwfc.factorize import apply_plan_, factor_parameters
from dwfc.select import plan

torchvision = pytest.importorskip("torchvision")
models = torchvision.models


class LSTMClassifier(nn.Module):
    """Embedding -> LSTM -> Linear on the last time step."""

    def __init__(self, vocab: int = 100, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.fc = nn.Linear(32, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.emb(tokens))
        return self.fc(out[:, -1])


class TransformerClassifier(nn.Module):
    """Embedding -> 2-layer nn.TransformerEncoder -> mean over tokens -> Linear."""

    def __init__(self, vocab: int = 100, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 32)
        layer = nn.TransformerEncoderLayer(32, nhead=4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.fc = nn.Linear(32, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.emb(tokens)).mean(dim=1))


def _vgg11_bn() -> nn.Module:
    # At 32x32 the features end at 1x1 and torchvision's AdaptiveAvgPool2d((7, 7)) upsamples
    # that to 7x7, which the TorchScript exporter cannot express in any opset (it exports an
    # adaptive pool only when the output size divides the input size; 224x224 inputs give
    # 7x7 maps). So this is vgg11_bn's feature stack (8 convs + BatchNorm) with the usual
    # CIFAR head: pool to 1x1, then 512 -> 512 -> 512 -> 10 (0.5M instead of 120M weights).
    model = models.vgg11_bn(weights=None, num_classes=10)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(
        nn.Linear(512, 512),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(512, 512),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(512, 10),
    )
    return model


def _vit() -> nn.Module:
    model = models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    # torchvision zero-initialises the head, so the output would be 0 whatever the encoder
    # does (and a zero weight gets no gradient through its factors). Give it values.
    nn.init.normal_(model.heads.head.weight, std=0.1)
    return model


def _images(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=g)


def _tokens(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 100, (n, 12), generator=g)


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    inputs: Callable[[int, torch.Generator], torch.Tensor]
    classes: int
    planned: int  # number of weight tensors the default selection picks


CASES = {
    "resnet18": Case(lambda: models.resnet18(weights=None, num_classes=10), _images, 10, 21),
    "mobilenet_v2": Case(
        lambda: models.mobilenet_v2(weights=None, num_classes=10), _images, 10, 53
    ),
    "vgg11_bn": Case(_vgg11_bn, _images, 10, 11),
    "vit": Case(_vit, _images, 10, 10),
    "lstm": Case(LSTMClassifier, _tokens, 4, 4),
    "transformer_encoder": Case(TransformerClassifier, _tokens, 4, 10),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small batches gain nothing from intra-op threads, and on a busy shared CPU two
    threads that wait on each other made these cases several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(CASES))
def test_factorize_train_collapse_export(name, tmp_path):
    case = CASES[name]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = case.build().eval()
    calibration = [case.inputs(16, g)]
    if has_batchnorm(model):  # realistic statistics, else activations vanish at init
        recalibrate_batchnorm_(model, calibration, "cpu")
    x = case.inputs(3, g)
    # The parity check runs in float64: in float32 the rounding of |w|^(1/D) (a few ulps per
    # weight) grows through 50+ layers to ~3e-5 on mobilenet_v2, which says nothing about the
    # factorization; in float64 any real difference would stand out.
    x64 = x.double() if x.is_floating_point() else x
    model.double()
    with torch.no_grad():
        expected = model(x64)
    assert expected.abs().max() > 0.05  # the comparison below is not vacuous

    planned = plan(model, FactorizeConfig())
    assert len(planned) == case.planned
    apply_plan_(model, planned)
    assert sorted(fw.name for fw in dwfc.factorized_weights(model)) == sorted(
        pw.name for pw in planned
    )
    with torch.no_grad():
        torch.testing.assert_close(model(x64), expected, rtol=1e-4, atol=1e-5)
        model.float()
        torch.testing.assert_close(model(x), expected.float(), rtol=1e-3, atol=1e-4)
        expected = expected.float()

    factors = factor_parameters(model)
    factor_ids = {id(f) for f in factors}
    others = [p for p in model.parameters() if id(p) not in factor_ids]
    optimizer = torch.optim.SGD(
        [{"params": factors, "weight_decay": 1e-3}, {"params": others, "weight_decay": 0.0}],
        lr=0.05,
        momentum=0.9,
    )
    model.train()
    for _ in range(2):
        loss = F.cross_entropy(model(case.inputs(4, g)), torch.randint(0, case.classes, (4,)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert all(f.grad is not None for f in factors)
        optimizer.step()
    assert torch.isfinite(loss)

    dwfc.collapse_(model)
    if has_batchnorm(model):
        # As the pipeline does after the cut. Without it the running statistics, mixed from
        # two batches of 4 while the weights moved, are so far off that onnxruntime and
        # PyTorch differ by up to 5e-3 (float rounding, amplified); after it, by ~1e-5.
        recalibrate_batchnorm_(model, calibration, "cpu")
    model.eval()
    assert not list(dwfc.factorized_weights(model))
    with torch.no_grad():
        trained = model(x)
    assert not torch.allclose(trained, expected, rtol=1e-4, atol=1e-5)  # training did act

    path = tmp_path / f"{name}.onnx"
    export_onnx(model, x[:1], path)  # export_onnx turns the fused attention fast path off itself
    assert onnx_max_abs_diff(path, model, x) <= 1e-4
