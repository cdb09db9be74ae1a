"""`dwfc bench OUT_DIR`: the onnxruntime latency of a finished run's models, measured again on
this machine (the deployment one, say): the compressed model, the sparse-initializer and int8
ones when written, and the original dense model when its file can still be read."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dwfc import inputs
from dwfc.config import Recipe, load_recipe
from dwfc.errors import DwfcError, InputError
from dwfc.export.latency import cores, cpu_name, measure_latency, onnxruntime_version
from dwfc.export.onnx_file import export_onnx
from dwfc.inputs import Inputs
from dwfc.models import load_model_with_notes
from dwfc.models.files import file_digest
from dwfc.outputs import INT8_ONNX, ONNX, RECIPE, REPORT_JSON, SPARSE_ONNX
from dwfc.report.schema import LatencyInfo, LatencyRowInfo, RunReport


def bench_run(
    out_dir: str | os.PathLike[str], rounds: int = 5, batches: Sequence[int] | None = None,
    trust_model: bool = False,
) -> LatencyInfo:
    """Latency of the models in `out_dir` (batches: the run's `export.latency_batches`), with
    notes on what could not be measured. The original is measured when the file the report
    names is still there with the digest the report records; a pickled module is unpickled only
    with `trust_model` (never because the folder's recipe.yaml says so).

    Example:
        latency = bench_run("runs/lenet", rounds=7)
    """
    out = Path(out_dir)
    if not (out / ONNX).is_file():
        raise InputError(f"{out}: no {ONNX} to measure (a run with export.onnx=false writes none)")
    if rounds < 1:
        raise InputError(f"rounds must be at least 1, got {rounds}")
    try:
        report = RunReport.from_dict(json.loads((out / REPORT_JSON).read_text(encoding="utf-8")))
        recipe = load_recipe(str(out / RECIPE))
    except (OSError, ValueError) as exc:
        raise InputError(f"{out}: not a finished dwfc run ({exc})") from None
    if report.input_shape is None:
        raise InputError(f"{out}/{REPORT_JSON} records no input_shape")
    models: dict[str, Path] = {"compressed": out / ONNX}
    for label, name in (("sparse", SPARSE_ONNX), ("int8", INT8_ONNX)):
        if (out / name).is_file():
            models[label] = out / name
    samples = inputs.synthetic(report.input_shape, report.input_dtype or "float32",
                               report.input_names, 8)  # fmt: skip
    notes = ["inputs are synthetic (random for float input, zeros for token ids, ones for "
             "masks): bench has no data"]
    scratch = Path(tempfile.mkdtemp(prefix="dwfc-bench-"))
    try:
        try:
            models = {"original": _original(report, recipe, samples, scratch, trust_model),
                      **models}  # fmt: skip
        except DwfcError as exc:
            notes.append(f"the original model was not measured: {exc}")
        rows = measure_latency(models, samples, list(batches or recipe.export.latency_batches),
                               rounds)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return LatencyInfo(cpu=cpu_name(), onnxruntime=onnxruntime_version(), cores=cores(),
                       rounds=rounds, notes=notes,
                       rows=[LatencyRowInfo(**vars(r)) for r in rows])  # fmt: skip


def _original(report: RunReport, recipe: Recipe, samples: Inputs, folder: Path,
              trust_model: bool) -> Path:  # fmt: skip
    """The original model as ONNX in `folder`: rebuilt from the file the report names."""
    info = report.model
    if info is None or info.source is None:
        raise InputError("the report names no model file")
    source = Path(info.source)
    if not source.is_file():
        raise InputError(f"{source} is not there any more")
    if info.sha256 is not None and file_digest(source) != info.sha256:
        raise InputError(f"{source} is not the file that was compressed (its digest differs)")
    model, _ = load_model_with_notes(source, recipe.model.arch, recipe.model.arch_kwargs,
                                     trust_model)  # fmt: skip
    path = folder / "original.onnx"
    export_onnx(model, inputs.take(samples, 1), path, recipe.export.opset)
    return path
