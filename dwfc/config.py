"""Recipes: every knob of a compression run, read from YAML and overridable with `a.b=value`.

Example:
    recipe = load_recipe("default", ["train.epochs=10", "sparsity.target=0.98"])
"""

from __future__ import annotations

import difflib
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from dwfc.errors import InputError, first_line, named
from dwfc.layers import DEFAULT_LAYER_TYPES

DEFAULT_TARGET = 0.95  # sparsity.target of unstructured runs that set none


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    arch: str | None = None  # "package.module:factory" for state dicts
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    trust_model: bool = False  # allow full unpickling of a whole saved module


Init = Literal["balanced", "varmatch", "layer"]  # how factorize_ starts the factors


class DataConfig(_Section):
    source: str = "mnist5k"  # mnist5k | torchvision set | imagefolder | text:FILE | pkg.mod:factory
    root: str | None = None  # local folder of a torchvision data set or ImageFolder tree
    options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of a factory
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    image_size: int | None = None  # resize (and centre-crop) images to this; None: per data set
    mean: list[float] | None = None  # normalisation; None: the data set's usual values
    std: list[float] | None = None
    augment: bool = False  # random crop + flip on the training split (image data sets)
    num_workers: int = Field(0, ge=0)
    eval_source: str | None = None  # text data: the evaluation file; None: a held-out share
    text_columns: list[str] = Field(default_factory=lambda: ["text"])  # text data: one, or a pair
    label_column: str = "label"  # text data
    max_length: int | None = Field(None, ge=1)  # text data: tokens; None: the longest train text
    tokenizer: str | None = None  # text data: a tokenizer folder; None: the model directory's


class FactorizeConfig(_Section):
    depth: int = Field(3, ge=2)  # D; 3 or 4 recommended, 2 is the shallow (L1) case
    init: Init = "balanced"  # balanced | layer (unbalanced, same product) | varmatch (scratch)
    layer_types: list[str] = Field(default_factory=lambda: list(DEFAULT_LAYER_TYPES))
    include: list[str] = Field(default_factory=list)  # glob or "re:regex" over parameter names
    exclude: list[str] = Field(default_factory=list)
    depth_overrides: dict[str, int] = Field(default_factory=dict)  # pattern -> depth


class TrainConfig(_Section):
    epochs: int = Field(30, ge=1)  # DWF epochs (sparsify + settle); the masked fine-tune is extra
    lr: float | None = Field(None, gt=0)  # rate on typical weights; None: 0.05, 0.03 for D >= 4
    lr_scaling: Literal["per_layer", "none"] = "per_layer"
    max_lr_scale: float = Field(1000.0, ge=1)  # cap on the per-layer factor-lr multiplier
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine floor; decay needs lr > 0 to act
    warmup_epochs: float = Field(0.0, ge=0)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    flush_denormal: bool = True  # subnormal factors are very slow on x86 CPUs
    log_every: int = Field(10, ge=1)  # steps between controller updates / history rows
    max_retries: int = Field(3, ge=0)  # restarts of a diverged epoch, each with half the lr
    weight_decay: float = Field(5e-4, ge=0)  # baselines only: plain L2 on the pruned weights
    amp: bool = True  # bf16 autocast (and channels_last for conv nets) on CUDA; off on CPU
    # all factor products in a few flat ops (dwfc/fused.py); false: per weight; compile: those
    # ops by torch.compile (a C++ compiler on the CPU, Triton on CUDA; docs/overhead.md)
    fused: bool | Literal["compile"] = True
    checkpoint: bool = True  # save --out/checkpoint.pt every epoch, for --resume

    @field_validator("fused", mode="before")
    @classmethod
    def _fused_mode(cls, v: object) -> object:
        if isinstance(v, str):
            word = v.strip().lower()
            if word == "compile":
                return "compile"
            if word in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return word in ("true", "yes", "on", "1")
            raise ValueError("must be true, false or compile")
        return v


class SparsityConfig(_Section):
    method: str = "dwf"  # a method of the structure (dwfc.methods); baselines: docs/baselines.md
    target: float | None = None  # share of weights to zero; None: 0.95 (unstructured only)
    eps: float = Field(1.19e-7, gt=0)  # "zero" in the paper's convention (fp32 machine epsilon)
    relative_threshold: float = Field(0.01, gt=0, lt=1)  # negligible: |w| < this * layer RMS
    ramp_fraction: float = Field(0.5, gt=0, le=1)  # share of DWF epochs spent ramping to target
    lambda_init: float = Field(1e-4, gt=0)
    lambda_min: float = Field(1e-7, gt=0)
    lambda_max: float = Field(1.0, gt=0)
    gain: float = Field(1.0, gt=0)  # log-lambda change per unit of normalised sparsity error
    max_step: float = Field(0.05, gt=0)  # bound on |log-lambda change| per controller update
    ramp_log_range: float = Field(4.0, gt=0)  # short runs: max_step >= this / updates in ramp
    control_threshold: float = Field(0.1, gt=0, lt=1)  # controlled: |w| < this * layer RMS
    lookahead: float = Field(10.0, ge=0)  # updates to extrapolate the density trend (anti-windup)
    down_gain: float = Field(0.2, gt=0)  # gain when too sparse: lambda falls slowly after the ramp
    prune_every: int | None = Field(None, ge=1)  # gmp: steps between prunes (None: log_every)
    # dwf: global (one lambda, sped up with each layer's lr multiplier) | relative (each layer's
    # decay divided by its multiplier: every layer's typical weight feels the same pressure)
    layer_penalty: Literal["global", "relative"] = "global"
    l1_lambda_init: float = Field(2e-3, gt=0)  # l1 baseline: starting lambda of its controller
    finetune_epochs: int = Field(3, ge=0)  # masked fine-tune after the exact cut
    finetune_lr: float = Field(0.01, ge=0)
    recalibrate_bn: bool = True  # re-estimate BatchNorm statistics after the cut

    @field_validator("method")
    @classmethod
    def _registered_method(cls, v: str) -> str:
        from dwfc.methods import REGISTRIES  # the registries import the methods, which import this

        if not any(v in methods for methods in REGISTRIES.values()):
            names = dict.fromkeys(n for methods in REGISTRIES.values() for n in methods)
            raise ValueError(f"unknown sparsity.method '{v}': use {', '.join(names)}")
        return v

    @field_validator("target")
    @classmethod
    def _target_in_open_unit_interval(cls, v: float | None) -> float | None:
        if v is not None and (not (0.0 < v < 1.0) or math.isnan(v)):
            raise ValueError(f"must be strictly between 0 and 1, got {v}")
        return v


class StructureConfig(_Section):
    kind: Literal["unstructured", "channel"] = "unstructured"  # channel: docs/structured.md
    target_speedup: float = Field(2.0, gt=1)  # channel: dense MACs / compressed MACs
    # channel: each layer keeps a multiple of this many channels; unset: the block of output
    # channels onnxruntime's CPU convolutions compute at once here (16 with AVX-512, else 8)
    round_to: int | None = Field(None, ge=1)
    exclude: list[str] = Field(default_factory=list)  # channel: layers never shrunk (glob, re:)
    # channel: share of each group's channels it always keeps (rounded up to round_to)
    min_keep: float = Field(0.0, ge=0, lt=1)
    penalty: Literal["macs", "uniform"] = "macs"  # channel penalty per group: by MACs, or equal
    # group: each group's lambda over its scale^(2/D), so the penalty reads channel norms in units
    # of the group's scale, as the cut and the controller do | none: absolute norms
    penalty_scale: Literal["group", "none"] = "group"
    lambda_init: float = Field(0.03, gt=0)  # channel methods with a penalty: starting lambda


class ExportConfig(_Section):
    onnx: bool = True
    opset: int = Field(17, ge=9)
    parity_tolerance: float = Field(1e-4, gt=0)
    sparse_onnx: bool = True  # also write model.sparse.onnx (sparse_initializers) when smaller
    quantize: Literal["none", "dynamic", "static"] = "none"  # model.int8.onnx (onnxruntime)
    calibration_batches: int = Field(8, ge=1)  # static int8: training batches to calibrate on
    latency: bool = True  # onnxruntime latency of original, compressed and int8 in the report
    latency_rounds: int = Field(5, ge=1)  # interleaved rounds; the report gives their median
    latency_batches: list[PositiveInt] = Field(default_factory=lambda: [1, 64])

    @model_validator(mode="after")
    def _int8_needs_onnx(self) -> ExportConfig:
        if self.quantize != "none" and not self.onnx:
            raise ValueError(f"export.quantize={self.quantize} quantizes model.onnx: it needs "
                             "export.onnx=true")  # fmt: skip
        return self


class GatesConfig(_Section):
    max_accuracy_drop: float | None = Field(None, ge=0)  # points; fail (exit 3) above this
    min_sparsity: float | None = Field(None, ge=0, le=1)  # fail (exit 3) below this
    min_speedup: float | None = Field(None, gt=0)  # channel: fail (exit 3) below this MAC speed-up


class Recipe(_Section):
    """The fully resolved configuration of a run; `recipe.model_dump()` is what reports record."""

    def model_post_init(self, context: Any) -> None:
        if self.train.lr is None:  # D = 4 diverged at 0.05 on LeNet-300-100 (docs/controller.md)
            self.train.lr = 0.05 if self.factorize.depth <= 3 else 0.03
        if self.sparsity.target is None and self.structure.kind == "unstructured":
            self.sparsity.target = DEFAULT_TARGET

    @model_validator(mode="after")
    def _method_of_the_structure(self) -> Recipe:
        from dwfc.methods import REGISTRIES

        kind, method = self.structure.kind, self.sparsity.method
        if method not in REGISTRIES[kind]:
            raise ValueError(f"{named('sparsity.method')}={method} is not a method of "
                             f"{named('structure.kind')}={kind}: use {', '.join(REGISTRIES[kind])}")
        if kind == "channel" and self.sparsity.target is not None:
            raise ValueError(f"{named('sparsity.target')} (weight sparsity) does not combine with "
                             f"{named('structure.kind')}=channel yet: set "
                             f"{named('structure.target_speedup')} instead")
        if kind == "unstructured" and self.gates.min_speedup is not None:
            raise ValueError(f"{named('gates.min_speedup')} needs "
                             f"{named('structure.kind')}=channel: unstructured sparsity does not "
                             "change MACs")
        return self

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    factorize: FactorizeConfig = Field(default_factory=FactorizeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    structure: StructureConfig = Field(default_factory=StructureConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)


def recipes_dir() -> Path:
    """Where the built-in recipes live: inside the wheel, or `recipes/` of a source checkout."""
    packaged = Path(str(resources.files("dwfc"))) / "recipes"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "recipes"


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with dwfc (`default`, `demo`, ...)."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def _read_yaml(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = recipes_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise InputError(
                f"unknown recipe '{name_or_path}': built-in recipes are "
                f"{', '.join(builtin_recipes())}, or pass a path to a .yaml file"
            )
    if not path.is_file():
        raise InputError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"recipe {path} is not valid YAML: {first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def _field_names(section: type[BaseModel]) -> list[str]:
    return list(section.model_fields)


def _unknown_key(key: str, valid: list[str], where: str) -> InputError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return InputError(f"unknown recipe key '{where}{key}'{hint}; valid keys: {', '.join(valid)}")


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `section.key=value` override to a raw recipe mapping, in place.

    The value is parsed as YAML (`3` -> int, `1e-4` -> float, `[a, b]` -> list); pydantic
    then converts it to the field's type. Keys under a dict-typed field (e.g.
    `model.arch_kwargs.num_classes=10`) may be new.
    """
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise InputError(f"override '{override}' must look like section.key=value")
    parts = key.strip().split(".")
    if len(parts) < 2:
        raise InputError(
            f"override '{override}' must name a section and a key, e.g. train.epochs=10; "
            f"sections: {', '.join(_field_names(Recipe))}"
        )
    section, field, *rest = parts
    if section not in Recipe.model_fields:
        raise _unknown_key(section, _field_names(Recipe), "")
    section_model = Recipe.model_fields[section].annotation
    if field not in section_model.model_fields:
        raise _unknown_key(field, _field_names(section_model), f"{section}.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    target = data.setdefault(section, {})
    if not isinstance(target, dict):
        raise InputError(f"recipe section '{section}' must be a mapping")
    *parents, leaf = [field, *rest]
    for name in parents:
        target = target.setdefault(name, {})
        if not isinstance(target, dict):
            raise InputError(f"recipe key '{section}.{name}' is not a mapping")
    target[leaf] = value


def _format_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    got = first.get("input")
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        section_name = str(first["loc"][0])
        section = Recipe.model_fields.get(section_name)
        valid = _field_names(section.annotation) if section else _field_names(Recipe)
        leaf = str(first["loc"][-1])
        where = f"{section_name}." if section and len(first["loc"]) > 1 else ""
        return str(_unknown_key(leaf, valid, where))
    if not first["loc"]:  # a check across sections: the message names the keys
        return message
    if isinstance(got, dict):  # a check across a section's keys: the message names them
        return f"recipe section '{loc}': {message}"
    return f"recipe key '{loc}': {message} (got {got!r})"


def load_recipe(
    name_or_path: str | os.PathLike[str] | None = "default", overrides: list[str] | None = None
) -> Recipe:
    """Read a built-in or YAML recipe, apply `key=value` overrides, validate, return it.

    Example:
        recipe = load_recipe("demo", ["sparsity.target=0.9"])
    """
    data = _read_yaml(name_or_path) if name_or_path is not None else {}
    for override in overrides or []:
        apply_override(data, override)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise InputError(_format_validation_error(exc)) from None


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML, loadable again with `load_recipe(path)`."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
