"""model.int8.onnx: onnxruntime's int8 quantization of model.onnx, and the check that every
pruned weight is still exactly zero in it.

`dynamic` quantizes the weights ahead of time and the activations at run time (no data needed);
`static` also fixes the activation ranges from calibration batches of the training data (QDQ
format). Weights are int8 and symmetric, so a zero weight is stored as its zero point and stays
exactly zero; per output channel where the operator allows it (Gemm/MatMul, and Conv in static
mode; dynamic ConvInteger takes one scale per tensor, and dynamic mode leaves ConvTranspose in
float). `pruned_zeros_kept` reads the int8 file back and checks every pruned weight.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dwfc import inputs
from dwfc._atomic import atomic_path
from dwfc.errors import ExportCheckError, first_line
from dwfc.export.onnx_file import full_check

_PathLike = str | os.PathLike[str]
_SUFFIXES = ("_quantized", "_Transposed_quantized")  # how onnxruntime names a quantized weight


@dataclass
class ZeroCheck:
    """Pruned (zero) weights of model.onnx, and how many of them model.int8.onnx keeps zero."""

    zeros: int = 0  # zero entries of the quantized sparse weights, in model.onnx
    kept: int = 0  # of those, still exactly zero in model.int8.onnx
    quantized: list[str] = field(default_factory=list)  # sparse weights stored as int8
    left_float: list[str] = field(default_factory=list)  # left in float, byte for byte the same
    unchecked: list[str] = field(default_factory=list)  # in a form the check does not read


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs advice (pre-processing) at INFO/WARNING level."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _input_names(path: _PathLike) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def _reader(batches: Iterable[Any], count: int, names: list[str]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.inputs = iter(batches)
            self.left = count
            self.names = names

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.left == 0:
                return None
            batch = next(self.inputs, None)
            if batch is None:
                return None
            self.left -= 1
            x = batch[0] if isinstance(batch, list | tuple) else batch
            return inputs.numpy_feed(x, self.names)  # in the model's own input dtype

    return Batches()


def quantize_int8(
    src: _PathLike, dst: _PathLike, mode: str, calibration: Iterable[Any] | None = None,
    batches: int = 8,
) -> None:  # fmt: skip
    """Write the int8 version of the ONNX model `src` to `dst` (atomically), `mode` "dynamic" or
    "static" (calibrated on `batches` batches of `calibration`); it must pass the full checker.

    Example:
        quantize_int8("out/model.onnx", "out/model.int8.onnx", "dynamic")
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    with atomic_path(dst) as tmp, _quiet():
        try:
            if mode == "dynamic":
                quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
            else:
                if calibration is None:
                    raise ExportCheckError("static int8 quantization needs calibration batches")
                quantize_static(
                    str(src), str(tmp), _reader(calibration, batches, _input_names(src)),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                )  # fmt: skip
        except ExportCheckError:
            raise
        except Exception as exc:
            raise ExportCheckError(f"int8 quantization failed: {first_line(exc)}") from exc
        problem = full_check(tmp)
        if problem is not None:
            raise ExportCheckError(f"the int8 model fails the ONNX checker: {problem}")


def _zero_point_of(graph: Any, qname: str, q: np.ndarray,
                   stored: dict[str, np.ndarray]) -> np.ndarray | None:  # fmt: skip
    """The zero point of every entry of the quantized weight `qname`, read from the node that
    consumes it (ONNX semantics: an absent zero point is 0); None for a consumer not known."""
    node = next((n for n in graph.node if qname in n.input), None)
    if node is not None and node.op_type == "Gather":  # an embedding: gathered, then dequantized
        node = next((n for n in graph.node if n.op_type == "DequantizeLinear"
                     and n.input[0] == node.output[0]), None)  # fmt: skip
        if node is not None and any(a.name == "axis" for a in node.attribute):
            return None  # per-axis over the gathered rows: not read here
    if node is None:
        return None
    position = {"DequantizeLinear": 2, "MatMulInteger": 3, "ConvInteger": 3}.get(node.op_type)
    if position is None:
        return None
    names = list(node.input)
    zp = stored[names[position]] if len(names) > position and names[position] else None
    if zp is None:
        return np.zeros(q.shape, q.dtype)
    if zp.size == 1:
        return np.broadcast_to(zp.reshape(()), q.shape)
    if node.op_type == "DequantizeLinear":  # per-axis: along its `axis` attribute (default 1)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    else:  # MatMulInteger: one per column of B; ConvInteger: one per output channel
        axis = q.ndim - 1 if node.op_type == "MatMulInteger" else 0
    shape = [1] * q.ndim
    shape[axis] = zp.size
    return np.broadcast_to(zp.reshape(shape), q.shape)


def pruned_zeros_kept(fp32: _PathLike, int8: _PathLike) -> ZeroCheck:
    """Compare every sparse weight of the fp32 ONNX model with its int8 counterpart: a quantized
    weight must store each pruned entry as its zero point; one left in float must be unchanged.

    Example:
        check = pruned_zeros_kept("model.onnx", "model.int8.onnx")
        check.kept == check.zeros and not check.unchecked  # every pruned weight still zero
    """
    import onnx
    from onnx import numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(fp32)).graph.initializer}
    graph = onnx.load(str(int8)).graph
    stored = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    check = ZeroCheck()
    for name, w in weights.items():
        if w.ndim < 2 or not np.any(w == 0):
            continue
        qname = next((name + s for s in _SUFFIXES if name + s in stored), None)
        if qname is None:
            same = name in stored and np.array_equal(stored[name], w)
            (check.left_float if same else check.unchecked).append(name)
            continue
        q = stored[qname]
        # onnxruntime transposes a Gemm weight for MatMulInteger and says so in the name.
        pruned = (w == 0).T if qname.endswith("_Transposed_quantized") else w == 0
        zp = _zero_point_of(graph, qname, q, stored) if pruned.shape == q.shape else None
        if zp is None:
            check.unchecked.append(name)
            continue
        check.zeros += int(pruned.sum())
        check.kept += int((pruned & (q == zp)).sum())
        check.quantized.append(name)
    return check
