"""Time the explicit and CG influence solvers on a benchmark setting (default MNIST-LR 5000/500), fit and score apart.

The reference model is trained (or loaded) through ``wherefrom.bench``'s cached workspace; each measurement runs in
this process with one intra-op thread. Run it against two code trees to compare them, e.g.::

    PYTHONPATH=/path/to/old/src python benchmarks/curvature_speed.py --json old.json
    PYTHONPATH=src              python benchmarks/curvature_speed.py --json new.json

Columns: solver, fit seconds, score seconds (wall and CPU), CG iterations and largest final relative residual, and
for CG the CPU seconds of one batched curvature product with as many columns as test points against one CG
iteration (``iteration_over_product``: the CG bookkeeping on top of the product).
Options: ``--setting``, ``--solvers explicit,cg``, ``--tol`` (CG, default 1e-6), ``--max-iter``, ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import wherefrom as wf
from wherefrom.bench.groundtruth import Workspace
from wherefrom.bench.settings import get_setting


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def _iteration_cost(cg, m: int, iterations: int = 20, repeats: int = 5) -> dict:
    """CPU seconds of one batched curvature product with ``m`` columns and of one CG iteration (``iterations`` run
    with ``tol=0``, so the set-up of a solve is spread over them), after the scoring run (same product form), and
    their ratio. Each is the median over ``repeats`` timings."""
    objective = cg._require_fit()
    V = torch.randn(m, objective.p, generator=torch.Generator().manual_seed(0)).to(objective.dtype)
    objective.hvp(V)  # warm
    product_c = statistics.median(_timed(lambda: objective.hvp(V))[2] for _ in range(repeats))
    tol, max_iter = cg.tol, cg.max_iter
    cg.tol, cg.max_iter = 0.0, iterations
    try:
        solve_c = statistics.median(_timed(lambda: cg.solve(V))[2] for _ in range(repeats))
    finally:
        cg.tol, cg.max_iter = tol, max_iter
    per_iter = solve_c / max(1, cg.iterations_)
    return {"product_cpu_s": product_c, "iteration_cpu_s": per_iter, "iteration_over_product": per_iter / product_c}


def run(setting: str, solvers: list[str], tol: float, max_iter: int, repeats: int) -> list[dict]:
    torch.set_num_threads(1)
    wf.set_progress(False)
    s = get_setting(setting)
    ws = Workspace(s, progress=False)
    train, test = ws.datasets()
    ref = ws.reference()
    model = s.make_model()
    model.load_state_dict(ref.state)
    task = wf.Task(model, weight_decay=s.recipe.weight_decay)
    rows = []
    for solver in solvers:
        for rep in range(repeats):
            opts = {"damping": 0.0}
            if solver == "cg":
                opts.update(tol=tol, max_iter=max_iter)
            method = wf.InfluenceFunction(task, solver=solver, **opts)
            _, fit_w, fit_c = _timed(lambda m=method: m.fit(train))
            scores, score_w, score_c = _timed(lambda m=method: m.score(test))
            row = {"solver": solver, "repeat": rep, "fit_s": fit_w, "fit_cpu_s": fit_c, "score_s": score_w,
                   "score_cpu_s": score_c, "scores_abs_sum": float(scores.abs().sum())}
            pre = method.preconditioner
            if solver == "cg":
                row["iterations"] = int(pre.iterations_)
                row["max_residual"] = float(pre.residuals_.max())
                row.update(_iteration_cost(pre, len(test)))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="mnist-lr")
    ap.add_argument("--solvers", default="explicit,cg")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--max-iter", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = run(a.setting, a.solvers.split(","), a.tol, a.max_iter, a.repeats)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
