"""Running exported ONNX models in onnxruntime (CPU): outputs, parity with PyTorch, accuracy.

The export stage and `dwfc verify` both check parity and accuracy through these functions.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from dwfc import inputs
from dwfc.errors import ExportCheckError, InputError, first_line
from dwfc.export.sparse_file import existing_file
from dwfc.inputs import Inputs

_PathLike = str | os.PathLike[str]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode under no_grad; its train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def ort_session(path: _PathLike, threads: int = 0, quiet: bool = False,
                spin: bool = True) -> Any:  # fmt: skip
    """An onnxruntime CPU session for the model at `path`; InputError when it cannot load.

    `threads`: intra-op threads (0: onnxruntime's default, one per physical core). `quiet`: not
    even errors are logged (for probing runs that are expected to fail). `spin=False`: idle
    threads sleep instead of spinning, so that sessions timed in turn do not slow each other."""
    import onnxruntime as ort

    p = existing_file(path)
    options = ort.SessionOptions()
    options.log_severity_level = 4 if quiet else 3
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputError(f"{p}: onnxruntime cannot load it ({first_line(exc)})") from exc


def _run(session: Any, x: Inputs) -> np.ndarray:
    try:
        feed = inputs.feed(session, x)
    except ValueError as exc:
        raise ExportCheckError(str(exc)) from None
    return session.run(None, feed)[0]


def onnx_outputs(path: _PathLike, batch: Inputs) -> np.ndarray:
    """The first output of the ONNX model at `path` for `batch`, run on onnxruntime's CPU.

    Example:
        logits = onnx_outputs("model.onnx", torch.randn(8, 1, 28, 28))
    """
    return _run(ort_session(path), batch)


def max_abs_diff(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """Max |got - want| in float64; outputs of different shapes are an ExportCheckError."""
    if got.shape != want.shape:
        raise ExportCheckError(f"{what}: output shapes {got.shape} and {want.shape} differ")
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))


def onnx_max_abs_diff(path: _PathLike, model: nn.Module, batch: Inputs) -> float:
    """Max |onnxruntime(batch) - model(batch)| over all outputs, the model in eval mode.

    Example:
        assert onnx_max_abs_diff("model.onnx", model, torch.randn(8, 784)) <= 1e-4
    """
    got = onnx_outputs(path, batch)
    with eval_mode(model):
        want = inputs.call(model, inputs.to(batch, model_device(model))).detach().cpu().numpy()
    return max_abs_diff(got, want, f"{path}: ONNX vs PyTorch")


def check_parity(path: _PathLike, model: nn.Module, batch: Inputs, tolerance: float) -> float:
    """`onnx_max_abs_diff`, an ExportCheckError when it exceeds `tolerance`; returns it."""
    diff = onnx_max_abs_diff(path, model, batch)
    if not diff <= tolerance:
        raise ExportCheckError(
            f"onnxruntime output differs from PyTorch by {diff:.3g} (tolerance {tolerance:g})"
        )
    return diff


def onnx_accuracy(path: _PathLike, loader: Iterable[Any]) -> float:
    """Top-1 accuracy in [0, 1] of the ONNX model over `loader`'s (x, y) batches.

    Example:
        acc = onnx_accuracy("model.onnx", DataLoader(test_set, batch_size=256))
    """
    session = ort_session(path)
    correct = total = 0
    for x, y in loader:
        pred = np.argmax(_run(session, x), axis=1)
        labels = torch.as_tensor(y).cpu().numpy().reshape(-1)
        correct += int(np.sum(pred == labels))
        total += labels.size
    if total == 0:
        raise InputError("onnx_accuracy: the loader yielded no samples")
    return correct / total


def spatial_sizes_work(path: _PathLike, model: nn.Module, example: Inputs,
                       tolerance: float) -> bool:  # fmt: skip
    """Whether the ONNX model at `path`, exported with dynamic height and width, runs on a larger
    image and matches PyTorch there (false for models with a fixed-size flatten, say)."""
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        return False
    n, c, h, w = example.shape
    x = torch.randn(min(n, 2), c, h + 16, w + 16, generator=torch.Generator().manual_seed(0))
    try:
        with eval_mode(model):
            want = model(x.to(model_device(model))).detach().cpu().numpy()
        got = _run(ort_session(path, quiet=True), x)
    except Exception:  # the model itself, or its ONNX graph, takes one size only
        return False
    return got.shape == want.shape and max_abs_diff(got, want, "larger input") <= tolerance
