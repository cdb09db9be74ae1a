import numpy as np
import pytest
import torch
from cli_messages import raises_on_cli
from torch.utils.data import TensorDataset

from dwfc.config import DataConfig
from dwfc.data import (
    MNIST_MEAN,
    MNIST_STD,
    load_data,
    load_data_config,
    mnist5k,
    num_classes,
    sample_shape,
)
from dwfc.errors import InputError


@pytest.fixture(scope="module")
def split():
    return mnist5k()


def test_sizes_and_types(split):
    train, test = split
    assert isinstance(train, TensorDataset) and isinstance(test, TensorDataset)
    (xtr, ytr), (xte, yte) = train.tensors, test.tensors
    assert xtr.shape == (4000, 1, 28, 28) and ytr.shape == (4000,)
    assert xte.shape == (1000, 1, 28, 28) and yte.shape == (1000,)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64


def test_stratified(split):
    train, test = split
    assert torch.bincount(train.tensors[1], minlength=10).tolist() == [400] * 10
    assert torch.bincount(test.tensors[1], minlength=10).tolist() == [100] * 10


def test_shuffled_order(split):
    train, _ = split
    assert len(set(train.tensors[1][:50].tolist())) > 1


def test_deterministic(split):
    train, test = mnist5k()
    assert torch.equal(train.tensors[0], split[0].tensors[0])
    assert torch.equal(train.tensors[1], split[0].tensors[1])
    assert torch.equal(test.tensors[0], split[1].tensors[0])


def test_split_seed_changes_split(split):
    other, _ = mnist5k(split_seed=1)
    assert not torch.equal(other.tensors[0], split[0].tensors[0])
    assert torch.bincount(other.tensors[1], minlength=10).tolist() == [400] * 10


def test_no_overlap_and_all_rows_used(split):
    train, test = split

    def rows(ds):
        x, y = ds.tensors
        flat = torch.cat([x.reshape(len(x), -1), y[:, None].float()], dim=1)
        return {r.numpy().tobytes() for r in flat}

    train_rows, test_rows = rows(train), rows(test)
    assert not train_rows & test_rows
    assert len(train_rows | test_rows) > 4990  # MNIST has a few duplicate images at most


def test_normalisation(split):
    x = torch.cat([split[0].tensors[0], split[1].tensors[0]])
    pixels = x * MNIST_STD + MNIST_MEAN
    assert pixels.min().item() == pytest.approx(0.0, abs=1e-6)
    assert pixels.max().item() == pytest.approx(1.0, abs=1e-6)
    steps = pixels * 255
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert x.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-5)


def test_mutating_result_does_not_touch_cache(split):
    train, _ = mnist5k()
    train.tensors[0].zero_()
    again, _ = mnist5k()
    assert torch.equal(again.tensors[0], split[0].tensors[0])


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_split_seed(seed):
    with pytest.raises(InputError, match="split_seed"):
        mnist5k(split_seed=seed)


def test_load_data_mnist5k(split):
    train, test = load_data("mnist5k")
    assert len(train) == 4000 and len(test) == 1000
    train1, _ = load_data("mnist5k", split_seed=1)
    assert not torch.equal(train1.tensors[0], split[0].tensors[0])


def test_load_data_mnist5k_bad_option():
    with pytest.raises(InputError, match="split_seed"):
        load_data("mnist5k", root="x")


@pytest.mark.parametrize("source", ["", "mnist5k.csv", "cifar", "imagenet"])
def test_unknown_source(source):
    with pytest.raises(
        InputError,
        match=r"unknown data source .*use one of mnist5k, mnist, .*, or 'package\.module:factory'",
    ):
        load_data(source)


@pytest.mark.parametrize("source", ["mnist", "CIFAR10"])
def test_builtin_source_needs_root(source):
    with raises_on_cli(InputError, match=f"--data {source.lower()} needs --data-root"):
        load_data(source)


def test_builtin_source_bad_option(tmp_path):
    with pytest.raises(InputError, match=r"does not accept options \['colour'\]"):
        load_data("cifar10", root=str(tmp_path), colour="red")
    with pytest.raises(InputError, match="option image_size"):
        load_data("cifar10", root=str(tmp_path), image_size="big")


FACTORY_MODULE = """
import torch
from torch.utils.data import TensorDataset


def pair(n=8, scale=1.0):
    x = torch.full((n, 1, 28, 28), scale)
    y = torch.zeros(n, dtype=torch.long)
    return TensorDataset(x, y), TensorDataset(x[:2], y[:2])


def single():
    return pair()[0]


def triple():
    return pair() + pair()[:1]


def not_datasets():
    return [1, 2, 3], [4]


def empty():
    return pair(n=0)


def with_root(root, n=8):
    train, test = pair(n)
    test.root = root
    return train, test


NOT_CALLABLE = 3
"""


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "dwfc_test_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "dwfc_test_factories"


def test_factory_source(factory_module):
    train, test = load_data(f"{factory_module}:pair", n=5, scale=2.0)
    assert len(train) == 5 and len(test) == 2
    assert train[0][0].max().item() == 2.0


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("single", r"must return a \(train, eval\) pair .* got a TensorDataset"),
        ("triple", r"got a tuple of length 3"),
        ("not_datasets", r"returned a list as the train set"),
        ("empty", r"returned an empty train set"),
        ("NOT_CALLABLE", r"not a callable"),
        ("missing", r"has no attribute 'missing'"),
    ],
)
def test_factory_wrong_result(factory_module, name, match):
    with pytest.raises(InputError, match=match):
        load_data(f"{factory_module}:{name}")


def test_factory_bad_options(factory_module):
    with pytest.raises(InputError, match="could not be called with colour='red'"):
        load_data(f"{factory_module}:pair", colour="red")


def test_factory_unknown_module():
    with raises_on_cli(InputError, match="--data: no module named 'no_such_data_mod'"):
        load_data("no_such_data_mod:make")


def test_parse_is_cached():
    from dwfc.data.bundled import _read_mnist5k

    assert _read_mnist5k() is _read_mnist5k()
    assert np.asarray(_read_mnist5k()[0]).flags.writeable is False


# --- load_data_config ------------------------------------------------------------------------


def test_config_mnist5k_default_is_unchanged(split):
    train, test = load_data_config(DataConfig(source="MNIST5K"))
    assert torch.equal(train.tensors[0], split[0].tensors[0])
    assert torch.equal(test.tensors[1], split[1].tensors[1])


def test_config_mnist5k_options_size_and_normalisation(split):
    cfg = DataConfig(options={"split_seed": 1}, image_size=32, mean=[0.5], std=[0.5])
    train, test = load_data_config(cfg)
    assert train.tensors[0].shape == (4000, 1, 32, 32)
    assert sample_shape(test) == (1, 32, 32)
    x = test.tensors[0]
    assert x.min().item() >= -1 - 1e-5 and x.max().item() <= 1 + 1e-5
    same_size, _ = load_data_config(DataConfig(mean=[0.0], std=[1.0]))
    pixels = split[0].tensors[0] * MNIST_STD + MNIST_MEAN
    torch.testing.assert_close(same_size.tensors[0], pixels)


def test_config_mnist5k_rejects_root_and_bad_mean():
    with raises_on_cli(InputError, match="mnist5k is bundled with dwfc: drop --data-root"):
        load_data_config(DataConfig(root="data"))
    with pytest.raises(InputError, match=r"data\.mean has 3 values but mnist5k images have 1"):
        load_data_config(DataConfig(mean=[0.1, 0.2, 0.3]))


def test_config_factory_gets_options_and_root(factory_module, tmp_path):
    cfg = DataConfig(source=f"{factory_module}:with_root", root=str(tmp_path), options={"n": 3})
    train, test = load_data_config(cfg)
    assert len(train) == 3 and test.root == str(tmp_path)


@pytest.mark.parametrize(
    "field", [{"image_size": 32}, {"mean": [0.5]}, {"std": [0.5]}, {"augment": True}]
)
def test_config_factory_rejects_transform_fields(factory_module, field):
    (key,) = field
    cfg = DataConfig(source=f"{factory_module}:pair", **field)
    with raises_on_cli(InputError, match=f"data\\.{key} does not apply to --data .*:pair"):
        load_data_config(cfg)


# --- num_classes / sample_shape -----------------------------------------------------------------


def test_num_classes_and_sample_shape(split):
    train, _ = split
    assert num_classes(train) == 10
    assert sample_shape(train) == (1, 28, 28)
    labels = torch.tensor([0, 7, 2])
    assert num_classes(TensorDataset(torch.zeros(3, 4), labels)) == 8
    subset = torch.utils.data.Subset(train, [0, 1])
    assert num_classes(subset) == 10 and sample_shape(subset) == (1, 28, 28)
    both = torch.utils.data.ConcatDataset([TensorDataset(torch.zeros(2, 1), labels[:2]), train])
    assert num_classes(both) == 10


class _Items(torch.utils.data.Dataset):
    def __init__(self, items, **attrs):
        self.items = items
        self.__dict__.update(attrs)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_num_classes_from_attributes():
    assert num_classes(_Items([], classes=["a", "b", "c"])) == 3
    assert num_classes(_Items([], targets=[1, 4, 0])) == 5
    assert num_classes(_Items([], labels=np.array([2, 0]))) == 3
    assert num_classes(_Items([], targets=[0.5, 1.5])) is None  # not class labels
    assert num_classes(_Items([])) is None
    assert num_classes(TensorDataset(torch.zeros(2, 3), torch.zeros(2, 3))) is None


def test_sample_shape_errors():
    from PIL import Image

    assert sample_shape(_Items([(torch.zeros(3, 8, 8), 1)])) == (3, 8, 8)
    with pytest.raises(InputError, match="empty"):
        sample_shape(_Items([]))
    with pytest.raises(InputError, match=r"\(input, label\) pairs, got a Tensor"):
        sample_shape(_Items([torch.zeros(3)]))
    with pytest.raises(InputError, match=r"inputs must be tensors, got PIL.*ToTensor"):
        sample_shape(_Items([(Image.new("L", (4, 4)), 0)]))
