#!/usr/bin/env python
"""ACD hierarchy of the shipped MNIST CNN on one test image: the paper's image rows (Fig. 3) as a PNG.

    python examples/acd_mnist_image.py [--index 0] [--out docs/features/acd_mnist.png]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import wherefrom as wf
from wherefrom.data import mnist_datasets
from wherefrom.features.models import load_mnist_cnn

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=int, default=0, help="index among the 500 shipped test images")
    parser.add_argument("--method", default="cd", choices=["cd", "occlusion", "build-up"])
    parser.add_argument("--num-iters", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(HERE, "..", "docs", "features", "acd_mnist.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    wf.set_progress(False)

    model = load_mnist_cnn()
    images, labels = mnist_datasets("mnist", flatten=False)[1].tensors
    x, label = images[args.index:args.index + 1], int(labels[args.index])
    start = time.perf_counter()
    h = wf.features.acd(model, x, method=args.method, num_iters=args.num_iters)
    seconds = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    h.plot(args.out, title=f"ACD ({args.method}) of the MNIST CNN on test image {args.index} "
                           f"(label {label}, predicted {h.target})")
    print(f"label {label}, predicted {h.target}; {len(h.grow_levels)} iterations + "
          f"{len(h.levels) - len(h.grow_levels)} merges in {seconds:.2f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
