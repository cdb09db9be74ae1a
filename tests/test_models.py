import os
import sys

import pytest
import torch
from cli_messages import raises_on_cli

from dwfc.errors import InputError
from dwfc.models import count_parameters, import_object, load_model
from dwfc.zoo import LeNet5, lenet5


@pytest.fixture
def batch():
    return torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return lenet5()


def _same_outputs(a, b, x):
    with torch.no_grad():
        return torch.equal(a.eval()(x), b(x))


# --- import_object ---------------------------------------------------------------------------


def test_import_object_resolves_dotted_attribute():
    assert import_object("dwfc.zoo:lenet5", "--arch") is lenet5
    assert import_object("dwfc.zoo:LeNet5.forward", "--arch") is LeNet5.forward


@pytest.mark.parametrize("spec", ["dwfc.zoo.lenet5", "dwfc.zoo:", ":lenet5", "a:b:c", ""])
def test_import_object_bad_form(spec):
    with pytest.raises(InputError, match=r"--arch expects 'package\.module:attribute'"):
        import_object(spec, "--arch")


def test_import_object_unknown_module():
    with pytest.raises(InputError, match="--data: no module named 'no_such_pkg_xyz.mod'"):
        import_object("no_such_pkg_xyz.mod:f", "--data")


def test_import_object_unknown_attribute():
    with pytest.raises(InputError, match="has no attribute 'nope'"):
        import_object("dwfc.zoo:nope", "--arch")


def test_import_object_module_import_fails(tmp_path, monkeypatch):
    (tmp_path / "broken_mod_dwfc.py").write_text("import missing_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match="importing 'broken_mod_dwfc' failed.*missing_dep_xyz"):
        import_object("broken_mod_dwfc:f", "--arch")


# --- state dicts -----------------------------------------------------------------------------


def test_state_dict_round_trip(tmp_path, net, batch):
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    loaded = load_model(path, arch="dwfc.zoo:lenet5")
    assert isinstance(loaded, LeNet5)
    assert not loaded.training
    assert _same_outputs(net, loaded, batch)


def test_state_dict_arch_kwargs(tmp_path, batch):
    model = lenet5(num_classes=3)
    path = tmp_path / "sd3.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(str(path), arch="dwfc.zoo:lenet5", arch_kwargs={"num_classes": 3})
    assert loaded(batch).shape == (4, 3)
    assert _same_outputs(model, loaded, batch)


def test_state_dict_nested_in_checkpoint(tmp_path, net, batch):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)
    assert _same_outputs(net, load_model(path, arch="dwfc.zoo:lenet5"), batch)


def test_state_dict_needs_arch(tmp_path, net):
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    with raises_on_cli(InputError, match="is a state dict: pass --arch"):
        load_model(path)


def test_state_dict_bad_arch_kwargs(tmp_path, net):
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(InputError, match="widht=3"):
        load_model(path, arch="dwfc.zoo:lenet5", arch_kwargs={"widht": 3})


def test_state_dict_wrong_num_classes(tmp_path, net):
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(InputError, match=r"shape mismatch: classifier\.5\.weight"):
        load_model(path, arch="dwfc.zoo:lenet5", arch_kwargs={"num_classes": 3})


def test_state_dict_wrong_keys(tmp_path, net):
    sd = net.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["features.0.bias"]
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    with pytest.raises(InputError) as info:
        load_model(path, arch="dwfc.zoo:lenet5")
    msg = str(info.value)
    assert "missing keys: features.0.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "\n" not in msg


def test_state_dict_for_other_arch(tmp_path, net):
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(InputError, match=r"missing keys: layers\.1\.weight.*\(\+\d+ more\)"):
        load_model(path, arch="dwfc.zoo:lenet_300_100")


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ("dwfc.zoo.lenet5", "expects 'package.module:attribute'"),
        ("no_such_pkg_xyz:net", "no module named 'no_such_pkg_xyz'"),
        ("dwfc.zoo:resnet", "has no attribute 'resnet'"),
        ("dwfc.models:count_parameters", "could not be built"),
    ],
)
def test_bad_arch(tmp_path, net, arch, match):
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(InputError, match=match):
        load_model(path, arch=arch)


def test_arch_not_returning_module(tmp_path, net):
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(InputError, match="not a torch.nn.Module"):
        load_model(path, arch="dwfc.models:load_model.__name__.upper")


# --- whole pickled modules ---------------------------------------------------------------------


def test_pickled_module_needs_trust(tmp_path, net):
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with raises_on_cli(InputError, match="--trust-model") as info:
        load_model(path)
    assert "pickled module" in str(info.value)


def test_pickled_module_with_trust(tmp_path, net, batch):
    path = tmp_path / "whole.pt"
    torch.save(net.train(), path)
    loaded = load_model(path, trust_model=True)
    assert isinstance(loaded, LeNet5)
    assert not loaded.training
    assert _same_outputs(net, loaded, batch)


def test_pickled_module_ignores_arch(tmp_path, net, batch):
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    loaded = load_model(path, arch="dwfc.zoo:lenet_300_100", trust_model=True)
    assert _same_outputs(net, loaded, batch)


def test_legacy_format_pickled_module_needs_trust(tmp_path, net):
    path = tmp_path / "legacy.pt"
    torch.save(net, path, _use_new_zipfile_serialization=False)
    with raises_on_cli(InputError, match="--trust-model"):
        load_model(path)
    assert isinstance(load_model(path, trust_model=True), LeNet5)


def test_allowlisted_module_loads_safely(tmp_path, net, batch):
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    allowed = {type(m) for m in net.modules()}
    with torch.serialization.safe_globals(list(allowed)):
        loaded = load_model(path)
    assert _same_outputs(net, loaded, batch)


def test_protocol4_state_dict_needs_trust(tmp_path, net, batch):
    path = tmp_path / "p4.pt"
    torch.save(net.state_dict(), path, pickle_protocol=4)
    with raises_on_cli(InputError, match="--trust-model"):
        load_model(path, arch="dwfc.zoo:lenet5")
    assert _same_outputs(net, load_model(path, arch="dwfc.zoo:lenet5", trust_model=True), batch)


def test_pickled_module_class_not_importable(tmp_path, monkeypatch):
    (tmp_path / "gone_mod_dwfc.py").write_text(
        "import torch\n\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(2, 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_mod_dwfc

    path = tmp_path / "whole.pt"
    torch.save(gone_mod_dwfc.Net(), path)
    os.remove(tmp_path / "gone_mod_dwfc.py")
    monkeypatch.delitem(sys.modules, "gone_mod_dwfc")
    with pytest.raises(InputError, match="no module named 'gone_mod_dwfc'"):
        load_model(path, trust_model=True)


def test_non_model_object(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(InputError, match="holds a Tensor"):
        load_model(path, arch="dwfc.zoo:lenet5")


# --- unreadable files --------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found: .*nope.pt"):
        load_model(tmp_path / "nope.pt")


def test_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_model(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty.*empty.pt"):
        load_model(path)


@pytest.mark.parametrize(
    "content",
    [
        bytes(range(256)) * 4,
        b"hello, this is a text file\n",
        b"\x1f\x8b\x08\x00" + b"\x00" * 200,
    ],
    ids=["garbage", "text", "gzip-header"],
)
def test_not_a_torch_file(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"^cannot read .*junk\.pt as a PyTorch file: "):
        load_model(path, trust_model=True)


def test_plain_pickle_is_not_a_torch_file(tmp_path):
    import pickle

    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(InputError, match="cannot read .* as a PyTorch file"):
        load_model(path)


@pytest.mark.parametrize("whole", [False, True], ids=["state-dict", "module"])
@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_truncated_file(tmp_path, net, whole, zipped):
    full = tmp_path / "full.pt"
    torch.save(net if whole else net.state_dict(), full, _use_new_zipfile_serialization=zipped)
    data = full.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cannot read .*cut\.pt as a PyTorch file: \S") as info:
        load_model(path, arch="dwfc.zoo:lenet5", trust_model=True)
    assert "\n" not in str(info.value)


def test_count_parameters_counts_shared_once():
    lin = torch.nn.Linear(3, 2)
    assert count_parameters(torch.nn.Sequential(lin, lin)) == 8


def test_zip_that_is_not_a_checkpoint(tmp_path):
    import zipfile

    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(InputError, match=r"cannot read .*other\.zip as a PyTorch file: \S"):
        load_model(path, trust_model=True)


def test_tiny_truncated_zip(tmp_path, net):
    full = tmp_path / "full.pt"
    torch.save(net.state_dict(), full)
    path = tmp_path / "cut.pt"
    path.write_bytes(full.read_bytes()[:100])
    with pytest.raises(InputError, match=r"cannot read .*cut\.pt as a PyTorch file: \S"):
        load_model(path, arch="dwfc.zoo:lenet5")
