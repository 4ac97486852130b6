#!/usr/bin/env python
"""Build the compact SST-2 data shipped in the package from the Stanford Sentiment Treebank PTB trees.

    python scripts/build_sst.py --source ../shared/data/sst

Reads ``trees/{train,dev,test}.txt`` (one binarised tree per line, every node labelled 0–4), keeps the sentences
whose root label is not 2 (neutral) with the binary label ``root >= 3``, lower-cases the tokens, and writes
``src/wherefrom/_datafiles/sst2.npz``:

* ``vocab``: the training tokens, most frequent first (ties alphabetical) after ``<unk>`` (id 0) and ``<pad>`` (1);
* ``{train,dev,test}_tokens`` (uint16, concatenated), ``_offsets`` (int64, ``n + 1``), ``_labels`` (uint8);
* ``train_phrases``: ``[P, 4]`` int64 rows ``(sentence, start, stop, label)`` — every non-neutral node of the
  training trees (phrase-level supervision, as in GLUE SST-2), deduplicated by text (first occurrence kept).

``sst2.json`` records the counts, the sha256 of the arrays and of the source files. Running it twice gives the
same array checksums.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from wherefrom.data.shipped import array_sha256  # noqa: E402
from wherefrom.data.sst import ARRAY_KEYS  # noqa: E402

OUT = os.path.join(HERE, "..", "src", "wherefrom", "_datafiles")
SPLITS = ("train", "dev", "test")
_TOKEN = re.compile(r"\(|\)|[^ \t\r\n()]+")  # ASCII spaces only: one leaf holds a no-break space


def parse_tree(line: str) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Leaves (lower-cased) and ``(start, stop, label)`` of every node of one PTB tree, root last."""
    items = _TOKEN.findall(line)
    words: list[str] = []
    nodes: list[tuple[int, int, int]] = []
    pos = 0

    def node() -> None:
        nonlocal pos
        assert items[pos] == "(", f"expected '(' at item {pos}"
        label = int(items[pos + 1])
        pos += 2
        start = len(words)
        if items[pos] != "(":
            words.append(items[pos].lower())
            pos += 1
        else:
            while items[pos] == "(":
                node()
        assert items[pos] == ")", f"expected ')' at item {pos}"
        pos += 1
        nodes.append((start, len(words), label))

    node()
    return words, nodes


def file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=os.path.join(HERE, "..", "..", "shared", "data", "sst"),
                        help="folder holding trees/{train,dev,test}.txt")
    args = parser.parse_args()
    parsed = {}
    for split in SPLITS:
        with open(os.path.join(args.source, "trees", f"{split}.txt"), encoding="utf-8") as fh:
            parsed[split] = [parse_tree(line) for line in fh if line.strip()]

    counts = collections.Counter(w for words, _ in parsed["train"] for w in words)
    vocab = ["<unk>", "<pad>", *sorted(counts, key=lambda w: (-counts[w], w))]
    index = {w: i for i, w in enumerate(vocab)}
    if len(vocab) > np.iinfo(np.uint16).max:
        raise SystemExit("vocabulary does not fit uint16")

    arrays: dict[str, np.ndarray] = {"vocab": np.array(vocab)}
    phrases, seen = [], set()
    for split in SPLITS:
        tokens, offsets, labels = [], [0], []
        for words, nodes in parsed[split]:
            root = nodes[-1][2]
            if root == 2:
                continue
            sentence = len(labels)
            if split == "train":
                for start, stop, label in nodes:
                    key = tuple(words[start:stop])
                    if label != 2 and key not in seen:
                        seen.add(key)
                        phrases.append((sentence, start, stop, int(label >= 3)))
            tokens.extend(index.get(w, 0) for w in words)
            offsets.append(len(tokens))
            labels.append(int(root >= 3))
        arrays[f"{split}_tokens"] = np.array(tokens, dtype=np.uint16)
        arrays[f"{split}_offsets"] = np.array(offsets, dtype=np.int64)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8)
    arrays["train_phrases"] = np.array(phrases, dtype=np.int64)
    assert list(arrays) == list(ARRAY_KEYS), "array order must match wherefrom.data.sst.ARRAY_KEYS"

    path = os.path.join(OUT, "sst2.npz")
    np.savez_compressed(path, **arrays)
    manifest = {
        "file": "sst2.npz",
        "sha256": array_sha256(*[arrays[k] for k in ARRAY_KEYS]),
        "vocab_size": len(vocab),
        "sentences": {s: int(arrays[f"{s}_labels"].size) for s in SPLITS},
        "positive": {s: int(arrays[f"{s}_labels"].sum()) for s in SPLITS},
        "train_phrases": len(phrases),
        "selection": "SST trees, root label != 2, binary label = root >= 3, lower-cased tokens; train phrases "
                     "= non-neutral nodes of the training trees, deduplicated by text",
        "sources": {f"trees/{s}.txt": file_sha256(os.path.join(args.source, "trees", f"{s}.txt"))
                    for s in SPLITS},
    }
    with open(os.path.join(OUT, "sst2.json"), "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB): vocab {len(vocab)}, "
          + ", ".join(f"{s} {manifest['sentences'][s]}" for s in SPLITS) + f", {len(phrases)} train phrases")


if __name__ == "__main__":
    main()
