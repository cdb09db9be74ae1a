"""timm models: `model.arch: timm:NAME` builds `timm.create_model(NAME, pretrained=False,
**model.arch_kwargs)`, and the model's own data config (input size, mean, std) fills the data
keys the recipe leaves unset. Needs the `timm` extra: pip install 'dwfc[timm]'."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from dwfc.config import Recipe
from dwfc.errors import InputError, named

PREFIX = "timm:"
DOWNLOADS = ("pretrained", "pretrained_cfg_overlay", "checkpoint_path")  # never from the hub


def is_timm(arch: str | None) -> bool:
    return isinstance(arch, str) and arch.strip().startswith(PREFIX)


def _timm(arch: str) -> Any:
    try:
        import timm
    except ImportError:
        raise InputError(f"{named('model.arch')} {arch!r} needs timm: pip install 'dwfc[timm]'")\
            from None  # fmt: skip
    return timm


def builder(arch: str, kwargs: dict[str, Any]) -> Callable[..., nn.Module]:
    """What builds the timm model `arch` (refused: unknown names and pretrained downloads)."""
    timm = _timm(arch)
    name = arch.strip()[len(PREFIX):].strip()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "timm.list_models() lists them"
        raise InputError(f"{named('model.arch')} {arch!r}: timm has no model {name!r}; {hint}")
    for key in DOWNLOADS:
        if kwargs.get(key):
            raise InputError(
                f"{named('model.arch')} {arch!r}: {key}={kwargs[key]!r} would load weights from "
                "elsewhere; dwfc builds timm models with pretrained=False and loads the model file"
            )
    return lambda **kw: timm.create_model(name, **{**kw, "pretrained": False})


def _input_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.in_channels
    return None


def with_data_defaults(recipe: Recipe, model: nn.Module) -> tuple[Recipe, list[str]]:
    """`recipe` with the data keys it leaves unset (`image_size`, `mean`, `std`) taken from the
    timm model's data config, and a note saying so; other recipes are returned unchanged.
    Mean and std are taken only when they have one value per input channel of the model."""
    if not is_timm(recipe.model.arch):
        return recipe, []
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    data, update, notes = recipe.data, {}, []
    _, height, width = config["input_size"]
    if data.image_size is None and height == width:
        update["image_size"] = int(height)
    channels = _input_channels(model)
    mean, std = [float(v) for v in config["mean"]], [float(v) for v in config["std"]]
    if data.mean is None and data.std is None:
        if channels is None or len(mean) == channels:
            update.update(mean=mean, std=std)
        else:
            notes.append(f"the timm data config's mean and std are for {len(mean)} channels, "
                         f"the model reads {channels}: the data set's own are used")
    if update:
        shown = ", ".join(f"data.{k}={v}" for k, v in update.items())
        notes.append(f"{shown} from the timm model's data config (set them to override)")
        recipe = recipe.model_copy(update={"data": data.model_copy(update=update)})
    return recipe, notes
