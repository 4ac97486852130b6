"""A small, self-contained LDS sanity check of the projection family on an MNIST MLP (CPU, minutes).

Not the official benchmark (``wherefrom bench mnist-mlp`` uses 5000/500 examples and its own ground truth); this
checks signs and orders of magnitude on a reduced setting:

- data: the first ``n`` shipped MNIST training images and the first ``m`` test images;
- model/recipe: dattri's MNIST MLP (784-128-64-10, dropout 0.1), SGD lr 0.01, momentum 0.9, batch 64, ``epochs``;
- LDS ground truth: ``S`` random subsets of half the training set, one model each, target ``−CE`` on test points;
  ``LDS_j = Spearman(Σ_{i∈S_s} τ[i, j], y[s, j])`` averaged over test points;
- TRAK ensembles: separate models trained on other random halves (as dattri's ``models_half``).

``--part noisy`` instead flips the labels of 10% of the training set (seeded), trains on the corrupted data and
reports the ROC-AUC of each method's self-influence for finding the flipped examples (higher = more suspicious).

Run: ``PYTHONPATH=src python benchmarks/projection_lds_sanity.py [--n 1000 --m 100 --subsets 50 --models 10]``
and ``... --part noisy``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

import wherefrom as wf


def mnist_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 64), nn.ReLU(),
                         nn.Dropout(0.1), nn.Linear(64, 10))


def train_model(X, y, idx, seed, epochs):
    torch.manual_seed(seed)
    model = mnist_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = idx[torch.randperm(len(idx), generator=g)]
        for s in range(0, len(perm), 64):
            b = perm[s:s + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[b]), y[b]).backward()
            opt.step()
    model.eval()
    return model


def lds(scores: torch.Tensor, subsets: list[torch.Tensor], truth: torch.Tensor) -> tuple[float, int]:
    pred = torch.stack([scores[s].sum(0) for s in subsets]).numpy()  # [S, m]
    vals = [spearmanr(pred[:, j], truth[:, j].numpy())[0] for j in range(truth.shape[1])]
    vals = np.array(vals, dtype=float)
    return float(np.nanmean(vals)), int(np.isnan(vals).sum())


def noisy(args, train) -> None:
    from sklearn.metrics import roc_auc_score

    X, y = train.tensors
    n = len(y)
    rng = np.random.default_rng(0)
    flipped = np.sort(rng.choice(n, n // 10, replace=False))
    y_noisy = y.clone()
    y_noisy[flipped] = torch.from_numpy((y[flipped].numpy() + rng.integers(1, 10, len(flipped))) % 10)
    is_flipped = np.zeros(n, dtype=bool)
    is_flipped[flipped] = True
    noisy_train = (X, y_noisy)
    halves = [torch.from_numpy(np.sort(rng.choice(n, n // 2, replace=False))) for _ in range(args.models)]
    ensemble = [train_model(X, y_noisy, idx, 5000 + s, args.epochs).state_dict() for s, idx in enumerate(halves)]
    full = train_model(X, y_noisy, torch.arange(n), 0, args.epochs)
    task = wf.Task(full)
    methods = {
        f"trak-{args.models} (self-influence)": lambda: wf.TRAK(task, proj_dim=512, checkpoints=ensemble),
        "logra (rank 16, raw)": lambda: wf.LoGra(task, rank=16),
        "if-proj (fisher, 512)": lambda: wf.ProjectedInfluence(task, proj_dim=512, damping=0.01),
        "grad-dot-proj (512)": lambda: wf.GradDot(task, projection=wf.RandomProjection(512, "rademacher")),
        "rps (l2=0.003, true labels)": lambda: wf.RepresenterPoints(task, l2=0.003, labels="true"),
    }
    print(f"| method | noisy-label AUC (n={n}, 10% flipped) | time |")
    print("|---|---|---|")
    for name, make in methods.items():
        t = time.time()
        si = make().fit(noisy_train).self_influence().double().cpu().numpy()
        print(f"| {name} | {roc_auc_score(is_flipped, si):.3f} | {time.time() - t:.1f}s |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--m", type=int, default=100)
    ap.add_argument("--subsets", type=int, default=50)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part", choices=["lds", "noisy"], default="lds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wf.set_progress(False)
    train, test = wf.data.mnist_datasets(n_train=args.n, n_test=args.m)
    if args.part == "noisy":
        noisy(args, train)
        return
    X, y = train.tensors
    Xt, yt = test.tensors
    n = args.n
    t0 = time.time()
    rng = np.random.default_rng(0)
    subsets = [torch.from_numpy(np.sort(rng.choice(n, n // 2, replace=False))) for _ in range(args.subsets)]
    truth = []
    for s, idx in enumerate(subsets):
        model = train_model(X, y, idx, 1000 + s, args.epochs)
        with torch.no_grad():
            truth.append(-nn.functional.cross_entropy(model(Xt), yt, reduction="none"))
    truth = torch.stack(truth)
    halves = [torch.from_numpy(np.sort(rng.choice(n, n // 2, replace=False))) for _ in range(args.models)]
    ensemble = [train_model(X, y, idx, 5000 + s, args.epochs).state_dict() for s, idx in enumerate(halves)]
    full = train_model(X, y, torch.arange(n), 0, args.epochs)
    print(f"trained {args.subsets + args.models + 1} models in {time.time() - t0:.0f}s")

    task = wf.Task(full)
    methods = {f"trak-{M}": lambda M=M: wf.TRAK(task, proj_dim=512, checkpoints=ensemble[:M])
               for M in sorted({1, min(5, args.models), args.models})}
    methods.update({
        "logra (rank 16, raw)": lambda: wf.LoGra(task, rank=16),
        "logra (rank 16, kfac)": lambda: wf.LoGra(task, rank=16, preconditioner="kfac"),
        "if-proj (fisher, 512)": lambda: wf.ProjectedInfluence(task, proj_dim=512, damping=0.01),
        "grad-dot-proj (512)": lambda: wf.GradDot(task, projection=wf.RandomProjection(512, "rademacher")),
        "rps (l2=0.003)": lambda: wf.RepresenterPoints(task, l2=0.003),
        "knn-shapley (k=10)": lambda: wf.KNNShapley(
            wf.methods.representer.last_layer_features_fn(task), k=10),
    })
    print(f"| method | LDS (n={n}, m={args.m}, {args.subsets} subsets) | NaN cols | time |")
    print("|---|---|---|---|")
    for name, make in methods.items():
        t = time.time()
        scores = make().fit(train).score(test).double().cpu()
        el = time.time() - t
        val, nans = lds(scores, subsets, truth)
        print(f"| {name} | {val:.3f} | {nans} | {el:.1f}s |", flush=True)


if __name__ == "__main__":
    main()
