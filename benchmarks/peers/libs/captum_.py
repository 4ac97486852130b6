"""captum 0.9.0: ``captum.influence.TracInCP`` over the checkpoint files of the trajectory.

``influence((x_test, y_test))`` returns ``[n_test, n_train]`` = ``Σ_c η_c ∇ℓ(z_i; θ_c)·∇ℓ(z'_j; θ_c)``, positive
= proponent (helpful): transposed, no sign change. The checkpoint loader returns each checkpoint's learning rate.
Per-example loss ``CrossEntropyLoss(reduction="none")`` with captum's default ``sample_wise_grads_per_batch=False``.
"""

from __future__ import annotations

import os

import torch
from common import CACHE, GRAD_BATCH, Context
from torch import nn


def checkpoint_files(ctx: Context) -> list[str]:
    """One file per trajectory checkpoint, ``{"state", "lr"}`` (written once, outside the timed region)."""
    paths = []
    for k, (state, lr) in enumerate(zip(ctx.trajectory, ctx.learning_rates)):
        path = os.path.join(CACHE, f"ckpt-{ctx.setting}-{k:03d}.pt")
        if not os.path.exists(path):
            torch.save({"state": state, "lr": lr}, path)
        paths.append(path)
    return paths


def tracin(ctx):
    from captum.influence import TracInCP

    def load(model, path):
        d = torch.load(path, weights_only=False)
        model.load_state_dict(d["state"])
        return d["lr"]

    tr = TracInCP(ctx.model(), ctx.loader("train", GRAD_BATCH), checkpoint_files(ctx), checkpoints_load_func=load,
                  loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=GRAD_BATCH)
    return tr.influence((ctx.x_test, ctx.y_test)).T, {}


METHODS = {"tracin": tracin}
