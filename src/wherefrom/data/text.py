"""Text as Hugging Face-style dict batches, from the shipped SST-2 sentences, without downloading a tokenizer.

:class:`WordTokenizer` is a word-level vocabulary: the ``vocab_size`` most frequent training words of the shipped
SST-2 data (:mod:`wherefrom.data.sst`), with ``<unk>`` = 0 and ``<pad>`` = 1. It turns texts into
``{"input_ids": [N, T], "attention_mask": [N, T]}``, right-padded, like a Hugging Face tokenizer.

:class:`DictDataset` holds equal-length tensors by name; its items are dicts, so a plain ``DataLoader`` yields dict
batches (``input_ids``, ``attention_mask``, ``labels``) that :class:`~wherefrom.task.Task` reads without an
``input_fn``. :func:`sst2_text` builds such a dataset for sequence classification (``labels`` = sentiment) or causal
language modelling (``labels`` = ``input_ids`` with ``-100`` at padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from wherefrom.data.sst import PAD, UNK, load_sst2
from wherefrom.errors import WherefromError, unknown_name

TASKS = ("classification", "causal_lm")


class WordTokenizer:
    """Word-level tokenizer on the ``vocab_size`` most frequent SST-2 training words (0 = ``<unk>``, 1 = ``<pad>``).

    Args:
        vocab_size: number of ids (at least 3: ``<unk>``, ``<pad>`` and one word).
    """

    pad_token_id = PAD
    unk_token_id = UNK

    def __init__(self, vocab_size: int = 1000) -> None:
        words = load_sst2().vocab
        if not 3 <= vocab_size <= len(words):
            raise WherefromError(f"vocab_size must be between 3 and {len(words)}, got {vocab_size}.")
        self.vocab = words[:vocab_size]
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def ids(self, text: str) -> list[int]:
        """Token ids of a whitespace-tokenised, lower-cased text."""
        return [self.index.get(w, UNK) for w in text.lower().split()]

    def pad(self, sequences: Sequence[Sequence[int]], max_length: int) -> dict[str, torch.Tensor]:
        """Right-pad (and truncate) id sequences to ``max_length``: ``input_ids`` and ``attention_mask``, ``[N, T]``."""
        if max_length < 1:
            raise WherefromError(f"max_length must be >= 1, got {max_length}.")
        ids = torch.full((len(sequences), max_length), PAD, dtype=torch.long)
        mask = torch.zeros(len(sequences), max_length, dtype=torch.long)
        for k, seq in enumerate(sequences):
            seq = list(seq)[:max_length]
            ids[k, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[k, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, texts: str | Sequence[str], max_length: int = 32) -> dict[str, torch.Tensor]:
        """Encode texts like a Hugging Face tokenizer with ``padding="max_length", truncation=True``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.pad([self.ids(t) for t in texts], max_length)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_padding: bool = True) -> str:
        """The words of a sequence of ids (padding left out)."""
        values = torch.as_tensor(ids).reshape(-1).tolist()
        return " ".join(self.vocab[i] for i in values if not (skip_padding and i == PAD))


class DictDataset(Dataset):
    """Named tensors with equal first dimension; item ``i`` is ``{name: tensor[i]}`` (dict batches when loaded)."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        sizes = {k: int(v.shape[0]) for k, v in tensors.items()}
        if not tensors or len(set(sizes.values())) != 1:
            raise WherefromError(f"DictDataset needs tensors with one common first dimension, got sizes {sizes}.")
        self.tensors = tensors

    def __len__(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        rows = {k: v[idx] for k, v in self.tensors.items()}
        return [{k: v[j] for k, v in rows.items()} for j in range(len(indices))]

    def subset(self, indices: Sequence[int]) -> DictDataset:
        """The rows ``indices``, as a new dataset."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return DictDataset(**{k: v[idx] for k, v in self.tensors.items()})


def sst2_text(split: str = "train", n: int | None = None, task: str = "classification", vocab_size: int = 1000,
              max_length: int = 24, tokenizer: WordTokenizer | None = None) -> DictDataset:
    """The first ``n`` sentences of an SST-2 split as a :class:`DictDataset` of dict examples.

    ``task="classification"``: ``input_ids``, ``attention_mask`` and ``labels`` (1 = positive). ``task="causal_lm"``:
    ``labels`` are the ``input_ids`` with ``-100`` at padding (the Hugging Face convention). Sentences longer than
    ``max_length`` words are truncated; ids of words outside the tokenizer's vocabulary are ``<unk>``.
    """
    if task not in TASKS:
        raise unknown_name("text task", task, TASKS)
    data = load_sst2()
    tok = tokenizer if tokenizer is not None else WordTokenizer(vocab_size)
    sentences = data.sentences(split)
    labels = data.labels(split)
    if n is not None:
        sentences, labels = sentences[:n], labels[:n]
    limit = tok.vocab_size
    seqs = [np.where(s < limit, s, UNK).tolist() for s in sentences]  # SST ids are frequency-ordered like tok's
    enc = tok.pad(seqs, max_length)
    if task == "classification":
        return DictDataset(**enc, labels=torch.as_tensor(labels, dtype=torch.long))
    lm_labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return DictDataset(**enc, labels=lm_labels)
