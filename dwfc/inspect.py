"""`dwfc inspect FILE`: per-tensor shapes, non-zeros and sparsity of a weights file, and totals.

Reads dwfc sparse safetensors files (sparse-bitmask entries shown as one tensor; the weights
of a `--structure channel` run with the spec that rebuilds their architecture), plain
safetensors, sparse-bitmask files dwfc did not write (compressed-tensors': their parts are
counted, not decoded), ONNX models (initializers and sparse_initializers) and PyTorch state dicts
(`torch.load(weights_only=True)`; a checkpoint dict holding one under "state_dict", "model" or
"model_state_dict" too). Nothing in the file is executed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dwfc.errors import InputError, first_line
from dwfc.export.sparse_file import (
    FORMAT_KEY,
    SPARSE_KEYS_KEY,
    SUFFIXES,
    foreign_bitmask_names,
    load_sparse,
    read_metadata,
)
from dwfc.models import find_weights
from dwfc.models.files import PickledModule, read_model_file, sniff_format
from dwfc.structure.prune import PRUNED_KEY, PrunedSpec

__all__ = ["inspect_file"]


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe the tensors in a weights file: {"path", "format", "layers", "totals"}.

    Each layer row is {name, shape, dtype, weights, nonzero, sparsity, stored}, stored being
    "sparse-bitmask" | "dense" (safetensors, .pt) | "compressed-tensors bitmask" |
    "sparse_initializer" | "initializer" (ONNX). Totals are {tensors, weights, nonzero,
    sparsity, file_bytes}. A missing, corrupt or unsupported file raises InputError with one
    line.

    Example:
        info = inspect_file("runs/lenet/model.safetensors")
        info["totals"]["sparsity"]  # 0.948...
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    kind = _kind(p)
    extra: dict[str, Any] = {}
    if kind == "safetensors":
        fmt, layers = _safetensors_layers(p)
        extra = _pruned(p)
    elif kind == "onnx":
        fmt, layers = "onnx", _onnx_layers(p)
    else:
        fmt, layers = "pytorch", _torch_layers(p)
    weights = sum(row["weights"] for row in layers)
    nonzero = sum(row["nonzero"] for row in layers)
    totals = {
        "tensors": len(layers),
        "weights": weights,
        "nonzero": nonzero,
        "sparsity": 1.0 - nonzero / weights if weights else 0.0,
        "file_bytes": p.stat().st_size,
    }
    return {"path": str(p), "format": fmt, "layers": layers, "totals": totals, **extra}


def _pruned(p: Path) -> dict[str, Any]:
    """{"pruned": ...} for the weights of a --structure channel run: the spec that rebuilds the
    smaller architecture (`dwfc.load_pruned`)."""
    meta = read_metadata(p)
    if PRUNED_KEY not in meta:
        return {}
    spec = PrunedSpec.from_json(meta[PRUNED_KEY])
    removed = sum(len(idxs) for _, _, idxs in spec.history)
    return {"pruned": {"input_shape": spec.input_shape, "removals": len(spec.history),
                       "channels_removed": removed, "layers": [n for n, _, _ in spec.history]}}


# --------------------------------------------------------------------------- readers


def _kind(p: Path) -> str:
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".bin", ".ckpt", ".tar"):
        return "torch"
    fmt = sniff_format(p)
    if fmt in ("safetensors", "onnx"):
        return fmt
    if fmt != "torch":
        raise InputError(
            f"{p}: a {fmt} file; inspect reads .safetensors, .onnx and PyTorch state dicts"
        )
    return "torch"


def _row(name: str, shape: Iterable[int], dtype: str, nonzero: int, stored: str) -> dict[str, Any]:
    shape = [int(d) for d in shape]
    weights = math.prod(shape)
    sparsity = 1.0 - nonzero / weights if weights else 0.0
    return {"name": name, "shape": shape, "dtype": dtype, "weights": weights, "nonzero": nonzero,
            "sparsity": sparsity, "stored": stored}  # fmt: skip


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor_rows(tensors: Mapping[str, Any], stored: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        _row(
            name,
            t.shape,
            _dtype_name(t.dtype),
            int(torch.count_nonzero(t)),
            stored.get(name, "dense"),
        )
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor)
    ]


FOREIGN_BITMASK = "compressed-tensors sparse-bitmask (not decoded by dwfc)"


def _safetensors_layers(p: Path) -> tuple[str, list[dict[str, Any]]]:
    meta = read_metadata(p)
    if FORMAT_KEY not in meta:
        foreign = _foreign_rows(p)
        if foreign is not None:
            return FOREIGN_BITMASK, foreign
    state = load_sparse(p)  # validates sparse entries; plain files load as they are
    sparse: list[str] = []
    if FORMAT_KEY in meta:
        sparse = json.loads(meta.get(SPARSE_KEYS_KEY, "[]"))  # load_sparse accepted it
    stored = dict.fromkeys(sparse, "sparse-bitmask")
    fmt = "dwfc sparse safetensors" if FORMAT_KEY in meta else "safetensors"
    return fmt, _tensor_rows(state, stored)


def _foreign_rows(p: Path) -> list[dict[str, Any]] | None:
    """Rows of a sparse-bitmask file dwfc did not write: each sparse tensor's shape (its
    `.shape` part) and stored values (`.compressed`), read without decoding; None otherwise."""
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        names = foreign_bitmask_names(f.keys())
        if not names:
            return None
        parts = {f"{n}.{s}" for n in names for s in SUFFIXES}
        rows = []
        for name in names:
            values = f.get_tensor(f"{name}.compressed")
            rows.append(_row(name, f.get_tensor(f"{name}.shape").tolist(),
                             _dtype_name(values.dtype), int(torch.count_nonzero(values)),
                             "compressed-tensors bitmask"))  # fmt: skip
        dense = {k: f.get_tensor(k) for k in f.keys() if k not in parts}
    return rows + _tensor_rows(dense, {})


def _onnx_layers(p: Path) -> list[dict[str, Any]]:
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(p)).graph
        rows = []
        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            rows.append(_row(init.name, arr.shape, str(arr.dtype), int(np.count_nonzero(arr)),
                             "initializer"))  # fmt: skip
        for sp in graph.sparse_initializer:
            values = numpy_helper.to_array(sp.values)  # never densified: dims may be large
            rows.append(_row(sp.values.name, sp.dims, str(values.dtype),
                             int(np.count_nonzero(values)), "sparse_initializer"))  # fmt: skip
    except Exception as exc:
        raise InputError(f"{p}: not a readable ONNX model ({first_line(exc)})") from None
    return rows


def _torch_layers(p: Path) -> list[dict[str, Any]]:
    try:
        obj, _ = read_model_file(p, trust_model=False)
    except PickledModule:
        raise InputError(
            f"{p}: not a plain state dict (a pickled module or other objects); inspect "
            "loads with weights_only=True and runs no code: save model.state_dict() instead"
        ) from None
    found = find_weights(obj)
    if found is not None:
        return _tensor_rows(found[0], {})
    if isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values()):
        return _tensor_rows(obj, {})  # a mixed dict: its tensors are shown, the rest skipped
    raise InputError(f"{p}: holds a {type(obj).__name__}, not a state dict of tensors")
