"""Retraining *the same run* with per-example loss weights, many variants at once (trajectory ground truth).

Variant ``k`` trains from the recipe's initialisation, with the recipe's batch order and optimizer, on the step
loss ``(1/B_t) Σ_{j∈B_t} W[k, j] ℓ_j`` (``B_t`` the real batch size, so a removed example keeps its slot with
weight 0). ``W[k] = 1`` is the reference run; zeros remove examples — leave-one-out and LDS subsets of the same
run, which is what trajectory attribution (HYDRA) predicts.

All variants share the batch order, so they train as one batched model: the parameters are stacked ``[K, ...]``,
the forward pass is ``vmap(functional_call)`` over them, and one ``torch.optim`` optimizer steps the stacked
tensors (SGD and Adam act per coordinate, so this is ``K`` independent runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap
from torch.utils.data import TensorDataset

from wherefrom.bench.settings import Setting
from wherefrom.bench.train import Outputs, outputs_from_logits
from wherefrom.errors import WherefromError


def make_optimizer(setting: Setting, params) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params`` (the same constructor the reference run uses)."""
    r = setting.recipe
    if r.optimizer == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)


def batch_order(setting: Setting, n: int, seed: int | None = None) -> list[torch.Tensor]:
    """The recipe's batches: per epoch a ``randperm`` of a generator seeded with ``seed``, cut into batches."""
    r = setting.recipe
    gen = torch.Generator().manual_seed(r.seed if seed is None else seed)
    plan = []
    for _ in range(r.epochs):
        perm = torch.randperm(n, generator=gen)
        plan += [perm[s:s + r.batch_size] for s in range(0, n, r.batch_size)]
    return plan


def train_weighted(setting: Setting, train: TensorDataset, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Final stacked parameters ``{name: [K, ...]}`` of the run retrained with example weights ``weights [K, n]``."""
    r = setting.recipe
    if r.dropout > 0:
        raise WherefromError("Weighted retraining of the same run needs a deterministic step (no dropout).")
    X, y = train.tensors
    K = weights.shape[0]
    model = setting.make_model().eval()
    stacked = {n: p.detach().unsqueeze(0).repeat(K, *([1] * p.dim())).requires_grad_(True)
               for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    opt = make_optimizer(setting, list(stacked.values()))
    W = weights.to(X.dtype)

    def logits(params: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**params, **buffers}, (x,))

    batched = vmap(logits, in_dims=(0, None))
    for b in batch_order(setting, len(y)):
        opt.zero_grad(set_to_none=True)
        out = batched(stacked, X[b])  # [K, B, C]
        losses = F.cross_entropy(out.reshape(-1, out.shape[-1]), y[b].repeat(K), reduction="none").view(K, -1)
        ((losses * W[:, b]).sum() / len(b)).backward()
        opt.step()
    return {n: p.detach() for n, p in stacked.items()}


def weighted_outputs(setting: Setting, train: TensorDataset, test: TensorDataset, weights: torch.Tensor) -> Outputs:
    """Test loss, margin and prediction of every weighted variant, each ``[K, m]``."""
    params = train_weighted(setting, train, weights)
    model = setting.make_model().eval()
    buffers = dict(model.named_buffers())
    X, y = test.tensors
    with torch.no_grad():
        logits = vmap(lambda p: functional_call(model, {**p, **buffers}, (X,)))(params)
    return outputs_from_logits(logits, y)
