"""The export stage of `dwfc compress`: every output format, one function each in `EXPORTERS`.

An exporter writes its file into the staging folder, checks it, and records what it checked in
the job's result. To add a format: write its function (here, or in its own module under
dwfc/export/) and add it to `EXPORTERS`; its file name goes into dwfc/outputs.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from dwfc._version import __version__
from dwfc.config import Recipe
from dwfc.errors import ExportCheckError
from dwfc.export.onnx_file import SPARSE_ONNX_NOTE, export_onnx, export_sparse_onnx
from dwfc.export.runtime import check_parity, onnx_accuracy
from dwfc.export.sparse_file import (
    HASHES_KEY,
    RECIPE_KEY,
    SPARSITY_KEY,
    VERSION_KEY,
    load_sparse,
    save_sparse,
    tensor_digests,
)
from dwfc.outputs import ONNX, SAFETENSORS, SPARSE_ONNX
from dwfc.report.format import jsonable
from dwfc.report.schema import OnnxInfo, SparsityInfo


@dataclass
class ExportResult:
    """What the exporters wrote and checked, for the report."""

    hashes: dict[str, str] = field(default_factory=dict)  # of every tensor in the weights file
    onnx: OnnxInfo | None = None  # None: no ONNX written (export.onnx off)
    onnx_accuracy: float | None = None


@dataclass
class ExportJob:
    model: nn.Module  # collapsed, sparse
    folder: Path  # the staging folder
    sparse_keys: list[str]  # the state-dict keys stored sparse (every name of a tied weight)
    example: torch.Tensor  # an evaluation batch: the ONNX example input and parity batch
    eval_loader: DataLoader
    recipe: Recipe
    sparsity: SparsityInfo
    result: ExportResult = field(default_factory=ExportResult)


def write_safetensors(job: ExportJob) -> None:
    """model.safetensors, read back and compared bit for bit."""
    state = {k: v.detach().cpu() for k, v in job.model.state_dict().items()}
    hashes = tensor_digests(state)
    metadata = {
        VERSION_KEY: __version__,
        RECIPE_KEY: json.dumps(job.recipe.model_dump(mode="json")),
        SPARSITY_KEY: json.dumps(jsonable(job.sparsity.model_dump(mode="json"))),
        HASHES_KEY: json.dumps(hashes),
    }
    path = job.folder / SAFETENSORS
    save_sparse(state, path, [n for n in job.sparse_keys if n in state], metadata)
    if tensor_digests(load_sparse(path)) != hashes:
        raise ExportCheckError(f"{SAFETENSORS} does not restore the collapsed weights exactly")
    job.result.hashes = hashes


def write_onnx(job: ExportJob) -> None:
    """model.onnx: onnx.checker, parity with PyTorch in onnxruntime, onnxruntime accuracy."""
    cfg = job.recipe.export
    if not cfg.onnx:
        return
    path = job.folder / ONNX
    cpu_model = job.model.to("cpu").eval()
    export_onnx(cpu_model, job.example[:1], path, opset=cfg.opset)
    diff = check_parity(path, cpu_model, job.example, cfg.parity_tolerance)
    job.result.onnx = OnnxInfo(
        max_abs_diff=diff, tolerance=cfg.parity_tolerance, checker="passed", opset=cfg.opset,
        sparse_variant=None, sparse_variant_note=None,
    )  # fmt: skip
    job.result.onnx_accuracy = onnx_accuracy(path, job.eval_loader)


def write_sparse_onnx(job: ExportJob) -> None:
    """model.sparse.onnx with sparse initializers, when export.sparse_onnx and it is smaller."""
    onnx = job.result.onnx
    if onnx is None or not job.recipe.export.sparse_onnx:
        return
    if export_sparse_onnx(job.folder / ONNX, job.folder / SPARSE_ONNX):
        onnx.sparse_variant, onnx.sparse_variant_note = SPARSE_ONNX, SPARSE_ONNX_NOTE


EXPORTERS: tuple[Callable[[ExportJob], None], ...] = (
    write_safetensors,
    write_onnx,
    write_sparse_onnx,
)


def export_outputs(
    model: nn.Module, folder: Path, sparse_keys: list[str], example: torch.Tensor,
    eval_loader: DataLoader, recipe: Recipe, sparsity: SparsityInfo,
) -> ExportResult:  # fmt: skip
    """Run every exporter into `folder`; the first failed check raises ExportCheckError."""
    job = ExportJob(model, folder, sparse_keys, example, eval_loader, recipe, sparsity)
    for exporter in EXPORTERS:
        exporter(job)
    return job.result
