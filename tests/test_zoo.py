import pytest
import torch

from dwfc.errors import InputError
from dwfc.models import count_parameters
from dwfc.zoo import LeNet5, LeNet300100, lenet5, lenet_300_100


@pytest.mark.parametrize("factory", [lenet_300_100, lenet5])
def test_output_shape(factory):
    model = factory()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("factory", [lenet_300_100, lenet5])
def test_num_classes(factory):
    assert factory(num_classes=3)(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_factories_return_classes():
    assert isinstance(lenet_300_100(), LeNet300100)
    assert isinstance(lenet5(), LeNet5)


def test_parameter_counts():
    assert count_parameters(lenet_300_100()) == 266_610
    assert count_parameters(lenet5()) == 61_706


def test_layer_types():
    convs = [m for m in lenet5().modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in lenet5().modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [6, 16]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (400, 120),
        (120, 84),
        (84, 10),
    ]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_bad_num_classes(bad):
    with pytest.raises(InputError, match="num_classes"):
        lenet5(num_classes=bad)
