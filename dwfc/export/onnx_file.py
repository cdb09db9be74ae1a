"""ONNX exports, checked: the dense model.onnx and the variant with sparse initializers."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dwfc import inputs
from dwfc._atomic import atomic_path
from dwfc.errors import ExportCheckError, InputError, first_line
from dwfc.export.runtime import eval_mode, model_device, ort_session
from dwfc.export.sparse_file import existing_file
from dwfc.inputs import Inputs

if TYPE_CHECKING:
    import onnx

SPARSE_ONNX_NOTE = (
    "onnxruntime expands sparse initializers to dense tensors when it loads the model: the file "
    "is smaller, but memory use and speed are those of the dense model.onnx"
)
_SPARSE_ONNX_TYPES = (1, 10, 11)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE
# The square root of float32's smallest normal number: a product of two values under it is
# subnormal, and CPUs compute subnormal numbers many times slower. A weight that small adds
# nothing a float32 output can hold, yet BatchNorm folded into a layer a penalty has shrunk
# leaves many (measured: a channel-pruned ResNetMini ran 11x slower in onnxruntime with them).
FLUSH_BELOW = float(np.sqrt(np.finfo(np.float32).tiny))

_PathLike = str | os.PathLike[str]


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


@contextlib.contextmanager
def _no_attention_fastpath() -> Iterator[None]:
    # In eval mode nn.MultiheadAttention / TransformerEncoder take a fused kernel that the
    # TorchScript exporter cannot translate; the plain path gives the same outputs.
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


SPATIAL_AXES = {2: "height", 3: "width"}  # of image input (N, C, H, W), dynamic where it works
SEQUENCE_AXES = {1: "sequence"}  # of named (tokenised) inputs (N, L): always dynamic


def export_onnx(
    model: nn.Module, example_input: Inputs, path: _PathLike, opset: int = 17,
    dynamic_spatial: bool = False, metadata: Mapping[str, str] | None = None,
) -> int:  # fmt: skip
    """Export `model` (eval mode, no grad) to ONNX with a dynamic batch axis, then check it;
    returns how many weight values under FLUSH_BELOW it set to zero (`flush_negligible`).

    One input tensor is named "input"; named inputs (tokenised text) keep their names, in the
    order of the model's forward signature, with dynamic batch and sequence axes. The output is
    "output". `dynamic_spatial` also makes the height and width of a 4-D input dynamic (only
    right for models that run at any size: `spatial_sizes_work` tells). `metadata` goes into the
    file's `metadata_props`. The file only appears at `path` once
    `onnx.checker.check_model(full_check=True)` accepts it; failures raise ExportCheckError.
    The model's train/eval mode is restored afterwards.

    Example:
        export_onnx(model, torch.randn(1, 1, 28, 28), "model.onnx")
        export_onnx(bert, {"input_ids": ids, "attention_mask": mask}, "bert.onnx")
    """

    x = inputs.ordered(model, inputs.to(example_input, model_device(model)))
    if isinstance(x, Mapping):
        names, args = list(x), tuple(x.values())
        axes = {name: {0: "batch", **SEQUENCE_AXES} for name in names}
    else:
        spatial = SPATIAL_AXES if dynamic_spatial and x.dim() == 4 else {}
        names, args = [inputs.TENSOR_NAME], (x,)
        axes = {inputs.TENSOR_NAME: {0: "batch", **spatial}}
    with eval_mode(model), _no_attention_fastpath(), atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings(), _silenced():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    args,
                    str(tmp),
                    dynamo=False,
                    input_names=names,
                    output_names=["output"],
                    dynamic_axes={**axes, "output": {0: "batch"}},
                    opset_version=opset,
                )
        except Exception as exc:
            raise ExportCheckError(f"ONNX export failed: {first_line(exc)}") from exc
        flushed = _finish(tmp, metadata or {})
        problem = full_check(tmp)
        if problem is not None:
            raise ExportCheckError(f"{path}: ONNX checker failed: {problem}")
    return flushed


def _finish(path: _PathLike, metadata: Mapping[str, str]) -> int:
    """Flush the negligible weights of a fresh export and add its metadata, in one rewrite;
    returns how many values were flushed."""
    import onnx

    model = onnx.load(str(path))
    flushed = flush_negligible(model)
    if metadata:
        _add_metadata(model, metadata)
    if flushed or metadata:
        with atomic_path(path) as tmp:
            tmp.write_bytes(model.SerializeToString())
    return flushed


def flush_negligible(model: onnx.ModelProto) -> int:
    """Set the floating-point initializer values of magnitude under FLUSH_BELOW to zero, in
    place; returns how many there were."""
    from onnx import numpy_helper

    flushed = 0
    for init in model.graph.initializer:
        if init.data_type not in _SPARSE_ONNX_TYPES:
            continue
        values = numpy_helper.to_array(init)
        negligible = (values != 0) & (np.abs(values) < FLUSH_BELOW)
        if negligible.any():
            flushed += int(negligible.sum())
            init.CopyFrom(numpy_helper.from_array(np.where(negligible, 0, values)
                                                  .astype(values.dtype), init.name))  # fmt: skip
    return flushed


def set_metadata(path: _PathLike, metadata: Mapping[str, str]) -> None:
    """Write `metadata` into the `metadata_props` of the ONNX file at `path`, in place."""
    import onnx

    model = onnx.load(str(path))
    _add_metadata(model, metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(model.SerializeToString())


def _add_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props.update(metadata)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def full_check(path: _PathLike, full: bool = True) -> str | None:
    """None when `onnx.checker.check_model(full_check=full)` accepts the file, else why not."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=full)
    except Exception as exc:
        return first_line(exc)
    return None


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
    src = existing_file(dense_onnx_path)
    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise InputError(f"{src}: not a readable ONNX file ({first_line(exc)})") from exc
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
        raise ExportCheckError(f"{out_path}: ONNX checker failed: {first_line(exc)}") from exc
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
        try:
            ort_session(tmp)
        except InputError as exc:
            raise ExportCheckError(f"{out_path}: {exc}") from exc
    return True
