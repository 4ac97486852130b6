#!/usr/bin/env python
"""HYDRA on MNIST: record your own training loop, then attribute test predictions to training examples.

    python examples/hydra_mnist.py                      # 2000 train / 50 test, ~1 minute on one CPU core
    python examples/hydra_mnist.py --n-train 500 --n-test 10 --epochs 1

1. Train a small MLP with SGD (momentum, weight decay, a learning-rate schedule) in an ordinary loop, calling
   ``recorder.record(indices)`` before every ``optimizer.step()``; the run goes to a zarr store on disk.
2. Reopen it with ``wf.Trajectory.load`` and score every training example for every test point, exactly
   (``hessian=True``, reverse engine) and with the Hessian-free approximation.
3. Check one prediction against reality: retrain the same run (same initialisation, batch order and schedule) with
   the most helpful training example's loss weight set to 0 and compare the change of the test loss with the score.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

import wherefrom as wf
from wherefrom.data import mnist_datasets


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Tanh(), nn.Linear(32, 10)).double()


def train(train_set, epochs: int, weights: torch.Tensor | None = None, path: str | None = None):
    """SGD over a fixed, seeded batch order; ``weights`` scales each example's loss (1 = the recorded run)."""
    X, y = train_set.tensors
    n = len(y)
    w = torch.ones(n, dtype=X.dtype) if weights is None else weights
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.7)
    recorder = wf.TrajectoryRecorder(model, opt, path=path) if path is not None else None
    order = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        for s in range(0, n, 64):
            b = perm[s:s + 64]  # the last batch is ragged: fine
            opt.zero_grad()
            ((w[b] * F.cross_entropy(model(X[b]), y[b], reduction="none")).sum() / len(b)).backward()
            if recorder is not None:
                recorder.record(b)  # the training-set indices of this mini-batch
            opt.step()
            sched.step()
    if recorder is not None:
        recorder.close()
    return model.eval()


def main(n_train: int = 2000, n_test: int = 50, epochs: int = 2, folder: str | None = None) -> dict:
    wf.set_progress(False)
    train_set, test_set = mnist_datasets("mnist", n_train=n_train, n_test=n_test, dtype=torch.float64)
    folder = folder or tempfile.mkdtemp(prefix="hydra-")
    path = os.path.join(folder, "run.zarr")
    model = train(train_set, epochs, path=path)
    trajectory = wf.Trajectory.load(path)
    print(trajectory)

    task = wf.Task(model)  # loss = cross-entropy per example; the explained target = the test loss
    exact = wf.HYDRA(task, trajectory, hessian=True).fit(train_set)  # engine="auto" → reverse: all examples
    scores = exact.score(test_set)  # [n_train, n_test], positive = helpful
    approx = wf.HYDRA(task, trajectory, hessian=False).fit(train_set).score(test_set)
    top = exact.top_k(test_set, k=3)
    j = 0
    print(f"test point {j}: most helpful training examples {top.helpful_indices[j].tolist()}, "
          f"most harmful {top.harmful_indices[j].tolist()}")
    agree = torch.corrcoef(torch.stack([scores.flatten(), approx.flatten()]))[0, 1]
    print(f"exact vs approximate HYDRA: Pearson {float(agree):.3f} over all scores")

    # Reality check: remove the most helpful example from the same run and retrain.
    i = int(top.helpful_indices[j, 0])
    w = torch.ones(n_train, dtype=torch.float64)
    w[i] = 0.0
    X, y = test_set.tensors
    retrained = train(train_set, epochs, weights=w)
    with torch.no_grad():
        before = F.cross_entropy(model(X[j:j + 1]), y[j:j + 1])
        after = F.cross_entropy(retrained(X[j:j + 1]), y[j:j + 1])
    print(f"removing example {i}: predicted test-loss change {float(scores[i, j]):+.3e}, "
          f"actual {float(after - before):+.3e}")
    return {"scores": scores, "approx": approx, "predicted": float(scores[i, j]), "actual": float(after - before)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--folder", default=None, help="where to keep the recorded run (default: a temporary folder)")
    args = ap.parse_args()
    main(args.n_train, args.n_test, args.epochs, args.folder)
