"""`dwfc inspect FILE`: per-tensor shapes, non-zeros and sparsity of a weights file, and totals.

Reads dwfc sparse safetensors files (sparse-bitmask entries shown as one tensor), plain
safetensors, ONNX models (initializers and sparse_initializers) and PyTorch state dicts
(`torch.load(weights_only=True)`; a checkpoint dict holding one under "state_dict", "model" or
"model_state_dict" too). Nothing in the file is executed.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dwfc.errors import InputError
from dwfc.export import FORMAT_KEY, SPARSE_KEYS_KEY, load_sparse, read_metadata

__all__ = ["format_inspection", "inspect_file"]

_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe the tensors in a weights file: {"path", "format", "layers", "totals"}.

    Each layer row is {name, shape, dtype, weights, nonzero, sparsity, stored}, stored being
    "sparse-bitmask" | "dense" (safetensors, .pt) | "sparse_initializer" | "initializer"
    (ONNX). Totals are {tensors, weights, nonzero, sparsity, file_bytes}. A missing, corrupt
    or unsupported file raises InputError with one line.

    Example:
        info = inspect_file("runs/lenet/model.safetensors")
        info["totals"]["sparsity"]  # 0.948...
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    kind = _kind(p)
    if kind == "safetensors":
        fmt, layers = _safetensors_layers(p)
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
    return {"path": str(p), "format": fmt, "layers": layers, "totals": totals}


def format_inspection(info: Mapping[str, Any]) -> str:
    """A plain-text table of `inspect_file`'s result, one row per tensor, then the totals.

    Example:
        print(format_inspection(inspect_file("model.onnx")))
    """
    header = ("name", "shape", "dtype", "stored", "weights", "nonzero", "sparsity")
    rows = [
        (
            r["name"],
            "x".join(map(str, r["shape"])) or "scalar",
            r["dtype"],
            r["stored"],
            f"{r['weights']:,}",
            f"{r['nonzero']:,}",
            f"{r['sparsity']:.2%}",
        )
        for r in info["layers"]
    ]
    t = info["totals"]
    total = ("total", "", "", f"{t['tensors']} tensors", f"{t['weights']:,}", f"{t['nonzero']:,}",
             f"{t['sparsity']:.2%}")  # fmt: skip
    widths = [max(len(row[i]) for row in (header, *rows, total)) for i in range(len(header))]
    right = {4, 5, 6}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = f"{info['path']} ({info['format']}, {t['file_bytes']:,} bytes)"
    return "\n".join([title, line(header), rule, *map(line, rows), rule, line(total)])


# --------------------------------------------------------------------------- readers


def _kind(p: Path) -> str:
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".bin", ".ckpt", ".tar"):
        return "torch"
    from dwfc.model_files import sniff_format

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


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def _safetensors_layers(p: Path) -> tuple[str, list[dict[str, Any]]]:
    meta = read_metadata(p)
    state = load_sparse(p)  # validates sparse entries; plain files load as they are
    sparse: list[str] = []
    if FORMAT_KEY in meta:
        sparse = json.loads(meta.get(SPARSE_KEYS_KEY, "[]"))  # load_sparse accepted it
    stored = dict.fromkeys(sparse, "sparse-bitmask")
    fmt = "dwfc sparse safetensors" if FORMAT_KEY in meta else "safetensors"
    return fmt, _tensor_rows(state, stored)


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
        raise InputError(f"{p}: not a readable ONNX model ({_line(exc)})") from None
    return rows


def _torch_layers(p: Path) -> list[dict[str, Any]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and zipfile.is_zipfile(p):
            raise InputError(
                f"{p}: not a plain state dict (a pickled module or other objects); inspect "
                "loads with weights_only=True and runs no code: save model.state_dict() instead"
            ) from None
        raise InputError(f"{p}: not a readable PyTorch file ({_line(exc)})") from None
    state = _state_dict_in(obj)
    if state is None:
        raise InputError(f"{p}: holds a {type(obj).__name__}, not a state dict of tensors")
    return _tensor_rows(state, {})


def _state_dict_in(obj: Any) -> Mapping[str, Any] | None:
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
        for key in _CHECKPOINT_KEYS:
            inner = _state_dict_in(obj.get(key)) if isinstance(obj.get(key), Mapping) else None
            if inner is not None:
                return inner
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj  # a mixed dict: its tensors are shown, the other entries skipped
    return None
