"""Model inputs as every stage passes them: one tensor (images, features), or named tensors of
the same shape (tokenised text: input_ids, attention_mask, ...) that the model takes as keyword
arguments and the ONNX model as inputs of those names. Data sets yield `(inputs, label)`."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

Inputs = Tensor | Mapping[str, Tensor]
TENSOR_NAME = "input"  # the ONNX input name of a model that takes one tensor


def call(model: nn.Module, x: Inputs) -> Any:
    """`model(x)`, or `model(**x)` for named inputs."""
    return model(**x) if isinstance(x, Mapping) else model(x)


def to(x: Inputs, device: torch.device | str, non_blocking: bool = False) -> Inputs:
    """`x` on `device`."""
    if isinstance(x, Mapping):
        return {k: v.to(device, non_blocking=non_blocking) for k, v in x.items()}
    return x.to(device, non_blocking=non_blocking)


def first(x: Inputs) -> Tensor:
    """The first (or only) tensor of `x`: its shape and dtype are those of every input."""
    return next(iter(x.values())) if isinstance(x, Mapping) else x


def count(x: Inputs) -> int:
    """The number of samples in the batch `x`."""
    return len(first(x))


def take(x: Inputs, n: int) -> Inputs:
    """The first `n` samples of `x`."""
    return {k: v[:n] for k, v in x.items()} if isinstance(x, Mapping) else x[:n]


def repeat_to(x: Inputs, n: int) -> Inputs:
    """`n` samples drawn from `x` in order, repeated when it has fewer."""
    reps = -(-n // count(x))

    def grow(t: Tensor) -> Tensor:
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:n]

    return {k: grow(v) for k, v in x.items()} if isinstance(x, Mapping) else grow(x)


def names(x: Inputs) -> list[str] | None:
    """The names of named inputs; None for one tensor."""
    return list(x) if isinstance(x, Mapping) else None


def ordered(model: nn.Module, x: Inputs) -> Inputs:
    """Named inputs in the order of the model's forward signature (the ONNX input order)."""
    if not isinstance(x, Mapping):
        return x
    params = list(inspect.signature(model.forward).parameters)
    return {k: x[k] for k in sorted(x, key=lambda k: params.index(k) if k in params else 1 << 30)}


def sample_shape(x: Inputs) -> list[int]:
    """The shape of one sample (without the batch), the same for every named input."""
    return [int(d) for d in first(x).shape[1:]]


def dtype_name(x: Inputs) -> str:
    return str(first(x).dtype).removeprefix("torch.")


def describe(x: Inputs) -> str:
    """`x`'s shape for messages: "(1, 28, 28)", or "input_ids, attention_mask of (128,)"."""
    shape = tuple(sample_shape(x))
    return f"{', '.join(x)} of {shape}" if isinstance(x, Mapping) else str(shape)


def feed(session: Any, x: Inputs) -> dict[str, np.ndarray]:
    """The onnxruntime feed of `x` for `session` (whose input names are those of `x`, or one)."""
    wanted = [i.name for i in session.get_inputs()]
    return numpy_feed(x, wanted)


def numpy_feed(x: Inputs, wanted: list[str]) -> dict[str, np.ndarray]:
    """`x` as NumPy arrays by the ONNX input names `wanted`; a tensor feeds the first."""
    if not isinstance(x, Mapping):
        return {wanted[0] if wanted else TENSOR_NAME: x.detach().cpu().numpy()}
    missing = [n for n in wanted if n not in x]
    if missing:
        raise ValueError(f"the ONNX model wants inputs {missing}, the batch has {list(x)}")
    return {n: x[n].detach().cpu().numpy() for n in wanted}


def synthetic(shape: list[int], dtype: str, input_names: list[str] | None, n: int,
              seed: int = 0) -> Inputs:  # fmt: skip
    """`n` made-up inputs of one sample's `shape` and `dtype`: random normal floats, zeros for
    integers (token ids, token types), ones for a named input whose name says mask."""
    kind = getattr(torch, dtype)

    def make(name: str) -> Tensor:
        if kind.is_floating_point:
            g = torch.Generator().manual_seed(seed)
            return torch.randn(n, *shape, generator=g).to(kind)
        fill = torch.ones if "mask" in name else torch.zeros
        return fill(n, *shape, dtype=kind)

    if input_names:
        return {name: make(name) for name in input_names}
    return make(TENSOR_NAME)
