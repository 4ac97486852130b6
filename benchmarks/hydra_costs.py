#!/usr/bin/env python
"""Cost of HYDRA's engines as a ratio to one training run of the same recipe, measured in the same process, and
their peak memory against ``n_train``, ``n_track`` / targets and ``p``.

    python benchmarks/hydra_costs.py costs mnist-mlp-sgd --targets 128 --track 32
    python benchmarks/hydra_costs.py memory

``costs`` uses the setting's cached reference run and its recorded trajectory (``wherefrom bench`` builds them,
or this script does on first use) and times, with one torch thread:

- one training run of the recipe (median of 3; also with the recorder attached, in memory);
- the gradient check of ``fit`` (one batch gradient per recorded step);
- the reverse engine (exact) for 1 target and for ``--targets`` targets in one pass: seconds per target;
- the forward engine (exact) for ``--track`` tracked examples in one pass: seconds per tracked example;
- the approximation (reverse engine, no Hessian) for all training examples and every test point, against TracIn
  with every step as a checkpoint in its ideal form (each step's batch examples at ``θ_t`` dotted with the test
  gradients at ``θ_t``, summed with ``η_t / B_t``), which touches the same examples; and one TracInCP
  checkpoint over the whole training set (TracInCP at every step costs ``T`` times that).

``memory`` runs each engine in a fresh process on shortened runs (1 epoch) and reports the peak RSS increase
during the engine call (sampled every 5 ms) next to the size of its dominant tensors.
This is a benchmark, not a test: the machine's load moves the seconds, the ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile

import torch
from timing import median_seconds

import wherefrom as wf
from wherefrom.bench import Workspace, get_setting
from wherefrom.bench import train as tr
from wherefrom.bench.runner import PeakMemory
from wherefrom.data.loaders import as_loader
from wherefrom.methods.hydra_steps import StepData, StepEvaluator


def _tracin_every_step(ev: StepEvaluator, test, lr_of_step) -> torch.Tensor:
    """Ideal TracIn over every recorded step: Σ_t (η_t/B_t) ⟨g_i(θ_t), ∇f_j(θ_t)⟩ for i ∈ B_t, ``[n, m]``."""
    traj, task = ev.trajectory, ev.task
    loader = as_loader(test, 500, what="test")
    batches = [task.prepare_batch(b) for b in loader]
    out = torch.zeros(ev.loader.dataset.tensors[0].shape[0], sum(len(b[1]) for b in batches), dtype=ev.dtype)
    for step in traj.steps():
        data = ev.load(step)
        G = ev.example_grads(data)
        Q = torch.cat([ev.example_grads(StepData(step, data.theta, b, len(b[1])), fn=task.target_fn)
                       for b in batches])
        out.index_add_(0, step.indices, (G @ Q.T) * (lr_of_step(step) / data.size))
    return out


def costs(name: str, n_targets: int, n_track: int, cache_dir: str | None, **overrides) -> dict:
    torch.set_num_threads(1)
    wf.set_progress(False)
    setting = get_setting(name, **overrides)
    ws = Workspace(setting, cache_dir=cache_dir, workers=1, progress=False)
    ref = ws.reference()
    traj = ws.recorded_trajectory()
    train, test = ws.datasets()
    task = setting.make_task(ref.state)
    res: dict = {"setting": name, "steps": len(traj), "p": traj.num_params, "n_train": len(train),
                 "n_test": len(test), "batch": setting.recipe.batch_size}

    res["train_s"] = median_seconds(lambda: tr.train_sgd(setting, train), 3)

    def recorded():
        model = setting.make_model()
        from wherefrom.bench.weighted import batch_order, make_optimizer

        opt = make_optimizer(setting, model.parameters())
        rec = wf.TrajectoryRecorder(model, opt)
        X, y = train.tensors
        for b in batch_order(setting, len(y)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(X[b]), y[b]).backward()
            rec.record(b)
            opt.step()
        rec.close()

    res["train_recorded_s"] = median_seconds(recorded, 1)
    T = res["train_s"]

    h = wf.HYDRA(task, traj, engine="reverse", verify=True, targets_per_pass=n_targets)
    res["fit_check_s"] = median_seconds(lambda: h.fit(train))
    test_first = tuple(t[:n_targets] for t in test.tensors)
    Q = torch.cat([g for _, g in h._query_blocks(test_first, n_targets)])
    for k in sorted({1, n_targets}):
        s = median_seconds(lambda k=k: h._weight_gradients(Q[:k]))
        res[f"reverse_exact_{k}_s"] = s
        res[f"reverse_exact_per_target_K{k}_x_train"] = s / k / T

    fwd = wf.HYDRA(task, traj, engine="forward", track=list(range(n_track)), track_chunk=n_track, verify=False)
    s = median_seconds(lambda: fwd.fit(train))
    res["forward_exact_s"] = s
    res["forward_exact_per_example_x_train"] = s / n_track / T

    approx = wf.HYDRA(task, traj, hessian=False, engine="reverse", targets_per_pass=len(test), verify=False).fit(train)
    s = median_seconds(lambda: approx.score(test))
    res["approx_all_s"], res["approx_all_x_train"] = s, s / T
    ev = StepEvaluator(task, traj, as_loader(train, 64), hvp_chunk=len(test))
    with task.attribution_mode():
        s = median_seconds(lambda: _tracin_every_step(ev, test, lambda st: float(st.hyper["lr"][0])))
    res["tracin_every_step_s"], res["tracin_every_step_x_train"] = s, s / T
    one = wf.TracInCP(task, checkpoints=[ref.state], learning_rates=setting.recipe.lr)
    s = median_seconds(lambda: one.fit(train).score(test))
    res["tracincp_one_checkpoint_s"] = s
    res["tracincp_every_step_estimate_x_train"] = s * len(traj) / T
    return res


# ---------------------------------------------------------------------------------------------- memory
def _memory_case(kind: str, n_train: int, hidden: int, count: int, queue) -> None:
    torch.set_num_threads(1)
    wf.set_progress(False)
    setting = get_setting("mnist-mlp-sgd", n_train=n_train, hidden=hidden, epochs=1)
    train, test = setting.datasets()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.zarr")
        state = tr.train_sgd(setting, train, record_path=path).state
        traj = wf.Trajectory.load(path)
        task = setting.make_task(state)
        test_k = tuple(t[:count] for t in test.tensors)
        if kind == "forward":
            h = wf.HYDRA(task, traj, engine="forward", track=list(range(count)), track_chunk=count, verify=False)
            with PeakMemory() as mem:
                h.fit(train)
        else:
            h = wf.HYDRA(task, traj, hessian=kind == "reverse", engine="lean" if kind == "lean" else "reverse",
                         targets_per_pass=count, verify=False).fit(train)  # kind "approx": reverse, no Hessian
            with PeakMemory() as mem:
                h.score(test_k)
        p = traj.num_params
        n_state = 1
        B = setting.recipe.batch_size
        dominant = {"forward": (2 + n_state) * count * p, "reverse": (3 + n_state) * count * p + n_train * count,
                    "approx": (2 + n_state) * p + B * p + count * p + n_train * count,
                    "lean": 2 * n_train * count + count * p + B * p}[kind] * 8 / 2**20
        queue.put({"engine": kind, "n_train": n_train, "p": p, "count": count, "peak_mb": round(mem.peak_mb, 1),
                   "dominant_mb": round(dominant, 1)})


def memory() -> list[dict]:
    cases = [("reverse", 1000, 128, 32), ("reverse", 5000, 128, 32), ("reverse", 1000, 64, 32),
             ("reverse", 1000, 256, 32), ("reverse", 1000, 128, 128),
             ("forward", 1000, 128, 16), ("forward", 1000, 128, 64), ("forward", 1000, 256, 16),
             ("approx", 1000, 128, 32), ("approx", 5000, 128, 500), ("lean", 1000, 128, 32),
             ("lean", 5000, 128, 500)]
    ctx = mp.get_context("spawn")
    rows = []
    for case in cases:
        q = ctx.Queue()
        proc = ctx.Process(target=_memory_case, args=(*case, q))
        proc.start()
        rows.append(q.get())
        proc.join()
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["costs", "memory"])
    ap.add_argument("setting", nargs="?", default="mnist-mlp-sgd")
    ap.add_argument("--targets", type=int, default=128)
    ap.add_argument("--track", type=int, default=32)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--n-train", type=int, default=None, help="(debugging) use a smaller setting")
    ap.add_argument("--n-test", type=int, default=None)
    args = ap.parse_args(argv)
    if args.what == "costs":
        over = {k: v for k, v in {"n_train": args.n_train, "n_test": args.n_test}.items() if v is not None}
        print(json.dumps(costs(args.setting, args.targets, args.track, args.cache_dir, **over), indent=1))
    else:
        memory()


if __name__ == "__main__":
    sys.exit(main())
