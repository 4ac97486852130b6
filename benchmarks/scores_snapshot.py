"""Snapshot the scores of every registered method on small models, and compare two snapshots.

A refactor (or a speed-up) must not change what the methods compute. Run this script against the code before and
after the change and compare:

    PYTHONPATH=<old>/src python benchmarks/scores_snapshot.py save before.pt
    PYTHONPATH=src       python benchmarks/scores_snapshot.py save after.pt
    python benchmarks/scores_snapshot.py compare before.pt after.pt

Problems: a float64 MLP (6→8→4) and a linear model, each with weight decay 0 and 0.05, 40/30 training and 7/5 test
points; every registered method with small options (TRAK over 3 models, TracIn over 2 checkpoints). The comparison
prints the largest relative difference (``max|a−b| / max|a|``) of the scores and self-influences of each method.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import wherefrom as wf
from wherefrom.registry import MethodContext, make_method, method_names

OPTIONS = {"if-lissa": {"depth": 50}, "if-arnoldi": {"rank": 10, "iterations": 30}, "rps": {"max_iter": 100},
           "logra": {"rank": 3}, "logra-kfac": {"rank": 3},
           **{n: {"proj_dim": 8} for n in ("trak", "trak-1", "tracin-proj", "grad-dot-proj", "if-proj")}}


def _problem(kind: str):
    torch.manual_seed(0)
    if kind == "mlp":
        def make():
            return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()
        n, m, d, c = 40, 7, 6, 4
    else:
        def make():
            return nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double()
        n, m, d, c = 30, 5, 12, 3
    model = make()
    train = (torch.randn(n, d, dtype=torch.float64), torch.randint(0, c, (n,)))
    test = (torch.randn(m, d, dtype=torch.float64), torch.randint(0, c, (m,)))
    ensemble = []
    for s in range(3):
        torch.manual_seed(10 + s)
        ensemble.append({k: v.detach().clone() for k, v in make().state_dict().items()})
    return model, ensemble, train, test


def snapshot() -> dict:
    wf.set_progress(False)
    torch.set_num_threads(1)
    out: dict = {}
    for kind in ("mlp", "lr"):
        model, ensemble, train, test = _problem(kind)
        for wd in (0.0, 0.05):
            task = wf.Task(model, weight_decay=wd)
            for name in method_names():
                if name in ("trak-10", "trak-50"):
                    continue
                ctx = MethodContext(task, trajectory=ensemble[:2], learning_rates=[0.1, 0.2], ensemble=ensemble,
                                    options=dict(OPTIONS.get(name, {})), seed=1)
                key = f"{kind}/wd={wd}/{name}"
                try:
                    method = make_method(name, ctx).fit(train)
                    scores = method.score(test)
                    try:
                        self_inf = method.self_influence()
                    except wf.WherefromError:
                        self_inf = None
                    out[key] = (scores, self_inf)
                except Exception as exc:  # an error is part of the behaviour being compared
                    out[key] = f"{type(exc).__name__}: {exc}"
    return out


def compare(a: dict, b: dict) -> None:
    rows = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, str) or isinstance(y, str) or x is None or y is None:
            same = isinstance(x, str) and isinstance(y, str)
            print(f"{key}: {'both raise' if same else 'DIFFERENT OUTCOME'}")
            continue
        for what, u, v in (("scores", x[0], y[0]), ("self", x[1], y[1])):
            if u is None or v is None:
                if (u is None) != (v is None):
                    print(f"{key} {what}: present in one snapshot only")
                continue
            rows.append((float((u - v).abs().max() / u.abs().max().clamp_min(1e-300)), key, what))
    rows.sort(reverse=True)
    for err, key, what in rows[:10]:
        print(f"{err:.2e}  {key} {what}")
    print(f"compared {len(rows)} tensors; largest relative difference {rows[0][0]:.2e}" if rows else "nothing compared")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("save").add_argument("path")
    cmp = sub.add_parser("compare")
    cmp.add_argument("before")
    cmp.add_argument("after")
    args = parser.parse_args()
    if args.command == "save":
        torch.save(snapshot(), args.path)
    else:
        compare(torch.load(args.before, weights_only=True), torch.load(args.after, weights_only=True))


if __name__ == "__main__":
    main()
