"""Training recipes: the reference model (with its trajectory) and batches of retrained models.

- ``sgd`` recipe: minibatch SGD with momentum (or Adam) and L2 weight decay, from ``make_model(seed)``; the data
  order of epoch ``e`` is ``randperm`` of a generator seeded with ``seed``; a checkpoint is recorded after every
  epoch together with its learning rate (TracIn's trajectory). Retraining on a subset visits only the subset.
- ``lr-exact`` recipe: the same SGD phase (the trajectory), then the exact optimum of the full-batch objective by
  L-BFGS and a batched L-BFGS preconditioned with the inverse Hessian (:mod:`wherefrom.bench.lr`) to
  ``‖∇R‖₂ ≤ tol``. Retrained LR models are batched: see :func:`retrain_lr`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import TensorDataset

from wherefrom import targets
from wherefrom.bench import lr as lrmod
from wherefrom.bench.settings import Setting


@dataclass
class TrainedModel:
    """A trained reference model: final ``state``, ``trajectory`` (per-epoch states) and their learning rates."""

    state: dict[str, torch.Tensor]
    trajectory: list[dict[str, torch.Tensor]] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_sgd(setting: Setting, train: TensorDataset, indices: Sequence[int] | None = None, seed: int | None = None,
              record: bool = False, record_path: str | None = None) -> TrainedModel:
    """Minibatch phase of the recipe on ``train`` (restricted to ``indices`` when given).

    With ``record_path`` every optimizer step is recorded there (a :class:`~wherefrom.trajectory.Trajectory`;
    the batch indices are positions in ``train``, so use it on the full training set).
    """
    r = setting.recipe
    seed = r.seed if seed is None else seed
    X, y = train.tensors
    if indices is not None:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        X, y = X[idx], y[idx]
    model = setting.make_model(seed)
    model.train()
    if r.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    traj, lrs = [], []
    torch.manual_seed(seed)  # dropout masks
    recorder = None
    if record_path is not None:
        from wherefrom.trajectory import TrajectoryRecorder

        recorder = TrajectoryRecorder(model, opt, path=record_path)
    for _ in range(r.epochs):
        perm = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), r.batch_size):
            b = perm[s:s + r.batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(X[b]), y[b]).backward()
            if recorder is not None:
                recorder.record(b)
            opt.step()
        if record:
            traj.append(_clone_state(model))
            lrs.append(r.lr)
    if recorder is not None:
        recorder.close()
    model.eval()
    return TrainedModel(_clone_state(model), traj, lrs)


def lr_exact(setting: Setting, train: TensorDataset, start: dict[str, torch.Tensor]
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict]:
    """Exact optimum of the full-batch LR objective from ``start``; returns ``(state, H⁻¹, info)``."""
    r = setting.recipe
    X, y = train.tensors
    Xa = lrmod.augment(X)
    n = len(y)
    W = lrmod.lbfgs(Xa, y, r.weight_decay, lrmod.from_state(start), tol=1e-4)
    H = lrmod.hessian(Xa, W, r.weight_decay)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    ones = torch.ones(1, n, dtype=Xa.dtype)
    Wk, info = lrmod.solve(Xa, y, ones, torch.tensor([float(n)], dtype=Xa.dtype), r.weight_decay, W, Hinv,
                           tol=r.tol)
    return lrmod.to_state(Wk[0]), Hinv, {"grad_norm": info.max_grad_norm, "polish_iterations": info.iterations}


def train_reference(setting: Setting, train: TensorDataset, record_path: str | None = None
                    ) -> tuple[TrainedModel, torch.Tensor | None]:
    """The reference model of ``setting`` on ``train`` (and, for LR, the inverse Hessian at its optimum).

    ``record_path``: record every optimizer step of the run there (trajectory settings).
    """
    tm = train_sgd(setting, train, record=True, record_path=record_path)
    if setting.recipe.kind == "lr-exact":
        state, Hinv, info = lr_exact(setting, train, tm.state)
        tm.state, tm.info = state, info
        return tm, Hinv
    return tm, None


def retrain_lr(setting: Setting, train: TensorDataset, ref_state: dict[str, torch.Tensor], Hinv: torch.Tensor,
               masks: torch.Tensor, denom: torch.Tensor, loo_removed: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, lrmod.SolveInfo]:
    """Exact optima ``W [K, D+1, C]`` of LR objectives with example masks ``[K, n]`` and normalisers ``[K]``.

    For leave-one-out models pass ``loo_removed [K]`` (the removed positions) to use the Woodbury-corrected
    preconditioner and the cheap starting gradient ``∇R_{−i}(θ̂) = ∇R(θ̂) − ∇ℓ_i(θ̂)/n``.
    """
    r = setting.recipe
    X, y = train.tensors
    Xa = lrmod.augment(X)
    W = lrmod.from_state(ref_state)
    low_rank = init = None
    if loo_removed is not None:
        n = len(y)
        low_rank = lrmod.loo_correction(Xa, W, Hinv, loo_removed, n)
        ones = torch.ones(1, n, dtype=Xa.dtype)
        full_loss, full_grad = lrmod.objective_and_grad(Xa, y, W[None], ones, torch.tensor([float(n)], dtype=Xa.dtype),
                                                        r.weight_decay)
        xi, yi = Xa[loo_removed], y[loo_removed]
        logp = torch.log_softmax(xi @ W, dim=1)
        resid = logp.exp() - F.one_hot(yi, W.shape[1]).to(Xa.dtype)  # ∇_logits ℓ_i
        gi = xi.unsqueeze(2) * resid.unsqueeze(1)  # [K, D+1, C]
        li = -logp.gather(1, yi[:, None]).squeeze(1)
        keep = masks.to(Xa.dtype).sum(1) == n - 1
        if bool(keep.all()):
            init = (full_loss - li / n, full_grad - gi / n)
    return lrmod.solve(Xa, y, masks.to(Xa.dtype), denom.to(Xa.dtype), r.weight_decay, W, Hinv, tol=r.tol,
                       low_rank=low_rank, init=init)


@dataclass
class Outputs:
    """Per-model test outputs: ``loss``, ``margin`` and predicted class, each ``[K, m]``."""

    loss: torch.Tensor
    margin: torch.Tensor
    pred: torch.Tensor


def outputs_from_logits(logits: torch.Tensor, y: torch.Tensor) -> Outputs:
    """Loss, margin and prediction from logits ``[K, m, C]`` and labels ``[m]``."""
    K, m, C = logits.shape
    flat = logits.reshape(K * m, C)
    yy = y.repeat(K)
    loss = F.cross_entropy(flat, yy, reduction="none").view(K, m)
    margin = targets.margin(flat, (None, yy)).view(K, m)
    return Outputs(loss.double(), margin.double(), logits.argmax(2))


def lr_outputs(W: torch.Tensor, test: TensorDataset) -> Outputs:
    """Test outputs of LR models ``W [K, D+1, C]``."""
    X, y = test.tensors
    logits = torch.einsum("md,kdc->kmc", lrmod.augment(X).to(W.dtype), W)
    return outputs_from_logits(logits, y)


def model_outputs(setting: Setting, states: Sequence[dict[str, torch.Tensor]], test: TensorDataset) -> Outputs:
    """Test outputs of models given by their states (any setting), in eval mode."""
    X, y = test.tensors
    model = setting.make_model().eval()
    with torch.no_grad():
        logits = torch.stack([functional_call(model, s, (X,)) for s in states])
    return outputs_from_logits(logits, y)
