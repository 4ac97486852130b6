#!/usr/bin/env python
"""Build the compact data subsets shipped in the package from the original IDX files.

    python scripts/build_datasets.py --source ../shared/data

For MNIST and Fashion-MNIST it takes the first 5000 training and the first 500 test images (uint8), writes them
compressed to ``src/wherefrom/_datafiles/<name>_5000_500.npz`` and records in ``datasets.json`` the sha256 of the
arrays and of the source files. Running it twice gives the same array checksums.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from wherefrom.data.idx import load_idx_dataset  # noqa: E402
from wherefrom.data.shipped import array_sha256  # noqa: E402

OUT = os.path.join(HERE, "..", "src", "wherefrom", "_datafiles")
SETS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist"}
N_TRAIN, N_TEST = 5000, 500


def file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=os.path.join(HERE, "..", "..", "shared", "data"),
                        help="folder holding mnist/ and fashion-mnist/ with the original .gz files")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    manifest = {}
    for name, folder in SETS.items():
        root = os.path.join(args.source, folder)
        xtr, ytr = load_idx_dataset(root, "train")
        xte, yte = load_idx_dataset(root, "test")
        arrays = {"train_images": xtr[:N_TRAIN], "train_labels": ytr[:N_TRAIN],
                  "test_images": xte[:N_TEST], "test_labels": yte[:N_TEST]}
        fname = f"{name}_{N_TRAIN}_{N_TEST}.npz"
        np.savez_compressed(os.path.join(OUT, fname), **arrays)
        sources = sorted(f for f in os.listdir(root) if f.endswith(".gz"))
        manifest[name] = {
            "file": fname,
            "sha256": array_sha256(*arrays.values()),
            "n_train": N_TRAIN, "n_test": N_TEST,
            "selection": "first 5000 training and first 500 test images, original order",
            "sources": {f: file_sha256(os.path.join(root, f)) for f in sources},
        }
        print(f"{name}: wrote {fname} ({os.path.getsize(os.path.join(OUT, fname)) / 1e6:.2f} MB)")
    with open(os.path.join(OUT, "datasets.json"), "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")


if __name__ == "__main__":
    main()
