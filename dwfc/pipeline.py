"""compress(): the stages of `dwfc compress` in order, each a call into the module that owns it.

load (models/) -> select (select.py; structure.kind=channel: structure/plan.py, after the data)
-> data (data/loaders.py) -> prepare (the method's: factorize.py, structure/gates.py) -> train
(engine/, methods/) -> collapse (channel: structure/prune.py removes the channels) -> BatchNorm
(batchnorm.py) -> export (export/stage.py) -> report (report/) -> gates -> publish (outputs.py).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from dwfc import inputs
from dwfc._atomic import write_text_atomic
from dwfc.batchnorm import recalibrate_and_measure
from dwfc.config import Recipe, recipe_to_yaml
from dwfc.data.loaders import check_fit, load_run_data
from dwfc.engine import distributed as dist
from dwfc.engine.checkpoint import StopRequest, load_for_resume
from dwfc.engine.device import Precision, device_name, resolve_device
from dwfc.engine.loop import evaluate, evaluate_f1
from dwfc.engine.trainer import Callback, train
from dwfc.errors import InputError
from dwfc.export.stage import Original, export_original, export_outputs
from dwfc.factorize import collapse_
from dwfc.inputs import Inputs
from dwfc.methods import method_class
from dwfc.models import count_parameters, load_model_with_notes
from dwfc.models.defaults import with_model_defaults
from dwfc.outputs import CHECKPOINT, RECIPE, check_out, file_sizes, make_staging, publish, writing
from dwfc.report.build import (
    build_report,
    channel_summary,
    layer_rows,
    raise_for_gates,
    sparsity_summary,
)
from dwfc.report.markdown import write_report
from dwfc.report.schema import RunReport
from dwfc.select import plan
from dwfc.structure import ChannelPlan, check_target, plan_channels, remove_
from dwfc.structure.blocks import round_to


def _silent(event: str, info: dict) -> None:
    pass


def plan_for(model: torch.nn.Module, example: Inputs, recipe: Recipe) -> ChannelPlan:
    """The channel plan of a structure.kind=channel run, its target checked before training."""
    if not isinstance(example, torch.Tensor):
        raise InputError("structure.kind=channel takes models with one input tensor; this "
                         f"one takes {', '.join(example)}: use structure.kind=none")  # fmt: skip
    cfg = recipe.structure
    channels = plan_channels(model, example, round_to(cfg), cfg.exclude, cfg.min_keep)
    check_target(channels, cfg.target_speedup)
    return channels


def compress(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    recipe: Recipe | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    callback: Callback | None = None,
) -> RunReport:
    """Compress the model in `model_path` with the recipe's method and write the outputs into
    `out_dir`.

    Returns the report (`report.to_dict()` is report.json). Outputs appear only when every
    stage succeeded; a checkpoint (`out_dir/checkpoint.pt`) is kept after every epoch so that an
    interrupted run continues with `resume=True`. Under torchrun, every rank trains and rank 0
    alone writes (the other ranks return a report with `rank` and the sparsity only).

    Example:
        report = compress("lenet.pt", "runs/lenet", load_recipe("default", [
            "model.arch=dwfc.zoo:lenet_300_100", "sparsity.target=0.95"]))
        report.sparsity.achieved  # 0.95
    """
    recipe = recipe or Recipe()
    started = time.perf_counter()
    out = Path(out_dir)
    device = resolve_device(recipe.train.device)
    check_out(out, overwrite, resume)
    checkpoint = out / CHECKPOINT
    distributed = dist.init(device)
    emit = callback if (callback is not None and dist.is_main()) else _silent
    staging: Path | None = None
    original = Original()
    try:
        torch.manual_seed(recipe.train.seed)
        timing: dict[str, float] = {}
        emit("stage", {"stage": "load"})
        model, notes = load_model_with_notes(
            model_path, recipe.model.arch, recipe.model.arch_kwargs, recipe.model.trust_model
        )
        recipe, default_notes = with_model_defaults(recipe, model)
        notes += default_notes
        payload = load_for_resume(checkpoint, recipe.model_dump(mode="json")) if resume else None
        channel = recipe.structure.kind == "channel"
        method = method_class(recipe.sparsity.method, recipe.structure.kind)
        planned = [] if channel else plan(model, recipe.factorize)
        data = load_run_data(recipe, device)
        example = check_fit(model, data)
        channels = plan_for(model, example, recipe) if channel else None
        total_params = count_parameters(model)
        if dist.is_main():  # the model before compression, for the latency comparison
            original = export_original(model, example, recipe)
        model.to(device)
        precision = Precision.for_device(device, model, enabled=recipe.train.amp)

        def measure(topk: int = 1) -> float:
            return evaluate(model, data.eval_loader, device, precision, topk)

        def scores(stage: str) -> dict[str, float]:  # top-5 and F1, where the data has them
            top5 = {f"{stage}_top5": measure(5)} if data.top5 else {}
            f1 = ({f"{stage}_f1": evaluate_f1(model, data.eval_loader, device, precision)}
                  if data.f1 else {})  # fmt: skip
            return {**top5, **f1}

        accuracy: dict[str, float | None] = {"original": measure()}
        extra = scores("original")
        timing["load_s"] = time.perf_counter() - started

        names = [p.name for p in planned]
        method.prepare(model, channels or planned, recipe)
        if precision.channels_last:
            model.to(memory_format=torch.channels_last)
        trained = {"groups": len(channels.removable)} if channels else {"weights": len(names)}
        emit("stage", {"stage": "train", "method": method.trains, **trained})
        with StopRequest() as stop:
            outcome = train(
                model, channels or names, data.train_loader, data.eval_loader, recipe, device,
                emit, precision=precision, forward_model=dist.wrap(model, device),
                resume=payload, checkpoint=checkpoint if recipe.train.checkpoint else None,
                loader_generator=data.generator, stop=stop,
            )  # fmt: skip
        timing.update(outcome.timing)
        accuracy.update(outcome.accuracy)

        collapse_(model)
        spec = remove_(model, outcome.removed or {}, example) if channels else None
        accuracy.update(recalibrate_and_measure(
            model, recipe.sparsity.recalibrate_bn, data.train_loader, measure, device))  # fmt: skip
        accuracy["compressed_pytorch"] = measure()
        extra.update(scores("compressed_pytorch"))
        layers = [] if channels else layer_rows(model, names)
        sparsity = None if channels else sparsity_summary(layers, recipe, outcome, total_params)
        structure = channel_summary(channels, model, example, recipe, outcome) if channels else None
        if not dist.is_main():
            return RunReport(rank=dist.rank(), sparsity=sparsity, structure=structure)

        emit("stage", {"stage": "export"})
        export_started = time.perf_counter()
        staging = make_staging(out)
        aliases = [alias for p in planned for alias in p.aliases]
        with writing(out):
            exported = export_outputs(
                model, staging, names + aliases, example, data.eval_loader, data.train_loader,
                recipe, sparsity, data.classes, original, structure, spec,
            )  # fmt: skip
        accuracy.update(compressed_onnxruntime=exported.onnx_accuracy, **extra)
        if exported.int8 is not None:
            accuracy["compressed_int8"] = exported.int8_accuracy
        timing["export_s"] = time.perf_counter() - export_started
        timing["total_s"] = time.perf_counter() - started
        report = build_report(
            model_path=model_path, recipe=recipe, notes=notes, total_params=total_params,
            samples=data.samples, input_shape=inputs.sample_shape(example),
            input_dtype=inputs.dtype_name(example),
            input_names=inputs.names(inputs.ordered(model, example)), device=device_name(device),
            precision=precision.describe(), world_size=dist.world_size(), resumed=resume,
            outcome=outcome, layers=layers, sparsity=sparsity, structure=structure,
            accuracy=accuracy,
            onnx=exported.onnx, int8=exported.int8, latency=exported.latency,
            files=file_sizes(staging, total_params), hashes=exported.hashes, timing=timing,
            classes=data.classes,
        )  # fmt: skip
        with writing(out):
            write_text_atomic(staging / RECIPE, recipe_to_yaml(recipe))
            write_report(staging, report)
            publish(staging, out)
        raise_for_gates(report, out)
        return report
    finally:
        for folder in (staging, original.folder):
            if folder is not None and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
        if distributed:
            dist.shutdown()
