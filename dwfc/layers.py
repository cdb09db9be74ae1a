"""Which layer types DWF factorizes, and which of their tensors: the one place to teach dwfc a
layer type.

A layer type is a `torch.nn` class name. `weights_of` says which of a module's tensors are its
weights: `weight` for most layers, the projections of attention and recurrent layers. To teach
dwfc a layer whose weights live elsewhere, add a branch to `weights_of`; to select it by
default, add its name to `DEFAULT_LAYER_TYPES`.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from dwfc.errors import InputError

DEFAULT_LAYER_TYPES: tuple[str, ...] = (
    "Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
    "ConvTranspose3d", "Embedding", "MultiheadAttention", "LSTM", "GRU",
)  # fmt: skip

# Normalisation layers: their parameters are never factorized, even when listed.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    _NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


def resolve_types(type_names: Iterable[str]) -> list[tuple[str, type[nn.Module]]]:
    """(name, class) of each layer type name; unknown and normalisation types are refused.

    Example:
        resolve_types(["Linear"])  # [('Linear', <class 'torch.nn.modules.linear.Linear'>)]
    """
    resolved = []
    for name in type_names:
        cls = getattr(nn, name, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise InputError(f"unknown layer type '{name}': expected a torch.nn class name")
        if issubclass(cls, NORM_TYPES):
            raise InputError(f"layer type '{name}' is a normalisation layer: never factorized")
        resolved.append((name, cls))
    return resolved


def _own_weights(module: nn.Module) -> list[str]:
    """Names of `module`'s own weight tensors that DWF factorizes (never biases or 1-D)."""
    params = module._parameters
    if isinstance(module, nn.MultiheadAttention):
        names = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"]
    elif isinstance(module, nn.RNNBase):
        names = [n for n in module._flat_weights_names if n.startswith("weight_")]
    else:
        names = ["weight"]
    return [n for n in names if isinstance(params.get(n), nn.Parameter) and params[n].dim() >= 2]


def weights_of(fqn: str, module: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(owner's name, owner, parameter name) of each weight a layer of a selected type owns.

    Example:
        weights_of("attn", nn.MultiheadAttention(8, 2))  # in_proj_weight and out_proj.weight
    """
    owned = [(fqn, module, pname) for pname in _own_weights(module)]
    if isinstance(module, nn.MultiheadAttention):
        # out_proj is a Linear subclass: it belongs to the attention layer listed here.
        owned.append((f"{fqn}.out_proj" if fqn else "out_proj", module.out_proj, "weight"))
    return owned
