"""Read a model file into a Python object: a state dict, a checkpoint dict or a whole module.

`read_model_file` recognises the formats dwfc can fine-tune (torch.save files and safetensors)
and names the ones it cannot (TorchScript, torch.export, ONNX, Keras/HDF5, TFLite, GGUF, NumPy)
before `torch.load` gets to them. `torch.load` always runs first with `weights_only=True` (no
code from the file runs); only with `trust_model=True` (`model.trust_model`) is a file that needs
full unpickling loaded unsafely.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwfc.errors import InputError, first_line, named

__all__ = ["PickledModule", "file_digest", "read_model_file", "short_reason", "sniff_format"]

_PASS_INSTEAD = (
    "pass the PyTorch weights instead: a state dict (torch.save(model.state_dict(), 'model.pt') "
    f"or a .safetensors file) with {named('model.arch')}"
)
# Formats dwfc cannot fine-tune: what the file is, and how to get a state dict out of it.
_UNTRAINABLE = {
    "torchscript": (
        "a TorchScript archive",
        f"pass the state dict (model.state_dict()) with {named('model.arch')}; "
        "torch.jit.load(path).state_dict() recovers it",
    ),
    "torch-export": (
        "a torch.export program",
        f"pass the state dict (model.state_dict()) with {named('model.arch')}; "
        "torch.export.load(path).state_dict recovers it",
    ),
    "onnx": ("an ONNX model", _PASS_INSTEAD),
    "hdf5": ("an HDF5 file (Keras/TensorFlow weights)", _PASS_INSTEAD),
    "keras": ("a Keras model archive", _PASS_INSTEAD),
    "tflite": ("a TensorFlow Lite model", _PASS_INSTEAD),
    "gguf": ("a GGUF file", _PASS_INSTEAD),
    "numpy": ("a NumPy array file", _PASS_INSTEAD),
}
_MAX_SAFETENSORS_HEADER = 100_000_000


def file_digest(path: Path) -> str:
    """"sha256:<hex>" of a file's bytes: which model file a run compressed. A directory (a
    Hugging Face model) hashes the names and bytes of its files, in sorted order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


class PickledModule(InputError):
    """The file needs full unpickling (it runs code from the file), and that was not allowed."""


def sniff_format(file: Path) -> str:
    """Guess a model file's format from its name and first bytes, without unpickling anything.

    Returns "safetensors", "torch" (anything `torch.load` should try), or one of the formats dwfc
    cannot fine-tune: "torchscript", "torch-export", "onnx", "hdf5", "keras", "tflite", "gguf",
    "numpy".

    Example:
        >>> sniff_format(Path("model.onnx"))  # doctest: +SKIP
        'onnx'
    """
    try:
        with open(file, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise InputError(f"cannot read {file}: {e.strerror or e}") from e
    size = file.stat().st_size
    suffix = file.suffix.lower()
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if head[4:8] == b"TFL3":
        return "tflite"
    if _looks_like_safetensors(head, size):
        return "safetensors"
    if head.startswith(b"PK") and zipfile.is_zipfile(file):
        return _sniff_zip(file)  # the content decides: a torch.save zip named .safetensors loads
    if suffix in (".onnx", ".safetensors"):
        return suffix[1:]
    return "torch"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 2 <= header_len <= min(size - 8, _MAX_SAFETENSORS_HEADER)


def _sniff_zip(file: Path) -> str:
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "torch"  # torch.load reports the damage
    inner = [name.split("/", 1)[1] for name in names if "/" in name]
    if any(n == "constants.pkl" or n.startswith("code/__torch__/") for n in inner):
        return "torchscript"
    if any(n == "archive_format" or n.startswith("models/") for n in inner):
        return "torch-export"
    if "config.json" in names and any(n.endswith(".weights.h5") for n in names):
        return "keras"
    if names and all(n.endswith(".npy") for n in names):
        return "numpy"
    return "torch"


def _untrainable(file: Path, fmt: str) -> InputError:
    what, instead = _UNTRAINABLE[fmt]
    return InputError(f"{file} is {what}: dwfc needs a trainable module: {instead}")


def read_model_file(file: Path, trust_model: bool) -> tuple[Any, list[str]]:
    """Read `file` into what it holds (state dict, checkpoint dict or module) and notes on how.

    Example:
        >>> obj, notes = read_model_file(Path("model.safetensors"), False)  # doctest: +SKIP
    """
    fmt = sniff_format(file)
    if fmt in _UNTRAINABLE:
        raise _untrainable(file, fmt)
    if fmt == "safetensors":
        return _read_safetensors(file)
    return _load_checked(file, trust_model)


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    from dwfc.export.sparse_file import FORMAT_KEY, load_sparse, read_metadata

    try:
        state_dict = load_sparse(file)
    except InputError as e:
        reason = str(e).removeprefix(f"{file}: ")
        raise InputError(f"cannot read {file} as a safetensors file: {reason}") from e
    notes = []
    if FORMAT_KEY in read_metadata(file):
        notes.append(f"{file.name} is a dwfc sparse file: its weights were expanded to dense")
    return state_dict, notes


def _load_checked(file: Path, trust_model: bool) -> tuple[Any, list[str]]:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols while probing non-torch files.
            warnings.simplefilter("ignore")
            return _torch_load(file, weights_only=True), []
    except pickle.UnpicklingError as e:
        if not _is_torch_checkpoint(file):
            if _is_onnx(file):
                raise _untrainable(file, "onnx") from e
            raise InputError(
                f"cannot read {file} as a PyTorch file: not a torch.save checkpoint"
            ) from e
        safe_error = e
    except Exception as e:
        if _is_onnx(file):
            raise _untrainable(file, "onnx") from e
        raise InputError(f"cannot read {file} as a PyTorch file: {short_reason(e)}") from e

    if not trust_model:
        raise PickledModule(
            f"{file} is a pickled module; loading it runs code from the file. Allow it with "
            f"{named('model.trust_model')} if you trust it, or save a state dict and name its "
            f"architecture with {named('model.arch')}"
        ) from safe_error
    try:
        obj = _torch_load(file, weights_only=False)
    except ModuleNotFoundError as e:
        raise InputError(
            f"cannot unpickle {file}: no module named {e.name!r}; the model's classes must be "
            "importable (install the package or add it to PYTHONPATH)"
        ) from e
    except Exception as e:
        raise InputError(f"cannot read {file} as a PyTorch file: {short_reason(e)}") from e
    if not isinstance(obj, (nn.Module, Mapping)):
        raise InputError(
            f"{file} holds a {type(obj).__name__}, not an nn.Module: save the whole model "
            "or its state dict"
        )
    return obj, ["loaded with full unpickling (model.trust_model)"]


def _torch_load(file: Path, weights_only: bool) -> Any:
    # Through a file object: torch.load(path) hands any *.safetensors name to safetensors.
    with open(file, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=weights_only)


def _is_onnx(file: Path) -> bool:
    """True if `file` parses as an ONNX model with a non-empty graph (for files not named .onnx)."""
    try:
        import onnx

        model = onnx.load_model(str(file), load_external_data=False)
    except Exception:
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


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


def short_reason(error: BaseException) -> str:
    """One short line describing why reading a file failed.

    Example:
        >>> short_reason(EOFError())
        'the file ends unexpectedly (truncated?)'
    """
    if isinstance(error, EOFError):
        return "the file ends unexpectedly (truncated?)"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, OSError):
        return f"corrupt or truncated file ({error.strerror or error})"
    if isinstance(error, (KeyError, IndexError)) or not str(error).strip():
        return f"unrecognised or corrupt content ({type(error).__name__})"
    first = first_line(error)
    if first.startswith("[enforce fail"):
        first = first.split("] ", 1)[-1].lstrip(". ")
    first = first.split(". ")[0].rstrip(".")
    if "zip archive" in first or "EOF" in first:
        first += " (truncated or corrupt?)"
    return first if len(first) <= 160 else first[:157] + "..."
