"""Hugging Face models: a directory written by `save_pretrained` (config.json, the weights, the
tokenizer's or image processor's files) is loaded with its `AutoModelFor...` class from local
files only, and wrapped so that the pipeline sees a module to logits: from pixels for image
classification, from named token inputs (input_ids, attention_mask, ...) for sequence
classification. Needs the `hf` extra: pip install 'dwfc[hf]' (docs/models.md).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dwfc.errors import InputError, first_line

CONFIG = "config.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "pytorch_model.bin.index.json")  # fmt: skip
PROCESSOR = "preprocessor_config.json"
HEADS = {"ForImageClassification": "AutoModelForImageClassification",
         "ForSequenceClassification": "AutoModelForSequenceClassification"}  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "added_tokens.json")  # fmt: skip
EXTRA_FILES = (PROCESSOR, *TOKENIZER_FILES, "generation_config.json")
PREFIX = "hf"  # the wrapper's attribute: state-dict keys read "hf.<the model's own key>"


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


class HFClassifier(nn.Module):
    """A Hugging Face image classifier as `pixels -> logits`; `source` is its directory."""

    def __init__(self, model: nn.Module, source: Path) -> None:
        super().__init__()
        self.hf = model
        self.source = source

    def forward(self, x: Tensor) -> Tensor:
        return self.hf(pixel_values=x).logits

    def default_exclude(self) -> list[str]:
        """The weights factorized only when asked: embeddings, the pooler and the head."""
        base = getattr(self.hf, "base_model_prefix", "")
        heads = [name for name, _ in self.hf.named_children() if name != base]
        patterns = [f"{PREFIX}.*embeddings*", f"{PREFIX}.*pooler*",
                    *(f"{PREFIX}.{h}.*" for h in heads)]  # fmt: skip
        names = [name for name, _ in self.named_parameters()]
        return [p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)]

    def data_defaults(self) -> dict[str, Any]:
        """image_size, mean and std from the image processor's files, where it has them."""
        path = self.source / PROCESSOR
        if not path.is_file():
            return {}
        cfg = json.loads(path.read_text())
        size, out = cfg.get("size") or {}, {}
        side = size.get("shortest_edge") or (size.get("height") if size.get("height") ==
                                             size.get("width") else None)  # fmt: skip
        if side:
            out["image_size"] = int(side)
        if cfg.get("do_normalize", True) and cfg.get("image_mean") and cfg.get("image_std"):
            out["mean"] = [float(v) for v in cfg["image_mean"]]
            out["std"] = [float(v) for v in cfg["image_std"]]
        return out

    def save_pretrained(self, folder: Path) -> None:
        """The model (weights with their zeros) and the source's processor files, in `folder`."""
        self.hf.save_pretrained(folder, safe_serialization=True)
        for name in EXTRA_FILES:
            if (self.source / name).is_file() and not (folder / name).exists():
                shutil.copy2(self.source / name, folder / name)


class HFTextClassifier(HFClassifier):
    """A Hugging Face sequence classifier as `(input_ids, attention_mask, token_type_ids) ->
    logits`, the inputs its tokenizer gives (the ONNX model takes them by these names)."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,  # type: ignore[override]
                token_type_ids: Tensor | None = None) -> Tensor:  # fmt: skip
        named = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.hf(input_ids=input_ids, **{k: v for k, v in named.items()
                                               if v is not None}).logits  # fmt: skip

    def data_defaults(self) -> dict[str, Any]:
        """The tokenizer: the model directory's own."""
        return {"tokenizer": str(self.source)}


WRAPPERS = {"ForImageClassification": HFClassifier, "ForSequenceClassification": HFTextClassifier}


def offline() -> None:
    """Keep the Hugging Face libraries off the network (unless the user set otherwise): dwfc
    reads local files only, and passes local_files_only=True where a call takes it."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")


def transformers_or_error(path: Path) -> Any:
    """The transformers module, quiet; an InputError naming `path` when it is not installed."""
    offline()
    try:
        import transformers
    except ImportError:
        raise InputError(f"{path} is a Hugging Face model directory: reading it needs "
                         "transformers: pip install 'dwfc[hf]'") from None  # fmt: skip
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def load(path: Path) -> tuple[HFClassifier, list[str]]:
    """The classifier in the `save_pretrained` directory `path`, from local files only."""
    transformers = transformers_or_error(path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a Hugging Face model directory ({first_line(e)})") from None
    names = list(getattr(config, "architectures", None) or [])
    if not names:
        heads = " or ".join("..." + h for h in HEADS)
        raise InputError(f"{path}/{CONFIG} names no architecture: save the model with "
                         f"save_pretrained from a {heads} class")  # fmt: skip
    head = next((suffix for suffix in HEADS if names[0].endswith(suffix)), None)
    if head is None:
        raise InputError(f"{path}: {names[0]} has no supported head (not a classification "
                         f"model); dwfc takes {', '.join('...' + s for s in HEADS)}")  # fmt: skip
    if not any((path / w).is_file() for w in WEIGHTS):
        raise InputError(f"{path}: no weights file ({' or '.join(WEIGHTS[::2])})")
    auto = getattr(transformers, HEADS[head])
    try:
        model = auto.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: cannot load {names[0]}: {first_line(e)}") from None
    notes = [f"{names[0]} loaded from {path} with transformers.{HEADS[head]} (local files only)"]
    return WRAPPERS[head](model.eval(), path), notes
