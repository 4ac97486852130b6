#!/usr/bin/env python
"""Time ``wherefrom attribute`` (first run, and a rerun that reuses the saved results) and the report rendering.

    PYTHONPATH=src python benchmarks/report_timing.py --out /tmp/report-timing   # 5000 train, 20 test × top-10
    PYTHONPATH=src python benchmarks/report_timing.py --n-train 1000 --method grad-dot --out /tmp/rt

A small CNN (conv 1→8 5×5, pool, conv 8→16 5×5, pool, linear 256→10; 5,994 parameters) is trained on the shipped
MNIST subset (Adam, 5 epochs, seed 0) and written with a spec next to it; then, each in a fresh process,
``wherefrom attribute`` runs twice on the same --out (the second finds the saved results), and
``wherefrom report`` re-renders. The render itself is also timed in-process (median of 5, after one warm-up).
Numbers depend on the machine and its load: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import textwrap
import time

SPEC = '''
import torch
import torch.nn.functional as F
from torch import nn
from wherefrom.data import mnist_datasets
from wherefrom.data.shipped import NORMALISATION
from wherefrom.report import Spec

N_TRAIN = {n_train}


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 5), nn.Conv2d(8, 16, 5)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def train_model(path):
    torch.manual_seed(0)
    model, (train, _) = SmallCNN(), mnist_datasets("mnist", flatten=False, n_train=N_TRAIN)
    X, y = train.tensors
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(5):
        perm = torch.randperm(len(X))
        for b in range(0, len(X), 64):
            idx = perm[b:b + 64]
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    torch.save(model.state_dict(), path)


def spec():
    train, test = mnist_datasets("mnist", flatten=False, n_train=N_TRAIN)
    model = SmallCNN()
    model.load_state_dict(torch.load({checkpoint!r}, weights_only=True))
    mean, std = NORMALISATION["mnist"]
    return Spec(model=model.eval(), train=train, test=test, name="MNIST small CNN",
                denormalize=lambda x: x * std + mean, class_names=[str(d) for d in range(10)])
'''


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--method", default="ekfac")
    ap.add_argument("--test", default="0:20")
    ap.add_argument("--top-k", default="10")
    args = ap.parse_args()
    folder = pathlib.Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.py"
    spec.write_text(textwrap.dedent(SPEC.format(n_train=args.n_train, checkpoint=str(folder / "cnn.pt"))))
    env = dict(os.environ, WHEREFROM_PROGRESS="0", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(spec)!r})['train_model']"
                    f"({str(folder / 'cnn.pt')!r})"], check=True, env=env)
    results = folder / "results"
    cmd = [sys.executable, "-m", "wherefrom", "attribute", str(spec), "--method", args.method, "--test", args.test,
           "--top-k", args.top_k, "--out", str(results), "--quiet", "--refit"]
    first = timed(cmd, env)
    rerun = timed(cmd[:-1], env)
    report_cli = timed([sys.executable, "-m", "wherefrom", "report", str(results)], env)
    noop = timed([sys.executable, "-c", "import wherefrom.cli"], env)

    from wherefrom.report.render import render_report

    render_report(results)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        path = render_report(results)
        times.append(time.perf_counter() - t)
    print(f"n_train={args.n_train} method={args.method} test={args.test} top-k={args.top_k}")
    print(f"wherefrom attribute, first run (fit + score + render): {first:8.1f} s")
    print(f"wherefrom attribute, rerun (reuses saved results):      {rerun:8.1f} s")
    print(f"wherefrom report (re-render, whole process):            {report_cli:8.1f} s")
    print(f"python -c 'import wherefrom.cli' (start-up alone):     {noop:8.1f} s")
    print(f"render_report in-process, median of 5:                  {statistics.median(times):8.2f} s")
    print(f"report.html size:                                       {path.stat().st_size / 1e6:8.2f} MB")


if __name__ == "__main__":
    main()
