"""The options the commands share, and which recipe key each flag sets.

`FLAG_KEYS` is the one map from a flag to the recipe key (or `compress` argument) it stands
for: the commands build their overrides from it, and error messages, which name recipe keys,
are shown with the flag instead (dwfc/cli/text.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def opt(help: str, *names: str) -> Any:
    return typer.Option(*names, help=help, show_default=False)


# Flags that set one recipe key each: the option's parameter name -> the recipe key.
RECIPE_FLAGS = {
    "depth": "factorize.depth", "target_sparsity": "sparsity.target", "data": "data.source",
    "data_root": "data.root", "eval_data": "data.eval_source", "image_size": "data.image_size",
    "arch": "model.arch",
    "device": "train.device", "quantize": "export.quantize",
    "epochs": "train.epochs", "seed": "train.seed", "lr": "train.lr",
    "max_accuracy_drop": "gates.max_accuracy_drop", "min_sparsity": "gates.min_sparsity",
    "structure": "structure.kind", "target_speedup": "structure.target_speedup",
    "round_to": "structure.round_to", "min_speedup": "gates.min_speedup",
}  # fmt: skip
# The flag -> what library messages call it: recipe keys, and `dwfc.compress` arguments.
FLAG_KEYS = {
    **{"--" + name.replace("_", "-"): key for name, key in RECIPE_FLAGS.items()},
    "--trust-model": "model.trust_model", "--out": "out_dir", "--overwrite": "overwrite=True",
    "--resume": "resume=True",
}  # fmt: skip
# Keys under a mapping, set by a repeatable flag: `model.arch_kwargs.num_classes=10` is
# `--arch-kwarg num_classes=10`.
PREFIX_FLAGS = {"model.arch_kwargs.": "--arch-kwarg "}


def flag_overrides(**flags: Any) -> list[str]:
    """`key=value` overrides for the flags given (None: not given); strings stay strings (as
    JSON, which YAML reads verbatim), so that "text: a.csv" or "yes" is not read as YAML."""
    return [f"{RECIPE_FLAGS[name]}={json.dumps(value) if isinstance(value, str) else value}"
            for name, value in flags.items() if value is not None]  # fmt: skip


Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Recipe overrides: key=value, e.g. train.epochs=10.", show_default=False),
]
RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Built-in recipe or a YAML file.")]
QuietOpt = Annotated[bool, opt("No progress output.", "--quiet", "-q")]
JsonOpt = Annotated[bool, opt("Print one JSON document on stdout (logs go to stderr).", "--json")]
ModelArg = Annotated[Path, typer.Argument(help="A state dict (with --arch) or a saved module.")]
ArchOpt = Annotated[str | None, opt("package.module:factory, torchvision:NAME or timm:NAME.")]
ArchKwargOpt = Annotated[list[str] | None, opt("Factory argument key=value (repeatable).")]
TrustOpt = Annotated[bool, opt("Allow unpickling a saved module (runs its code).")]
DepthOpt = Annotated[int | None, opt("D, the number of factors (>= 2).")]
IncludeOpt = Annotated[list[str] | None, opt("Only weights matching (glob, re:, type:).")]
ExcludeOpt = Annotated[list[str] | None, opt("Never weights matching (glob, re:, type:).")]
DepthOverrideOpt = Annotated[list[str] | None, opt("PATTERN=D: another depth there.")]
StructureOpt = Annotated[
    str | None, opt("unstructured (single weights) or channel (channels, physically removed).")
]
TargetSpeedupOpt = Annotated[
    float | None, opt("--structure channel: dense MACs / compressed MACs to reach.")
]
RoundToOpt = Annotated[int | None, opt("--structure channel: keep multiples of this many.")]
DataOpt = Annotated[
    str | None, opt("mnist5k, a data set name, text:FILE, or package.module:factory.")
]
EvalDataOpt = Annotated[str | None, opt("text data: the evaluation file (default: hold out 20%).")]
DataRootOpt = Annotated[str | None, opt("Local folder of the data set.")]
ImageSizeOpt = Annotated[int | None, opt("Resize (and centre-crop) images to this size.")]
