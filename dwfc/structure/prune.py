"""Physical removal, and rebuilding the smaller architecture from the original one.

`remove_` takes the removed channels out of the model with Torch-Pruning, after checking on an
example that the smaller model computes what the masked one did. What it takes to rebuild the
smaller model is its `PrunedSpec`: the input shape to trace and Torch-Pruning's pruning history
(the root layer and channel indices of each removal), stored in model.safetensors' metadata
under `dwfc.pruned`. `load_pruned` builds the original architecture (`--arch`, or a model you
pass), replays the history and loads the weights.

Example:
    model = dwfc.load_pruned("runs/x/model.safetensors")          # arch from the file's recipe
    model = dwfc.load_pruned("runs/x/model.safetensors", MyNet())  # or the dense model yourself
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dwfc.errors import ExportCheckError, InputError, first_line
from dwfc.structure.groups import build_graph, remove_channels

PRUNED_KEY = "dwfc.pruned"  # the safetensors metadata key of the spec (JSON)
SPEC_VERSION = 1
PRUNED_PARITY = 1e-4  # |smaller - masked| allowed on an example, relative to the output's scale


@dataclass
class PrunedSpec:
    """How to turn the original architecture into the smaller one."""

    input_shape: list[int]  # one example, without the batch: what the graph is traced on
    history: list[list[Any]]  # Torch-Pruning's: [root layer, out-channel removal, indices]
    version: int = SPEC_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PrunedSpec:
        try:
            data = json.loads(text)
            spec = cls(input_shape=[int(d) for d in data["input_shape"]],
                       history=[[str(n), bool(o), [int(i) for i in idx]]
                                for n, o, idx in data["history"]],
                       version=int(data.get("version", SPEC_VERSION)))  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"{PRUNED_KEY} metadata is not a pruned-model spec: {first_line(exc)}"
            ) from None
        if spec.version > SPEC_VERSION:
            raise InputError(
                f"{PRUNED_KEY} spec version {spec.version} is newer than this dwfc reads "
                f"({SPEC_VERSION}): upgrade dwfc"
            )
        return spec


def _outputs(model: nn.Module, example: Tensor) -> Tensor:
    with torch.no_grad():
        return model.eval()(example).float()


def remove_(model: nn.Module, removed: dict[str, list[int]], example: Tensor) -> PrunedSpec:
    """Remove `removed[group]` channels of each group (named by its root layer) from `model`, in
    place; the model must be plain (gates folded). Raises ExportCheckError when the smaller
    model does not compute what the masked one did on `example`."""
    was_training = model.training
    example = example.to(next(model.parameters()).device)
    before = _outputs(model, example)
    history = remove_channels(model, example[:1], removed)
    after = _outputs(model, example)
    model.train(was_training)
    scale = max(1.0, float(before.abs().max()))
    diff = float((after - before).abs().max()) if after.shape == before.shape else float("inf")
    if diff > PRUNED_PARITY * scale:
        raise ExportCheckError(
            "the model with the channels removed differs from the masked model by "
            f"{diff:.3g} on an evaluation batch (limit {PRUNED_PARITY * scale:.3g})"
        )
    return PrunedSpec(list(example.shape[1:]), history)


def rebuild_(model: nn.Module, spec: PrunedSpec) -> nn.Module:
    """Shrink the original architecture `model` to the pruned one, in place (weights are not
    loaded: the shapes are)."""
    first = next(model.parameters(), None)
    example = torch.zeros(1, *spec.input_shape, device=first.device if first is not None else None)
    graph = build_graph(model, example)
    try:
        graph.load_pruning_history(spec.history)
    except (AttributeError, ValueError, AssertionError, IndexError, KeyError,
            RuntimeError) as exc:  # fmt: skip
        raise InputError(
            f"the pruned-model spec does not fit this architecture: {first_line(exc)}"
        ) from None
    return model


def load_pruned(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """The smaller model of a `--structure channel` run from its model.safetensors: `model` (the
    original architecture, untrained is fine) or the file's recipe's `model.arch`, shrunk and
    loaded.

    Example:
        model = dwfc.load_pruned("runs/x/model.safetensors")
    """
    from dwfc.export.sparse_file import RECIPE_KEY, load_sparse, read_metadata
    from dwfc.models import build_model

    meta = read_metadata(path)
    if PRUNED_KEY not in meta:
        raise InputError(
            f"{path} holds no pruned-model spec ({PRUNED_KEY}): it is not from a --structure "
            "channel run; use dwfc.load_sparse"
        )
    spec = PrunedSpec.from_json(meta[PRUNED_KEY])
    if model is None:
        try:
            recipe = json.loads(meta.get(RECIPE_KEY, "{}")).get("model", {})
        except (json.JSONDecodeError, AttributeError) as exc:
            raise InputError(f"{path}: its recipe metadata is not readable JSON "
                             f"({first_line(exc)}): pass the original model") from None
        if not recipe.get("arch"):
            raise InputError(
                f"{path} does not name its architecture (model.arch): pass the original model "
                "to load_pruned"
            )
        model = build_model(recipe["arch"], recipe.get("arch_kwargs") or {})
    rebuild_(model, spec)
    state = load_sparse(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"the weights in {path} do not fit the rebuilt model: {first_line(exc)}"
        ) from None
    return model.eval()
