"""Load user models: a state dict plus an architecture, or a whole pickled module.

Accepted files (docs/models.md): a state dict saved with `torch.save` (`.pt`, `.pth`) or as
`.safetensors`, also wrapped in a checkpoint dict (`{"state_dict": ...}`, `{"model": ...}`, with
or without DataParallel's `module.` prefix); or a whole pickled module with `trust_model=True`.
A state dict needs `arch`: "torchvision:NAME" (built with `weights=None`), "timm:NAME" (built
with `pretrained=False`, timm_models.py) or any importable "package.module:factory". Nothing is
ever downloaded.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwfc.errors import InputError, named
from dwfc.models import hf, timm_models
from dwfc.models.files import read_model_file, short_reason

__all__ = [
    "build_model",
    "count_parameters",
    "find_weights",
    "import_object",
    "load_model",
    "load_model_with_notes",
]

_SHOWN_KEYS = 3
# Where checkpoint dicts keep the weights, in the order they are tried.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_MAX_NESTING = 3
# Uniform key prefixes added by wrappers: DataParallel/DDP and torch.compile.
_PREFIXES = {
    "module.": "saved from DataParallel/DistributedDataParallel",
    "_orig_mod.": "saved from a torch.compile'd model",
}
# Keyword arguments through which torchvision builders fetch pretrained weights.
_DOWNLOAD_KWARGS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")
_ARCH_FORMS = "'torchvision:NAME', 'timm:NAME' or 'package.module:factory'"
ARCH = named("model.arch")


def import_object(spec: str, what: str) -> Any:
    """Resolve "package.module:attribute" (the attribute may be dotted) to the object it names.

    `what` names the recipe key in error messages, e.g. "model.arch" or "data.source".

    Example:
        >>> import_object("dwfc.zoo:lenet5", "model.arch")  # doctest: +ELLIPSIS
        <function lenet5 at ...>
    """
    form = "'package.module:attribute', e.g. 'dwfc.zoo:lenet5'"
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise InputError(f"{what} expects {form}, got {spec!r}")
    module_name, _, attr = (part.strip() for part in spec.partition(":"))
    if not module_name or not attr:
        raise InputError(f"{what} expects {form}, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise InputError(
                f"{what}: no module named {module_name!r} (is it installed or on PYTHONPATH?)"
            ) from e
        raise InputError(f"{what}: importing {module_name!r} failed: {e}") from e
    except Exception as e:
        raise InputError(
            f"{what}: importing {module_name!r} failed: {type(e).__name__}: {e}"
        ) from e
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InputError(f"{what}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters in `model` (shared parameters counted once).

    Example:
        >>> count_parameters(torch.nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters())


def build_model(arch: str, arch_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the architecture `arch` with `arch_kwargs`, never with pretrained weights.

    `arch` is "torchvision:NAME" (`torchvision.models.get_model(NAME, weights=None, **kwargs)`),
    "timm:NAME" (`timm.create_model(NAME, pretrained=False, **kwargs)`) or
    "package.module:factory" (called as `factory(**kwargs)`). Builders from torchvision get
    `weights=None` (and `weights_backbone=None` where they take it); asking them for pretrained
    weights is an InputError.

    Example:
        >>> build_model("torchvision:resnet18", {"num_classes": 10}).fc.out_features
        10
        >>> type(build_model("dwfc.zoo:lenet5")).__name__
        'LeNet5'
    """
    if not isinstance(arch, str):
        raise InputError(f"{ARCH} expects {_ARCH_FORMS}, got {arch!r}")
    kwargs = dict(arch_kwargs or {})
    module_name, sep, name = arch.strip().partition(":")
    if sep and module_name.strip() == "torchvision":
        return _build_torchvision(arch, name.strip(), kwargs)
    if timm_models.is_timm(arch):
        return _call_factory(arch, timm_models.builder(arch, kwargs), kwargs)
    factory = import_object(arch, ARCH)
    if not callable(factory):
        raise InputError(
            f"{ARCH} {arch!r} is a {type(factory).__name__}, not a callable factory"
        )
    if str(getattr(factory, "__module__", "")).split(".")[0] == "torchvision":
        kwargs = _without_downloads(arch, factory, kwargs)
    return _call_factory(arch, factory, kwargs)


def _build_torchvision(arch: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import torchvision.models as tvm
    except ImportError as e:
        raise InputError(
            f"{ARCH} {arch!r} needs torchvision: pip install 'dwfc[vision]', "
            "or pass a 'package.module:factory'"
        ) from e
    names = tvm.list_models()
    key = name.lower()
    if key not in names:
        close = difflib.get_close_matches(key, names, n=5, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else f"e.g. {', '.join(n for n in ('resnet18', 'mobilenet_v2', 'vgg11') if n in names)}"
        )
        raise InputError(
            f"{ARCH} {arch!r}: torchvision has no model {name!r}; {hint} "
            "(torchvision.models.list_models() lists them all)"
        )
    kwargs = _without_downloads(arch, tvm.get_model_builder(key), kwargs)
    return _call_factory(arch, lambda **kw: tvm.get_model(key, **kw), kwargs)


def _without_downloads(
    arch: str, builder: Callable[..., Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """`kwargs` with every pretrained-weights argument of a torchvision builder set to None."""
    for key in _DOWNLOAD_KWARGS:
        if kwargs.get(key) not in (None, False):
            raise InputError(
                f"{ARCH} {arch!r}: {key}={kwargs[key]!r} would download pretrained weights; "
                f"dwfc never downloads: drop {key}, the weights come from your model file"
            )
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    for key in ("weights", "weights_backbone"):
        if key in params:
            kwargs[key] = None
    return kwargs


def _call_factory(arch: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except InputError:
        raise
    except (TypeError, ValueError) as e:
        shown = (
            ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in _DOWNLOAD_KWARGS)
            or "no arguments"
        )
        raise InputError(
            f"{ARCH} {arch!r} could not be built with {shown}: {short_reason(e)}"
        ) from e
    if not isinstance(model, nn.Module):
        raise InputError(
            f"{ARCH} {arch!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def load_model_with_notes(
    path: str | os.PathLike[str],
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_model: bool = False,
) -> tuple[nn.Module, list[str]]:
    """Like `load_model`, and also return notes for the report on how the file was read.

    Notes name what dwfc recognised and adapted, e.g. "state dict found under checkpoint['model']
    (other entries ignored: epoch, optimizer)" or "'module.' prefix removed from every key (saved
    from DataParallel/DistributedDataParallel)". A plain state dict with a factory gives none.

    Example:
        >>> model, notes = load_model_with_notes("ckpt.pth", "torchvision:vgg11")  # doctest: +SKIP
    """
    file = Path(path)
    if not file.exists():
        raise InputError(f"model file not found: {file}")
    if hf.is_hf_dir(file):
        model, notes = hf.load(file)
        if arch is not None:
            notes.append(f"model.arch {arch} ignored: {file} is a Hugging Face model directory")
        return model, notes
    if file.is_dir():
        raise InputError(f"model path {file} is a directory without {hf.CONFIG}: neither a model "
                         "file nor a Hugging Face model directory")  # fmt: skip
    if file.stat().st_size == 0:
        raise InputError(f"model file is empty: {file}")

    obj, notes = read_model_file(file, trust_model)
    found = find_weights(obj, "checkpoint", 0)
    if found is None:
        raise InputError(_not_weights_message(file, obj))
    weights, where = found
    if where != "checkpoint":
        notes.append(
            f"{'module' if isinstance(weights, nn.Module) else 'state dict'} found "
            f"under {where}{_other_entries(obj, where)}"
        )
    if isinstance(weights, nn.Module):
        if arch is not None:
            notes.append(f"model.arch {arch} ignored: the file holds a whole module")
        return weights.to("cpu").eval(), notes
    if arch is None:
        raise InputError(
            f"{file} is a state dict: pass {ARCH} (torchvision:NAME or package.module:factory)"
        )
    model = build_model(arch, arch_kwargs)
    if arch.strip().startswith("torchvision:"):
        notes.append(f"{arch.strip()} built with weights=None: every weight comes from {file.name}")
    if timm_models.is_timm(arch):
        notes.append(f"{arch.strip()} built with pretrained=False: every weight comes from "
                     f"{file.name}")  # fmt: skip
    state_dict, fix_notes = _fit_keys(weights, model)
    _load_state_dict(model, state_dict, file, arch)
    return model.to("cpu").eval(), notes + fix_notes


def load_model(
    path: str | os.PathLike[str],
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_model: bool = False,
) -> nn.Module:
    """Load a model from a file and return it on CPU in eval mode.

    A state dict (`.pt`, `.pth` from `torch.save`, or `.safetensors`) needs `arch`:
    "torchvision:NAME" or "package.module:factory", built with `arch_kwargs`; the state dict
    must then fit the model exactly. Checkpoint dicts holding the weights under "state_dict",
    "model_state_dict", "model" or "module" are unwrapped, and a uniform "module." prefix is
    removed. A whole pickled module needs `trust_model=True`, since unpickling it runs code from
    the file; `arch` is then not used. See `load_model_with_notes` for what was adapted.

    Example:
        >>> model = load_model("lenet5.pt", arch="dwfc.zoo:lenet5")  # doctest: +SKIP
        >>> model = load_model("r18.safetensors", "torchvision:resnet18")  # doctest: +SKIP
    """
    return load_model_with_notes(path, arch, arch_kwargs, trust_model)[0]


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def find_weights(obj: Any, where: str = "checkpoint", depth: int = 0) -> tuple[Any, str] | None:
    """The state dict or module in `obj` and where it sits, e.g. "checkpoint['model']"."""
    if isinstance(obj, nn.Module):
        return obj, where
    if _is_tensor_mapping(obj):
        return dict(obj), where
    if isinstance(obj, Mapping) and depth < _MAX_NESTING:
        for key in _WRAPPER_KEYS:
            if key in obj:
                found = find_weights(obj[key], f"{where}[{key!r}]", depth + 1)
                if found is not None:
                    return found
    return None


def _other_entries(obj: Any, where: str) -> str:
    first = where.removeprefix("checkpoint[").split("]", 1)[0].strip("'")
    others = [str(k) for k in obj if k != first] if isinstance(obj, Mapping) else []
    return f" (other entries ignored: {_listing(others)})" if others else ""


def _not_weights_message(file: Path, obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = _listing([str(k) for k in obj]) or "none"
        return (
            f"{file} holds a dict without a state dict (keys: {keys}): expected tensors by "
            f"parameter name, or a checkpoint with them under {', '.join(map(repr, _WRAPPER_KEYS))}"
        )
    return (
        f"{file} holds a {type(obj).__name__}, not a state dict or nn.Module: "
        f"save model.state_dict() and name its architecture with {ARCH}, or save the whole "
        "module"
    )


def _fits(keys: Any, expected: Mapping[str, torch.Tensor]) -> bool:
    """True if `keys` are the model's keys, bar BatchNorm counters old checkpoints lack."""
    keys = set(keys)
    return keys <= expected.keys() and all(
        k.endswith("num_batches_tracked") for k in expected.keys() - keys
    )


def _strip_prefixes(
    state_dict: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], depth: int = 0
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove uniform wrapper prefixes: DataParallel's "module.", torch.compile's "_orig_mod.",
    and any other single first component (e.g. Lightning's "model.") if that makes keys fit."""
    if not state_dict or _fits(state_dict, expected) or depth > _MAX_NESTING:
        return state_dict, []
    for prefix, why in _PREFIXES.items():
        if all(k.startswith(prefix) for k in state_dict):
            inner = {k[len(prefix) :]: v for k, v in state_dict.items()}
            rest, notes = _strip_prefixes(inner, expected, depth + 1)
            return rest, [f"{prefix!r} prefix removed from every key ({why})", *notes]
    first = {k.split(".", 1)[0] for k in state_dict}
    if len(first) == 1 and all("." in k for k in state_dict):
        prefix = first.pop() + "."
        inner = {k[len(prefix) :]: v for k, v in state_dict.items()}
        rest, notes = _strip_prefixes(inner, expected, depth + 1)
        if _fits(rest, expected):
            return rest, [f"{prefix!r} prefix removed from every key", *notes]
    return state_dict, []


def _fit_keys(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove wrapper prefixes, fill old BatchNorm counters; return the state dict and notes."""
    expected = model.state_dict()
    state_dict, notes = _strip_prefixes(state_dict, expected)
    counters = [k for k in expected if k.endswith("num_batches_tracked") and k not in state_dict]
    if counters and _fits(state_dict, expected):
        state_dict = {**state_dict, **{k: expected[k] for k in counters}}
        notes.append(f"{len(counters)} BatchNorm num_batches_tracked counters missing; kept at 0")
    dtypes = {
        str(v.dtype).removeprefix("torch.")
        for k, v in state_dict.items()
        if k in expected and v.is_floating_point() and v.dtype != expected[k].dtype
    }
    if dtypes:
        notes.append(f"{'/'.join(sorted(dtypes))} weights converted to the model's dtype")
    return state_dict, notes


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    extra = len(keys) - _SHOWN_KEYS
    return shown + (f" (+{extra} more)" if extra > 0 else "")


def _classes_hint(state_dict: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """When only the output layer's size differs, the `num_classes` that would fit the file."""
    sizes = {(int(v.shape[0]), int(expected[k].shape[0]))
             for k, v in state_dict.items()
             if k in expected and v.shape != expected[k].shape}  # fmt: skip
    same_rest = all(v.shape[1:] == expected[k].shape[1:] for k, v in state_dict.items()
                    if k in expected and v.dim() and v.shape != expected[k].shape)  # fmt: skip
    if len(sizes) != 1 or not same_rest:
        return ""
    (file_n, model_n), = sizes
    return (f" (the file's output layer has {file_n} outputs, the model's {model_n}: pass "
            f"{named(f'model.arch_kwargs.num_classes={file_n}')} if the architecture takes it)")


def _load_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], file: Path, arch: str
) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_listing(mismatched)}" + _classes_hint(state_dict,
                                                                                 expected))
    if problems:
        raise InputError(
            f"state dict in {file} does not fit {ARCH} {arch}: {'; '.join(problems)}"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise InputError(
            f"state dict in {file} does not fit {ARCH} {arch}: {short_reason(e)}"
        ) from e
