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

SCHEMA_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ModelInfo(_Section):
    source: str | None = None
    arch: str | None = None
    parameters: int | None = None
    notes: list[str] = Field(default_factory=list)  # how the model file was read


class DataInfo(_Section):
    source: str | None = None
    train_samples: int | None = None
    eval_samples: int | None = None


class MethodInfo(_Section):
    name: str | None = None  # sparsity.method; reports from before the baselines are DWF
    depth: int | None = None
    init: str | None = None
    weight_decay: float | None = None
    lam: float | None = Field(None, alias="lambda")
    lambda_history_max: float | None = None
    lr: float | None = None
    optimizer: str | None = None
    schedule: str | None = None
    divergence_restarts: int | None = None
    lr_factor: float | None = None


class SparsityInfo(_Section):
    target: float | None = None
    achieved: float | None = None
    reached_by_training_eps: float | None = None
    reached_by_training_relative: float | None = None
    reached_by_training_controlled: float | None = None
    largest_cut_relative: float | None = None
    eps: float | None = None
    relative_threshold: float | None = None
    control_threshold: float | None = None
    factorized_weights: int | None = None
    nonzero_weights: int | None = None
    compression_ratio: float | None = None
    total_parameters: int | None = None
    unfactorized_parameters: int | None = None


class LayerRow(_Section):
    name: str | None = None
    shape: list[int] | None = None
    weights: int | None = None
    nonzero: int | None = None
    sparsity: float | None = None
    factorized: bool | None = None


class AccuracyInfo(_Section):
    """Accuracy at each stage; a stage that did not run is absent (None)."""

    original: float | None = None
    before_cut: float | None = None
    after_cut: float | None = None
    after_finetune: float | None = None
    before_bn_recalibration: float | None = None
    after_bn_recalibration: float | None = None
    compressed_pytorch: float | None = None
    compressed_onnxruntime: float | None = None
    original_top5: float | None = None
    compressed_pytorch_top5: float | None = None


class OnnxInfo(_Section):
    max_abs_diff: float | None = None
    tolerance: float | None = None
    checker: str | None = None
    opset: int | None = None
    sparse_variant: str | None = None  # the file name, when written
    sparse_variant_note: str | None = None


class HistoryRowInfo(_Section):
    phase: str | None = None
    epoch: float | None = None
    step: int | None = None
    loss: float | None = None
    train_acc: float | None = None
    eval_acc: float | None = None
    sparsity_eps: float | None = None
    sparsity_rel: float | None = None
    sparsity_ctl: float | None = None
    lam: float | None = Field(None, alias="lambda")
    lr: float | None = None


class GateResult(_Section):
    gate: str | None = None
    threshold: float | None = None
    value: float | None = None
    passed: bool | None = None


class RunReport(_Section):
    """Everything one `dwfc compress` run measured; `to_dict()` is report.json."""

    schema_version: int | None = None  # absent in reports from before the schema was versioned
    dwfc_version: str | None = None
    created: str | None = None
    rank: int | None = None  # set only on torchrun ranks other than 0, which write nothing
    model: ModelInfo | None = None
    data: DataInfo | None = None
    input_shape: list[int] | None = None
    input_dtype: str | None = None
    device: str | None = None
    precision: str | None = None
    world_size: int | None = None
    resumed: bool | None = None
    method: MethodInfo | None = None
    sparsity: SparsityInfo | None = None
    layers: list[LayerRow] = Field(default_factory=list)
    accuracy: AccuracyInfo | None = None
    onnx: OnnxInfo | None = None
    files: dict[str, int] = Field(default_factory=dict)  # bytes by file name, dense_fp32_bytes
    hashes: dict[str, str] | None = None  # sha256 of every exported tensor
    timing: dict[str, float] = Field(default_factory=dict)  # seconds by stage, total_s
    history: list[HistoryRowInfo] = Field(default_factory=list)
    gates: list[GateResult] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    recipe: dict[str, Any] | None = None  # the resolved recipe

    @classmethod
    def from_dict(cls, data: Any) -> RunReport:
        """Read a report mapping (report.json's content); a malformed one is an InputError.

        Example:
            report = RunReport.from_dict(json.loads(Path("runs/x/report.json").read_text()))
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the report"
            raise InputError(f"report key '{where}': {first['msg']}") from None

    def to_dict(self) -> dict[str, Any]:
        """The plain-JSON mapping report.json holds: recorded keys only, non-finite numbers as
        null."""
        return jsonable(self.model_dump(mode="json", by_alias=True, exclude_unset=True))


def as_report(report: RunReport | Mapping[str, Any]) -> RunReport:
    """`report` itself, or the RunReport a report mapping (report.json's content) describes."""
    return report if isinstance(report, RunReport) else RunReport.from_dict(report)
