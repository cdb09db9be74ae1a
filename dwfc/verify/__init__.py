"""`dwfc verify OUT_DIR`: re-check a finished `dwfc compress` output folder from its files alone.

Checks, in order (each is passed, failed or skipped, with a one-line detail):

- report: report.json is present and a JSON object
- files: the model files exist, with the sizes report.json records
- safetensors: model.safetensors loads with `load_sparse`
- hashes: the tensors' digests (`tensor_digests`) equal report.json "hashes" and the file's
  `dwfc.hashes` metadata
- sparsity: per-layer shapes, weights and non-zeros, and the overall sparsity, equal the report
- model: the architecture in recipe.yaml is rebuilt (channel runs: shrunk by the pruned-model
  spec in model.safetensors) and loads the weights strictly
- structure: channel runs: the rebuilt model keeps the channels the report lists, and
  Torch-Pruning counts the MACs and parameters it records
- onnx: model.onnx passes onnx.checker's full check, the reference evaluator agrees with
  onnxruntime, and onnxruntime matches the rebuilt model on a batch
- sparse_onnx: model.sparse.onnx (when written) passes onnx.checker, matches model.onnx, and
  its full check says what the report says
- int8: model.int8.onnx (when written) passes the full check and every pruned weight is zero
- accuracy: with data given, the re-measured accuracy equals the recorded one
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dwfc.errors import DwfcError, InputError, VerificationError, first_line
from dwfc.verify import files, onnx_checks
from dwfc.verify.state import Fail, Run, Skip

__all__ = ["CHECKS", "raise_for_failures", "verify_run"]

CHECKS: tuple[tuple[str, Callable[[Run], str]], ...] = (
    ("report", files.check_report),
    ("files", files.check_files),
    ("safetensors", files.check_safetensors),
    ("hashes", files.check_hashes),
    ("sparsity", files.check_sparsity),
    ("model", files.check_model),
    ("structure", files.check_structure),
    ("onnx", onnx_checks.check_onnx),
    ("sparse_onnx", onnx_checks.check_sparse_onnx),
    ("int8", onnx_checks.check_int8),
    ("accuracy", onnx_checks.check_accuracy),
)


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
    run = Run(out, data_source, batch_size, accuracy_tolerance)
    checks: list[dict[str, Any]] = []
    for name, step in CHECKS:
        try:
            checks.append(_row(name, "passed", step(run)))
        except Skip as exc:
            checks.append(_row(name, "skipped", str(exc)))
        except (Fail, DwfcError) as exc:
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


def _row(check: str, status: str, detail: str) -> dict[str, Any]:
    return {"check": check, "ok": status != "failed", "status": status, "detail": detail}
