#!/usr/bin/env python
"""How linear is a recorded run in its example weights? HYDRA (the exact derivative) against finite differences.

    python benchmarks/hydra_linearity.py mnist-mlp-sgd --examples 4 --tests 10
    python benchmarks/hydra_linearity.py mnist-mlp-sgd --set lr=0.05 --set weight_decay=5e-4

Retrains the setting's run (same initialisation, batch order, schedule) with the weight of each of the first
``--examples`` training examples set to ``1 − δ``, for several ``δ``, and compares the change of the first ``--tests``
test losses divided by ``δ`` with exact HYDRA. As ``δ → 0`` the ratio must converge to HYDRA (a check of the
derivative at full scale); at ``δ = 1`` (removal) the relative error says how far the run is from linear in the
example weights, which bounds what any first-order attribution method can reach on the setting.
"""

from __future__ import annotations

import argparse

import torch

import wherefrom as wf
from wherefrom.bench import Workspace, get_setting, weighted


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("setting")
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--tests", type=int, default=10)
    ap.add_argument("--deltas", default="1e-6,1e-4,1e-2,1")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--set", action="append", default=[], help="recipe override key=value (e.g. lr=0.05)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    wf.set_progress(False)
    over = {k: float(v) for k, v in (item.split("=", 1) for item in args.set)}
    s = get_setting(args.setting, **over)
    ws = Workspace(s, cache_dir=args.cache_dir, workers=1, progress=False)
    ref, traj = ws.reference(), ws.recorded_trajectory()
    train, test = ws.datasets()
    test_k = torch.utils.data.TensorDataset(*(t[:args.tests] for t in test.tensors))
    n, k = len(train), args.examples
    S = wf.HYDRA(s.make_task(ref.state), traj, targets_per_pass=args.tests).fit(train).score(test_k)[:k]
    print(f"{args.setting}: HYDRA |scores| = {float(S.norm()):.3e} over {k} examples x {args.tests} test points")
    for delta in (float(d) for d in args.deltas.split(",")):
        W = torch.ones(k + 1, n, dtype=torch.float64)
        W[torch.arange(1, k + 1), torch.arange(k)] = 1.0 - delta
        out = weighted.weighted_outputs(s, train, test_k, W)
        fd = (out.loss[1:] - out.loss[0]) / delta  # [k, tests]: loss change per unit of removed weight
        rel = float((S - fd).norm() / fd.norm())
        corr = float(torch.corrcoef(torch.stack([S.flatten(), fd.flatten()]))[0, 1])
        print(f"  delta {delta:g}: |finite difference| = {float(fd.norm()):.3e}, relative error of HYDRA {rel:.2e}, "
              f"Pearson {corr:.3f}", flush=True)


if __name__ == "__main__":
    main()
