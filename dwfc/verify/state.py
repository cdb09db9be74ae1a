"""What the checks of `dwfc verify` learn about an output folder, shared between them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from dwfc.config import Recipe
from dwfc.inputs import Inputs
from dwfc.outputs import INT8_ONNX, SAFETENSORS, SPARSE_ONNX
from dwfc.report.schema import OnnxInfo, RunReport


class Skip(Exception):
    """Raised by a check that cannot apply; the message says why."""


class Fail(Exception):
    """Raised by a check that found a mismatch; the message names it."""


@dataclass
class Run:
    """What the checks learn about the folder, shared between them."""

    out: Path
    data_source: str | None
    batch_size: int
    acc_tol: float
    report: RunReport = field(default_factory=RunReport)
    meta: dict[str, str] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None
    model: nn.Module | None = None
    recipe: Recipe | None = None
    eval_set: Dataset | None = None
    batch: Inputs | None = None
    onnx_out: np.ndarray | None = None

    @property
    def onnx(self) -> OnnxInfo:
        return self.report.onnx or OnnxInfo()

    def expects(self, name: str) -> bool:
        """Whether the run says it wrote ONNX file `name`, or the file is there anyway."""
        if name == SPARSE_ONNX:
            recorded = self.onnx.sparse_variant == name
        elif name == INT8_ONNX:
            recorded = self.report.int8 is not None
        else:
            recorded = bool(self.onnx.model_fields_set)
        return recorded or (self.out / name).exists()


def listing(items: list[str], shown: int = 3) -> str:
    extra = len(items) - shown
    return ", ".join(items[:shown]) + (f" (+{extra} more)" if extra > 0 else "")


def json_meta(meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except (ValueError, RecursionError):
        raise Fail(f"{SAFETENSORS} metadata {key} is not valid JSON") from None
