"""Fuzz `dwfc.load_sparse` with hypothesis: malformed files raise InputError, nothing else.

Three families of inputs: random bytes; hand-built safetensors headers (wrong dtypes, offsets,
huge shapes, odd metadata); and valid dwfc sparse files with one companion tensor, the bitmask
bits or the metadata mutated. Every dense allocation the loader makes is checked against a
bound proportional to the file size, so a header claiming a huge shape cannot exhaust memory.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dwfc.errors import InputError
from dwfc.export import load_sparse, save_sparse

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

# safetensors dtype names and item sizes; the last few are valid names torch cannot hold, or junk.
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8,
    "F8_E8M0": 1, "F4": 1, "X9": 4, "": 1,
}  # fmt: skip
DTYPES = sorted(ITEMSIZE)
SUFFIXES = ("compressed", "bitmask", "shape", "row_offsets")
# Allocations may not exceed this many bytes per byte of file (8 bits per bitmask byte times an
# 8-byte value, the widest dtype) plus a small constant.
EXPANSION = 64

small_dims = st.lists(st.integers(0, 6), min_size=0, max_size=3)
wild_ints = st.one_of(
    st.integers(-3, 12),
    st.sampled_from([2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -(2**63)]),
)
wild_shape = st.lists(wild_ints, min_size=0, max_size=5)


def _raw_file(tensors: dict[str, tuple[str, list[int], bytes]], metadata: Any) -> bytes:
    """Serialise a safetensors file by hand: any dtype name, shape and data are allowed."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data, offset = b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


@st.composite
def raw_tensor(draw: st.DrawFn, shape: list[int] | None = None) -> tuple[str, list[int], bytes]:
    """A tensor entry whose byte length fits its dtype and shape (when the dtype is known)."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(small_dims) if shape is None else shape
    size = math.prod(shape) * ITEMSIZE[dtype]
    return dtype, shape, draw(st.binary(min_size=size, max_size=size))


def _sparse_parts(w: np.ndarray) -> dict[str, tuple[str, list[int], bytes]]:
    """The four companion tensors of `w` (float32, rank >= 1), as save_sparse writes them."""
    rows = 1 if w.ndim == 1 else w.shape[0]
    flat = w.reshape(rows, -1)
    mask = flat != 0
    counts = mask.sum(axis=1).astype(np.int64)
    packed = np.packbits(mask, axis=-1, bitorder="little")
    return {
        "compressed": ("F32", [int(mask.sum())], flat[mask].astype("<f4").tobytes()),
        "bitmask": ("U8", list(packed.shape), packed.tobytes()),
        "shape": ("I64", [w.ndim], np.asarray(w.shape, "<i8").tobytes()),
        "row_offsets": ("I64", [rows], (np.cumsum(counts) - counts).astype("<i8").tobytes()),
    }


@st.composite
def sparse_weight(draw: st.DrawFn) -> np.ndarray:
    """A float32 array of rank 1-3 with zeros, -0.0, NaN and subnormals (numpy-made: fast)."""
    shape = draw(st.lists(st.integers(1, 11), min_size=1, max_size=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pool = np.asarray([0.0, -0.0, 1.5, -2.0, np.nan, 3e-39], np.float32)
    w = rng.choice(pool, size=shape) * (rng.random(shape) < draw(st.floats(0.0, 1.0)))
    return w.astype(np.float32)


def _meta(names: list[str]) -> dict[str, str]:
    return {"dwfc.format": "sparse-bitmask", "dwfc.sparse_keys": json.dumps(names)}


def _file_of(parts: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A dwfc sparse file holding the companion tensors `parts` of one weight named "w"."""
    return _raw_file({f"w.{k}": v for k, v in parts.items()}, _meta(["w"]))


@st.composite
def mutated_sparse_file(draw: st.DrawFn) -> tuple[bytes, dict[str, list[int]]]:
    """A valid dwfc file for one weight with one thing changed; returns (bytes, claimed shapes)."""
    w = draw(sparse_weight())
    parts = _sparse_parts(w)
    meta: Any = _meta(["w"])
    kind = draw(st.sampled_from(["part", "shape", "bits", "drop", "meta", "none"]))
    suffix = draw(st.sampled_from(SUFFIXES))
    if kind == "part":  # one companion replaced by an arbitrary, self-consistent tensor
        parts[suffix] = draw(raw_tensor())
    elif kind == "shape":  # .shape claims other dimensions, any int dtype
        dims = draw(wild_shape)
        dtype = draw(st.sampled_from(["I64", "I32", "U64", "I8", "F32"]))
        fmt = {"I64": "<i8", "I32": "<i4", "U64": "<u8", "I8": "<i1", "F32": "<f4"}[dtype]
        with np.errstate(over="ignore"):
            raw = np.asarray(dims, dtype=object).astype(np.int64).astype(fmt).tobytes()
        parts["shape"] = (dtype, [len(dims)], raw)
    elif kind == "bits":  # flip a bit in one companion's data
        dtype, shape, raw = parts[suffix]
        if raw:
            data = bytearray(raw)
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
            parts[suffix] = (dtype, shape, bytes(data))
    elif kind == "drop":
        del parts[suffix]
    elif kind == "meta":
        meta = draw(
            st.one_of(
                st.sampled_from(["[" * 5000, "[" * 5000 + "]" * 5000, '["w", "w"]', "{}"]).map(
                    lambda keys: {"dwfc.format": "sparse-bitmask", "dwfc.sparse_keys": keys}
                ),
                st.just({"dwfc.format": "other"}),
                st.just({"dwfc.format": 3}),
                st.just([1, 2]),
                st.dictionaries(st.sampled_from(["dwfc.format", "dwfc.sparse_keys", "format"]),
                                st.text(max_size=20)),
            )
        )  # fmt: skip
    tensors = {f"w.{k}": v for k, v in parts.items()}
    if draw(st.booleans()):
        tensors["b"] = draw(raw_tensor())
    # Only these mutations keep the claimed shape: a flipped bit in .shape may claim another one.
    keeps_shape = kind == "none" or (kind == "bits" and suffix != "shape")
    claimed = {"w": w.shape} if keeps_shape else {}
    return _raw_file(tensors, meta), {k: list(v) for k, v in claimed.items()}


@st.composite
def crafted_header_file(draw: st.DrawFn) -> bytes:
    """A header with arbitrary dtypes, shapes and offsets over a short data section."""
    names = draw(st.lists(st.sampled_from(["w", "w.shape", "w.bitmask", "x"]), max_size=3))
    header: dict[str, Any] = {}
    for name in names:
        header[name] = {
            "dtype": draw(st.sampled_from(DTYPES)),
            "shape": draw(wild_shape),
            "data_offsets": draw(st.lists(wild_ints, min_size=0, max_size=3)),
        }
    if draw(st.booleans()):
        header["__metadata__"] = _meta(["w"])
    text = json.dumps(header).encode()
    length = draw(st.sampled_from([len(text), len(text) + 3, 2**63, 0, 7]))
    return struct.pack("<Q", length) + text + draw(st.binary(max_size=64))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "fuzz.safetensors"


class _AllocationTooLarge(AssertionError):
    pass


def _bounded_zeros(limit: int) -> Any:
    original = torch.zeros

    def zeros(*size: Any, **kwargs: Any) -> torch.Tensor:
        shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
        dtype = kwargs.get("dtype") or torch.get_default_dtype()
        need = math.prod(int(s) for s in shape) * dtype.itemsize
        if need > limit:
            raise _AllocationTooLarge(f"loader asked for {need} bytes, limit {limit}")
        return original(*size, **kwargs)

    return zeros


def _load(path: Path, data: bytes) -> Iterator[dict[str, torch.Tensor]]:
    """Write `data` to `path` and load it; yields the result, or nothing on InputError."""
    path.write_bytes(data)
    limit = EXPANSION * len(data) + 4096
    with mock.patch.object(torch, "zeros", _bounded_zeros(limit)):
        try:
            out = load_sparse(path)
        except InputError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            return
    assert isinstance(out, dict)
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in out.items())
    yield out


@SETTINGS
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=64).map(
    lambda b: struct.pack("<Q", len(b)) + b)))  # fmt: skip
def test_random_bytes_raise_input_error(target: Path, data: bytes) -> None:
    for _ in _load(target, data):
        pass  # an empty header of "{}" style bytes may legitimately load as an empty dict


@SETTINGS
@given(data=crafted_header_file())
def test_crafted_headers_raise_input_error(target: Path, data: bytes) -> None:
    for _ in _load(target, data):
        pass


@SETTINGS
@given(case=mutated_sparse_file())
def test_mutated_sparse_files_load_consistently_or_raise(
    target: Path, case: tuple[bytes, dict[str, list[int]]]
) -> None:
    data, claimed = case
    for out in _load(target, data):
        for name, shape in claimed.items():
            assert list(out[name].shape) == shape
        if "w" in out:  # whatever loaded for "w" is a tensor whose size fits its shape
            assert out["w"].numel() == math.prod(out["w"].shape)


@settings(SETTINGS, max_examples=60)
@given(w=sparse_weight(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_valid_files_roundtrip(target: Path, w: np.ndarray, dtype: torch.dtype) -> None:
    tensor = torch.from_numpy(w).to(dtype)
    save_sparse({"w": tensor}, target, ["w"])
    out = load_sparse(target)["w"]
    expected = torch.where(tensor == 0, torch.zeros_like(tensor), tensor)  # -0.0 loads as +0.0
    assert out.dtype == dtype and out.shape == tensor.shape
    assert torch.equal(out.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8))


@pytest.mark.parametrize("dtype", ["U16", "U32", "U64", "F8_E4M3", "BOOL", "I8", "C64"])
def test_values_of_any_torch_dtype_load(target: Path, dtype: str) -> None:
    parts = _sparse_parts(np.asarray([[0.0, 1.0, 0.0, 1.0]], np.float32))
    size = ITEMSIZE[dtype]
    parts["compressed"] = (dtype, [2], bytes([1] + [0] * (size - 1)) * 2)
    out = next(iter(_load(target, _file_of(parts))))
    assert out["w"].shape == (1, 4)
    assert out["w"].reshape(-1)[:1].view(torch.uint8).tolist() == [0] * size  # +0: all-zero bits
    assert out["w"].reshape(-1)[1:2].view(torch.uint8).tolist() == [1] + [0] * (size - 1)


@pytest.mark.parametrize(
    ("dtype", "dims"),
    [
        pytest.param("U64", [5, 0, 2**64 - 1], id="u64-max"),
        pytest.param("I64", [0, 2**63 - 1, 4], id="stride-overflow"),
        pytest.param("I64", [0] * 100, id="rank-100"),
        pytest.param("I64", [0, 2**40], id="zero-rows"),
        pytest.param("I64", [1, 0, -1], id="negative"),
        pytest.param("U64", [2**63 + 5], id="beyond-i64"),
        pytest.param("I64", [3, 0, 2**62, 2**62], id="product"),
        pytest.param("I64", [2**40, 0], id="many-empty-rows"),
    ],
)
def test_implausible_shapes(target: Path, dtype: str, dims: list[int]) -> None:
    parts = _sparse_parts(np.zeros((1, 1), np.float32))
    fmt = {"U64": "<u8", "I64": "<i8"}[dtype]
    parts["shape"] = (dtype, [len(dims)], np.asarray(dims, dtype=object).astype(fmt).tobytes())
    rows = 1 if len(dims) == 1 else dims[0]
    parts["bitmask"] = ("U8", [rows, 0], b"")  # no bytes, whatever the number of rows
    kept = rows if 0 <= rows <= 8 else 1
    parts["row_offsets"] = ("I64", [kept], bytes(8 * kept))
    parts["compressed"] = ("F32", [0], b"")
    for out in _load(target, _file_of(parts)):
        assert out["w"].numel() == 0
