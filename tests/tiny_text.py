"""A tiny text classification world, built offline: sentences with a learnable label, a WordPiece
tokenizer trained on them with `tokenizers`, and a BERT-style classifier (hidden size 32) saved
with `save_pretrained`. Used by the tests and by benchmarks/text_finetune.py."""

from __future__ import annotations

import csv
import random
from pathlib import Path

GOOD = ["good", "great", "fine", "lovely", "happy", "bright", "kind", "warm"]
BAD = ["bad", "awful", "poor", "sad", "dull", "grim", "cold", "rude"]
NOUNS = ["movie", "book", "song", "meal", "trip", "game", "show", "film", "play", "day"]
FILLER = ["the", "a", "this", "that", "was", "is", "very", "quite", "really", "so", "and", "but"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentence(rng: random.Random, label: int) -> str:
    """A sentence whose sentiment words say `label` (1: good), among neutral filler."""
    words = [rng.choice(FILLER), rng.choice(NOUNS), rng.choice(FILLER)]
    words += [rng.choice(GOOD if label else BAD) for _ in range(rng.randint(1, 2))]
    words += rng.sample(FILLER, rng.randint(0, 4))
    return " ".join(words)


def rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(sentence(rng, label), label) for label in (rng.randint(0, 1) for _ in range(n))]


def write_csv(path: Path, data: list[tuple[str, int]], text: str = "text",
              label: str = "label") -> Path:  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([text, label])
        writer.writerows(data)
    return path


def save_tokenizer(folder: Path, sentences: list[str], vocab_size: int = 200) -> object:
    """A WordPiece tokenizer trained on `sentences`, saved into `folder` as transformers does."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(sentences, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                 special_tokens=SPECIAL))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])  # fmt: skip
    fast = transformers.BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                          pad_token="[PAD]", cls_token="[CLS]",
                                          sep_token="[SEP]", mask_token="[MASK]",
                                          model_max_length=64)  # fmt: skip
    fast.save_pretrained(folder)
    return fast


def save_bert(folder: Path, vocab_size: int, layers: int = 2, hidden: int = 32,
              labels: int = 2, head: str = "BertForSequenceClassification") -> None:  # fmt: skip
    """A BERT-style model from a config (random weights), saved with save_pretrained."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden,
                                     num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=2 * hidden, max_position_embeddings=64,
                                     num_labels=labels)  # fmt: skip
    getattr(transformers, head)(config).save_pretrained(folder)


def bert_dir(folder: Path, layers: int = 2, hidden: int = 32) -> Path:
    """A tiny BERT-style sequence classifier and its tokenizer in `folder`."""
    tokenizer = save_tokenizer(folder, [s for s, _ in rows(400, seed=99)])
    save_bert(folder, len(tokenizer), layers, hidden)  # type: ignore[arg-type]
    return folder
