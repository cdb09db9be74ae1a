"""timm models: `model.arch: timm:NAME` builds `timm.create_model(NAME, pretrained=False,
**model.arch_kwargs)`; the model's own data config (input size, mean, std) gives the data
defaults (dwfc/models/defaults.py). Needs the `timm` extra: pip install 'dwfc[timm]'."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

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


def data_defaults(model: nn.Module) -> dict[str, Any]:
    """image_size (when square), mean and std from the timm model's data config."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    _, height, width = config["input_size"]
    out: dict[str, Any] = {"image_size": int(height)} if height == width else {}
    out["mean"] = [float(v) for v in config["mean"]]
    out["std"] = [float(v) for v in config["std"]]
    return out
