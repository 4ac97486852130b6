"""Shared settings of the peer comparison: data, models, damping, and the context file each runner loads.

Every runner process (one library, one method, one setting) loads ``.cache/context-<setting>.pt`` written by
``prepare.py`` and nothing else, so a peer's process never imports wherefrom. The context holds the train and test
tensors, the trained model's state, its per-epoch trajectory (TracInCP) and the weight decay of its objective.

Conventions (see docs/peers.md):

- ``scores[i, j]`` of every runner is returned in wherefrom's convention: ``[n_train, n_test]``, positive = training
  example ``i`` helped test example ``j``. Each runner multiplies its library's output by the documented sign.
- The curvature every influence solver inverts is that of the regularised training objective plus ``LAMBDA``:
  ``H_data + (wd + λ) I``. wherefrom is given ``Task(weight_decay=wd)`` and ``damping=λ``; a peer that knows only
  the data loss is given ``wd + λ`` as its damping / regularisation.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("PEERS_CACHE", os.path.join(HERE, ".cache"))

LAMBDA = 1e-3            # damping added on top of the objective's own L2 term (the λ)
PROJ_DIM = 512           # TRAK projection dimension for all three libraries
ARNOLDI_RANK = 50        # eigen-directions kept by every Arnoldi implementation (equal-settings row)
ARNOLDI_ITER = 100       # Krylov dimension: dattri's default max_iter; wherefrom is given the same
CG_MAX_ITER = 100        # CG iteration cap for every library
CG_TOL = 1e-7            # relative residual at which CG stops (dattri has no stopping rule: it runs CG_MAX_ITER)
LISSA_DEPTH = 1000       # LiSSA recursion depth for every library (wherefrom's and pyDVL's default)
HVP_BATCH = 256          # mini-batch of one stochastic LiSSA step, for every library
GRAD_BATCH = 256         # batch size of per-example gradient passes where a library takes one

SETTINGS = ("lr", "mlp")


class LogisticRegression(nn.Module):
    """``fc(x)``: the parameter names of wherefrom.bench's logistic regression."""

    def __init__(self, d_in: int = 64, n_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    """``fc2(relu(fc1(x)))``: the parameter names of wherefrom.bench's MLP (its dropout has p = 0, no params)."""

    def __init__(self, d_in: int = 64, hidden: int = 128, n_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@dataclass
class Context:
    """What a runner needs: data ``[n, 64]`` / ``[n]``, trained state, trajectory, learning rates, wd, dtype."""

    setting: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    state: dict
    trajectory: list
    learning_rates: list
    weight_decay: float

    @property
    def dtype(self) -> torch.dtype:
        return self.x_train.dtype

    @property
    def peer_damping(self) -> float:
        """``wd + λ``: the damping a peer that sees only the data loss needs for the same curvature."""
        return self.weight_decay + LAMBDA

    def model(self, state: dict | None = None) -> nn.Module:
        """A fresh model of the setting loaded with ``state`` (default: the trained one), in eval mode."""
        m = LogisticRegression() if self.setting == "lr" else MLP()
        m = m.to(self.dtype)
        m.load_state_dict(self.state if state is None else state)
        return m.eval()

    def train_set(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.x_train, self.y_train)

    def test_set(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.x_test, self.y_test)

    def loader(self, which: str, batch_size: int = GRAD_BATCH) -> torch.utils.data.DataLoader:
        ds = self.train_set() if which == "train" else self.test_set()
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)


def context_path(setting: str) -> str:
    return os.path.join(CACHE, f"context-{setting}.pt")


def load_context(setting: str) -> Context:
    d = torch.load(context_path(setting), weights_only=False)
    return Context(**d)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRAK's model output ``log(p_y / (1 − p_y))`` per example, ``[B]``, computed stably."""
    y = y.long()
    correct = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    is_label = torch.arange(logits.shape[-1], device=logits.device) == y.unsqueeze(-1)
    return correct - torch.logsumexp(logits.masked_fill(is_label, float("-inf")), dim=-1)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Run a peer that allocates buffers with torch's default dtype (float32) in the model's dtype instead."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
