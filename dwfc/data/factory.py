"""Data from the user's own code: "package.module:factory", called with data.options (and
data.root), returning a (train, eval) pair of torch Datasets that bring their own transforms."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from dwfc.config import DataConfig
from dwfc.data.torchvision_sets import SOURCE, TRANSFORM_KEYS
from dwfc.errors import InputError
from dwfc.models import import_object


def load(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """The (train, eval) pair of the factory that `cfg.source` names."""
    source = cfg.source.strip()
    given = [k for k in TRANSFORM_KEYS if getattr(cfg, k) not in (None, False)]
    if given:
        raise InputError(
            f"data.{given[0]} does not apply to {SOURCE} {source}: a factory's datasets bring "
            "their own transforms; drop it or apply it in the factory"
        )
    options = dict(cfg.options)
    if cfg.root is not None and "root" not in options:
        options["root"] = cfg.root
    return call_factory(source, options)


def normalization(cfg: DataConfig) -> None:
    """A factory's datasets bring their own transforms: dwfc does not know their normalisation."""
    return None


def call_factory(source: str, options: dict[str, Any]) -> tuple[Dataset, Dataset]:
    factory = import_object(source, SOURCE)
    if not callable(factory):
        raise InputError(f"{SOURCE} {source!r} is a {type(factory).__name__}, not a callable")
    try:
        result = factory(**options)
    except InputError:
        raise
    except TypeError as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no arguments"
        raise InputError(f"{SOURCE} {source!r} could not be called with {shown}: {e}") from e
    return _check_pair(source, result)


def _check_pair(source: str, result: Any) -> tuple[Dataset, Dataset]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        got = (
            f"a {type(result).__name__} of length {len(result)}"
            if isinstance(result, (tuple, list))
            else f"a {type(result).__name__}"
        )
        raise InputError(
            f"{SOURCE} {source!r} must return a (train, eval) pair of torch Datasets, got {got}"
        )
    for role, ds in zip(("train", "eval"), result, strict=True):
        if not isinstance(ds, Dataset):
            raise InputError(
                f"{SOURCE} {source!r} returned a {type(ds).__name__} as the {role} set, "
                "not a torch.utils.data.Dataset"
            )
        try:
            size = len(ds)  # type: ignore[arg-type]
        except TypeError:
            continue  # an IterableDataset may not know its length
        if size == 0:
            raise InputError(f"{SOURCE} {source!r} returned an empty {role} set")
    return result[0], result[1]
