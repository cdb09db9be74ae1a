"""Text classification data: `text:FILE` for a CSV, TSV, JSON lines or Parquet file with a text
column (or a pair of them) and a label column, or `text:DIR` for a Hugging Face data set saved
with `save_to_disk`. Read with the `datasets` library, tokenised once with the model directory's
tokenizer (or `data.tokenizer`), from local files only. Needs the `hf` extra.

Without `data.eval_source`, the evaluation set is the saved data set's "test" or "validation"
split, else a seeded `HOLDOUT` share of the rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dwfc.config import DataConfig
from dwfc.errors import InputError, first_line
from dwfc.models import hf

PREFIX = "text:"
HOLDOUT = 0.2  # share of the rows held out for evaluation when no evaluation data is given
HOLDOUT_SEED = 0
EVAL_SPLITS = ("test", "validation")
READERS = {".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t"}), ".json": ("json", {}),
           ".jsonl": ("json", {}), ".parquet": ("parquet", {})}  # fmt: skip
LONGEST_POSSIBLE = 1 << 20  # tokenizers without a known maximum report a huge model_max_length


def is_text(source: str) -> bool:
    return source.strip().lower().startswith(PREFIX)


class TextDataset(Dataset):
    """Tokenised texts and their labels: item i is ({name: ids of text i}, label i)."""

    def __init__(self, encoded: dict[str, Tensor], targets: Tensor,
                 classes: list[str] | None) -> None:  # fmt: skip
        self.encoded, self.targets = encoded, targets
        if classes is not None:
            self.classes = classes  # names of string labels, in label order

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {k: v[i] for k, v in self.encoded.items()}, self.targets[i]


def _datasets() -> Any:
    hf.offline()
    try:
        import datasets
    except ImportError:
        raise InputError("text data needs the datasets library: pip install 'dwfc[hf]'") from None
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    return datasets


def _path(source: str) -> Path:
    name = (source.strip()[len(PREFIX):] if is_text(source) else source).strip()
    if not name:
        raise InputError(f"{source!r}: name the file, as text:path/to/train.csv")
    path = Path(name).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    return path


def _read(path: Path) -> Any:
    """A `datasets.Dataset` or `DatasetDict` of the file or saved directory `path`."""
    datasets = _datasets()
    if path.is_dir():
        try:
            return datasets.load_from_disk(str(path), keep_in_memory=True)
        except (FileNotFoundError, ValueError) as e:
            raise InputError(f"{path}: not a data set saved with save_to_disk "
                             f"({first_line(e)})") from None  # fmt: skip
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: text data must be {', '.join(READERS)} or a save_to_disk "
                         "directory")  # fmt: skip
    builder, options = kind
    with tempfile.TemporaryDirectory(prefix="dwfc-text-") as cache:  # nothing left behind
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train",
                                         cache_dir=cache, keep_in_memory=True, **options)
        except Exception as e:  # the readers raise pyarrow's and pandas' own errors
            raise InputError(f"{path}: cannot read it as {builder} ({first_line(e)})") from None


def _eval_split(saved: Any) -> str | None:
    """The evaluation split of a saved `DatasetDict`, if it has one."""
    return next((s for s in EVAL_SPLITS if s in saved), None)


def _splits(cfg: DataConfig) -> tuple[Any, Any]:
    """The (train, eval) tables, the training table's columns checked."""
    datasets = _datasets()
    path = _path(cfg.source)
    table, held = _read(path), None
    if isinstance(table, datasets.DatasetDict):
        if "train" not in table:
            raise InputError(f"{path}: the saved data set has no train split (has "
                             f"{', '.join(table)})")  # fmt: skip
        split = _eval_split(table)
        held = table[split] if split else None
        table = table["train"]
    _check_columns(table, cfg, str(path))
    if cfg.eval_source is not None:
        other = _read(_path(cfg.eval_source))
        if isinstance(other, datasets.DatasetDict):
            split = _eval_split(other)
            if split is None:
                raise InputError(f"{cfg.eval_source}: no {' or '.join(EVAL_SPLITS)} split")
            other = other[split]
        return table, other
    if held is not None:
        return table, held
    if len(table) < 2:
        raise InputError(f"{path}: {len(table)} row(s): too few to hold some out for evaluation")
    parts = table.train_test_split(test_size=HOLDOUT, seed=HOLDOUT_SEED)
    return parts["train"], parts["test"]


def _check_columns(table: Any, cfg: DataConfig, where: str) -> None:
    wanted = [*cfg.text_columns, cfg.label_column]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise InputError(f"{where}: no column {', '.join(repr(c) for c in missing)} (has "
                         f"{', '.join(table.column_names)}); name them with data.text_columns "
                         "and data.label_column")  # fmt: skip
    if len(table) == 0:
        raise InputError(f"{where}: no rows")


def _labels(train: Any, test: Any, column: str) -> tuple[Tensor, Tensor, list[str] | None]:
    """Integer labels as they are; names (strings) numbered in sorted order of the train set."""
    values = [train[column], test[column]]
    if all(isinstance(v, str) for v in values[0]):
        classes = sorted(set(values[0]))
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted({str(v) for v in values[1]} - set(index))
        if unknown:
            raise InputError(f"the evaluation labels {unknown[:5]} are not in the training data")
        return (torch.tensor([index[v] for v in values[0]]),
                torch.tensor([index[str(v)] for v in values[1]]), classes)  # fmt: skip
    tensors = []
    for vals in values:
        bad = next((v for v in vals if not _class_number(v)), None)
        if bad is not None or None in vals:
            raise InputError(f"label column {column!r} holds {bad!r}: labels must be class "
                             "numbers from 0, or class names")  # fmt: skip
        tensors.append(torch.tensor([int(v) for v in vals]))
    return tensors[0], tensors[1], None


def _class_number(v: Any) -> bool:
    """An integer from 0; a float only when whole (a CSV column with a gap reads as floats)."""
    return isinstance(v, int | float) and float(v).is_integer() and v >= 0


def _tokenizer(cfg: DataConfig) -> Any:
    if cfg.tokenizer is None:
        raise InputError("text data needs a tokenizer: set data.tokenizer to a folder "
                         "written by save_pretrained (a Hugging Face model directory brings "
                         "its own)")  # fmt: skip
    folder = Path(cfg.tokenizer).expanduser()
    transformers = hf.transformers_or_error(folder)
    if not folder.is_dir() or not any((folder / f).is_file() for f in hf.TOKENIZER_FILES):
        raise InputError(f"{folder}: no tokenizer (no {', '.join(hf.TOKENIZER_FILES[:3])}, ...): "
                         "save one there with tokenizer.save_pretrained, or set "
                         "data.tokenizer")  # fmt: skip
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"{folder}: cannot load its tokenizer ({first_line(e)})") from None


Texts = tuple[list[str], list[str] | None]  # the first texts, and the second of each pair


def _texts(table: Any, columns: list[str]) -> Texts:
    cols = [[("" if v is None else str(v)) for v in table[c]] for c in columns]
    return cols[0], (cols[1] if len(cols) == 2 else None)


def _tokenize(tokenizer: Any, texts: Texts, **options: Any) -> Any:
    first, second = texts
    return tokenizer(first, *([second] if second is not None else []), **options)


def _encode(tokenizer: Any, texts: Texts, length: int | None) -> dict[str, Tensor]:
    """Token tensors of `texts`, `length` long; None: as long as the longest text, capped at
    the tokenizer's maximum."""
    if length is None:
        cap = getattr(tokenizer, "model_max_length", None)
        limit = cap if isinstance(cap, int) and cap < LONGEST_POSSIBLE else None
        options = {"padding": "longest", "truncation": limit is not None, "max_length": limit}
    else:
        options = {"padding": "max_length", "truncation": True, "max_length": length}
    enc = _tokenize(tokenizer, texts, return_tensors="pt", **options)
    return {k: v for k, v in enc.items() if isinstance(v, Tensor)}


def load(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """The tokenised (train, eval) pair of `cfg.source` ("text:FILE" or "text:DIR")."""
    if len(cfg.text_columns) not in (1, 2):
        raise InputError(f"data.text_columns names one text column or a pair, got "
                         f"{cfg.text_columns}")  # fmt: skip
    train, test = _splits(cfg)
    _check_columns(test, cfg, str(cfg.eval_source or cfg.source))
    train_y, test_y, classes = _labels(train, test, cfg.label_column)
    tokenizer = _tokenizer(cfg)
    encoded = _encode(tokenizer, _texts(train, cfg.text_columns), cfg.max_length)
    length = encoded["input_ids"].shape[1]  # the evaluation texts get the training length
    return (TextDataset(encoded, train_y, classes),
            TextDataset(_encode(tokenizer, _texts(test, cfg.text_columns), length), test_y,
                        classes))  # fmt: skip


def normalization(cfg: DataConfig) -> None:
    """Text is tokenised, not normalised."""
    return None
