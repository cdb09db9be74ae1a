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

import torch

from dwfc.config import load_recipe
from dwfc.errors import DwfcError, InputError
from dwfc.export.latency import cores, cpu_name, measure_latency, onnxruntime_version
from dwfc.export.onnx_file import export_onnx
from dwfc.models import load_model_with_notes
from dwfc.outputs import INT8_ONNX, ONNX, RECIPE, REPORT_JSON, SPARSE_ONNX
from dwfc.report.schema import LatencyInfo, LatencyRowInfo, RunReport


def bench_run(
    out_dir: str | os.PathLike[str], rounds: int = 5, batches: Sequence[int] | None = None
) -> tuple[LatencyInfo, list[str]]:
    """Latency of the models in `out_dir` (batches: the run's `export.latency_batches`), and
    notes on what could not be measured.

    Example:
        latency, notes = bench_run("runs/lenet", rounds=7)
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
    notes, scratch = [], Path(tempfile.mkdtemp(prefix="dwfc-bench-"))
    try:
        source = report.model.source if report.model else None
        try:
            if source is None:
                raise InputError("the report names no model file")
            model, _ = load_model_with_notes(source, recipe.model.arch, recipe.model.arch_kwargs,
                                             recipe.model.trust_model)  # fmt: skip
            export_onnx(model, torch.zeros(1, *report.input_shape), scratch / "original.onnx",
                        recipe.export.opset)  # fmt: skip
            models = {"original": scratch / "original.onnx", **models}
        except DwfcError as exc:
            notes.append(f"the original model was not measured: {exc}")
        rows = measure_latency(models, report.input_shape,
                               list(batches or recipe.export.latency_batches), rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    latency = LatencyInfo(cpu=cpu_name(), onnxruntime=onnxruntime_version(), cores=cores(),
                          rounds=rounds, rows=[LatencyRowInfo(**vars(r)) for r in rows])
    return latency, notes
