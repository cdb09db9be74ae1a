"""What a data set tells about the model it needs: its class count and its input shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset

from dwfc.errors import InputError


def _label_count(labels: Any) -> int | None:
    """max label + 1 for a 1-D sequence of non-negative integer labels, else None."""
    try:
        array = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    except (TypeError, ValueError, RuntimeError):
        return None
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        return None
    if array.min() < 0:
        return None
    return int(array.max()) + 1


def num_classes(dataset: Dataset) -> int | None:
    """How many outputs a classifier needs for `dataset`, or None if it cannot be told.

    From `.classes` (torchvision data sets, ImageFolder), else max label + 1 from `.targets` or
    `.labels`, or from the last tensor of a TensorDataset; Subset and ConcatDataset look inside.

    Example:
        >>> num_classes(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 4, 1])))
        5
    """
    if isinstance(dataset, Subset):
        return num_classes(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        counts = [num_classes(d) for d in dataset.datasets]
        return None if not counts or None in counts else max(c for c in counts if c is not None)
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) > 0:
        return len(classes)
    for attr in ("targets", "labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None and not callable(labels):
            count = _label_count(labels)
            if count is not None:
                return count
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return _label_count(dataset.tensors[-1])
    return None


def sample_shape(dataset: Dataset) -> tuple[int, ...]:
    """The shape of one input of `dataset`, without the batch dimension, e.g. (3, 32, 32).

    Reads the first item; its input must be a tensor. Raises InputError if the data set is
    empty or its items are not (input, label) pairs of a tensor and a label.

    Example:
        >>> sample_shape(TensorDataset(torch.zeros(5, 1, 28, 28), torch.zeros(5)))
        (1, 28, 28)
    """
    if isinstance(dataset, TensorDataset):
        return tuple(dataset.tensors[0].shape[1:])
    try:
        if isinstance(dataset, IterableDataset):
            item = next(iter(dataset))
        else:
            if len(dataset) == 0:  # type: ignore[arg-type]
                raise InputError("the data set is empty: it has no input to check the model with")
            item = dataset[0]
    except StopIteration:
        raise InputError("the data set is empty: it has no input to check the model with") from None
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise InputError(
            f"data set items must be (input, label) pairs, got a {type(item).__name__}"
        )
    x = item[0]
    if not isinstance(x, torch.Tensor):
        raise InputError(
            f"data set inputs must be tensors, got {type(x).__module__}.{type(x).__name__}: "
            "add transforms.ToTensor() to the datasets"
        )
    return tuple(x.shape)
