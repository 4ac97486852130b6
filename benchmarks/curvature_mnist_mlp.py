"""Scalable-curvature solvers on the mnist-mlp setting: fit/score time and agreement between solvers.

Trains a seeded MLP (784→128→10, ReLU, Adam, a few epochs) on the shipped MNIST subset (5000 train images) and
scores ``--n-test`` test images with each solver, in two settings:

- ``last-layer``: only ``fc2`` is attributed (p = 1,290), where the explicit inverse is exact and cheap; every
  solver is compared with it (for the last layer of a softmax classifier the Hessian equals the Gauss-Newton).
- ``full``: every parameter (p = 101,770); the explicit inverse is infeasible (≈ 41 GB in float32), so agreement
  is reported against EK-FAC (not ground truth);
- ``full-cg``: every parameter, against CG on the Gauss-Newton matrix (use few test points: it is slow on CPU).

Agreement = mean over test points of the Spearman rank correlation between a solver's score column and the
reference's (and the Pearson correlation of the whole score matrix). LDS rows come from ``wherefrom bench``.

    PYTHONPATH=src python benchmarks/curvature_mnist_mlp.py --n-test 100 --out benchmarks/curvature_mnist_mlp.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from scipy.stats import spearmanr
from torch import nn

import wherefrom as wf
from wherefrom.curvature import LissaSolver
from wherefrom.data import mnist_datasets


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def train_mlp(train, epochs: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, generator=gen)
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def agreement(S: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    rhos = [spearmanr(S[:, j].numpy(), ref[:, j].numpy())[0] for j in range(S.shape[1])]
    pearson = float(torch.corrcoef(torch.stack([S.flatten().double(), ref.flatten().double()]))[0, 1])
    return float(sum(rhos) / len(rhos)), pearson


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", default="last-layer,full")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip", default="", help="comma-separated method names (first word of a label) to skip")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wf.set_progress(False)
    warnings.simplefilter("ignore")
    train, test = mnist_datasets("mnist")
    test = torch.utils.data.Subset(test, range(args.n_test))
    t0 = time.perf_counter()
    model = train_mlp(train, args.epochs)
    with torch.no_grad():
        xs, ys = test.dataset.tensors
        acc = float((model(xs).argmax(1) == ys).float().mean())
    print(f"trained in {time.perf_counter() - t0:.1f}s, test accuracy {acc:.3f}", flush=True)
    rows = []

    skip = set(args.skip.split(",")) if args.skip else set()

    def run(setting, label, params, solver, reference=None, method=wf.InfluenceFunction, **kw):
        if label.split(" ")[0] in skip and reference is not None:
            return None
        task = wf.Task(model, params=params)
        t0 = time.perf_counter()
        inf = method(task, solver=solver, batch_size=500, memory_gb=0.5, progress=False, **kw).fit(train)
        t1 = time.perf_counter()
        S = inf.score(test)
        t2 = time.perf_counter()
        row = {"setting": setting, "method": label, "p": task.num_params, "fit_s": round(t1 - t0, 2),
               "score_s": round(t2 - t1, 2)}
        extra = getattr(inf.solver, "residuals_", None)
        if extra is not None:
            row["max_residual"] = float(extra.max())
        if reference is not None:
            row["spearman"], row["pearson"] = (round(v, 4) for v in agreement(S, reference))
        rows.append(row)
        print(json.dumps(row), flush=True)
        return S

    lam = 0.01
    settings = args.settings.split(",")
    if "last-layer" in settings:
        ll = ["fc2"]
        ref = run("last-layer", "if-explicit", ll, "explicit", damping=lam)
        run("last-layer", "if-cg (≤50 it.)", ll, "cg", ref, damping=lam, max_iter=50, tol=1e-6)
        # the LiSSA solver is passed as an instance
        lissa = LissaSolver(damping=lam, depth=200, hvp_batch_size=256)
        run("last-layer", "if-lissa (depth 200, b=256)", ll, lissa, ref, damping=lam)
        run("last-layer", "if-arnoldi (k=50, K=100)", ll, "arnoldi", ref, damping=lam, rank=50, iterations=100)
        run("last-layer", "if-arnoldi (k=200, K=400)", ll, "arnoldi", ref, damping=lam, rank=200, iterations=400)
        run("last-layer", "if-kfac (λ=0.01)", ll, "kfac", ref, damping=lam)
        run("last-layer", "if-ekfac (λ=0.01)", ll, "ekfac", ref, damping=lam)
        run("last-layer", "if-kfac (λ=None)", ll, "kfac", ref, damping=None)
        run("last-layer", "if-ekfac (λ=None)", ll, "ekfac", ref, damping=None)
        run("last-layer", "if-datainf (λ=None)", ll, "datainf", ref, damping=None)
        run("last-layer", "if-datainf (λ=0.01)", ll, "datainf", ref, damping=lam)
        run("last-layer", "relatif (explicit)", ll, "explicit", ref, method=wf.RelatIF, damping=lam)
    if "full" in settings:
        # No exact reference is affordable here on a shared CPU: agreement is measured against EK-FAC (λ=None),
        # the method the other rows are most often compared with (it is not ground truth; LDS comes from the bench).
        ref = run("full", "if-ekfac (λ=None, reference)", None, "ekfac", damping=None)
        run("full", "if-kfac (λ=None)", None, "kfac", ref, damping=None)
        run("full", "if-ekfac (λ=0.01)", None, "ekfac", ref, damping=lam)
        run("full", "if-arnoldi (GGN, k=50, K=100)", None, "arnoldi", ref, curvature="ggn", damping=lam, rank=50,
            iterations=100)
        run("full", "if-datainf (λ=None)", None, "datainf", ref, damping=None)
        run("full", "relatif (ekfac, λ=None)", None, "ekfac", ref, method=wf.RelatIF, damping=None)
    if "full-cg" in settings:
        # Reference: CG on the full Gauss-Newton matrix (λ = 0.01), a few test points only (slow on CPU).
        ref = run("full-cg", "if-cg (GGN, ≤30 it., reference)", None, "cg", curvature="ggn", damping=lam,
                  max_iter=30, tol=1e-3)
        run("full-cg", "if-kfac (λ=0.01)", None, "kfac", ref, damping=lam)
        run("full-cg", "if-ekfac (λ=0.01)", None, "ekfac", ref, damping=lam)
        run("full-cg", "if-kfac (λ=None)", None, "kfac", ref, damping=None)
        run("full-cg", "if-ekfac (λ=None)", None, "ekfac", ref, damping=None)
        run("full-cg", "if-arnoldi (GGN, k=50, K=100)", None, "arnoldi", ref, curvature="ggn", damping=lam, rank=50,
            iterations=100)
        run("full-cg", "if-datainf (λ=None)", None, "datainf", ref, damping=None)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"n_test": args.n_test, "epochs": args.epochs, "test_accuracy": acc, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
