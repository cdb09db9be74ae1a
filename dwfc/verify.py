"""`dwfc verify OUT_DIR`: re-check a finished `dwfc compress` output folder from its files alone.

Checks, in order (each is passed, failed or skipped, with a one-line detail):

- report: report.json is present and a JSON object
- files: the model files exist, with the sizes report.json records
- safetensors: model.safetensors loads with `load_sparse`
- hashes: the tensors' digests (`tensor_digests`) equal report.json "hashes" and the file's
  `dwfc.hashes` metadata
- sparsity: per-layer shapes, weights and non-zeros, and the overall sparsity, equal the report
- model: the architecture in recipe.yaml is rebuilt and loads the weights strictly
- onnx: model.onnx passes onnx.checker and onnxruntime matches the rebuilt model on a batch
- sparse_onnx: model.sparse.onnx (when written) passes too and matches model.onnx
- accuracy: with data given, the re-measured accuracy equals the recorded one
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dwfc.config import ExportConfig, Recipe
from dwfc.engine.loop import evaluate
from dwfc.errors import DwfcError, InputError, VerificationError, first_line
from dwfc.export.runtime import max_abs_diff, onnx_accuracy, onnx_outputs
from dwfc.export.sparse_file import (
    HASHES_KEY,
    SPARSE_KEYS_KEY,
    SPARSITY_KEY,
    load_sparse,
    read_metadata,
    tensor_digests,
)
from dwfc.outputs import ONNX, RECIPE, REPORT_JSON, SAFETENSORS, SPARSE_ONNX
from dwfc.report.schema import AccuracyInfo, OnnxInfo, RunReport

__all__ = ["raise_for_failures", "verify_run"]

_CHECKS = ("report", "files", "safetensors", "hashes", "sparsity", "model", "onnx", "sparse_onnx",
           "accuracy")  # fmt: skip
_SEED = 0
_SPARSE_VS_DENSE_ONNX = 1e-6


class _Skip(Exception):
    """Raised by a check that cannot apply; the message says why."""


class _Fail(Exception):
    """Raised by a check that found a mismatch; the message names it."""


@dataclass
class _Run:
    """What the checks learn about the folder, shared between them."""

    out: Path
    data_source: str | None
    batch_size: int
    acc_tol: float
    report: RunReport = field(default_factory=RunReport)
    meta: dict[str, str] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None
    model: nn.Module | None = None
    recipe: Recipe | None = None
    eval_set: Dataset | None = None
    batch: torch.Tensor | None = None
    onnx_out: np.ndarray | None = None

    @property
    def onnx(self) -> OnnxInfo:
        return self.report.onnx or OnnxInfo()

    def expects(self, name: str) -> bool:
        """Whether the run says it wrote ONNX file `name`, or the file is there anyway."""
        onnx = self.onnx
        recorded = onnx.sparse_variant == name if name == SPARSE_ONNX else bool(
            onnx.model_fields_set)
        return recorded or (self.out / name).exists()


def verify_run(
    out_dir: str | os.PathLike[str],
    data_source: str | None = None,
    batch_size: int = 256,
    *,
    accuracy_tolerance: float = 1e-9,
) -> dict[str, Any]:
    """Re-check an output folder of `dwfc compress`; returns {"ok", "out_dir", "checks", ...}.

    Each check is {"check", "ok", "status": "passed"|"failed"|"skipped", "detail"}; a skipped
    check counts as ok. `data_source` (e.g. "mnist5k") re-measures accuracy on its evaluation
    split, loaded the way the run's recipe.yaml says when it names the same source. The ONNX
    parity batch holds `batch_size` evaluation samples, or seeded random input of the recorded
    input shape without data. Raises InputError only when `out_dir` is not a folder;
    `raise_for_failures(result)` turns failures into a VerificationError (exit code 6).

    Example:
        result = verify_run("runs/lenet", data_source="mnist5k")
        raise_for_failures(result)
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(f"{out}: no such output folder")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    run = _Run(out, data_source, batch_size, accuracy_tolerance)
    checks: list[dict[str, Any]] = []
    for name in _CHECKS:
        step: Callable[[_Run], str] = globals()[f"_check_{name}"]
        try:
            checks.append(_row(name, "passed", step(run)))
        except _Skip as exc:
            checks.append(_row(name, "skipped", str(exc)))
        except (_Fail, DwfcError) as exc:
            checks.append(_row(name, "failed", str(exc)))
        except Exception as exc:  # an unreadable file surfaces here; name it, keep checking
            checks.append(_row(name, "failed", f"{type(exc).__name__}: {first_line(exc)}"))
    failures = [c["check"] for c in checks if not c["ok"]]
    return {"out_dir": str(out), "ok": not failures, "failures": failures, "checks": checks}


def raise_for_failures(result: dict[str, Any]) -> None:
    """Raise VerificationError naming the first failed check (and how many more) if any failed.

    Example:
        raise_for_failures(verify_run("runs/lenet"))
    """
    failed = [c for c in result["checks"] if not c["ok"]]
    if failed:
        more = f" (and {len(failed) - 1} more failed checks)" if len(failed) > 1 else ""
        first = failed[0]
        raise VerificationError(
            f"{result['out_dir']}: {first['check']} check failed: {first['detail']}{more}"
        )


# --------------------------------------------------------------------------- checks


def _row(check: str, status: str, detail: str) -> dict[str, Any]:
    return {"check": check, "ok": status != "failed", "status": status, "detail": detail}


def _check_report(run: _Run) -> str:
    path = run.out / REPORT_JSON
    if not path.is_file():
        raise _Fail(f"{REPORT_JSON} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise _Fail(f"{REPORT_JSON} is not valid JSON ({first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise _Fail(f"{REPORT_JSON} holds a {type(raw).__name__}, not an object")
    run.report, problems = RunReport.from_sections(raw, strict=True)
    if problems:  # the other checks go on with the sections that read
        raise _Fail(f"{REPORT_JSON}: {_listing(problems)}")
    return f"dwfc {run.report.dwfc_version or '?'}, created {run.report.created or '?'}"


def _check_files(run: _Run) -> str:
    wanted = [SAFETENSORS, REPORT_JSON, RECIPE]
    wanted += [ONNX] if run.expects(ONNX) else []
    wanted += [SPARSE_ONNX] if run.expects(SPARSE_ONNX) else []
    missing = [name for name in wanted if not (run.out / name).is_file()]
    if missing:
        raise _Fail(f"missing {', '.join(missing)}")
    sizes = run.report.files
    wrong = [
        f"{name} is {(run.out / name).stat().st_size} bytes, report says {size}"
        for name, size in sizes.items()
        if name in wanted and (run.out / name).stat().st_size != size
    ]
    if wrong:
        raise _Fail("; ".join(wrong))
    return f"{len(wanted)} files present" + (", sizes as recorded" if sizes else "")


def _check_safetensors(run: _Run) -> str:
    path = run.out / SAFETENSORS
    if not path.is_file():
        raise _Skip(f"{SAFETENSORS} is missing")
    run.state = load_sparse(path)
    run.meta = read_metadata(path)
    sparse = _json_meta(run.meta, SPARSE_KEYS_KEY) or []
    return f"{len(run.state)} tensors, {len(sparse)} stored sparse"


def _json_meta(meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except (ValueError, RecursionError):
        raise _Fail(f"{SAFETENSORS} metadata {key} is not valid JSON") from None


def _check_hashes(run: _Run) -> str:
    if run.state is None:
        raise _Skip(f"{SAFETENSORS} did not load")
    recorded = run.report.hashes
    if recorded is None:
        raise _Fail(f'{REPORT_JSON} records no tensor hashes ("hashes")')
    in_file = _json_meta(run.meta, HASHES_KEY)
    if in_file is not None and in_file != recorded:
        raise _Fail(f"the {HASHES_KEY} metadata of {SAFETENSORS} differs from {REPORT_JSON}")
    actual = tensor_digests(run.state)
    problems = [f"{k} (hash differs)" for k in actual if k in recorded and actual[k] != recorded[k]]
    problems += [f"{k} (not recorded)" for k in actual if k not in recorded]
    problems += [f"{k} (not in the file)" for k in recorded if k not in actual]
    if problems:
        raise _Fail("tensor mismatch: " + _listing(problems))
    return f"{len(actual)} tensors match their sha256 digests"


def _listing(items: list[str], shown: int = 3) -> str:
    extra = len(items) - shown
    return ", ".join(items[:shown]) + (f" (+{extra} more)" if extra > 0 else "")


def _check_sparsity(run: _Run) -> str:
    if run.state is None:
        raise _Skip(f"{SAFETENSORS} did not load")
    layers, summary = run.report.layers, run.report.sparsity
    if "layers" not in run.report.model_fields_set or summary is None:
        raise _Fail(f'{REPORT_JSON} has no "layers" list or "sparsity" summary')
    problems, weights, nonzero = [], 0, 0
    for row in layers:
        name = row.name
        if name not in run.state:
            problems.append(f"layer {name!r} is not in {SAFETENSORS}")
            continue
        t = run.state[name]
        actual = {"shape": list(t.shape), "weights": t.numel(), "nonzero": int(t.count_nonzero())}
        actual["sparsity"] = 1.0 - actual["nonzero"] / actual["weights"] if t.numel() else 0.0
        weights, nonzero = weights + actual["weights"], nonzero + actual["nonzero"]
        problems += [
            f"{name} {key} is {value}, report says {getattr(row, key)}"
            for key, value in actual.items()
            if not _same(value, getattr(row, key))
        ]
    overall = {
        "factorized_weights": weights,
        "nonzero_weights": nonzero,
        "achieved": 1.0 - nonzero / weights if weights else 0.0,
    }
    for source, recorded in (
        ("report", summary.model_dump(exclude_unset=True)),
        ("metadata", _json_meta(run.meta, SPARSITY_KEY)),
    ):
        for key, value in overall.items() if isinstance(recorded, dict) else ():
            if key in recorded and not _same(value, recorded[key]):
                problems.append(f"sparsity {key} is {value}, {source} says {recorded[key]}")
    sparse_keys = _json_meta(run.meta, SPARSE_KEYS_KEY)
    if sparse_keys is not None and set(sparse_keys) != {r.name for r in layers}:
        problems.append("the layers stored sparse are not the layers the report lists")
    if problems:
        raise _Fail(_listing(problems))
    return f"{len(layers)} layers, sparsity {overall['achieved']:.4%} ({nonzero}/{weights} kept)"


def _same(actual: Any, recorded: Any) -> bool:
    if isinstance(actual, float) and isinstance(recorded, (int, float)):
        return math.isclose(actual, recorded, rel_tol=0.0, abs_tol=1e-12)
    return actual == recorded


def _check_model(run: _Run) -> str:
    from dwfc.config import load_recipe
    from dwfc.models import build_model

    if not (run.out / RECIPE).is_file():
        raise _Fail(f"{RECIPE} is missing")
    run.recipe = load_recipe(str(run.out / RECIPE))
    if run.state is None:
        raise _Skip(f"{SAFETENSORS} did not load")
    arch = run.recipe.model.arch
    if arch is None:
        raise _Skip("the run compressed a whole pickled module: no architecture to rebuild")
    model = build_model(arch, run.recipe.model.arch_kwargs)
    try:
        model.load_state_dict(run.state, strict=True)
    except RuntimeError as exc:
        raise _Fail(f"{arch} does not load {SAFETENSORS}: {first_line(exc)}") from None
    run.model = model.to("cpu").eval()
    return f"{arch} rebuilt, weights loaded strictly"


def _eval_set(run: _Run) -> Dataset:
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


def _input_batch(run: _Run, path: Path) -> torch.Tensor:
    if run.batch is not None:
        return run.batch
    if run.data_source is not None:
        x, _ = next(iter(DataLoader(_eval_set(run), batch_size=run.batch_size)))
        run.batch = torch.as_tensor(x, dtype=torch.float32)
        return run.batch
    shape = run.report.input_shape
    if shape is None:  # fall back to the ONNX graph: only the batch is dynamic
        dims = _onnx_input_dims(path)
        if not all(isinstance(d, int) for d in dims):
            raise _Fail(f'no input shape: {REPORT_JSON} has no "input_shape", ONNX input is '
                        "dynamic")  # fmt: skip
        shape = dims
    generator = torch.Generator().manual_seed(_SEED)
    run.batch = torch.randn(run.batch_size, *shape, generator=generator)
    return run.batch


def _ort_outputs(path: Path, run: _Run) -> tuple[np.ndarray, torch.Tensor]:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise _Fail(f"{path.name} fails onnx.checker: {first_line(exc)}") from None
    batch = _input_batch(run, path)
    return onnx_outputs(path, batch), batch


def _onnx_input_dims(path: Path) -> list[Any]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims[1:]]


def _check_onnx(run: _Run) -> str:
    if not run.expects(ONNX):
        raise _Skip("the run wrote no ONNX model (export.onnx was off)")
    got, batch = _ort_outputs(run.out / ONNX, run)
    run.onnx_out = got
    if run.model is None:
        return (
            f"passes onnx.checker, runs in onnxruntime ({len(batch)} inputs); no model to compare"
        )
    with torch.no_grad():
        want = run.model(batch).numpy()
    diff = max_abs_diff(got, want, f"{ONNX} vs PyTorch")
    tolerance = run.onnx.tolerance
    if tolerance is None:
        tolerance = ExportConfig().parity_tolerance
    if not diff <= tolerance:
        raise _Fail(f"onnxruntime differs from PyTorch by {diff:.3g} (tolerance {tolerance:g})")
    return f"passes onnx.checker; max |onnxruntime - PyTorch| {diff:.3g} <= {tolerance:g}"


def _check_sparse_onnx(run: _Run) -> str:
    if not run.expects(SPARSE_ONNX):
        raise _Skip(f"no {SPARSE_ONNX} (it is written only when smaller)")
    got, _ = _ort_outputs(run.out / SPARSE_ONNX, run)
    dense = run.onnx_out if run.onnx_out is not None else _ort_outputs(run.out / ONNX, run)[0]
    diff = max_abs_diff(got, dense, f"{SPARSE_ONNX} vs {ONNX}")
    if not diff <= _SPARSE_VS_DENSE_ONNX:
        raise _Fail(f"{SPARSE_ONNX} differs from {ONNX} by {diff:.3g}")
    return f"passes onnx.checker; max |sparse - dense ONNX| {diff:.3g}"


def _check_accuracy(run: _Run) -> str:
    if run.data_source is None:
        raise _Skip("no data given to re-measure accuracy")
    recorded = run.report.accuracy or AccuracyInfo()
    loader = DataLoader(_eval_set(run), batch_size=_eval_batch_size(run))
    measured: dict[str, float] = {}
    if run.model is not None:  # in fp32 on the CPU, as the pipeline measures there
        measured["compressed_pytorch"] = evaluate(run.model, loader, torch.device("cpu"))
    if run.expects(ONNX) and (run.out / ONNX).is_file():
        measured["compressed_onnxruntime"] = onnx_accuracy(run.out / ONNX, loader)
    if not measured:
        raise _Skip("neither a rebuilt model nor an ONNX model to measure")
    problems = []
    for key, value in measured.items():
        want = getattr(recorded, key)
        if want is None or abs(value - want) > run.acc_tol:
            problems.append(f"{key} is {value:.6g}, report says {want}")
    device, precision = run.report.device or "cpu", run.report.precision or "fp32"
    if problems and (device != "cpu" or precision != "fp32"):
        problems.append(f"the run measured on {device} in {precision}: allow a tolerance")
    if problems:
        raise _Fail("; ".join(problems))
    return ", ".join(f"{k} {v:.4%}" for k, v in measured.items()) + " as recorded"


def _eval_batch_size(run: _Run) -> int:
    return run.recipe.data.eval_batch_size if run.recipe is not None else run.batch_size
