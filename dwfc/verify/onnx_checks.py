"""The checks of `dwfc verify` on the ONNX files and the accuracy: model.onnx (full checker,
reference evaluator, parity with the rebuilt model), model.sparse.onnx, model.int8.onnx, and the
accuracy re-measured on data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dwfc import inputs
from dwfc.config import ExportConfig
from dwfc.engine.loop import evaluate
from dwfc.errors import first_line
from dwfc.export.int8 import pruned_zeros_kept
from dwfc.export.onnx_file import full_check
from dwfc.export.runtime import max_abs_diff, onnx_accuracy, onnx_outputs
from dwfc.inputs import Inputs
from dwfc.outputs import INT8_ONNX, ONNX, REPORT_JSON, SPARSE_ONNX
from dwfc.report.schema import AccuracyInfo
from dwfc.verify.state import Fail, Run, Skip

_SEED = 0
_SPARSE_VS_DENSE_ONNX = 1e-6
REFERENCE_SAMPLES = 2  # onnx.reference runs in NumPy: a couple of inputs suffice


def _eval_set(run: Run) -> Dataset:
    from dwfc.data import load_data, load_data_config

    if run.eval_set is None and run.data_source is not None:
        data = run.recipe.data if run.recipe is not None else None
        if data is None:
            _, run.eval_set = load_data(run.data_source)
        elif data.source.strip().lower() == run.data_source.strip().lower():
            _, run.eval_set = load_data_config(data)
        else:
            _, run.eval_set = load_data_config(
                data.model_copy(update={"source": run.data_source, "options": {}})
            )
    return run.eval_set


def _input_batch(run: Run, path: Path) -> Inputs:
    if run.batch is not None:
        return run.batch
    if run.data_source is not None:
        x, _ = next(iter(DataLoader(_eval_set(run), batch_size=run.batch_size)))
        run.batch = x if isinstance(x, dict) else torch.as_tensor(x, dtype=torch.float32)
        return run.batch
    shape = run.report.input_shape
    if shape is None:  # fall back to the ONNX graph: only the batch is dynamic
        dims = _onnx_input_dims(path)
        if not all(isinstance(d, int) for d in dims):
            raise Fail(f'no input shape: {REPORT_JSON} has no "input_shape", ONNX input is '
                        "dynamic")  # fmt: skip
        shape = dims
    report = run.report
    run.batch = inputs.synthetic(shape, report.input_dtype or "float32", report.input_names,
                                 run.batch_size, _SEED)  # fmt: skip
    return run.batch


def _ort_outputs(path: Path, run: Run, full: bool = True) -> tuple[np.ndarray, Inputs]:
    """onnxruntime's outputs on the check batch, once the file passes onnx.checker (with its
    full check, unless `full` is off)."""
    problem = full_check(path, full)
    if problem is not None:
        what = "onnx.checker's full check" if full else "onnx.checker"
        raise Fail(f"{path.name} fails {what}: {problem}")
    batch = _input_batch(run, path)
    return onnx_outputs(path, batch), batch


def _onnx_input_dims(path: Path) -> list[Any]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims[1:]]


def check_onnx(run: Run) -> str:
    if not run.expects(ONNX):
        raise Skip("the run wrote no ONNX model (export.onnx was off)")
    got, batch = _ort_outputs(run.out / ONNX, run)
    run.onnx_out = got
    reference = _reference_diff(run.out / ONNX, inputs.take(batch, REFERENCE_SAMPLES), got)
    if not reference <= _tolerance(run):
        raise Fail(f"onnx.reference.ReferenceEvaluator differs from onnxruntime by "
                   f"{reference:.3g}")  # fmt: skip
    recorded = run.onnx.metadata
    if recorded is not None and _metadata(run.out / ONNX) != recorded:
        raise Fail(f"the metadata_props of {ONNX} differ from what the report records")
    checked = (f"passes onnx.checker's full check; the reference evaluator agrees with "
               f"onnxruntime ({reference:.3g})" + ("; metadata as recorded" if recorded else ""))
    if run.model is None:
        return f"{checked}; runs on {inputs.count(batch)} inputs; no model to compare"
    with torch.no_grad():
        want = inputs.call(run.model, batch).numpy()
    diff = max_abs_diff(got, want, f"{ONNX} vs PyTorch")
    tolerance = _tolerance(run)
    if not diff <= tolerance:
        raise Fail(f"onnxruntime differs from PyTorch by {diff:.3g} (tolerance {tolerance:g})")
    return f"{checked}; max |onnxruntime - PyTorch| {diff:.3g} <= {tolerance:g}"


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _tolerance(run: Run) -> float:
    recorded = run.onnx.tolerance
    return recorded if recorded is not None else ExportConfig().parity_tolerance


def _reference_diff(path: Path, batch: Inputs, ort_out: np.ndarray) -> float:
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(str(path))
        (ref,) = evaluator.run(None, inputs.numpy_feed(batch, list(evaluator.input_names)))[:1]
    except Exception as exc:
        raise Fail(f"onnx.reference.ReferenceEvaluator cannot run {path.name}: "
                   f"{first_line(exc)}") from None  # fmt: skip
    return max_abs_diff(np.asarray(ref), ort_out[: inputs.count(batch)],
                        "reference vs onnxruntime")  # fmt: skip


def check_sparse_onnx(run: Run) -> str:
    if not run.expects(SPARSE_ONNX):
        raise Skip(f"no {SPARSE_ONNX} (it is written only when smaller)")
    path = run.out / SPARSE_ONNX
    got, _ = _ort_outputs(path, run, full=False)
    dense = run.onnx_out if run.onnx_out is not None else _ort_outputs(run.out / ONNX, run)[0]
    diff = max_abs_diff(got, dense, f"{SPARSE_ONNX} vs {ONNX}")
    if not diff <= _SPARSE_VS_DENSE_ONNX:
        raise Fail(f"{SPARSE_ONNX} differs from {ONNX} by {diff:.3g}")
    problem = full_check(path)
    found = "passed" if problem is None else f"failed: {problem}"
    recorded = run.onnx.sparse_variant_full_check
    if recorded is not None and recorded.split(":")[0] != found.split(":")[0]:
        raise Fail(f"onnx.checker's full check {found}, the report says {recorded}")
    return (f"passes onnx.checker; its full check {found}; onnxruntime runs it: "
            f"max |sparse - dense ONNX| {diff:.3g}")


def check_int8(run: Run) -> str:
    if not run.expects(INT8_ONNX):
        raise Skip(f"no {INT8_ONNX} (written with export.quantize)")
    path = run.out / INT8_ONNX
    got, batch = _ort_outputs(path, run)
    zeros = pruned_zeros_kept(run.out / ONNX, path)
    if zeros.kept != zeros.zeros:
        raise Fail(f"{zeros.zeros - zeros.kept} of {zeros.zeros} pruned weights are not zero")
    recorded = run.report.int8
    if recorded is not None and recorded.zeros is not None and recorded.zeros != zeros.zeros:
        raise Fail(f"{zeros.zeros} pruned weights quantized, the report says {recorded.zeros}")
    if zeros.unchecked:
        raise Fail(f"the pruned weights of {', '.join(zeros.unchecked)} cannot be checked: their "
                   "int8 form is not one this check reads")  # fmt: skip
    kept = (f"all {zeros.zeros} pruned weights of the int8 weights still zero" if zeros.zeros
            else "no pruned weight was quantized")  # fmt: skip
    floats = f"; {len(zeros.left_float)} sparse weights left in float, unchanged" if (
        zeros.left_float) else ""
    return (f"passes onnx.checker's full check; {kept}{floats}; runs on {inputs.count(batch)} "
            "inputs")  # fmt: skip


def check_accuracy(run: Run) -> str:
    if run.data_source is None:
        raise Skip("no data given to re-measure accuracy")
    recorded = run.report.accuracy or AccuracyInfo()
    loader = DataLoader(_eval_set(run), batch_size=_eval_batch_size(run))
    measured: dict[str, float] = {}
    if run.model is not None:  # in fp32 on the CPU, as the pipeline measures there
        measured["compressed_pytorch"] = evaluate(run.model, loader, torch.device("cpu"))
    if run.expects(ONNX) and (run.out / ONNX).is_file():
        measured["compressed_onnxruntime"] = onnx_accuracy(run.out / ONNX, loader)
    if run.expects(INT8_ONNX) and (run.out / INT8_ONNX).is_file():
        measured["compressed_int8"] = onnx_accuracy(run.out / INT8_ONNX, loader)
    if not measured:
        raise Skip("neither a rebuilt model nor an ONNX model to measure")
    problems = []
    for key, value in measured.items():
        want = getattr(recorded, key)
        if want is None or abs(value - want) > run.acc_tol:
            problems.append(f"{key} is {value:.6g}, report says {want}")
    device, precision = run.report.device or "cpu", run.report.precision or "fp32"
    if problems and (device != "cpu" or precision != "fp32"):
        problems.append(f"the run measured on {device} in {precision}: allow a tolerance")
    if problems:
        raise Fail("; ".join(problems))
    return ", ".join(f"{k} {v:.4%}" for k, v in measured.items()) + " as recorded"


def _eval_batch_size(run: Run) -> int:
    return run.recipe.data.eval_batch_size if run.recipe is not None else run.batch_size
