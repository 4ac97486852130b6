"""Small float64 models that use every built-in layer type, and brute-force references for them."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad

import wherefrom as wf


class AllLayers(nn.Module):
    """Embedding → Conv1d, Conv2d on a 4×4 image, LayerNorm, Linear without bias, Linear with bias.

    Input ``x`` ``[B, 19]``: 16 pixels followed by 3 token ids (stored as floats). (torch defines the gradient of
    a ``padding_idx`` row as zero, which makes its second derivatives asymmetric: Hessian references use
    ``padding_idx=None``.)
    """

    def __init__(self, padding_idx: int | None = 0) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 3, padding_idx=padding_idx)
        self.conv1 = nn.Conv1d(3, 2, 2)
        self.conv2 = nn.Conv2d(1, 2, 3, padding=1, stride=2)
        self.norm = nn.LayerNorm(12)
        self.hidden = nn.Linear(12, 5, bias=False)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img, tok = x[:, :16].reshape(-1, 1, 4, 4), x[:, 16:].long()
        seq = torch.tanh(self.conv1(self.emb(tok).transpose(1, 2))).flatten(1)  # [B, 4]
        pix = torch.tanh(self.conv2(img)).flatten(1)  # [B, 8]
        return self.head(torch.tanh(self.hidden(self.norm(torch.cat([pix, seq], 1)))))


def all_layers_problem(n: int = 14, m: int = 4, seed: int = 0, padding_idx: int | None = 0):
    """``(model, train, test)`` for :class:`AllLayers` (float64)."""
    torch.manual_seed(seed)
    model = AllLayers(padding_idx).double()
    g = torch.Generator().manual_seed(seed + 1)

    def data(k: int):
        x = torch.cat([torch.randn(k, 16, generator=g, dtype=torch.float64),
                       torch.randint(0, 6, (k, 3), generator=g).double()], 1)
        return x, torch.randint(0, 3, (k,), generator=g)

    train, test = data(n), data(m)
    train[0][0, 16] = 0.0  # a padding token
    return model, train, test


def bare_linear_problem(n: int = 12, m: int = 3, seed: int = 0):
    """``(model, train, test)`` for a model that *is* one ``nn.Linear(5, 3)`` (module name ``""``)."""
    torch.manual_seed(seed)
    model = nn.Linear(5, 3).double()
    g = torch.Generator().manual_seed(seed + 1)
    make = lambda k: (torch.randn(k, 5, generator=g, dtype=torch.float64),  # noqa: E731
                      torch.randint(0, 3, (k,), generator=g))
    return model, make(n), make(m)


def loop_grads(task: wf.Task, X: torch.Tensor, y: torch.Tensor, fn=None) -> torch.Tensor:
    """Per-example gradients by one autograd call per example (no vmap, no captures), ``[n, p]``."""
    fn = task.loss_fn if fn is None else fn
    state = task.state()
    theta = task.flat_params(state)
    return torch.stack([grad(lambda t, i=i: task.per_example(fn, t, state, (X[i:i + 1], y[i:i + 1])).sum())(theta)
                        for i in range(len(X))])


def dense_hessian(task: wf.Task, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``∇²[(1/n) Σ ℓ_i + (wd/2)‖θ‖²]`` by reverse-over-reverse autograd, ``[p, p]``.

    (``torch.func.hessian``, forward-over-reverse, returns an asymmetric matrix on this model's LayerNorm in
    torch 2.13, so it is not used as the reference.)"""
    state = task.state()
    theta = task.flat_params(state)
    wd = task.weight_decay

    def objective(t: torch.Tensor) -> torch.Tensor:
        return task.per_example(task.loss_fn, t, state, (X, y)).mean() + 0.5 * wd * (t * t).sum()

    return torch.autograd.functional.hessian(objective, theta)


def outputs(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    return functional_call(model, dict(model.named_parameters()), (X,))
