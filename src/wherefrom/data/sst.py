"""The shipped binary Stanford Sentiment Treebank (SST-2), built by ``scripts/build_sst.py``.

Sentences of the SST trees whose root is not neutral, lower-cased tokens, label 1 = positive. Splits: ``"train"``
(6920 sentences), ``"dev"`` (872), ``"test"`` (1821); ``train_phrases`` adds every non-neutral phrase (subtree) of
the training sentences. Token ids index ``vocab`` (training tokens; 0 = ``<unk>``, 1 = ``<pad>``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

from wherefrom.errors import WherefromError, unknown_name

ARRAY_KEYS = ("vocab", "train_tokens", "train_offsets", "train_labels", "dev_tokens", "dev_offsets",
              "dev_labels", "test_tokens", "test_offsets", "test_labels", "train_phrases")
SPLITS = ("train", "dev", "test")
UNK, PAD = 0, 1


@dataclass(frozen=True, eq=False)
class SST2:
    """The shipped SST-2 arrays (see the module docstring)."""

    arrays: dict[str, np.ndarray]

    @property
    def vocab(self) -> list[str]:
        return self.arrays["vocab"].tolist()

    def sentences(self, split: str) -> list[np.ndarray]:
        """Token ids of every sentence of ``split``, as int64 arrays."""
        if split not in SPLITS:
            raise unknown_name("SST-2 split", split, SPLITS)
        tokens, offsets = self.arrays[f"{split}_tokens"], self.arrays[f"{split}_offsets"]
        return [tokens[a:b].astype(np.int64) for a, b in itertools.pairwise(offsets)]

    def labels(self, split: str) -> np.ndarray:
        """Binary labels of ``split`` (1 = positive), int64."""
        if split not in SPLITS:
            raise unknown_name("SST-2 split", split, SPLITS)
        return self.arrays[f"{split}_labels"].astype(np.int64)

    def phrases(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Every non-neutral training phrase: token ids and binary labels."""
        sentences = self.sentences("train")
        rows = self.arrays["train_phrases"]
        return [sentences[s][a:b] for s, a, b, _ in rows], rows[:, 3].copy()

    def encode(self, text: str) -> torch.Tensor:
        """Token ids ``[1, T]`` of a whitespace-tokenised, lower-cased text (unknown words -> ``<unk>``)."""
        index = _index(self)
        return torch.tensor([[index.get(w, UNK) for w in text.lower().split()]], dtype=torch.long)

    def decode(self, ids: np.ndarray | torch.Tensor) -> list[str]:
        """The words of a sequence of token ids."""
        vocab = self.arrays["vocab"]
        return [str(vocab[int(i)]) for i in np.asarray(ids).reshape(-1)]


@lru_cache(maxsize=1)
def _index(data: SST2) -> dict[str, int]:
    return {w: i for i, w in enumerate(data.vocab)}


def _manifest() -> dict:
    return json.loads((resources.files("wherefrom") / "_datafiles" / "sst2.json").read_text())


@lru_cache(maxsize=1)
def load_sst2() -> SST2:
    """Load the shipped SST-2 data and verify its checksum."""
    from wherefrom.data.shipped import array_sha256

    entry = _manifest()
    path = resources.files("wherefrom") / "_datafiles" / entry["file"]
    with resources.as_file(path) as real, np.load(real) as z:
        arrays = {k: z[k] for k in ARRAY_KEYS}
    digest = array_sha256(*arrays.values())
    if digest != entry["sha256"]:
        raise WherefromError(f"The shipped SST-2 data is corrupt (sha256 {digest} != {entry['sha256']}). "
                             "Rebuild it with scripts/build_sst.py.")
    return SST2(arrays)
