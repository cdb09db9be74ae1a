"""compress(): load -> factorize -> fine-tune (DWF) -> cut -> collapse -> export -> report."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from . import __version__
from . import distributed as dist
from ._atomic import write_text_atomic
from .checkpoint import CHECKPOINT_NAME, StopRequest, load_checkpoint
from .config import Recipe, recipe_to_yaml
from .data import load_data
from .errors import ExportCheckError, InputError, QualityGateFailed
from .export import export_onnx, load_sparse, onnx_accuracy, onnx_max_abs_diff, save_sparse
from .factorize import collapse_, factorize_, factorized_weights, layer_type_filter
from .loop import Precision, device_name, evaluate, resolve_device
from .models import count_parameters, load_model
from .outputs import check_out, file_sizes, make_staging, publish
from .report import write_report
from .sparsity import layer_stats
from .train import Callback, DwfOutcome, train_dwf


def _loaders(
    train: Dataset, test: Dataset, recipe: Recipe, device: torch.device
) -> tuple[DataLoader, DataLoader, torch.Generator]:
    generator = torch.Generator().manual_seed(recipe.train.seed)
    on_cuda = device.type == "cuda"
    workers = recipe.data.num_workers or (min(4, os.cpu_count() or 1) if on_cuda else 0)
    common = {"num_workers": workers, "pin_memory": on_cuda, "persistent_workers": workers > 0}
    batch = recipe.data.batch_size
    if dist.world_size() > 1:
        sampler = DistributedSampler(train, shuffle=True, seed=recipe.train.seed)
        batch = max(1, batch // dist.world_size())  # the recipe's batch size is the global one
        train_loader = DataLoader(train, batch_size=batch, sampler=sampler, **common)
    else:
        train_loader = DataLoader(train, batch_size=batch, shuffle=True, generator=generator,
                                  **common)  # fmt: skip
    eval_loader = DataLoader(test, batch_size=recipe.data.eval_batch_size, **common)
    return train_loader, eval_loader, generator


def _check_fit(model: nn.Module, loader: DataLoader) -> torch.Tensor:
    """One forward pass on an evaluation batch, so shape mismatches fail before training."""
    x, y = next(iter(loader))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    except (RuntimeError, ValueError, TypeError) as exc:
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


def _layers(model: nn.Module, factorized: list[str]) -> list[dict[str, Any]]:
    state = model.state_dict()
    return [
        {"name": s.name, "shape": s.shape, "weights": s.weights, "nonzero": s.nonzero,
         "sparsity": s.sparsity, "factorized": True}
        for s in layer_stats({name: state[name] for name in factorized})
    ]  # fmt: skip


def _sparsity_summary(
    layers: list[dict[str, Any]], recipe: Recipe, outcome: DwfOutcome, total_params: int
) -> dict[str, Any]:
    weights = sum(s["weights"] for s in layers)
    nonzero = sum(s["nonzero"] for s in layers)
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
    model: nn.Module, staging: Path, factorized: list[str], example: torch.Tensor,
    eval_loader: DataLoader, recipe: Recipe, summary: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "dwfc.version": __version__,
        "dwfc.recipe": json.dumps(recipe.model_dump(mode="json")),
        "dwfc.sparsity": json.dumps(summary),
    }
    sparse_path = staging / "model.safetensors"
    save_sparse(state, sparse_path, factorized, metadata)
    restored = load_sparse(sparse_path)
    same_keys = restored.keys() == state.keys()
    if not same_keys or any(not torch.equal(restored[k], v) for k, v in state.items()):
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
        result["onnx"] = {"max_abs_diff": diff, "tolerance": recipe.export.parity_tolerance,
                          "checker": "passed", "opset": recipe.export.opset}  # fmt: skip
        result["onnx_accuracy"] = onnx_accuracy(onnx_path, eval_loader)
    return result


def _gates(recipe: Recipe, report: dict[str, Any]) -> list[dict[str, Any]]:
    gates = []
    drop = recipe.gates.max_accuracy_drop
    if drop is not None:
        acc = report["accuracy"]
        lost = 100.0 * (acc["original"] - acc["compressed_pytorch"])
        gates.append({"gate": "max_accuracy_drop", "threshold": drop, "value": lost,
                      "passed": lost <= drop})  # fmt: skip
    floor = recipe.gates.min_sparsity
    if floor is not None:
        achieved = report["sparsity"]["achieved"]
        gates.append({"gate": "min_sparsity", "threshold": floor, "value": achieved,
                      "passed": achieved >= floor})  # fmt: skip
    return gates


def _resume_payload(out: Path, recipe: Recipe) -> dict[str, Any]:
    payload = load_checkpoint(out / CHECKPOINT_NAME)
    saved, now = payload["recipe"], recipe.model_dump(mode="json")
    for section, values in now.items():
        for key, value in values.items():
            if section != "export" and saved.get(section, {}).get(key) != value:
                raise InputError(
                    f"--resume: {section}.{key} is {value!r} but the checkpoint was made with "
                    f"{saved.get(section, {}).get(key)!r}; resume with the same settings"
                )
    return payload


def compress(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    recipe: Recipe | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Compress the model in `model_path` with DWF and write the outputs into `out_dir`.

    Returns the report (also written as report.json). Outputs appear only when every stage
    succeeded; a checkpoint (`out_dir/checkpoint.pt`) is kept after every epoch so that an
    interrupted run continues with `resume=True`. Under torchrun, every rank trains and rank 0
    alone writes.

    Example:
        report = compress("lenet.pt", "runs/lenet", load_recipe("default", [
            "model.arch=dwfc.zoo:lenet_300_100", "sparsity.target=0.95"]))
    """
    recipe = recipe or Recipe()
    started = time.perf_counter()
    out = Path(out_dir)
    device = resolve_device(recipe.train.device)
    check_out(out, overwrite, resume)
    payload = _resume_payload(out, recipe) if resume else None
    distributed = dist.init(device)
    main = dist.is_main()
    emit = callback if (callback is not None and main) else (lambda event, info: None)
    staging: Path | None = None
    try:
        torch.manual_seed(recipe.train.seed)
        timing: dict[str, float] = {}
        emit("stage", {"stage": "load"})
        model = load_model(
            model_path, recipe.model.arch, recipe.model.arch_kwargs, recipe.model.trust_model
        )
        train_set, eval_set = load_data(recipe.data.source, **recipe.data.options)
        train_loader, eval_loader, generator = _loaders(train_set, eval_set, recipe, device)
        example = _check_fit(model, eval_loader)
        total_params = count_parameters(model)
        model.to(device)
        precision = Precision.for_device(device, model, enabled=recipe.train.amp)
        original_acc = evaluate(model, eval_loader, device, precision)
        timing["load_s"] = time.perf_counter() - started

        factorize_(model, depth=recipe.factorize.depth, init=recipe.factorize.init,
                   filter_fn=layer_type_filter(recipe.factorize.layer_types))  # fmt: skip
        if precision.channels_last:
            model.to(memory_format=torch.channels_last)
        factorized = [fw.name for fw in factorized_weights(model)]
        forward_model = model
        if distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            forward_model = DistributedDataParallel(model, device_ids=device_ids)
        emit("stage", {"stage": "train", "factorized": len(factorized)})
        with StopRequest() as stop:
            outcome = train_dwf(
                model, train_loader, eval_loader, recipe, device, emit, precision=precision,
                forward_model=forward_model, resume=payload,
                checkpoint=out / CHECKPOINT_NAME if recipe.train.checkpoint else None,
                loader_generator=generator, stop=stop,
            )  # fmt: skip
        timing.update(outcome.timing)

        collapse_(model)
        compressed_acc = evaluate(model, eval_loader, device, precision)
        layers = _layers(model, factorized)
        summary = _sparsity_summary(layers, recipe, outcome, total_params)
        if not main:
            return {"sparsity": summary, "rank": dist.rank()}

        emit("stage", {"stage": "export"})
        export_started = time.perf_counter()
        staging = make_staging(out)
        exported = _export(model, staging, factorized, example, eval_loader, recipe, summary)
        timing["export_s"] = time.perf_counter() - export_started
        timing["total_s"] = time.perf_counter() - started
        report = {
            "dwfc_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"source": str(model_path), "arch": recipe.model.arch,
                      "parameters": total_params},
            "data": {"source": recipe.data.source, "train_samples": len(train_set),
                     "eval_samples": len(eval_set)},
            "device": device_name(device),
            "precision": precision.describe(),
            "world_size": dist.world_size(),
            "resumed": resume,
            "method": {
                "depth": recipe.factorize.depth, "init": recipe.factorize.init,
                "weight_decay": 2 * outcome.lam / recipe.factorize.depth, "lambda": outcome.lam,
                "lambda_history_max": outcome.lam_max, "lr": recipe.train.lr,
                "optimizer": "sgd", "schedule": recipe.train.schedule,
                "divergence_restarts": outcome.retries,
            },
            "sparsity": summary,
            "layers": layers,
            "accuracy": {
                "original": original_acc, **outcome.accuracy,
                "compressed_pytorch": compressed_acc,
                "compressed_onnxruntime": exported["onnx_accuracy"],
            },
            "onnx": exported["onnx"],
            "files": file_sizes(staging, total_params),
            "timing": timing,
            "history": outcome.history,
            "recipe": recipe.model_dump(mode="json"),
        }  # fmt: skip
        report["gates"] = _gates(recipe, report)
        write_text_atomic(staging / "recipe.yaml", recipe_to_yaml(recipe))
        write_report(staging, report)
        publish(staging, out)
        failed = [g for g in report["gates"] if not g["passed"]]
        if failed:
            raise QualityGateFailed(
                "quality gate failed: " + "; ".join(
                    f"{g['gate']} {g['value']:.4g} (limit {g['threshold']:g})" for g in failed
                ) + f"; the report in {out} shows why"
            )  # fmt: skip
        return report
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if distributed:
            dist.shutdown()
