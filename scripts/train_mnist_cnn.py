#!/usr/bin/env python
"""Train the shipped MNIST CNN on the shipped MNIST subset (5000 training images) and write float16 weights.

    python scripts/train_mnist_cnn.py           # well under a minute on 2 CPU cores

Adam, 15 epochs; the float16-rounded model's accuracy on the 500 shipped test images is recorded in
``src/wherefrom/_datafiles/models.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, HERE)

from train_sst_lstm import OUT, update_manifest  # noqa: E402

from wherefrom.data import mnist_datasets  # noqa: E402
from wherefrom.features.models import MNISTCNN, load_model, save_model  # noqa: E402


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train, test = mnist_datasets("mnist", flatten=False)
    (x, y), (xt, yt) = train.tensors, test.tensors
    model = MNISTCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch}: test accuracy {accuracy(model, xt, yt):.4f}", flush=True)
    rounded = MNISTCNN()
    rounded.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    test_acc = accuracy(rounded, xt, yt)
    print(f"float16 weights: test accuracy {test_acc:.4f} on the 500 shipped test images")
    if args.no_save:
        return
    entry = save_model(rounded, "mnist-cnn", os.path.join(OUT, "mnist_cnn.safetensors"), {
        "config": {}, "test_accuracy": round(test_acc, 4),
        "evaluated_on": "the 500 shipped MNIST test images (first 500 of t10k)",
        "command": "python scripts/train_mnist_cnn.py", "seed": args.seed, "epochs": args.epochs})
    update_manifest("mnist-cnn", entry)
    assert abs(accuracy(load_model("mnist-cnn"), xt, yt) - test_acc) < 1e-9
    print("wrote", entry["file"], entry["sha256"])


if __name__ == "__main__":
    main()
