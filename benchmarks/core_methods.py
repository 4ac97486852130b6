#!/usr/bin/env python
"""Wall time and peak memory of fit + score for each core method on MNIST logistic regression (5000 / 500).

    python benchmarks/core_methods.py                  # all methods, 5000 train / 500 test
    python benchmarks/core_methods.py --methods if-cg,grad-dot --n-train 1000

The model is ``nn.Linear(784, 10)`` trained with dattri's MNIST-LR recipe (SGD, lr 0.01, batch 32, 20 epochs,
seed 0) plus weight decay 1e-3; TracInCP uses 5 checkpoints saved along that run (one every 4 epochs). Each method
runs in a fresh process so that its peak resident memory (``ru_maxrss``, minus the process's memory before the
method started) is its own. This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time

import torch
from torch import nn

import wherefrom as wf
from wherefrom.curvature import NystromSolver
from wherefrom.data import mnist_datasets

METHODS = ["if-explicit", "if-cg", "if-cg-nystrom", "if-lissa", "tracin", "grad-dot", "grad-cos"]
NYSTROM_RANK = 400  # the sketch of the Nyström preconditioner of "if-cg-nystrom"
WD = 1e-3


def train_lr(train, epochs: int = 20, lr: float = 0.01, batch: int = 32, seed: int = 0, n_checkpoints: int = 5):
    """dattri's MNIST-LR recipe (+ weight decay); returns the model and checkpoints along the run."""
    torch.manual_seed(seed)
    model = nn.Linear(784, 10)
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=WD)
    loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    every = max(1, epochs // n_checkpoints)
    checkpoints = []
    for epoch in range(epochs):
        for X, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            opt.step()
        if (epoch + 1) % every == 0:
            checkpoints.append({k: v.clone() for k, v in model.state_dict().items()})
    return model, checkpoints[-n_checkpoints:], lr


def build(method: str, model, checkpoints, lr, cg_max_iter: int = 100):
    task = wf.Task(model, weight_decay=WD)
    if method == "if-explicit":
        return wf.InfluenceFunction(task, solver="explicit", damping=1e-3)
    if method == "if-cg":
        return wf.InfluenceFunction(task, solver="cg", damping=1e-3, max_iter=cg_max_iter, tol=1e-6)
    if method == "if-cg-nystrom":
        pre = NystromSolver(damping=1e-3, rank=NYSTROM_RANK)
        return wf.InfluenceFunction(task, solver="cg", damping=1e-3, max_iter=cg_max_iter, tol=1e-6, preconditioner=pre)
    if method == "if-lissa":
        return wf.InfluenceFunction(task, solver="lissa", damping=1e-3, depth=200, hvp_batch_size=500)
    if method == "tracin":
        return wf.TracInCP(task, checkpoints=checkpoints, learning_rates=lr)
    if method == "grad-dot":
        return wf.GradDot(task)
    if method == "grad-cos":
        return wf.GradCos(task)
    raise SystemExit(f"unknown method {method!r}; choose from {METHODS}")


def _run(method, n_train, n_test, threads, cg_max_iter, queue):
    torch.set_num_threads(threads)
    wf.set_progress(False)
    train, test = mnist_datasets("mnist", n_train=n_train, n_test=n_test)
    model, checkpoints, lr = train_lr(train)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    attributor = build(method, model, checkpoints, lr, cg_max_iter)
    t0 = time.perf_counter()
    attributor.fit(train)
    t1 = time.perf_counter()
    attributor.score(test)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    note = ""
    solver = getattr(attributor, "solver", None)
    if getattr(solver, "residuals_", None) is not None and hasattr(solver, "iterations_"):
        note = f"{solver.iterations_} iterations, max relative residual {float(solver.residuals_.max()):.2g}"
    queue.put((method, t1 - t0, t2 - t1, peak - base, note))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cg-max-iter", type=int, default=100, help="CG iteration cap (tol 1e-6)")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for method in args.methods.split(","):
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(method, args.n_train, args.n_test, args.threads, args.cg_max_iter, queue))
        proc.start()
        while proc.is_alive() or not queue.empty():
            try:
                rows.append(queue.get(timeout=5))
                break
            except Exception:  # queue.Empty: still running (or crashed: the loop ends with the process)
                continue
        proc.join()
        if len(rows) and rows[-1][0] == method:
            print(f"done {method}: {rows[-1][1:4]}", file=sys.stderr, flush=True)
        else:
            print(f"{method} failed (exit code {proc.exitcode})", file=sys.stderr, flush=True)
    print(f"MNIST-LR {args.n_train} train / {args.n_test} test, {args.threads} threads, torch {torch.__version__}")
    print(f"| {'method':<12} | {'fit s':>8} | {'score s':>8} | {'total s':>8} | {'peak MB':>8} | note |")
    print(f"|{'-' * 14}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|---|")
    for method, fit_s, score_s, peak, note in rows:
        print(f"| {method:<12} | {fit_s:8.2f} | {score_s:8.2f} | {fit_s + score_s:8.2f} | {peak:8.0f} | {note} |")


if __name__ == "__main__":
    main()
