"""Data sources, one module each, and their registry: the bundled MNIST subset (bundled.py),
torchvision data sets and ImageFolder trees read from a local folder (torchvision_sets.py),
tokenised text classification files, "text:FILE" (text.py), or the user's own
"package.module:factory" (factory.py).

The pipeline calls `load_run_data(recipe, device)` (loaders.py): the recipe's `data` section
through `load_data_config`, the loaders, and the check that the model fits the data. See
docs/data.md for the sources, their folder layouts and defaults. To add a source: a module with
`load(cfg: DataConfig) -> (train, eval)` and `normalization(cfg)` (the `Source` protocol), and one
line in `SOURCES`.
"""

from __future__ import annotations

import difflib
from typing import Any, Protocol

from pydantic import ValidationError
from torch.utils.data import Dataset

from dwfc.config import DataConfig
from dwfc.data import bundled, factory, text, torchvision_sets
from dwfc.data.bundled import MNIST_MEAN, MNIST_STD, mnist5k
from dwfc.data.describe import num_classes, sample_shape
from dwfc.data.torchvision_sets import SOURCE
from dwfc.errors import InputError

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "SOURCES",
    "load_data",
    "load_data_config",
    "mnist5k",
    "normalization",
    "num_classes",
    "sample_shape",
]

class Source(Protocol):
    """A data source module: the (train, eval) pair a recipe's `data` section describes, and
    the mean and std its inputs are normalised with (None where dwfc does not apply them)."""

    def load(self, cfg: DataConfig) -> tuple[Dataset, Dataset]: ...

    def normalization(self, cfg: DataConfig) -> tuple[list[float], list[float]] | None: ...


# Built-in sources by name (case-insensitive); a source with a ":" is a "package.module:factory".
SOURCES: dict[str, Source] = {
    "mnist5k": bundled,
    **dict.fromkeys(torchvision_sets.SPECS, torchvision_sets),
}
# Sources that name a path after their prefix: "text:train.csv".
PREFIXED: dict[str, Source] = {"text": text}  # type: ignore[dict-item]


def _unknown_source(source: str) -> InputError:
    close = difflib.get_close_matches(source.strip().lower(), SOURCES, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return InputError(
        f"unknown data source {source!r}{hint}: use one of {', '.join(SOURCES)}, "
        "or 'package.module:factory'"
    )


def load_data_config(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """Return the (train, eval) pair of datasets that the recipe's `data` section describes.

    `cfg.source` is, case-insensitively, one of `SOURCES`, "text:FILE" or
    "package.module:factory":

    - "mnist5k": the bundled subset; `cfg.options` go to `mnist5k` (split_seed); image_size,
      mean and std resize / renormalise it.
    - "mnist", "fashionmnist", "kmnist", "cifar10", "cifar100", "svhn": read by torchvision
      from `cfg.root` in its own format, never downloaded; "imagefolder": `<root>/train` and
      `<root>/val`. image_size, mean, std and augment default per data set (docs/data.md).
    - "text:FILE" (CSV, TSV, JSON lines, Parquet) or "text:DIR" (save_to_disk): texts in
      `cfg.text_columns` and labels in `cfg.label_column`, tokenised with `cfg.tokenizer`;
      evaluation data from `cfg.eval_source`, else held out (docs/data.md).
    - "package.module:factory": called as `factory(**cfg.options)` (plus `root=cfg.root` when
      given); the factory's datasets bring their own transforms.

    Example:
        >>> train, test = load_data_config(DataConfig(source="mnist5k"))
        >>> len(train), len(test)
        (4000, 1000)
        >>> cfg = DataConfig(source="cifar10", root="data", augment=True)
        >>> train, test = load_data_config(cfg)  # doctest: +SKIP
    """
    return source_of(cfg).load(cfg)


def source_of(cfg: DataConfig) -> Source:
    """The module that reads `cfg.source`."""
    source = cfg.source.strip()
    prefix = source.split(":", 1)[0].lower()
    if ":" in source and prefix in PREFIXED:
        return PREFIXED[prefix]
    if cfg.eval_source is not None:
        raise InputError(f"data.eval_source applies to text data only, not to {source!r}")
    if ":" in source:
        return factory  # type: ignore[return-value]
    module = SOURCES.get(source.lower())
    if module is None:
        raise _unknown_source(source)
    return module


def normalization(cfg: DataConfig) -> tuple[list[float], list[float]] | None:
    """The mean and std the inputs of `cfg`'s data are normalised with (None: not by dwfc).

    Example:
        >>> normalization(DataConfig(source="mnist5k"))
        ([0.1307], [0.3081])
    """
    return source_of(cfg).normalization(cfg)


def load_data(source: str, **options: Any) -> tuple[Dataset, Dataset]:
    """Return a (train, eval) pair of datasets for `source`.

    `source` is "mnist5k" (options go to `mnist5k`, e.g. split_seed), "package.module:factory"
    (a callable called with `**options` that returns a (train, eval) pair of torch Datasets), or
    another of `SOURCES`, whose options are the recipe's data fields: root, image_size, mean,
    std, augment. `load_data_config` is the same from a recipe's `data` section.

    Example:
        >>> train, test = load_data("mnist5k", split_seed=1)
        >>> train, test = load_data("cifar10", root="data", augment=True)  # doctest: +SKIP
        >>> train, test = load_data("my_pkg.datasets:cifar_pair", root="data")  # doctest: +SKIP
    """
    if not isinstance(source, str):
        raise InputError(f"data source must be a string, got {type(source).__name__}")
    key = source.strip().lower()
    if key == "mnist5k":
        return bundled.split(**options)
    if key.split(":", 1)[0] in PREFIXED:
        try:
            return load_data_config(DataConfig(source=source, **options))
        except ValidationError as e:
            first = e.errors()[0]
            raise InputError(f"{source}: option {first['loc'][0]}: {first['msg']}") from None
    if ":" in source:
        return factory.call_factory(source, options)
    if key not in SOURCES:
        raise _unknown_source(source)
    fields = {"root", *torchvision_sets.TRANSFORM_KEYS}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InputError(
            f"{SOURCE} {key} does not accept options {unknown}: it takes "
            f"{', '.join(sorted(fields))}"
        )
    try:
        cfg = DataConfig(source=key, **options)
    except ValidationError as e:
        first = e.errors()[0]
        raise InputError(f"{SOURCE} {key}: option {first['loc'][0]}: {first['msg']}") from None
    return load_data_config(cfg)
