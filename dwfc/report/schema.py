"""The run report, typed: what `dwfc compress` measured, as report.json holds it.

`RunReport` is built once (dwfc/report/build.py) and read by attribute everywhere else: the
Markdown report, the plots, `dwfc verify`, the quality gates and the CLI summary. report.json is
`report.to_dict()`; `RunReport.from_dict` reads one back (also one written by an older dwfc, or
a partial one: every field may be missing, and then renders as "—"). Keys a reader does not know
are kept. docs/report-schema.md lists the keys and the changes between schema versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dwfc.errors import InputError
from dwfc.report.format import jsonable

SCHEMA_VERSION = 3  # 2: int8, latency, ONNX checks and metadata, data.classes; 3: structure


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _doc(description: str, alias: str | None = None) -> Any:
    """An optional field (None when not recorded) with what it means in report.json."""
    return Field(None, description=description, alias=alias)


class ModelInfo(_Section):
    source: str | None = _doc("the model file")
    arch: str | None = _doc("model.arch: the architecture a state dict was loaded into")
    parameters: int | None = None
    sha256: str | None = _doc("digest of the model file's bytes")
    notes: list[str] = Field(default_factory=list, description="how the model file was read")


class DataInfo(_Section):
    source: str | None = _doc("data.source")
    train_samples: int | None = None
    eval_samples: int | None = None
    classes: int | None = _doc("how many classes the training data has, where it tells")


class MethodInfo(_Section):
    name: str | None = _doc("sparsity.method; reports from before the baselines are DWF")
    structure: str | None = _doc("structure.kind; absent: unstructured")
    depth: int | None = _doc("D (DWF only)")
    init: str | None = _doc("factorize.init (DWF only)")
    weight_decay: float | None = _doc("the final decay: on each factor (DWF), on the weights")
    lam: float | None = _doc("the penalty's final lambda, where a method has one", "lambda")
    lambda_history_max: float | None = _doc("the largest lambda during training")
    lr: float | None = None
    optimizer: str | None = None
    schedule: str | None = None
    divergence_restarts: int | None = _doc("epochs restarted after a non-finite loss")
    lr_factor: float | None = _doc("the learning-rate multiplier those restarts left")


class SparsityInfo(_Section):
    target: float | None = None
    achieved: float | None = _doc("share of zeros over the sparsified weights")
    reached_by_training_eps: float | None = _doc("share under eps when the cut came")
    reached_by_training_relative: float | None = _doc("share under relative_threshold x RMS")
    reached_by_training_controlled: float | None = _doc("share under control_threshold x RMS")
    largest_cut_relative: float | None = _doc("largest |w| the cut removed, in layer RMS")
    eps: float | None = None
    relative_threshold: float | None = None
    control_threshold: float | None = None
    factorized_weights: int | None = _doc("entries of the sparsified weights")
    nonzero_weights: int | None = None
    compression_ratio: float | None = _doc("factorized_weights / nonzero_weights")
    total_parameters: int | None = None
    unfactorized_parameters: int | None = _doc("parameters kept dense (biases, norms, ...)")


class LayerRow(_Section):
    name: str | None = None
    shape: list[int] | None = None
    weights: int | None = None
    nonzero: int | None = None
    sparsity: float | None = None
    factorized: bool | None = _doc("whether the method sparsified it")


class ChannelLayerRow(_Section):
    name: str | None = None
    type: str | None = _doc("the layer's class")
    in_channels: int | None = _doc("before removal")
    out_channels: int | None = None
    kept_in: int | None = _doc("after removal")
    kept_out: int | None = None
    parameters: int | None = _doc("the layer's parameters before removal")
    kept_parameters: int | None = None


class StructureInfo(_Section):
    """structure.kind=channel: what was removed, MACs and parameters dense against compressed."""

    kind: str | None = _doc("structure.kind")
    target_speedup: float | None = _doc("structure.target_speedup")
    speedup: float | None = _doc("dense MACs / compressed MACs, counted on the smaller model")
    dense_macs: int | None = _doc("MACs of one example, as Torch-Pruning counts them")
    macs: int | None = None
    dense_parameters: int | None = None
    parameters: int | None = None
    round_to: int | None = _doc("structure.round_to")
    min_keep: float | None = _doc("structure.min_keep")
    max_speedup: float | None = _doc("the speed-up with every removable channel removed")
    groups: int | None = _doc("channel groups found")
    removable_groups: int | None = None
    channels: int | None = _doc("channels of the removable groups")
    channels_removed: int | None = None
    reached_by_training_eps: float | None = _doc(
        "MAC speed-up of the channels under eps at the cut"
    )
    reached_by_training_relative: float | None = _doc(
        "... under relative_threshold x group scale"
    )
    reached_by_training_controlled: float | None = _doc(
        "... under control_threshold x group scale"
    )
    spec: str | None = _doc("where the pruned-architecture spec is: model.safetensors metadata")
    layers: list[ChannelLayerRow] = Field(default_factory=list)


class AccuracyInfo(_Section):
    """Accuracy at each stage, a fraction; a stage that did not run is absent (None)."""

    original: float | None = None
    before_cut: float | None = _doc("just before the masks became final")
    after_cut: float | None = _doc("just after")
    after_finetune: float | None = None
    before_bn_recalibration: float | None = _doc("models with BatchNorm, when recalibrated")
    after_bn_recalibration: float | None = None
    compressed_pytorch: float | None = _doc("the collapsed model in PyTorch")
    compressed_onnxruntime: float | None = _doc("model.onnx in onnxruntime")
    compressed_int8: float | None = _doc("model.int8.onnx in onnxruntime")
    original_top5: float | None = _doc("data with more than 10 classes")
    compressed_pytorch_top5: float | None = None
    original_f1: float | None = _doc("two-class data: F1 score of class 1")
    compressed_pytorch_f1: float | None = None


class OnnxInfo(_Section):
    max_abs_diff: float | None = _doc("largest |onnxruntime - PyTorch| on an evaluation batch")
    tolerance: float | None = _doc("export.parity_tolerance")
    checker: str | None = _doc("'passed': onnx.checker accepted the file")
    opset: int | None = None
    sparse_variant: str | None = _doc("the sparse-initializer file, when written")
    sparse_variant_note: str | None = None
    full_check: str | None = _doc("'passed': onnx.checker's full check (shape inference) too")
    sparse_variant_full_check: str | None = _doc("'passed', or 'failed: <why>'")
    dynamic_axes: list[str] | None = _doc("the input axes of any size: batch, height, width")
    flushed: int | None = _doc("weight values under 1.08e-19 (the square root of float32's "
                               "smallest normal) set to 0: products of two such are subnormal, "
                               "which CPUs compute many times slower")
    metadata: dict[str, str] | None = _doc("what the files' metadata_props hold")


class Int8Info(_Section):
    file: str | None = _doc("model.int8.onnx")
    mode: str | None = _doc("export.quantize: dynamic or static")
    calibration_batches: int | None = _doc("static: training batches it was calibrated on")
    full_check: str | None = _doc("'passed': onnx.checker's full check")
    max_abs_diff: float | None = _doc("largest |int8 - fp32 ONNX| on an evaluation batch")
    zeros: int | None = _doc("pruned (zero) entries of the weights it quantized")
    zeros_kept: int | None = _doc("of those, still exactly zero in the int8 model")
    quantized: list[str] = Field(default_factory=list,
                                 description="sparse weights in int8 (ONNX initializer names)")
    left_float: list[str] = Field(default_factory=list, description="sparse weights in float")
    unchecked: list[str] = Field(default_factory=list, description="layout not recognised")


class LatencyRowInfo(_Section):
    model: str | None = _doc("original, compressed, sparse or int8")
    batch: int | None = None
    threads: int | None = _doc("intra-op threads; 0: onnxruntime's default, one per core")
    median_ms: float | None = _doc("median over the interleaved rounds, per run")
    q1_ms: float | None = None
    q3_ms: float | None = None


class LatencyInfo(_Section):
    cpu: str | None = None
    onnxruntime: str | None = _doc("onnxruntime's version")
    cores: int | None = _doc("logical CPUs the machine has")
    rounds: int | None = None
    rows: list[LatencyRowInfo] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="what could not be measured")

    def speedup(self, row: LatencyRowInfo) -> float | None:
        """The original's median over `row`'s, at the same batch and threads (None for the
        original itself, or when it was not measured)."""
        if row.model == "original" or not row.median_ms:
            return None
        base = next((r.median_ms for r in self.rows if r.model == "original"
                     and (r.batch, r.threads) == (row.batch, row.threads)), None)  # fmt: skip
        return base / row.median_ms if base else None


class GateResult(_Section):
    gate: str | None = None
    threshold: float | None = None
    value: float | None = None
    passed: bool | None = None


class HistoryRowInfo(_Section):
    phase: str | None = _doc("the method's label of the step (sparsify, settle, ...), finetune")
    epoch: float | None = _doc("the global step / steps per epoch")
    step: int | None = _doc("the global step count")
    loss: float | None = None
    train_acc: float | None = None
    eval_acc: float | None = _doc("on the last row of an epoch")
    sparsity_eps: float | None = None
    sparsity_rel: float | None = None
    sparsity_ctl: float | None = _doc("what the lambda controller steers")
    lam: float | None = _doc("the penalty acting at this step, if any", "lambda")
    lr: float | None = None


class RunReport(_Section):
    """Everything one `dwfc compress` run measured; `to_dict()` is report.json."""

    schema_version: int | None = None  # absent in reports from before the schema was versioned
    dwfc_version: str | None = None
    created: str | None = None
    rank: int | None = None  # set only on torchrun ranks other than 0, which write nothing
    model: ModelInfo | None = None
    data: DataInfo | None = None
    input_shape: list[int] | None = None  # of one sample; every named input has this shape
    input_dtype: str | None = None
    input_names: list[str] | None = None  # named inputs (tokenised text); None: one tensor
    device: str | None = None
    precision: str | None = None
    world_size: int | None = None
    resumed: bool | None = None
    method: MethodInfo | None = None
    sparsity: SparsityInfo | None = None  # unstructured runs
    structure: StructureInfo | None = None  # structure.kind=channel runs
    layers: list[LayerRow] = Field(default_factory=list)
    accuracy: AccuracyInfo | None = None
    onnx: OnnxInfo | None = None
    int8: Int8Info | None = None
    latency: LatencyInfo | None = None
    files: dict[str, int] = Field(default_factory=dict)  # bytes by file name, dense_fp32_bytes
    hashes: dict[str, str] | None = None  # sha256 of every exported tensor
    timing: dict[str, float] = Field(default_factory=dict)  # seconds by stage, total_s
    history: list[HistoryRowInfo] = Field(default_factory=list)
    gates: list[GateResult] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    recipe: dict[str, Any] | None = None  # the resolved recipe

    @classmethod
    def from_dict(cls, data: Any, *, strict: bool = False) -> RunReport:
        """Read a report mapping (report.json's content); a malformed one is an InputError.
        `strict`: no conversions (a number written as a string is wrong, not read as one).

        Example:
            report = RunReport.from_dict(json.loads(Path("runs/x/report.json").read_text()))
        """
        try:
            return cls.model_validate(data, strict=strict)
        except ValidationError as exc:
            raise InputError(_problem(exc)) from None

    @classmethod
    def from_sections(cls, data: Mapping[str, Any], *, strict: bool = False
                      ) -> tuple[RunReport, list[str]]:  # fmt: skip
        """Like `from_dict`, section by section: the report of every top-level entry that reads,
        and one line for each that does not (`dwfc verify` checks what it can)."""
        kept, problems = {}, []
        for key, value in data.items():
            try:
                cls.model_validate({key: value}, strict=strict)
                kept[key] = value
            except ValidationError as exc:
                problems.append(_problem(exc))
        return cls.model_validate(kept, strict=strict), problems

    def to_dict(self) -> dict[str, Any]:
        """The plain-JSON mapping report.json holds: recorded keys only, non-finite numbers as
        null."""
        return jsonable(self.model_dump(mode="json", by_alias=True, exclude_unset=True))


def _problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the report"
    return f"report key '{where}': {first['msg']}"


def as_report(report: RunReport | Mapping[str, Any]) -> RunReport:
    """`report` itself, or the RunReport a report mapping (report.json's content) describes."""
    return report if isinstance(report, RunReport) else RunReport.from_dict(report)
