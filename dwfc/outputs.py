"""The output folder: checked before any work, filled all at once after the last stage."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ._atomic import UMASK
from .checkpoint import CHECKPOINT_NAME
from .errors import InputError

OUTPUT_FILES = (
    "model.safetensors", "model.onnx", "model.sparse.onnx", "report.json", "report.md",
    "recipe.yaml", "layer_sparsity.png", "training.png",
)  # fmt: skip


def check_out(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse an --out that is a file, or holds earlier results, unless asked to replace them."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    checkpoint = out / CHECKPOINT_NAME
    if resume:
        if not checkpoint.is_file():
            raise InputError(f"--resume: no checkpoint in {out} ({CHECKPOINT_NAME} not found)")
        return
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        hint = "--resume to continue or " if checkpoint.is_file() else ""
        raise InputError(f"--out {out} is not empty: pass {hint}--overwrite, or choose another")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"cannot write to --out {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to --out {out}: {existing} is not writable")


def make_staging(out: Path) -> Path:
    """A fresh folder beside `out` where outputs are written before they are published."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        staging.chmod(0o777 & ~UMASK)  # mkdtemp makes it 0700; it becomes the output folder
        return staging
    except OSError as exc:
        raise InputError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


def publish(staging: Path, out: Path) -> None:
    """Move finished outputs into `out`: one rename when `out` is new, else file by file.

    The checkpoint of the finished run is removed: there is nothing left to resume.
    """
    if not out.exists():
        os.replace(staging, out)
        return
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()
    (out / CHECKPOINT_NAME).unlink(missing_ok=True)


def file_sizes(folder: Path, total_params: int) -> dict[str, int]:
    """Bytes of each model file, and of the same parameters stored densely in fp32."""
    sizes = {"dense_fp32_bytes": 4 * total_params}
    for name in ("model.safetensors", "model.onnx", "model.sparse.onnx"):
        if (folder / name).exists():
            sizes[name] = (folder / name).stat().st_size
    return sizes
