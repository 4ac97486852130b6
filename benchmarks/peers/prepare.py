"""Build (once, cached) what every runner shares: trained models, LDS ground truth and exact reference scores.

Settings (sklearn digits, first 1297 images train / last 500 test, features scaled to [0, 1]):

- ``lr``: wherefrom.bench's ``digits-lr`` recipe at n_train = 1297: ``Linear(64, 10)`` (650 parameters), 3 SGD
  warm-up epochs (the TracInCP trajectory), then the exact optimum of the L2-regularised objective (wd = 1e-2) to
  ``‖∇R‖ ≤ 1e-10``; float64.
- ``mlp``: ``64→128→ReLU→10`` (9,610 parameters) with wherefrom.bench's MLP recipe: seeded SGD (lr 0.01, momentum
  0.9, batch 64, wd 1e-4), 20 epochs, one checkpoint per epoch; float32.

Ground truth: 100 LDS subsets of half the training set, each model retrained from scratch by wherefrom.bench
(LR to its exact optimum; MLP by the same seeded SGD recipe), cached under ``.cache/wf``. Exact scores: dense
Hessian (and, for the MLP, Gauss-Newton) plus ``(wd + λ) I``, Cholesky, float64 (``libs/reference.py``).

Usage: ``python prepare.py [lr] [mlp]`` (inside the peers virtual environment; see run.sh).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
from common import CACHE, context_path, load_context
from libs.reference import exact_scores

N_TRAIN, N_TEST = 1297, 500
LDS_SUBSETS, LDS_FRACTION = 100, 0.5


def make_setting(name: str):
    from wherefrom.bench.settings import _MLP, Setting, get_setting

    if name == "lr":
        return get_setting("digits-lr", n_train=N_TRAIN, n_test=N_TEST)
    return Setting("digits-mlp", "digits", "mlp", N_TRAIN, N_TEST, _MLP, hidden=128,
                   description="sklearn digits 1297/500, MLP 64→128→10, seeded SGD 20 epochs")


def prepare(name: str) -> None:
    from wherefrom.bench.groundtruth import Workspace

    torch.set_num_threads(1)
    os.makedirs(CACHE, exist_ok=True)
    setting = make_setting(name)
    ws = Workspace(setting, cache_dir=os.path.join(CACHE, "wf"), workers=1, progress=False)
    train, test = ws.datasets()
    t0 = time.time()
    ref = ws.reference()
    print(f"[{name}] reference model ready ({time.time() - t0:.1f} s)", flush=True)
    if not os.path.exists(context_path(name)):
        (xtr, ytr), (xte, yte) = train.tensors, test.tensors
        torch.save({"setting": name, "x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte,
                    "state": ref.state, "trajectory": list(ref.trajectory),
                    "learning_rates": [float(v) for v in ref.learning_rates],
                    "weight_decay": setting.recipe.weight_decay}, context_path(name))
    lds_path = os.path.join(CACHE, f"lds-{name}.npz")
    if not os.path.exists(lds_path):
        t0 = time.time()
        gt = ws.lds(LDS_SUBSETS, LDS_FRACTION)
        np.savez(lds_path, masks=gt.masks, loss=gt.loss, margin=gt.margin)
        print(f"[{name}] LDS ground truth: {LDS_SUBSETS} retrained models ({time.time() - t0:.1f} s)", flush=True)
    ctx = load_context(name)
    for kind in ("hessian", "ggn") if name == "mlp" else ("hessian",):
        path = os.path.join(CACHE, f"exact-{name}-{kind}.npy")
        if not os.path.exists(path):
            t0 = time.time()
            np.save(path, exact_scores(ctx, kind).numpy())
            print(f"[{name}] exact {kind} scores ({time.time() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    for setting in sys.argv[1:] or ["lr", "mlp"]:
        prepare(setting)
