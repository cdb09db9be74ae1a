"""Model files beyond a plain torch.save state dict: safetensors, torchvision architectures,
checkpoint dicts, and formats dwfc cannot fine-tune (TorchScript, torch.export, ONNX, ...)."""

import numpy as np
import pytest
import torch
from cli_messages import raises_on_cli
from safetensors.torch import save_file
from torch import nn

from dwfc.cli.text import for_cli
from dwfc.errors import InputError
from dwfc.export import save_sparse
from dwfc.models import build_model, load_model, load_model_with_notes
from dwfc.zoo import LeNet5, lenet5

tv_models = pytest.importorskip("torchvision.models")

ARCH = "dwfc.zoo:lenet5"


@pytest.fixture
def batch():
    return torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return lenet5().eval()


def _same(a, b, x):
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# --- state dicts in .pt / .pth / .safetensors ------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors", ".bin"])
def test_state_dict_formats(tmp_path, net, batch, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix in (".safetensors", ".bin"):  # .bin: a safetensors file recognised by content
        save_file(net.state_dict(), str(path))
    else:
        torch.save(net.state_dict(), path)
    model, notes = load_model_with_notes(path, arch=ARCH)
    assert isinstance(model, LeNet5) and not model.training
    assert _same(net, model, batch)
    assert notes == []


def test_content_decides_over_suffix(tmp_path, net, batch):
    path = tmp_path / "really_torch.safetensors"
    torch.save(net.state_dict(), path)
    assert _same(net, load_model(path, arch=ARCH), batch)


def test_dwfc_sparse_file_is_expanded(tmp_path, net, batch):
    with torch.no_grad():
        net.features[0].weight[0].zero_()
    path = tmp_path / "model.safetensors"
    save_sparse(net.state_dict(), path, sparse_keys=["features.0.weight"])
    model, notes = load_model_with_notes(path, arch=ARCH)
    assert _same(net, model, batch)
    assert any("dwfc sparse file" in n for n in notes)


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(InputError, match=r"cannot read .*bad\.safetensors as a safetensors file"):
        load_model(path, arch=ARCH)


def test_safetensors_wrong_keys(tmp_path, net):
    sd = net.state_dict()
    sd["head.weight"] = sd.pop("classifier.5.weight")
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    with pytest.raises(InputError, match=r"missing keys: classifier\.5\.weight.*head\.weight"):
        load_model(path, arch=ARCH)


# --- torchvision architectures ---------------------------------------------------------------


def test_torchvision_resnet18_round_trip(tmp_path):
    torch.manual_seed(0)
    original = tv_models.resnet18(num_classes=10).eval()
    path = tmp_path / "r18.pth"
    torch.save(original.state_dict(), path)
    model, notes = load_model_with_notes(path, "torchvision:resnet18", {"num_classes": 10})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert model(x).shape == (2, 10)
    assert _same(original, model, x)
    assert any("weights=None" in n for n in notes)


def test_torchvision_wrong_num_classes(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(tv_models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(InputError, match=r"shape mismatch: fc\.weight \(file \(10, 512\)"):
        load_model(path, "torchvision:resnet18")


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ("torchvision:resnet19", r"torchvision has no model 'resnet19'; did you mean .*resnet18"),
        ("torchvision:zzzz", r"torchvision has no model 'zzzz'; e\.g\. resnet18"),
    ],
)
def test_unknown_torchvision_model(arch, match):
    with pytest.raises(InputError, match=match):
        build_model(arch)


def test_torchvision_bad_kwargs():
    with pytest.raises(InputError, match="could not be built with num_clases=10"):
        build_model("torchvision:resnet18", {"num_clases": 10})


@pytest.mark.parametrize(
    "kwargs", [{"weights": "DEFAULT"}, {"pretrained": True}, {"weights_backbone": "DEFAULT"}]
)
def test_torchvision_never_downloads(kwargs):
    with pytest.raises(InputError, match="never downloads"):
        build_model("torchvision:resnet18", kwargs)


def test_torchvision_backbone_weights_not_fetched(monkeypatch):
    # lraspp's builder defaults to ImageNet backbone weights; dwfc must pass weights_backbone=None.
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_download)
    for arch in (
        "torchvision:lraspp_mobilenet_v3_large",
        "torchvision.models.segmentation:lraspp_mobilenet_v3_large",
    ):
        model = build_model(arch, {"num_classes": 3})
        assert isinstance(model, nn.Module)


# --- checkpoint dicts --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "module"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_checkpoint_wrappers(tmp_path, net, batch, key, prefix):
    sd = {prefix + k: v for k, v in net.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({key: sd, "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    model, notes = load_model_with_notes(path, arch=ARCH)
    assert _same(net, model, batch)
    assert f"state dict found under checkpoint[{key!r}]" in notes[0]
    assert "other entries ignored: epoch, optimizer" in notes[0]
    assert any("'module.' prefix removed" in n for n in notes) == bool(prefix)


def test_data_parallel_state_dict(tmp_path, net, batch):
    path = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(net).state_dict(), path)
    model, notes = load_model_with_notes(path, arch=ARCH)
    assert _same(net, model, batch)
    assert notes == [
        "'module.' prefix removed from every key (saved from DataParallel/DistributedDataParallel)"
    ]


def test_compiled_and_lightning_prefixes(tmp_path, net, batch):
    path = tmp_path / "c.pt"
    torch.save(
        {"state_dict": {"model._orig_mod." + k: v for k, v in net.state_dict().items()}}, path
    )
    model, notes = load_model_with_notes(path, arch=ARCH)
    assert _same(net, model, batch)
    assert any("'model.' prefix removed" in n for n in notes)


NETS = """
import torch


def wrapped():
    model = torch.nn.Module()
    model.module = torch.nn.Linear(2, 2)
    return model


def conv_bn():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
"""


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "dwfc_test_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import dwfc_test_nets

    return dwfc_test_nets


def test_module_prefix_kept_when_model_has_it(tmp_path, nets):
    original = nets.wrapped()
    path = tmp_path / "w.pt"
    torch.save(original.state_dict(), path)
    model, notes = load_model_with_notes(path, arch="dwfc_test_nets:wrapped")
    assert notes == []
    assert torch.equal(model.module.weight, original.module.weight)


def test_missing_batchnorm_counters(tmp_path, nets):
    original = nets.conv_bn().eval()
    with torch.no_grad():
        original[1].running_mean.uniform_()
    sd = {k: v for k, v in original.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    model, notes = load_model_with_notes(path, "dwfc_test_nets:conv_bn")
    x = torch.randn(1, 3, 8, 8)
    assert _same(original, model, x)
    assert any("num_batches_tracked" in n for n in notes)


def test_half_precision_state_dict(tmp_path, net):
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in net.state_dict().items()}, str(path))
    model, notes = load_model_with_notes(path, arch=ARCH)
    assert next(model.parameters()).dtype == torch.float32
    assert any("float16 weights converted" in n for n in notes)


def test_checkpoint_without_weights(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, "model": "resnet18"}, path)
    with pytest.raises(InputError, match=r"holds a dict without a state dict \(keys: epoch"):
        load_model(path, arch=ARCH)


def test_trusted_checkpoint_with_module(tmp_path, net, batch):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": net, "epoch": 1}, path)
    with raises_on_cli(InputError, match="--trust-model"):
        load_model(path)
    model, notes = load_model_with_notes(path, arch=ARCH, trust_model=True)
    assert _same(net, model, batch)
    assert any("module found under checkpoint['model']" in n for n in notes)
    assert any("model.arch dwfc.zoo:lenet5 ignored" in n for n in notes)


# --- formats dwfc cannot fine-tune ----------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", ["script", "trace"])
@pytest.mark.parametrize("trust", [False, True])
def test_torchscript(tmp_path, net, batch, kind, trust):
    scripted = torch.jit.script(net) if kind == "script" else torch.jit.trace(net, batch)
    path = tmp_path / "ts.pt"
    torch.jit.save(scripted, str(path))
    with pytest.raises(InputError) as info:
        load_model(path, arch=ARCH, trust_model=trust)
    msg = for_cli(info.value)
    assert msg.startswith(f"{path} is a TorchScript archive: dwfc needs a trainable module: ")
    assert "model.state_dict()" in msg and "--arch" in msg and "\n" not in msg


def test_torch_export_program(tmp_path, net, batch):
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (batch,)), str(path))
    with pytest.raises(InputError, match=r"is a torch\.export program: .*state_dict"):
        load_model(path, arch=ARCH)


def _tiny_onnx_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    return helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)]
    ).SerializeToString()


@pytest.mark.parametrize("name", ["model.onnx", "model.bin"])
def test_onnx(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_tiny_onnx_bytes())
    with pytest.raises(InputError, match=r"is an ONNX model: dwfc needs a trainable module: "):
        load_model(path, arch=ARCH)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "an HDF5 file"),
        (b"GGUF\x03\x00\x00\x00" + b"\x00" * 64, "a GGUF file"),
        (b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64, "a TensorFlow Lite model"),
    ],
    ids=["hdf5", "gguf", "tflite"],
)
def test_other_formats(tmp_path, content, what):
    path = tmp_path / "weights.h5"
    path.write_bytes(content)
    with raises_on_cli(InputError, match=f"is {what}.*: dwfc needs a trainable module: .*--arch"):
        load_model(path, arch=ARCH)


def test_numpy_file(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(InputError, match="is a NumPy array file"):
        load_model(path, arch=ARCH)


# --- through the CLI: bad model input exits with code 2 -----------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    ("case", "arch", "message"),
    [
        ("wrong-keys", ARCH, "unexpected keys: extra.weight"),
        ("state-dict", "dwfc.zoo:resnet", "has no attribute 'resnet'"),
        ("state-dict", "torchvision:resnet19", "torchvision has no model 'resnet19'"),
        ("torchscript", ARCH, "is a TorchScript archive"),
    ],
)
def test_cli_exit_code_2(tmp_path, net, batch, case, arch, message):
    from typer.testing import CliRunner

    from dwfc.cli import app

    path = tmp_path / "model.pt"
    if case == "torchscript":
        torch.jit.save(torch.jit.trace(net, batch), str(path))
    else:
        sd = net.state_dict()
        if case == "wrong-keys":
            sd["extra.weight"] = torch.zeros(1)
        torch.save(sd, path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compress", str(path), "--arch", arch, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output + getattr(result, "stderr", "")
    assert not out.exists()
