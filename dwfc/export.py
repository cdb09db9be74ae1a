"""Ship sparse models: bitmask-compressed safetensors files and checked ONNX exports.

The sparse file layout follows compressed-tensors' "sparse-bitmask" format; see docs/format.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dwfc._atomic import atomic_path
from dwfc.errors import ExportCheckError, InputError

FORMAT_NAME = "sparse-bitmask"
FORMAT_KEY = "dwfc.format"
SPARSE_KEYS_KEY = "dwfc.sparse_keys"
HASHES_KEY = "dwfc.hashes"
SPARSE_ONNX_FILE = "model.sparse.onnx"
SUFFIXES = ("compressed", "bitmask", "shape", "row_offsets")
SPARSE_ONNX_NOTE = (
    "onnxruntime expands sparse initializers to dense tensors when it loads the model: the file "
    "is smaller, but memory use and speed are those of the dense model.onnx"
)
_MAX_RANK = 64
_MAX_ELEMENTS = 2**62  # bound on the product of a claimed shape's non-zero dimensions
_SPARSE_ONNX_TYPES = (1, 10, 11)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE

_PathLike = str | os.PathLike[str]


def _grid(shape: list[int]) -> tuple[int, int]:
    """(rows, cols) of the 2-D view used for the bitmask: 1-D (n,) is (1, n)."""
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def _check_file(path: _PathLike) -> Path:
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

    p = _check_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # also pyo3's PanicException, which is not an Exception
        raise InputError(f"{p}: not a readable safetensors file ({_first_line(exc)})") from exc


def _sparse_names(p: Path, meta: Mapping[str, str]) -> list[str]:
    if FORMAT_KEY not in meta:
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
        raise bad(f"cannot be rebuilt as {values.dtype} {shape} ({_first_line(exc)})") from exc


def load_sparse(path: _PathLike) -> dict[str, torch.Tensor]:
    """Load a file written by `save_sparse`, returning the dense state dict.

    Sparse entries are validated against each other before anything is allocated; any
    inconsistency raises InputError. Plain safetensors files (no dwfc metadata) load as-is.

    Example:
        model.load_state_dict(load_sparse("model.safetensors"))
    """
    from safetensors import safe_open

    p = _check_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # also pyo3's PanicException, which is not an Exception
        raise InputError(f"{p}: not a readable safetensors file ({_first_line(exc)})") from exc

    names = _sparse_names(p, meta)
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


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Discard stdout/stderr at the file-descriptor level, where C++ logging writes too.

    The TorchScript exporter turns on its C++ ONNX log and prints the whole graph on failure.
    """
    sink = io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def export_onnx(
    model: nn.Module, example_input: torch.Tensor, path: _PathLike, opset: int = 17
) -> None:
    """Export `model` (eval mode, no grad) to ONNX with a dynamic batch axis, then check it.

    Input is named "input", output "output". The file only appears at `path` once
    `onnx.checker` accepts it; failures raise ExportCheckError. The model's train/eval mode
    is restored afterwards.

    Example:
        export_onnx(model, torch.randn(1, 1, 28, 28), "model.onnx")
    """
    import onnx

    x = example_input.to(_model_device(model))
    with _eval_mode(model), atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings(), _silenced():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (x,),
                    str(tmp),
                    dynamo=False,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                    opset_version=opset,
                )
        except Exception as exc:
            raise ExportCheckError(f"ONNX export failed: {_first_line(exc)}") from exc
        try:
            onnx.checker.check_model(str(tmp))
        except Exception as exc:
            raise ExportCheckError(f"{path}: ONNX checker failed: {_first_line(exc)}") from exc


def _sparse_initializer(init: Any, min_sparsity: float) -> Any | None:
    """A SparseTensorProto (1-D INT64 linear indices) for `init`, or None to keep it dense."""
    from onnx import helper, numpy_helper

    if init.data_type not in _SPARSE_ONNX_TYPES or len(init.dims) == 0:
        return None
    arr = numpy_helper.to_array(init)
    flat = arr.reshape(-1)
    idx = np.flatnonzero(flat)
    if flat.size == 0 or 1.0 - idx.size / flat.size < min_sparsity:
        return None
    if idx.size * (8 + arr.itemsize) >= arr.nbytes:  # indices cost 8 bytes per kept value
        return None
    values = numpy_helper.from_array(flat[idx], init.name)
    indices = numpy_helper.from_array(idx.astype(np.int64), f"{init.name}.indices")
    return helper.make_sparse_tensor(values, indices, list(arr.shape))


def export_sparse_onnx(
    dense_onnx_path: _PathLike, out_path: _PathLike, min_sparsity: float = 0.5
) -> bool:
    """Rewrite mostly-zero initializers of an ONNX file as `sparse_initializer`s.

    An initializer becomes a SparseTensorProto (values plus 1-D INT64 linear indices into the
    flattened tensor) when its share of zeros is at least `min_sparsity` and that saves bytes.
    The result must pass `onnx.checker` and load in onnxruntime; it is written atomically to
    `out_path` only when smaller than the dense file. Returns whether it was written.
    onnxruntime expands sparse initializers to dense on load (SPARSE_ONNX_NOTE).

    Example:
        if export_sparse_onnx("out/model.onnx", "out/model.sparse.onnx"):
            print("smaller sparse variant written")
    """
    import onnx

    if not 0.0 <= min_sparsity <= 1.0:
        raise InputError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    src = _check_file(dense_onnx_path)
    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise InputError(f"{src}: not a readable ONNX file ({_first_line(exc)})") from exc
    graph = model.graph
    overridable = {i.name for i in graph.input}  # an initializer that is also an input stays
    kept, sparse = [], []
    for init in graph.initializer:
        converted = None if init.name in overridable else _sparse_initializer(init, min_sparsity)
        (sparse if converted is not None else kept).append(converted or init)
    if not sparse:
        return False
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.sparse_initializer.extend(sparse)
    data = model.SerializeToString()
    if len(data) >= src.stat().st_size:
        return False
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ExportCheckError(f"{out_path}: ONNX checker failed: {_first_line(exc)}") from exc
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
        try:
            _session(tmp)
        except InputError as exc:
            raise ExportCheckError(f"{out_path}: {exc}") from exc
    return True


def _session(path: _PathLike) -> Any:
    import onnxruntime as ort

    p = _check_file(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputError(f"{p}: onnxruntime cannot load it ({_first_line(exc)})") from exc


def _run(session: Any, x: torch.Tensor) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: x.detach().cpu().numpy()})[0]


def onnx_outputs(path: _PathLike, batch: torch.Tensor) -> np.ndarray:
    """The first output of the ONNX model at `path` for `batch`, run on onnxruntime's CPU.

    Example:
        logits = onnx_outputs("model.onnx", torch.randn(8, 1, 28, 28))
    """
    return _run(_session(path), batch)


def onnx_max_abs_diff(path: _PathLike, model: nn.Module, batch: torch.Tensor) -> float:
    """Max |onnxruntime(batch) - model(batch)| over all outputs, the model in eval mode.

    Example:
        assert onnx_max_abs_diff("model.onnx", model, torch.randn(8, 784)) <= 1e-4
    """
    session = _session(path)
    got = _run(session, batch)
    with _eval_mode(model):
        want = model(batch.to(_model_device(model))).detach().cpu().numpy()
    if got.shape != want.shape:
        raise ExportCheckError(f"{path}: ONNX output shape {got.shape} != PyTorch {want.shape}")
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))


def onnx_accuracy(path: _PathLike, loader: Iterable[Any]) -> float:
    """Top-1 accuracy in [0, 1] of the ONNX model over `loader`'s (x, y) batches.

    Example:
        acc = onnx_accuracy("model.onnx", DataLoader(test_set, batch_size=256))
    """
    session = _session(path)
    correct = total = 0
    for x, y in loader:
        pred = np.argmax(_run(session, x), axis=1)
        labels = torch.as_tensor(y).cpu().numpy().reshape(-1)
        correct += int(np.sum(pred == labels))
        total += labels.size
    if total == 0:
        raise InputError("onnx_accuracy: the loader yielded no samples")
    return correct / total
