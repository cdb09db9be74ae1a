"""Load user models: a state dict plus an architecture factory, or a whole pickled module.

`torch.load` always runs first with `weights_only=True` (no code from the file runs). Only a file
that needs full unpickling, and only with `trust_model=True` (`--trust-model`), is loaded unsafely.
"""

from __future__ import annotations

import importlib
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwfc.errors import InputError

__all__ = ["count_parameters", "import_object", "load_model"]

_SHOWN_KEYS = 3
_NESTED_STATE_DICT_KEYS = ("state_dict", "model_state_dict")


def import_object(spec: str, what: str) -> Any:
    """Resolve "package.module:attribute" (the attribute may be dotted) to the object it names.

    `what` names the option in error messages, e.g. "--arch" or "--data".

    Example:
        >>> import_object("dwfc.zoo:lenet5", "--arch")  # doctest: +ELLIPSIS
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


def load_model(
    path: str | os.PathLike[str],
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_model: bool = False,
) -> nn.Module:
    """Load a model from a PyTorch file and return it on CPU in eval mode.

    A state dict needs `arch` ("package.module:factory"), called as `factory(**arch_kwargs)`;
    the state dict must then match the model exactly. A whole pickled module needs
    `trust_model=True`, since unpickling it runs code from the file; for such a file `arch` and
    `arch_kwargs` are not used. A checkpoint dict holding the weights under "state_dict" or
    "model_state_dict" is treated as that state dict.

    Example:
        >>> model = load_model("lenet5.pt", arch="dwfc.zoo:lenet5")  # doctest: +SKIP
    """
    file = Path(path)
    if not file.exists():
        raise InputError(f"model file not found: {file}")
    if file.is_dir():
        raise InputError(f"model path is a directory, not a file: {file}")
    if file.stat().st_size == 0:
        raise InputError(f"model file is empty: {file}")

    obj = _load_checked(file, trust_model)
    if isinstance(obj, nn.Module):
        model = obj
    else:
        state_dict = _as_state_dict(obj)
        if state_dict is None:
            raise InputError(
                f"{file} holds a {type(obj).__name__}, not a state dict or nn.Module: "
                "save model.state_dict() and pass --arch, or save the whole module"
            )
        if arch is None:
            raise InputError(f"{file} is a state dict: pass --arch package.module:factory")
        model = _build(arch, dict(arch_kwargs or {}))
        _load_state_dict(model, state_dict, file, arch)
    return model.to("cpu").eval()


def _load_checked(file: Path, trust_model: bool) -> Any:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols while probing non-torch files.
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _is_torch_checkpoint(file):
            raise InputError(
                f"cannot read {file} as a PyTorch file: not a torch.save checkpoint"
            ) from e
        safe_error = e
    except Exception as e:
        raise InputError(f"cannot read {file} as a PyTorch file: {_short_reason(e)}") from e

    if not trust_model:
        raise InputError(
            f"{file} is a pickled module; loading it runs code from the file. Pass --trust-model "
            "if you trust it, or save a state dict and pass --arch"
        ) from safe_error
    try:
        obj = torch.load(file, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise InputError(
            f"cannot unpickle {file}: no module named {e.name!r}; the model's classes must be "
            "importable (install the package or add it to PYTHONPATH)"
        ) from e
    except Exception as e:
        raise InputError(f"cannot read {file} as a PyTorch file: {_short_reason(e)}") from e
    if not isinstance(obj, (nn.Module, Mapping)):
        raise InputError(
            f"{file} holds a {type(obj).__name__}, not an nn.Module: save the whole model "
            "or its state dict"
        )
    return obj


def _is_torch_checkpoint(file: Path) -> bool:
    """True if `file` is laid out like a torch.save file (zip with data.pkl, or legacy magic)."""
    if zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return False
        return any(name == "data.pkl" or name.endswith("/data.pkl") for name in names)
    try:
        with open(file, "rb") as f:
            first = _NoGlobalsUnpickler(f).load()
    except Exception:
        return False
    return isinstance(first, int) and first == torch.serialization.MAGIC_NUMBER


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Reads plain data only: any reference to a class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def _short_reason(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return "the file ends unexpectedly (truncated?)"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, OSError):
        return f"corrupt or truncated file ({error.strerror or error})"
    text = str(error).strip()
    if isinstance(error, (KeyError, IndexError)) or not text:
        return f"unrecognised or corrupt content ({type(error).__name__})"
    first = text.splitlines()[0]
    if first.startswith("[enforce fail"):
        first = first.split("] ", 1)[-1].lstrip(". ")
    first = first.split(". ")[0].rstrip(".")
    if "zip archive" in first or "EOF" in first:
        first += " (truncated or corrupt?)"
    return first if len(first) <= 160 else first[:157] + "..."


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if _is_tensor_mapping(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _NESTED_STATE_DICT_KEYS:
            if _is_tensor_mapping(obj.get(key)):
                return dict(obj[key])
    return None


def _build(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    factory = import_object(arch, "--arch")
    if not callable(factory):
        raise InputError(f"--arch {arch!r} is a {type(factory).__name__}, not a callable factory")
    try:
        model = factory(**kwargs)
    except InputError:
        raise
    except (TypeError, ValueError) as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
        raise InputError(f"--arch {arch!r} could not be built with {shown}: {e}") from e
    if not isinstance(model, nn.Module):
        raise InputError(
            f"--arch {arch!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    extra = len(keys) - _SHOWN_KEYS
    return shown + (f" (+{extra} more)" if extra > 0 else "")


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
        problems.append(f"shape mismatch: {_listing(mismatched)}")
    if problems:
        raise InputError(f"state dict in {file} does not fit --arch {arch}: {'; '.join(problems)}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise InputError(
            f"state dict in {file} does not fit --arch {arch}: {_short_reason(e)}"
        ) from e
