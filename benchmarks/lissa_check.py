"""LiSSA on the bench settings: cost of one mini-batch curvature product (structured samples against autodiff) and
the relative residual of the default solve.

Usage::

    PYTHONPATH=src python benchmarks/lissa_check.py                      # digits-lr
    PYTHONPATH=src python benchmarks/lissa_check.py --settings digits-lr,mnist-lr --n-test 500

For each setting: the trained reference model (wherefrom.bench's cache), the setting's ``if-lissa`` options, one
thread. Prints the CPU milliseconds of one mini-batch product (256 examples) with 1 and ``n_test`` vectors by both
routes (and their largest difference), then fits LiSSA with its defaults, solves for the first ``n_test`` test
points and prints the CPU seconds, the largest and median relative residual ``‖v − (H+λI)x‖/‖v‖`` and any warning.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import wherefrom as wf
from wherefrom.bench.groundtruth import Workspace
from wherefrom.curvature.objective import TrainingObjective
from wherefrom.data.loaders import as_loader


def product_costs(task: wf.Task, train, curvature: str, m: int) -> None:
    loader = as_loader(train, 256)
    fast = TrainingObjective(task, loader, task.state(None), curvature=curvature)
    slow = TrainingObjective(task, loader, task.state(None), curvature=curvature, structured=False)
    if fast.structured_operator() is None:
        print("  no structured samples for this model and curvature: autodiff products only")
        return
    idx = torch.randperm(fast.n, generator=torch.Generator().manual_seed(0))[:256]
    for k in (1, m):
        V = torch.randn(k, task.num_params, dtype=fast.dtype)
        times = {}
        for name, obj in (("structured", fast), ("autodiff", slow)):
            out = obj.minibatch_hvp(V, idx)
            reps = 20 if k == 1 else 3
            t0 = time.process_time()
            for _ in range(reps):
                obj.minibatch_hvp(V, idx)
            times[name] = ((time.process_time() - t0) / reps * 1e3, out)
        diff = float((times["structured"][1] - times["autodiff"][1]).abs().max())
        print(f"  {k} vectors: structured {times['structured'][0]:.2f} ms, autodiff {times['autodiff'][0]:.2f} ms "
              f"CPU per mini-batch product (max difference {diff:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="digits-lr")
    parser.add_argument("--n-test", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    wf.set_progress(False)
    for name in args.settings.split(","):
        ws = Workspace(name)
        opts = dict(ws.setting.method_options.get("if-lissa", {}))
        task = ws.setting.make_task(ws.reference().state)
        train, test = ws.setting.datasets()
        Xt, yt = test.tensors
        m = min(args.n_test, len(Xt))
        print(f"{name}: if-lissa options {opts}, {task.num_params} parameters, {len(train)} train, {m} test")
        product_costs(task, train, opts.get("curvature", "hessian"), m)
        method = wf.InfluenceFunction(task, solver="lissa", **opts)
        t0 = time.process_time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            method.fit(train).score((Xt[:m], yt[:m]))
        r = method.solver.residuals_
        notes = [str(w.message) for w in caught if "LiSSA" in str(w.message)]
        print(f"  LiSSA defaults: {time.process_time() - t0:.1f} CPU s, residual max {float(r.max()):.3g}, "
              f"median {float(r.median()):.3g}" + (f"; warning: {notes[0]}" if notes else ""))


if __name__ == "__main__":
    main()
