"""compress(): load -> factorize -> fine-tune (DWF) -> cut -> collapse -> export -> report."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Iterator
from functools import partial
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
from .baselines import train_baseline
from .batchnorm import has_batchnorm, recalibrate_batchnorm_
from .checkpoint import CHECKPOINT_NAME, StopRequest, load_checkpoint
from .config import Recipe, recipe_to_yaml
from .data import load_data_config, num_classes
from .errors import ExportCheckError, InputError, OutputError, QualityGateFailed
from .export import (
    SPARSE_ONNX_NOTE,
    export_onnx,
    export_sparse_onnx,
    load_sparse,
    onnx_accuracy,
    onnx_max_abs_diff,
    save_sparse,
    tensor_digests,
)
from .factorize import collapse_
from .loop import Precision, device_name, evaluate, resolve_device
from .models import count_parameters, load_model_with_notes
from .outputs import check_out, file_sizes, make_staging, publish
from .report import write_report
from .select import apply_plan_, plan, retie_
from .summary import gate_results, layer_rows, method_summary, sparsity_summary, warnings_for
from .train import Callback, train_dwf


def _loaders(
    train: Dataset, test: Dataset, recipe: Recipe, device: torch.device
) -> tuple[DataLoader, DataLoader, torch.Generator]:
    generator = torch.Generator().manual_seed(recipe.train.seed)
    on_cuda = device.type == "cuda"
    workers = recipe.data.num_workers or (min(4, os.cpu_count() or 1) if on_cuda else 0)
    # Not persistent: a persistent loader draws its worker seed once, so a resumed run would
    # shuffle differently from an uninterrupted one.
    common = {"num_workers": workers, "pin_memory": on_cuda}
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


def _check_fit(model: nn.Module, loader: DataLoader, classes: int | None) -> torch.Tensor:
    """One forward pass on an evaluation batch, so mismatches fail before any training."""
    x, y = next(iter(loader))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise InputError(
            f"the model cannot take the data's input of shape {tuple(x.shape[1:])}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    needed = max(classes or 0, int(y.max()) + 1)
    if logits.dim() != 2 or logits.shape[1] < needed:
        raise InputError(
            f"the model outputs shape {tuple(logits.shape[1:])} but the data has {needed} "
            f"classes: the model needs {needed} outputs"
        )
    return x


def _export(
    model: nn.Module, staging: Path, names: list[str], example: torch.Tensor,
    eval_loader: DataLoader, recipe: Recipe, summary: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    hashes = tensor_digests(state)
    metadata = {
        "dwfc.version": __version__,
        "dwfc.recipe": json.dumps(recipe.model_dump(mode="json")),
        "dwfc.sparsity": json.dumps(summary),
        "dwfc.hashes": json.dumps(hashes),
    }
    sparse_path = staging / "model.safetensors"
    save_sparse(state, sparse_path, [n for n in names if n in state], metadata)
    if tensor_digests(load_sparse(sparse_path)) != hashes:
        raise ExportCheckError("model.safetensors does not restore the collapsed weights exactly")
    result: dict[str, Any] = {"onnx": None, "onnx_accuracy": None, "hashes": hashes}
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
        sparse_onnx = recipe.export.sparse_onnx and export_sparse_onnx(
            onnx_path, staging / "model.sparse.onnx"
        )
        result["onnx"] = {
            "max_abs_diff": diff, "tolerance": recipe.export.parity_tolerance,
            "checker": "passed", "opset": recipe.export.opset,
            "sparse_variant": "model.sparse.onnx" if sparse_onnx else None,
            "sparse_variant_note": SPARSE_ONNX_NOTE if sparse_onnx else None,
        }  # fmt: skip
        result["onnx_accuracy"] = onnx_accuracy(onnx_path, eval_loader)
    return result


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """A failed write (disk full, permissions) is one line naming --out, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write the outputs to {out}: {exc.strerror or exc}") from None


def _resume_payload(out: Path, recipe: Recipe) -> dict[str, Any]:
    payload = load_checkpoint(out / CHECKPOINT_NAME)
    saved, now = payload["recipe"], recipe.model_dump(mode="json")
    for section, values in now.items():
        for key, value in values.items():
            if section not in ("export", "gates") and saved.get(section, {}).get(key) != value:
                raise InputError(
                    f"--resume: {section}.{key} is {value!r} but the checkpoint was made with "
                    f"{saved.get(section, {}).get(key)!r}; resume with the same settings"
                )
    return payload


def _recalibrate(
    model: nn.Module, recipe: Recipe, loaders: tuple[DataLoader, DataLoader],
    device: torch.device, precision: Precision,
) -> dict[str, float]:  # fmt: skip
    """Re-estimate BatchNorm statistics after the cut; the accuracy before and after."""
    if not (recipe.sparsity.recalibrate_bn and has_batchnorm(model)):
        return {}
    train_loader, eval_loader = loaders
    before = evaluate(model, eval_loader, device, precision)
    recalibrate_batchnorm_(model, train_loader, device)
    return {"before_bn_recalibration": before,
            "after_bn_recalibration": evaluate(model, eval_loader, device, precision)}  # fmt: skip


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
        model, notes = load_model_with_notes(
            model_path, recipe.model.arch, recipe.model.arch_kwargs, recipe.model.trust_model
        )
        planned = plan(model, recipe.factorize)
        train_set, eval_set = load_data_config(recipe.data)
        train_loader, eval_loader, generator = _loaders(train_set, eval_set, recipe, device)
        classes = num_classes(train_set)
        example = _check_fit(model, eval_loader, classes)
        top5 = classes is not None and classes > 10  # top-5 is reported for > 10 classes
        total_params = count_parameters(model)
        model.to(device)
        precision = Precision.for_device(device, model, enabled=recipe.train.amp)
        original_acc = evaluate(model, eval_loader, device, precision)
        original_top5 = evaluate(model, eval_loader, device, precision, topk=5) if top5 else None
        timing["load_s"] = time.perf_counter() - started

        dwf = recipe.sparsity.method == "dwf"
        apply_plan_(model, planned, init=recipe.factorize.init)
        names = [p.name for p in planned]
        if not dwf:  # a baseline prunes the same weights, kept plain
            collapse_(model)
            retie_(model)
        if precision.channels_last:
            model.to(memory_format=torch.channels_last)
        forward_model = model
        if distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            forward_model = DistributedDataParallel(model, device_ids=device_ids)
        emit("stage", {"stage": "train", "factorized": len(names)})
        with StopRequest() as stop:
            train = train_dwf if dwf else partial(train_baseline, recipe.sparsity.method, names)
            outcome = train(
                model, train_loader, eval_loader, recipe, device, emit, precision=precision,
                forward_model=forward_model, resume=payload,
                checkpoint=out / CHECKPOINT_NAME if recipe.train.checkpoint else None,
                loader_generator=generator, stop=stop,
            )  # fmt: skip
        timing.update(outcome.timing)

        collapse_(model)
        retie_(model)
        bn = _recalibrate(model, recipe, (train_loader, eval_loader), device, precision)
        compressed_acc = evaluate(model, eval_loader, device, precision)
        top5_acc = {}
        if top5:
            top5_acc = {"original_top5": original_top5, "compressed_pytorch_top5": evaluate(
                model, eval_loader, device, precision, topk=5)}  # fmt: skip
        layers = layer_rows(model, names)
        summary = sparsity_summary(layers, recipe, outcome, total_params)
        if not main:
            return {"sparsity": summary, "rank": dist.rank()}

        emit("stage", {"stage": "export"})
        export_started = time.perf_counter()
        staging = make_staging(out)
        aliases = [alias for p in planned for alias in p.aliases]
        with _writing(out):
            exported = _export(model, staging, names + aliases, example, eval_loader, recipe,
                               summary)  # fmt: skip
        timing["export_s"] = time.perf_counter() - export_started
        timing["total_s"] = time.perf_counter() - started
        report = {
            "dwfc_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"source": str(model_path), "arch": recipe.model.arch,
                      "parameters": total_params, "notes": notes},
            "data": {"source": recipe.data.source, "train_samples": len(train_set),
                     "eval_samples": len(eval_set)},
            "input_shape": list(example.shape[1:]),
            "input_dtype": str(example.dtype).removeprefix("torch."),
            "device": device_name(device),
            "precision": precision.describe(),
            "world_size": dist.world_size(),
            "resumed": resume,
            "method": method_summary(recipe, outcome),
            "sparsity": summary,
            "layers": layers,
            "accuracy": {
                "original": original_acc, **outcome.accuracy, **bn,
                "compressed_pytorch": compressed_acc,
                "compressed_onnxruntime": exported["onnx_accuracy"], **top5_acc,
            },
            "onnx": exported["onnx"],
            "files": file_sizes(staging, total_params),
            "hashes": exported["hashes"],
            "timing": timing,
            "history": outcome.history,
            "recipe": recipe.model_dump(mode="json"),
        }  # fmt: skip
        report["gates"] = gate_results(recipe, report)
        report["warnings"] = warnings_for(report)
        with _writing(out):
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
