"""Shipping the compressed model: the sparse safetensors file (sparse_file.py), checked ONNX
exports (onnx_file.py), onnxruntime parity and accuracy (runtime.py), and the pipeline's export
stage with its registry of formats (stage.py)."""

from dwfc.export.onnx_file import SPARSE_ONNX_NOTE, export_onnx, export_sparse_onnx
from dwfc.export.runtime import onnx_accuracy, onnx_max_abs_diff, onnx_outputs
from dwfc.export.sparse_file import (
    FORMAT_KEY,
    FORMAT_NAME,
    HASHES_KEY,
    SPARSE_KEYS_KEY,
    load_sparse,
    read_metadata,
    save_sparse,
    tensor_digests,
)

__all__ = [
    "FORMAT_KEY",
    "FORMAT_NAME",
    "HASHES_KEY",
    "SPARSE_KEYS_KEY",
    "SPARSE_ONNX_NOTE",
    "export_onnx",
    "export_sparse_onnx",
    "load_sparse",
    "onnx_accuracy",
    "onnx_max_abs_diff",
    "onnx_outputs",
    "read_metadata",
    "save_sparse",
    "tensor_digests",
]
