"""The sparse safetensors file: bitmask-compressed weights, their loader, and tensor digests.

The layout is dwfc's own (docs/format.md): it began from compressed-tensors' legacy
"sparse-bitmask" format, but neither library reads the other's files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from dwfc._atomic import atomic_path
from dwfc.errors import InputError, first_line

FORMAT_NAME = "sparse-bitmask"
# Metadata keys of the file's header (docs/format.md).
FORMAT_KEY = "dwfc.format"
SPARSE_KEYS_KEY = "dwfc.sparse_keys"
HASHES_KEY = "dwfc.hashes"
VERSION_KEY = "dwfc.version"
RECIPE_KEY = "dwfc.recipe"
SPARSITY_KEY = "dwfc.sparsity"
SUFFIXES = ("compressed", "bitmask", "shape", "row_offsets")
_MAX_RANK = 64
_MAX_ELEMENTS = 2**62  # bound on the product of a claimed shape's non-zero dimensions

_PathLike = str | os.PathLike[str]


def _grid(shape: list[int]) -> tuple[int, int]:
    """(rows, cols) of the 2-D view used for the bitmask: 1-D (n,) is (1, n)."""
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def _compress(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    shape = list(weight.shape)
    rows, cols = _grid(shape)
    flat = weight.detach().cpu().contiguous().reshape(rows, cols)
    mask = flat != 0
    row_counts = mask.sum(dim=1, dtype=torch.int64)
    packed = np.packbits(mask.numpy(), axis=-1, bitorder="little")
    return {
        f"{name}.compressed": flat[mask],
        f"{name}.bitmask": torch.from_numpy(packed).reshape(rows, (cols + 7) // 8),
        f"{name}.shape": torch.tensor(shape, dtype=torch.int64),
        f"{name}.row_offsets": torch.cumsum(row_counts, 0) - row_counts,
    }


def save_sparse(
    state_dict: Mapping[str, torch.Tensor],
    path: _PathLike,
    sparse_keys: Iterable[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `state_dict` to a safetensors file, bitmask-compressing the tensors in `sparse_keys`.

    Each sparse key `<name>` is stored as `<name>.compressed`, `<name>.bitmask`, `<name>.shape`
    and `<name>.row_offsets` (see docs/format.md); every other tensor is stored dense. Zeros,
    including -0.0, are dropped, so -0.0 loads back as 0.0.

    Example:
        save_sparse(model.state_dict(), "model.safetensors", ["fc1.weight", "fc2.weight"])
    """
    from safetensors.torch import save_file

    keys = list(dict.fromkeys(sparse_keys))
    for key in keys:
        if key not in state_dict:
            raise InputError(f"sparse key {key!r} is not in the state dict")
        if state_dict[key].dim() < 1:
            raise InputError(f"sparse key {key!r} is a scalar; only tensors of rank >= 1 compress")

    meta: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InputError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        meta[k] = v
    meta.setdefault("format", "pt")
    meta[FORMAT_KEY] = FORMAT_NAME
    meta[SPARSE_KEYS_KEY] = json.dumps(keys)

    sparse = set(keys)
    out: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for key, value in state_dict.items():
        if key in sparse:
            continue
        tensor = value.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        # safetensors refuses tensors that share memory (tied weights); store copies instead.
        if tensor.numel() and ptr in seen_storage:
            tensor = tensor.clone()
        seen_storage.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    for key in keys:
        for part, tensor in _compress(key, state_dict[key]).items():
            if part in out:
                raise InputError(f"cannot compress {key!r}: the state dict already has {part!r}")
            out[part] = tensor

    with atomic_path(path) as tmp:
        save_file(out, str(tmp), metadata=meta)


def _canonical_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as (numel, itemsize) uint8, with every zero value as +0 bits."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    raw = t.view(torch.uint8).reshape(t.numel(), t.element_size())
    if t.is_floating_point() or t.is_complex():
        raw = raw.masked_fill((t == 0).unsqueeze(1), 0)  # -0.0 -> +0.0, as load_sparse does
    return raw.numpy()


def tensor_digests(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Return a "sha256:<hex>" digest of each tensor's dtype, shape and bytes (-0.0 as +0.0).

    The hashed bytes are `b"<dtype>|<d0,d1,...>|"` (e.g. `b"float32|300,784|"`) followed by
    the little-endian element bytes with -0.0 written as +0.0, so a state dict and the one
    `load_sparse` restores from its sparse file hash the same. Stored by the pipeline in
    report.json under "hashes" and in the safetensors metadata under `dwfc.hashes` (JSON).

    Example:
        tensor_digests({"w": torch.zeros(2)})["w"]  # "sha256:..."
    """
    out: dict[str, str] = {}
    for name, tensor in state_dict.items():
        head = f"{str(tensor.dtype).removeprefix('torch.')}|{','.join(map(str, tensor.shape))}|"
        digest = hashlib.sha256(head.encode())
        digest.update(_canonical_bytes(tensor).tobytes())
        out[name] = "sha256:" + digest.hexdigest()
    return out


def existing_file(path: _PathLike) -> Path:
    """`path` as a Path, or an InputError when no such file exists."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    return p


def read_metadata(path: _PathLike) -> dict[str, str]:
    """Return the str->str metadata stored in a safetensors file's header.

    Example:
        read_metadata("model.safetensors")["dwfc.format"]  # "sparse-bitmask"
    """
    from safetensors import safe_open

    p = existing_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # also pyo3's PanicException, which is not an Exception
        raise InputError(f"{p}: not a readable safetensors file ({first_line(exc)})") from exc


def foreign_bitmask_names(keys: Iterable[str]) -> list[str]:
    """The tensors stored in a sparse-bitmask layout (`<name>.compressed`, `.bitmask`, `.shape`)
    in a file without dwfc's metadata: compressed-tensors writes these, in a layout dwfc does
    not decode (docs/format.md)."""
    keys = set(keys)
    return sorted(k.removesuffix(".bitmask") for k in keys if k.endswith(".bitmask")
                  and {k.replace(".bitmask", f".{s}") for s in ("compressed", "shape")} <= keys)


def _sparse_names(p: Path, meta: Mapping[str, str], keys: Iterable[str]) -> list[str]:
    if FORMAT_KEY not in meta:
        foreign = foreign_bitmask_names(keys)
        if foreign:
            raise InputError(
                f"{p}: a sparse-bitmask file not written by dwfc (compressed-tensors' layout?), "
                f"e.g. {foreign[0]}.compressed; dwfc reads only its own layout (docs/format.md): "
                "decompress it with the library that wrote it"
            )
        return []
    if meta[FORMAT_KEY] != FORMAT_NAME:
        raise InputError(f"{p}: unknown {FORMAT_KEY} {meta[FORMAT_KEY]!r}")
    try:
        names = json.loads(meta.get(SPARSE_KEYS_KEY, "[]"))
    except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{p}: metadata {SPARSE_KEYS_KEY} is not a JSON list of names")
    return names


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _decompress(p: Path, name: str, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    def bad(problem: str) -> InputError:
        return InputError(f"{p}: sparse tensor {name!r}: {problem}")

    shape_t, values = parts["shape"], parts["compressed"]
    bitmask, offsets = parts["bitmask"], parts["row_offsets"]
    if shape_t.dim() != 1 or not 1 <= shape_t.numel() <= _MAX_RANK or not _is_int(shape_t):
        raise bad(f"shape must be a 1-D int tensor of 1 to {_MAX_RANK} dimensions")
    shape = [int(d) for d in shape_t.tolist()]
    if any(d < 0 for d in shape) or math.prod(max(d, 1) for d in shape) > _MAX_ELEMENTS:
        raise bad(f"implausible shape {shape}")
    rows, cols = _grid(shape)
    # Each claim is checked against tensors actually in the file before anything of the
    # claimed size exists: the bitmask bounds rows * cols (8 per byte), row_offsets bounds rows.
    if bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != (rows, (cols + 7) // 8):
        raise bad(
            f"bitmask is {bitmask.dtype} {tuple(bitmask.shape)}, shape {shape} needs "
            f"uint8 {(rows, (cols + 7) // 8)}"
        )
    if offsets.dim() != 1 or not _is_int(offsets) or offsets.numel() != rows:
        raise bad(f"row_offsets must be a 1-D int tensor of {rows} entries")
    if values.dim() != 1:
        raise bad(f"compressed must be 1-D, got shape {tuple(values.shape)}")
    packed = bitmask.numpy()
    if cols % 8 and packed.size and np.any(packed[:, -1] >> (cols % 8)):
        raise bad("bitmask has bits set past the last column")
    mask = np.unpackbits(packed, axis=-1, count=cols, bitorder="little").astype(bool)
    mask = mask.reshape(rows, cols)
    row_counts = mask.sum(axis=1, dtype=np.int64)
    nnz = int(row_counts.sum())
    if values.numel() != nnz:
        raise bad(f"bitmask has {nnz} set bits but compressed has {values.numel()} values")
    expected = np.cumsum(row_counts) - row_counts
    if not np.array_equal(offsets.to(torch.int64).numpy(), expected):
        raise bad("row_offsets do not match the bitmask")
    # Scatter raw bytes, not values: works for every dtype (index_put lacks some, e.g. uint16)
    # and restores each kept value bit for bit.
    size = values.element_size()
    try:
        dense = torch.zeros((rows * cols, size), dtype=torch.uint8)
        dense[torch.from_numpy(mask.reshape(-1))] = (
            values.reshape(-1).view(torch.uint8).reshape(nnz, size)
        )
        return dense.view(values.dtype).reshape(shape)
    except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise bad(f"cannot be rebuilt as {values.dtype} {shape} ({first_line(exc)})") from exc


def load_sparse(path: _PathLike) -> dict[str, torch.Tensor]:
    """Load a file written by `save_sparse`, returning the dense state dict.

    Sparse entries are validated against each other before anything is allocated; any
    inconsistency raises InputError. Plain safetensors files (no dwfc metadata) load as-is; a
    sparse-bitmask file dwfc did not write (compressed-tensors') is refused, never returned raw.

    Example:
        model.load_state_dict(load_sparse("model.safetensors"))
    """
    from safetensors import safe_open

    p = existing_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # also pyo3's PanicException, which is not an Exception
        raise InputError(f"{p}: not a readable safetensors file ({first_line(exc)})") from exc

    names = _sparse_names(p, meta, stored)
    result: dict[str, torch.Tensor] = {}
    for name in names:
        if name in stored:
            raise InputError(f"{p}: {name!r} is stored both dense and sparse")
        parts: dict[str, torch.Tensor] = {}
        for suffix in SUFFIXES:
            part = stored.pop(f"{name}.{suffix}", None)
            if part is None:
                raise InputError(f"{p}: sparse tensor {name!r} has no {name}.{suffix}")
            parts[suffix] = part
        result[name] = _decompress(p, name, parts)
    result.update(stored)
    return result


def unpack(src: _PathLike, dst: _PathLike) -> Path:
    """Write the dense state dict of the sparse file `src` as a plain safetensors file `dst`
    (atomically), which `model.load_state_dict(safetensors.torch.load_file(dst))` accepts.

    Example:
        unpack("runs/lenet/model.safetensors", "runs/lenet/model.dense.safetensors")
    """
    from safetensors.torch import save_file

    state = load_sparse(src)
    meta = {k: v for k, v in read_metadata(src).items()
            if k not in (FORMAT_KEY, SPARSE_KEYS_KEY)}  # fmt: skip
    target = Path(dst)
    with atomic_path(target) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    return target
