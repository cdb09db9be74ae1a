"""compress(): load -> factorize -> fine-tune (DWF) -> cut -> collapse -> export -> report."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import __version__
from ._atomic import UMASK, write_text_atomic
from .config import Recipe, recipe_to_yaml
from .data import load_data
from .errors import ExportCheckError, InputError
from .export import export_onnx, load_sparse, onnx_accuracy, onnx_max_abs_diff, save_sparse
from .factorize import collapse_, factorize_, factorized_weights, layer_type_filter
from .models import count_parameters, load_model
from .report import write_report
from .sparsity import layer_stats
from .train import Callback, DwfOutcome, evaluate, resolve_device, train_dwf

OUTPUT_FILES = (
    "model.safetensors",
    "model.onnx",
    "report.json",
    "report.md",
    "recipe.yaml",
    "layer_sparsity.png",
    "training.png",
)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """Check `out` can be written and return a fresh staging folder beside it."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out} is not empty: pass --overwrite or choose another folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        staging.chmod(0o777 & ~UMASK)  # mkdtemp makes it 0700; it becomes the output folder
        return staging
    except OSError as exc:
        raise InputError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


def _publish(staging: Path, out: Path) -> None:
    """Move finished outputs into `out`: one rename when `out` is new, else file by file."""
    if not out.exists():
        os.replace(staging, out)
        return
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()


def _loaders(train: Dataset, test: Dataset, recipe: Recipe) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(recipe.train.seed)
    return (
        DataLoader(train, batch_size=recipe.data.batch_size, shuffle=True, generator=generator),
        DataLoader(test, batch_size=recipe.data.eval_batch_size),
    )


def _check_fit(model: nn.Module, loader: DataLoader) -> torch.Tensor:
    """One forward pass on an evaluation batch, so shape mismatches fail before training."""
    x, y = next(iter(loader))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    except (RuntimeError, ValueError) as exc:
        raise InputError(
            f"the model cannot take the data's input of shape {tuple(x.shape[1:])}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    if logits.dim() != 2 or logits.shape[1] <= int(y.max()):
        raise InputError(
            f"the model outputs shape {tuple(logits.shape[1:])} but the data has labels up to "
            f"{int(y.max())}: the model needs at least {int(y.max()) + 1} outputs"
        )
    return x


def _layers(model: nn.Module, factorized: set[str]) -> list[dict[str, Any]]:
    state = {k: v for k, v in model.state_dict().items() if k in factorized}
    return [
        {
            "name": s.name,
            "shape": s.shape,
            "weights": s.weights,
            "nonzero": s.nonzero,
            "sparsity": s.sparsity,
            "factorized": True,
        }
        for s in layer_stats(state)
    ]


def _sparsity_summary(
    stats: list[dict[str, Any]], recipe: Recipe, outcome: DwfOutcome, total_params: int
) -> dict[str, Any]:
    weights = sum(s["weights"] for s in stats)
    nonzero = sum(s["nonzero"] for s in stats)
    return {
        "target": recipe.sparsity.target,
        "achieved": 1.0 - nonzero / weights,
        "reached_by_training_eps": outcome.sparsity_eps,
        "reached_by_training_relative": outcome.sparsity_relative,
        "eps": recipe.sparsity.eps,
        "relative_threshold": recipe.sparsity.relative_threshold,
        "factorized_weights": weights,
        "nonzero_weights": nonzero,
        "compression_ratio": weights / nonzero if nonzero else float("inf"),
        "total_parameters": total_params,
        "unfactorized_parameters": total_params - weights,
    }


def _export(
    model: nn.Module,
    staging: Path,
    factorized: list[str],
    example: torch.Tensor,
    eval_loader: DataLoader,
    recipe: Recipe,
    summary: dict[str, Any],
) -> dict[str, Any]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "dwfc.version": __version__,
        "dwfc.recipe": json.dumps(recipe.model_dump(mode="json")),
        "dwfc.sparsity": json.dumps(summary),
    }
    sparse_path = staging / "model.safetensors"
    save_sparse(state, sparse_path, factorized, metadata)
    restored = load_sparse(sparse_path)
    if restored.keys() != state.keys() or not all(
        torch.equal(restored[k], state[k]) for k in state
    ):
        raise ExportCheckError("model.safetensors does not restore the collapsed weights exactly")
    result: dict[str, Any] = {"onnx": None, "onnx_accuracy": None}
    if recipe.export.onnx:
        onnx_path = staging / "model.onnx"
        cpu_model = model.to("cpu").eval()
        export_onnx(cpu_model, example[:1], onnx_path, opset=recipe.export.opset)
        diff = onnx_max_abs_diff(onnx_path, cpu_model, example)
        if not diff <= recipe.export.parity_tolerance:
            raise ExportCheckError(
                f"onnxruntime output differs from PyTorch by {diff:.3g} "
                f"(tolerance {recipe.export.parity_tolerance:g})"
            )
        result["onnx"] = {
            "max_abs_diff": diff,
            "tolerance": recipe.export.parity_tolerance,
            "checker": "passed",
            "opset": recipe.export.opset,
        }
        result["onnx_accuracy"] = onnx_accuracy(onnx_path, eval_loader)
    return result


def compress(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    recipe: Recipe | None = None,
    *,
    overwrite: bool = False,
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Compress the model in `model_path` with DWF and write the outputs into `out_dir`.

    Returns the report (also written as report.json). Outputs appear only when every stage
    succeeded; on any error `out_dir` is left as it was.

    Example:
        report = compress("lenet.pt", "runs/lenet", load_recipe("default", [
            "model.arch=dwfc.zoo:lenet_300_100", "sparsity.target=0.95"]))
    """
    recipe = recipe or Recipe()
    emit = callback or (lambda event, info: None)
    started = time.perf_counter()
    out = Path(out_dir)
    device = resolve_device(recipe.train.device)
    staging = _prepare_out(out, overwrite)
    try:
        torch.manual_seed(recipe.train.seed)
        timing: dict[str, float] = {}
        emit("stage", {"stage": "load"})
        model = load_model(
            model_path, recipe.model.arch, recipe.model.arch_kwargs, recipe.model.trust_model
        )
        train_set, eval_set = load_data(recipe.data.source, **recipe.data.options)
        train_loader, eval_loader = _loaders(train_set, eval_set, recipe)
        example = _check_fit(model, eval_loader)
        total_params = count_parameters(model)
        model.to(device)
        original_acc = evaluate(model, eval_loader, device)
        timing["load_s"] = time.perf_counter() - started

        factorize_(
            model,
            depth=recipe.factorize.depth,
            init=recipe.factorize.init,
            filter_fn=layer_type_filter(recipe.factorize.layer_types),
        )
        factorized = [fw.name for fw in factorized_weights(model)]
        emit("stage", {"stage": "train", "factorized": len(factorized)})
        outcome = train_dwf(model, train_loader, eval_loader, recipe, device, emit)
        timing.update(outcome.timing)

        collapse_(model)
        compressed_acc = evaluate(model, eval_loader, device)
        layers = _layers(model, set(factorized))
        summary = _sparsity_summary(layers, recipe, outcome, total_params)

        emit("stage", {"stage": "export"})
        export_started = time.perf_counter()
        exported = _export(model, staging, factorized, example, eval_loader, recipe, summary)
        timing["export_s"] = time.perf_counter() - export_started
        timing["total_s"] = time.perf_counter() - started

        report = {
            "dwfc_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "source": str(model_path),
                "arch": recipe.model.arch,
                "parameters": total_params,
            },
            "data": {
                "source": recipe.data.source,
                "train_samples": len(train_set),
                "eval_samples": len(eval_set),
            },
            "device": str(device),
            "method": {
                "depth": recipe.factorize.depth,
                "init": recipe.factorize.init,
                "weight_decay": 2 * outcome.lam / recipe.factorize.depth,
                "lambda": outcome.lam,
                "lambda_history_max": outcome.lam_max,
                "lr": recipe.train.lr,
                "optimizer": "sgd",
                "schedule": recipe.train.schedule,
            },
            "sparsity": summary,
            "layers": layers,
            "accuracy": {
                "original": original_acc,
                **outcome.accuracy,
                "compressed_pytorch": compressed_acc,
                "compressed_onnxruntime": exported["onnx_accuracy"],
            },
            "onnx": exported["onnx"],
            "files": _file_sizes(staging, total_params),
            "timing": timing,
            "history": outcome.history,
            "recipe": recipe.model_dump(mode="json"),
        }
        write_text_atomic(staging / "recipe.yaml", recipe_to_yaml(recipe))
        write_report(staging, report)
        _publish(staging, out)
        return report
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _file_sizes(folder: Path, total_params: int) -> dict[str, int]:
    sizes = {"dense_fp32_bytes": 4 * total_params}
    for name in ("model.safetensors", "model.onnx"):
        if (folder / name).exists():
            sizes[name] = (folder / name).stat().st_size
    return sizes
