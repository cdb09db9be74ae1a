"""The one place a run's report is assembled from what the stages measured; its quality gates and
warnings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from torch import Tensor, nn

from dwfc._version import __version__
from dwfc.config import Recipe
from dwfc.engine.outcome import TrainOutcome
from dwfc.errors import QualityGateFailed
from dwfc.methods import method_class
from dwfc.models.files import file_digest
from dwfc.outputs import SAFETENSORS
from dwfc.report.schema import (
    SCHEMA_VERSION,
    AccuracyInfo,
    ChannelLayerRow,
    DataInfo,
    GateResult,
    HistoryRowInfo,
    Int8Info,
    LatencyInfo,
    LayerRow,
    MethodInfo,
    ModelInfo,
    OnnxInfo,
    RunReport,
    SparsityInfo,
    StructureInfo,
)
from dwfc.sparsity import layer_stats
from dwfc.structure import PRUNED_KEY, ChannelPlan, count_macs
from dwfc.structure.groups import ROOTS


def _near_chance(classes: int) -> float:
    """Accuracy below which an original model is flagged: under twice chance, and under chance
    plus a tenth of the way from chance to perfect (for few classes, twice chance is a lot)."""
    chance = 1.0 / classes
    return min(2.0 * chance, chance + 0.1 * (1.0 - chance))


def layer_rows(model: nn.Module, names: list[str]) -> list[LayerRow]:
    """Shape, size, non-zeros and sparsity of each compressed weight."""
    state = model.state_dict()
    return [
        LayerRow(name=s.name, shape=s.shape, weights=s.weights, nonzero=s.nonzero,
                 sparsity=s.sparsity, factorized=True)
        for s in layer_stats({name: state[name] for name in names})
    ]  # fmt: skip


def sparsity_summary(
    layers: list[LayerRow], recipe: Recipe, outcome: TrainOutcome, total_params: int
) -> SparsityInfo:
    """Target against achieved, and how much of it training reached before the cut."""
    weights = sum(s.weights or 0 for s in layers)
    nonzero = sum(s.nonzero or 0 for s in layers)
    sc = recipe.sparsity
    return SparsityInfo(
        target=sc.target, achieved=1.0 - nonzero / weights,
        reached_by_training_eps=outcome.sparsity_eps,
        reached_by_training_relative=outcome.sparsity_relative,
        reached_by_training_controlled=outcome.sparsity_controlled,
        largest_cut_relative=outcome.largest_cut, eps=sc.eps,
        relative_threshold=sc.relative_threshold, control_threshold=sc.control_threshold,
        factorized_weights=weights, nonzero_weights=nonzero,
        compression_ratio=weights / nonzero if nonzero else float("inf"),
        total_parameters=total_params, unfactorized_parameters=total_params - weights,
    )  # fmt: skip


def _speedup(share: float | None) -> float | None:
    """The MAC speed-up of removing a share of the MACs."""
    return None if share is None or share >= 1.0 else 1.0 / (1.0 - share)


def channel_summary(plan: ChannelPlan, model: nn.Module, example: Tensor, recipe: Recipe,
                    outcome: TrainOutcome) -> StructureInfo:  # fmt: skip
    """Channels, parameters and MACs of the smaller `model` against the dense one of `plan`."""
    macs, params = count_macs(model, example.to(next(model.parameters()).device))
    dense = dict(plan.skeleton.model.named_modules())
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, ROOTS) and name in dense:
            before = dense[name]
            rows.append(ChannelLayerRow(
                name=name, type=type(module).__name__, in_channels=_channels(before, 0),
                out_channels=_channels(before, 1), kept_in=_channels(module, 0),
                kept_out=_channels(module, 1), parameters=_own_parameters(before),
                kept_parameters=_own_parameters(module)))  # fmt: skip
    removable = plan.removable
    return StructureInfo(
        kind=recipe.structure.kind, target_speedup=recipe.structure.target_speedup,
        speedup=plan.dense_macs / macs, dense_macs=plan.dense_macs, macs=macs,
        dense_parameters=plan.dense_params, parameters=params, round_to=plan.round_to,
        min_keep=plan.min_keep, max_speedup=plan.max_speedup, groups=len(plan.groups),
        removable_groups=len(removable),
        channels=sum(g.size for g in removable),
        channels_removed=sum(len(c) for c in (outcome.removed or {}).values()),
        reached_by_training_eps=_speedup(outcome.sparsity_eps),
        reached_by_training_relative=_speedup(outcome.sparsity_relative),
        reached_by_training_controlled=_speedup(outcome.sparsity_controlled),
        spec=f"{SAFETENSORS} metadata {PRUNED_KEY}", layers=rows,
    )  # fmt: skip


def _channels(module: nn.Module, out: int) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    return module.out_channels if out else module.in_channels


def _own_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def method_info(recipe: Recipe, outcome: TrainOutcome) -> MethodInfo:
    """The method and its final settings; entries a method has not are None."""
    method = method_class(recipe.sparsity.method, recipe.structure.kind)
    return MethodInfo.model_validate({
        "name": method.name, "lr": recipe.train.lr, "optimizer": "sgd",
        "schedule": recipe.train.schedule, "divergence_restarts": outcome.retries,
        "lr_factor": outcome.lr_factor, **method.summary(recipe, outcome),
    })  # fmt: skip


def warnings_for(report: RunReport) -> list[str]:
    """Plain-language warnings for things the numbers show but a reader could miss."""
    name = report.method.name if report.method else None
    structure = (report.method.structure if report.method else None) or "unstructured"
    accuracy = (report.accuracy or AccuracyInfo()).model_dump(exclude_none=True)
    notes = method_class(name, structure).warnings(accuracy) if name else []
    empty = [str(layer.name) for layer in report.layers if layer.nonzero == 0]
    if empty:
        notes.append(f"layer collapse: every weight of {', '.join(empty)} was pruned")
    original = report.accuracy.original if report.accuracy else None
    classes = report.data.classes if report.data else None
    from_scratch = report.method is not None and report.method.init == "varmatch"
    if original is not None and classes and original < _near_chance(classes) and not from_scratch:
        notes.append(
            f"the original model scores {100 * original:.1f}% on the evaluation data, near or "
            f"below chance ({100 / classes:.1f}% for {classes} classes): is it the trained "
            "model, and does the data match it (labels, normalisation)?"
        )
    return notes


def gate_results(recipe: Recipe, report: RunReport) -> list[GateResult]:
    """Each configured quality gate, its threshold, the measured value and whether it passed."""
    gates = []
    acc = report.accuracy or AccuracyInfo()
    drop = recipe.gates.max_accuracy_drop
    if drop is not None and acc.original is not None and acc.compressed_pytorch is not None:
        lost = 100.0 * (acc.original - acc.compressed_pytorch)
        gates.append(GateResult(gate="max_accuracy_drop", threshold=drop, value=lost,
                                passed=lost <= drop))  # fmt: skip
    if drop is not None and acc.original is not None and acc.compressed_int8 is not None:
        lost = 100.0 * (acc.original - acc.compressed_int8)
        gates.append(GateResult(gate="max_accuracy_drop_int8", threshold=drop, value=lost,
                                passed=lost <= drop))  # fmt: skip
    floor = recipe.gates.min_sparsity
    achieved = report.sparsity.achieved if report.sparsity else None
    if floor is not None and achieved is not None:
        gates.append(GateResult(gate="min_sparsity", threshold=floor, value=achieved,
                                passed=achieved >= floor))  # fmt: skip
    least = recipe.gates.min_speedup
    speedup = report.structure.speedup if report.structure else None
    if least is not None and speedup is not None:
        gates.append(GateResult(gate="min_speedup", threshold=least, value=speedup,
                                passed=speedup >= least))  # fmt: skip
    return gates


def raise_for_gates(report: RunReport, out: Path) -> None:
    """QualityGateFailed (exit 3) naming every failed gate, once the outputs are written."""
    failed = [g for g in report.gates if not g.passed]
    if failed:
        raise QualityGateFailed(
            "quality gate failed: " + "; ".join(
                f"{g.gate} {g.value:.4g} (limit {g.threshold:g})" for g in failed
            ) + f"; the report in {out} shows why"
        )  # fmt: skip


def build_report(
    *,
    model_path: str | Path,
    recipe: Recipe,
    notes: list[str],
    total_params: int,
    samples: tuple[int, int],
    input_shape: list[int],
    input_dtype: str,
    input_names: list[str] | None,
    device: str,
    precision: str,
    world_size: int,
    resumed: bool,
    outcome: TrainOutcome,
    layers: list[LayerRow],
    sparsity: SparsityInfo | None,
    structure: StructureInfo | None = None,
    accuracy: dict[str, float | None],
    onnx: OnnxInfo | None,
    int8: Int8Info | None,
    latency: LatencyInfo | None,
    files: dict[str, int],
    hashes: dict[str, str],
    timing: dict[str, float],
    classes: int | None,
) -> RunReport:
    """The report of a finished run, its gates and warnings included.

    `accuracy` holds the stages that ran (absent ones are left out of report.json).
    """
    report = RunReport(
        schema_version=SCHEMA_VERSION, dwfc_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        model=ModelInfo(source=str(model_path), arch=recipe.model.arch, parameters=total_params,
                        sha256=file_digest(Path(model_path)), notes=notes),
        data=DataInfo(source=recipe.data.source, train_samples=samples[0],
                      eval_samples=samples[1], classes=classes),
        input_shape=input_shape, input_dtype=input_dtype, input_names=input_names,
        device=device, precision=precision,
        world_size=world_size, resumed=resumed, method=method_info(recipe, outcome),
        **({"sparsity": sparsity} if sparsity else {}),
        **({"structure": structure} if structure else {}),
        layers=layers, accuracy=AccuracyInfo(**accuracy), onnx=onnx,
        **({"int8": int8} if int8 else {}), **({"latency": latency} if latency else {}),
        files=files, hashes=hashes, timing=timing,
        history=[HistoryRowInfo.model_validate(row) for row in outcome.history],
        recipe=recipe.model_dump(mode="json"),
    )  # fmt: skip
    report.gates = gate_results(recipe, report)
    report.warnings = warnings_for(report)
    return report
