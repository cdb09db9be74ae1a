"""The export stage of `dwfc compress`: every output format, one function each in `EXPORTERS`.

An exporter writes its file into the staging folder, checks it, and records what it checked in
the job's result. To add a format: write its function (here, or in its own module under
dwfc/export/) and add it to `EXPORTERS`; its file name goes into dwfc/outputs.py.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from dwfc import inputs
from dwfc._version import __version__
from dwfc.config import Recipe
from dwfc.data import normalization
from dwfc.errors import ExportCheckError, first_line
from dwfc.export.int8 import pruned_zeros_kept, quantize_int8
from dwfc.export.latency import cores, cpu_name, measure_latency, onnxruntime_version
from dwfc.export.onnx_file import (
    SEQUENCE_AXES,
    SPARSE_ONNX_NOTE,
    SPATIAL_AXES,
    export_onnx,
    export_sparse_onnx,
    full_check,
    set_metadata,
)
from dwfc.export.runtime import (
    check_parity,
    max_abs_diff,
    onnx_accuracy,
    onnx_outputs,
    spatial_sizes_work,
)
from dwfc.export.sparse_file import (
    HASHES_KEY,
    RECIPE_KEY,
    SPARSITY_KEY,
    VERSION_KEY,
    load_sparse,
    save_sparse,
    tensor_digests,
)
from dwfc.inputs import Inputs
from dwfc.models import hf
from dwfc.outputs import HF_MODEL, INT8_ONNX, ONNX, SAFETENSORS, SPARSE_ONNX
from dwfc.report.format import jsonable
from dwfc.report.schema import (
    Int8Info,
    LatencyInfo,
    LatencyRowInfo,
    OnnxInfo,
    SparsityInfo,
    StructureInfo,
)
from dwfc.structure.prune import PRUNED_KEY, PrunedSpec


@dataclass
class ExportResult:
    """What the exporters wrote and checked, for the report."""

    hashes: dict[str, str] = field(default_factory=dict)  # of every tensor in the weights file
    onnx: OnnxInfo | None = None  # None: no ONNX written (export.onnx off)
    onnx_accuracy: float | None = None
    int8: Int8Info | None = None
    int8_accuracy: float | None = None
    latency: LatencyInfo | None = None


@dataclass
class ExportJob:
    model: nn.Module  # collapsed, sparse
    folder: Path  # the staging folder
    sparse_keys: list[str]  # the state-dict keys stored sparse (every name of a tied weight)
    example: Inputs  # an evaluation batch: the ONNX example input and parity batch
    eval_loader: DataLoader
    train_loader: DataLoader  # static int8 calibrates on it
    recipe: Recipe
    sparsity: SparsityInfo | None  # unstructured runs
    classes: int | None
    original: Original  # the model before compression, for the latency comparison
    structure: StructureInfo | None = None  # structure.kind=channel runs
    pruned: PrunedSpec | None = None  # channel runs: how to rebuild the smaller architecture
    result: ExportResult = field(default_factory=ExportResult)


def write_safetensors(job: ExportJob) -> None:
    """model.safetensors, read back and compared bit for bit."""
    state = {k: v.detach().cpu() for k, v in job.model.state_dict().items()}
    hashes = tensor_digests(state)
    metadata = {
        VERSION_KEY: __version__,
        RECIPE_KEY: json.dumps(job.recipe.model_dump(mode="json")),
        HASHES_KEY: json.dumps(hashes),
    }
    if job.sparsity is not None:
        metadata[SPARSITY_KEY] = json.dumps(jsonable(job.sparsity.model_dump(mode="json")))
    if job.pruned is not None:
        metadata[PRUNED_KEY] = job.pruned.to_json()
    path = job.folder / SAFETENSORS
    save_sparse(state, path, [n for n in job.sparse_keys if n in state], metadata)
    if tensor_digests(load_sparse(path)) != hashes:
        raise ExportCheckError(f"{SAFETENSORS} does not restore the collapsed weights exactly")
    job.result.hashes = hashes


def onnx_metadata(job: ExportJob) -> dict[str, str]:
    """The `metadata_props` of every ONNX file: enough for a deployment to feed the model."""
    names = inputs.names(inputs.ordered(job.model, job.example))
    norm = normalization(job.recipe.data)
    measured = ({"dwfc.sparsity": f"{job.sparsity.achieved:.6f}"} if job.sparsity is not None
                else {"dwfc.structure": job.recipe.structure.kind})  # fmt: skip
    if job.structure is not None:
        measured["dwfc.speedup"] = f"{job.structure.speedup:.4f}"
    return {
        "dwfc.version": __version__, "dwfc.method": job.recipe.sparsity.method, **measured,
        "dwfc.input_shape": json.dumps(inputs.sample_shape(job.example)),
        "dwfc.input_dtype": inputs.dtype_name(job.example),
        **({"dwfc.input_names": json.dumps(names)} if names else {}),
        "dwfc.mean": json.dumps(norm[0] if norm else None),
        "dwfc.std": json.dumps(norm[1] if norm else None),
        "dwfc.num_classes": json.dumps(job.classes),
    }  # fmt: skip


def write_onnx(job: ExportJob) -> None:
    """model.onnx: full checker, parity with PyTorch in onnxruntime, onnxruntime accuracy; the
    height and width of image input stay dynamic where the model runs at any size, the sequence
    axis of tokenised input always."""
    cfg = job.recipe.export
    if not cfg.onnx:
        return
    path = job.folder / ONNX
    cpu_model = job.model.to("cpu").eval()
    metadata = onnx_metadata(job)
    example = job.example
    flushed = (_exports_with_any_size(job, cpu_model, path, metadata)
               if isinstance(example, torch.Tensor) and example.dim() == 4 else None)  # fmt: skip
    spatial = flushed is not None
    if flushed is None:
        flushed = export_onnx(cpu_model, inputs.take(example, 1), path, cfg.opset, False,
                              metadata)  # fmt: skip
    dynamic = ["batch", *SPATIAL_AXES.values()] if spatial else ["batch"]
    if inputs.names(example):
        dynamic += SEQUENCE_AXES.values()
    diff = check_parity(path, cpu_model, job.example, cfg.parity_tolerance)
    job.result.onnx = OnnxInfo(
        max_abs_diff=diff, tolerance=cfg.parity_tolerance, checker="passed", opset=cfg.opset,
        sparse_variant=None, sparse_variant_note=None, full_check="passed",
        dynamic_axes=dynamic, flushed=flushed,
        metadata=metadata,
    )  # fmt: skip
    job.result.onnx_accuracy = onnx_accuracy(path, job.eval_loader)


def _exports_with_any_size(job: ExportJob, model: nn.Module, path: Path,
                           metadata: dict[str, str]) -> int | None:  # fmt: skip
    """Export with dynamic height and width to `path`: the values it flushed if that export
    stands, None if not (it may fail, e.g. adaptive pooling to a fixed grid, or not match
    PyTorch at another size)."""
    cfg = job.recipe.export
    try:
        flushed = export_onnx(model, inputs.take(job.example, 1), path, cfg.opset, True, metadata)
    except ExportCheckError:
        return None
    return flushed if spatial_sizes_work(path, model, job.example, cfg.parity_tolerance) else None


def write_sparse_onnx(job: ExportJob) -> None:
    """model.sparse.onnx with sparse initializers, when export.sparse_onnx and it is smaller;
    what the full checker says of it is recorded, not assumed."""
    onnx = job.result.onnx
    if onnx is None or not job.recipe.export.sparse_onnx or job.sparsity is None:
        return  # channel runs: the model is smaller, not sparse
    path = job.folder / SPARSE_ONNX
    if export_sparse_onnx(job.folder / ONNX, path):
        problem = full_check(path)
        onnx.sparse_variant, onnx.sparse_variant_note = SPARSE_ONNX, SPARSE_ONNX_NOTE
        onnx.sparse_variant_full_check = "passed" if problem is None else f"failed: {problem}"


def write_int8(job: ExportJob) -> None:
    """model.int8.onnx (export.quantize): its accuracy, and every pruned weight still zero."""
    cfg = job.recipe.export
    if cfg.quantize == "none":  # the recipe refuses quantize without ONNX export
        return
    fp32, path = job.folder / ONNX, job.folder / INT8_ONNX
    quantize_int8(fp32, path, cfg.quantize, job.train_loader, cfg.calibration_batches)
    set_metadata(path, onnx_metadata(job))
    zeros = pruned_zeros_kept(fp32, path)
    if zeros.kept != zeros.zeros:
        raise ExportCheckError(f"{INT8_ONNX}: {zeros.zeros - zeros.kept} of the {zeros.zeros} "
                               "pruned weights are no longer zero")  # fmt: skip
    diff = max_abs_diff(onnx_outputs(path, job.example), onnx_outputs(fp32, job.example),
                        f"{INT8_ONNX} vs {ONNX}")  # fmt: skip
    job.result.int8 = Int8Info(
        file=INT8_ONNX, mode=cfg.quantize, full_check="passed", max_abs_diff=diff,
        calibration_batches=cfg.calibration_batches if cfg.quantize == "static" else None,
        zeros=zeros.zeros, zeros_kept=zeros.kept, quantized=zeros.quantized,
        left_float=zeros.left_float, unchecked=zeros.unchecked,
    )  # fmt: skip
    job.result.int8_accuracy = onnx_accuracy(path, job.eval_loader)


def write_hf_model(job: ExportJob) -> None:
    """hf_model/ for a Hugging Face model: its save_pretrained directory (the weights with their
    zeros, the config, the processor files), loaded back by transformers and required to give
    exactly the compressed model's logits on the evaluation batch."""
    if not isinstance(job.model, hf.HFClassifier):
        return
    folder = job.folder / HF_MODEL
    job.model.save_pretrained(folder)
    reloaded, _ = hf.load(folder)
    with torch.no_grad():
        same = torch.equal(inputs.call(job.model.eval(), job.example),
                           inputs.call(reloaded, job.example))  # fmt: skip
    if not same:
        raise ExportCheckError(f"{HF_MODEL}/ loaded back by transformers gives other logits")


EXPORTERS: tuple[Callable[[ExportJob], None], ...] = (
    write_safetensors,
    write_onnx,
    write_sparse_onnx,
    write_int8,
    write_hf_model,
)


@dataclass
class Original:
    """The model before compression as ONNX, for the latency comparison, or why it is not;
    `folder` is temporary: the caller removes it."""

    folder: Path | None = None
    path: Path | None = None
    problem: str | None = None


def export_original(model: nn.Module, example: Inputs, recipe: Recipe) -> Original:
    """Export the model before compression, when latency is measured; a model that does not
    export is not an error here (the compressed one will say so), only a note."""
    if not (recipe.export.onnx and recipe.export.latency):
        return Original()
    folder = Path(tempfile.mkdtemp(prefix="dwfc-original-"))
    path = folder / "original.onnx"
    try:
        export_onnx(model.to("cpu").eval(), inputs.take(example, 1), path, recipe.export.opset)
    except ExportCheckError as exc:
        return Original(folder, None, f"the original model was not measured: {exc}")
    return Original(folder, path)


def measure(job: ExportJob) -> LatencyInfo | None:
    """onnxruntime latency of the original, compressed, sparse and int8 models (export.latency);
    a model onnxruntime cannot time is a note in the report, not a failed run."""
    cfg, onnx = job.recipe.export, job.result.onnx
    if not cfg.latency or onnx is None:
        return None
    models = {"original": job.original.path, "compressed": job.folder / ONNX,
              "sparse": job.folder / SPARSE_ONNX if onnx.sparse_variant else None,
              "int8": job.folder / INT8_ONNX if job.result.int8 else None}  # fmt: skip
    notes = [job.original.problem] if job.original.problem else []
    try:
        rows = measure_latency({k: v for k, v in models.items() if v is not None},
                               job.example, cfg.latency_batches, cfg.latency_rounds)
    except Exception as exc:  # onnxruntime's own errors: a measurement, not the outputs, failed
        rows, notes = [], [*notes, f"latency was not measured: {first_line(exc)}"]
    return LatencyInfo(cpu=cpu_name(), onnxruntime=onnxruntime_version(), cores=cores(),
                       rounds=cfg.latency_rounds, notes=notes,
                       rows=[LatencyRowInfo(**vars(row)) for row in rows])  # fmt: skip


def export_outputs(
    model: nn.Module, folder: Path, sparse_keys: list[str], example: Inputs,
    eval_loader: DataLoader, train_loader: DataLoader, recipe: Recipe,
    sparsity: SparsityInfo | None, classes: int | None, original: Original,
    structure: StructureInfo | None = None, pruned: PrunedSpec | None = None,
) -> ExportResult:  # fmt: skip
    """Run every exporter into `folder`, then measure latency; the first failed check raises
    ExportCheckError. Channel runs pass their `structure` and `pruned` spec instead of a
    `sparsity`."""
    job = ExportJob(model, folder, sparse_keys, example, eval_loader, train_loader, recipe,
                    sparsity, classes, original, structure, pruned)  # fmt: skip
    for exporter in EXPORTERS:
        exporter(job)
    job.result.latency = measure(job)
    return job.result
