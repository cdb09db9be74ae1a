"""What a model brings with it: the data transforms it was made for (timm's data config, a
Hugging Face image processor), for Hugging Face models which weights to factorize by default,
and for channel runs the rounding this machine's runtime runs fast (dwfc/structure/blocks.py).
Applied to the recipe keys the user left unset, each with a note for the report."""

from __future__ import annotations

from typing import Any

from torch import nn

from dwfc.config import Recipe
from dwfc.data import text
from dwfc.models import hf, timm_models
from dwfc.structure.blocks import with_round_to


def _input_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.in_channels
    return None


def _data_defaults(recipe: Recipe, model: nn.Module) -> tuple[dict[str, Any], str]:
    if isinstance(model, hf.HFTextClassifier):
        return model.data_defaults(), "the Hugging Face model directory"
    if isinstance(model, hf.HFClassifier):
        return model.data_defaults(), "the Hugging Face image processor"
    if timm_models.is_timm(recipe.model.arch):
        return timm_models.data_defaults(model), "the timm model's data config"
    return {}, ""


def with_model_defaults(recipe: Recipe, model: nn.Module) -> tuple[Recipe, list[str]]:
    """`recipe` with the unset keys the model (or this machine) has defaults for, and a note of
    each.

    Data: `data.image_size`, `data.mean` and `data.std` (mean and std only together, and only
    with one value per input channel of the model); for text data, `data.tokenizer`. Hugging
    Face models: `factorize.exclude` gets the embeddings, the pooler and the classification
    head, unless include or exclude is set.
    """
    defaults, origin = _data_defaults(recipe, model)
    data, update, notes = recipe.data, {}, []
    if data.tokenizer is None and "tokenizer" in defaults and text.is_text(data.source):
        update["tokenizer"] = defaults["tokenizer"]
    if data.image_size is None and "image_size" in defaults:
        update["image_size"] = defaults["image_size"]
    if data.mean is None and data.std is None and "mean" in defaults:
        channels = _input_channels(model)
        if channels is None or len(defaults["mean"]) == channels:
            update.update(mean=defaults["mean"], std=defaults["std"])
        else:
            notes.append(f"the mean and std of {origin} are for {len(defaults['mean'])} channels, "
                         f"the model reads {channels}: the data set's own are used")  # fmt: skip
    if update:
        shown = ", ".join(f"data.{k}={v}" for k, v in update.items())
        notes.append(f"{shown} from {origin} (set them to override)")
        recipe = recipe.model_copy(update={"data": data.model_copy(update=update)})
    fc = recipe.factorize
    if isinstance(model, hf.HFClassifier) and not fc.include and not fc.exclude:
        exclude = model.default_exclude()
        notes.append(f"factorize.exclude={exclude}: embeddings, pooler and head are factorized "
                     "only when asked (set factorize.include or exclude)")  # fmt: skip
        recipe = recipe.model_copy(update={"factorize": fc.model_copy(update={"exclude": exclude})})
    recipe, block_notes = with_round_to(recipe)
    return recipe, notes + block_notes
