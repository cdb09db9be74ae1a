"""The output folder: the names of its files, checked before any work, filled all at once after
the last stage. docs/cli.md's table of outputs is generated from `OUTPUT_FILES`."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dwfc._atomic import UMASK
from dwfc.errors import InputError, OutputError, named

SAFETENSORS = "model.safetensors"
ONNX = "model.onnx"
SPARSE_ONNX = "model.sparse.onnx"
INT8_ONNX = "model.int8.onnx"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LAYER_PLOT = "layer_sparsity.png"
TRAINING_PLOT = "training.png"
RECIPE = "recipe.yaml"
CHECKPOINT = "checkpoint.pt"
HF_MODEL = "hf_model"  # a folder
DENSE_SAFETENSORS = "model.dense.safetensors"  # what `dwfc unpack` writes, beside the sparse one

OUTPUT_FILES: tuple[tuple[str, str], ...] = (
    (SAFETENSORS, "the sparse weights in the sparse-bitmask layout ([format.md](format.md)); "
     "`dwfc.load_sparse` restores them"),
    (ONNX, "the compressed model as dense ONNX; passes `onnx.checker`'s full check, matches "
     "PyTorch in onnxruntime, and says in `metadata_props` how to feed it"),
    (SPARSE_ONNX, "the same model with sparse initializers, written only when smaller than "
     f"`{ONNX}`; passes `onnx.checker` but not its full check (the report says why); "
     "onnxruntime expands them to dense on load: it saves disk, not memory"),
    (INT8_ONNX, "with `--quantize dynamic|static`: the int8 model (onnxruntime quantization, "
     "symmetric int8 weights); its accuracy in onnxruntime, and the check that every pruned "
     "weight is still exactly zero, are in the report"),
    (HF_MODEL, "for a Hugging Face model directory: the compressed model's save_pretrained "
     "folder (weights with their zeros, config, processor files); `AutoModelFor...` loads it "
     "back, and dwfc checks it gives the same logits"),
    (REPORT_JSON, "everything measured: sparsity, accuracy at each stage, per-layer counts, file "
     "sizes, hashes, timing, training history, warnings, quality gates "
     "([report-schema.md](report-schema.md))"),
    (REPORT_MD, "the same as a readable report, with the two plots"),
    (LAYER_PLOT, "the sparsity of each layer"),
    (TRAINING_PLOT, "accuracy, sparsity and lambda over the epochs"),
    (RECIPE, f"the fully resolved recipe: `dwfc compress MODEL --recipe {RECIPE}` reruns it"),
    (CHECKPOINT, "during training only: saved after every epoch for `--resume`, removed when "
     "the run finishes"),
)  # fmt: skip
MODEL_FILES = (SAFETENSORS, ONNX, SPARSE_ONNX, INT8_ONNX)  # their sizes are in the report
_OUT, _OVERWRITE, _RESUME = named("out_dir"), named("overwrite=True"), named("resume=True")


def check_out(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse an out_dir that is a file, or holds earlier results, unless asked to replace them."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{_OUT} {out} exists and is not a directory")
    checkpoint = out / CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise InputError(f"{_RESUME}: no checkpoint in {out} ({CHECKPOINT} not found)")
        return
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        hint = f"{_RESUME} to continue or " if checkpoint.is_file() else ""
        raise InputError(
            f"{_OUT} {out} is not empty: pass {hint}{_OVERWRITE}, or choose another"
        )
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"cannot write to {_OUT} {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {_OUT} {out}: {existing} is not writable")


@contextlib.contextmanager
def writing(out: Path) -> Iterator[None]:
    """A failed write (disk full, permissions) is one line naming out_dir, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write the outputs to {out}: {exc.strerror or exc}") from None


def make_staging(out: Path) -> Path:
    """A fresh folder beside `out` where outputs are written before they are published."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        staging.chmod(0o777 & ~UMASK)  # mkdtemp makes it 0700; it becomes the output folder
        return staging
    except OSError as exc:
        raise InputError(f"cannot write to {_OUT} {out}: {exc.strerror or exc}") from None


def publish(staging: Path, out: Path) -> None:
    """Move finished outputs into `out`: one rename when `out` is new, else file by file.

    The checkpoint of the finished run is removed: there is nothing left to resume.
    """
    if not out.exists():
        os.replace(staging, out)
        return
    for name, _ in OUTPUT_FILES:
        if name != CHECKPOINT:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            (out / name).unlink(missing_ok=True)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()
    (out / CHECKPOINT).unlink(missing_ok=True)


def file_sizes(folder: Path, total_params: int) -> dict[str, int]:
    """Bytes of each model file, and of the same parameters stored densely in fp32."""
    sizes = {"dense_fp32_bytes": 4 * total_params}
    for name in MODEL_FILES:
        if (folder / name).exists():
            sizes[name] = (folder / name).stat().st_size
    return sizes
