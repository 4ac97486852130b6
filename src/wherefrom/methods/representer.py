"""Representer point selection, RPS-L2 (Yeh et al. 2018): representer values on the last layer.

Split the model into features ``f_i ∈ R^d`` (the input of the final Linear layer, with a constant 1 appended when
the layer has a bias, so ``f̃_i = [f_i; 1]``) and the last layer ``Θ = [W | b] ∈ R^{c×d̃}``. Fine-tune ``Θ`` on the
fixed features to the stationary point ``Θ*`` of the L2-regularised objective

    J(Θ) = (1/n) Σ_i L(Θ f̃_i, y_i) + λ ‖Θ‖²_F,          L(o, y) = −Σ_c y_c log softmax(o)_c

(``y_i`` = the model's own softmax outputs by default, as in the original code, or one-hot true labels). Stationarity
``∇J = 0`` gives the representer theorem

    Θ* = Σ_i α_i f̃_iᵀ,    α_i = −(1/(2λn)) ∂L(Θ* f̃_i, y_i)/∂(Θ* f̃_i) = (y_i − softmax(Θ* f̃_i)) / (2λn)   [c]

so that ``Θ* f̃_t = Σ_i α_i ⟨f̃_i, f̃_t⟩`` exactly. The score of training point ``i`` on test point ``j`` is its term
for the class of interest ``c_j`` (the test label, or the model's predicted class):

    τ[i, j] = α_{i, c_j} ⟨f̃_i, f̃'_j⟩

Natural scale: a share of the fine-tuned last layer's pre-softmax logit ``c_j`` on the test point; the column sums
to that logit. Positive = excitatory = helpful (raises the logit of the class of interest).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from wherefrom import targets
from wherefrom.batches import batch_loop
from wherefrom.data.loaders import DataLike, as_loader
from wherefrom.errors import WherefromError
from wherefrom.execution import Execution, resolve_execution
from wherefrom.layers import last_linear_layer, param_name
from wherefrom.methods.base import Attributor
from wherefrom.task import Task

__all__ = ["RepresenterPoints", "last_layer_features_fn", "last_linear_layer"]


def last_layer_features_fn(task: Task, last_layer: str | None = None):
    """``features_fn(batch) -> [B, d]``: the input of the final Linear layer at the task's final checkpoint.

    A penultimate-layer embedding for feature-space methods (KNN-Shapley). The batch is moved to the model's device.
    """
    name = last_linear_layer(task.model) if last_layer is None else last_layer
    module = dict(task.model.named_modules()).get(name)
    if not isinstance(module, nn.Linear):
        raise WherefromError(f"last_layer {name!r} is not an nn.Linear module of the model.")
    state = task.state(None)
    flat = task.flat_params(state)

    def features_fn(batch):
        seen = {}
        handle = module.register_forward_hook(lambda mod, inp, out: seen.setdefault("f", inp[0].detach()))
        try:
            with torch.no_grad(), task.attribution_mode():
                task.outputs(flat, state, task.prepare_batch(batch))
        finally:
            handle.remove()
        return seen["f"].reshape(seen["f"].shape[0], -1)

    return features_fn


class RepresenterPoints(Attributor):
    """Representer values ``[n_train, n_test]`` of the final linear layer (see the module docstring).

    Args:
        task: the :class:`~wherefrom.task.Task` (the final checkpoint is used).
        last_layer: name of the final ``nn.Linear`` module (default: the model's last one). Its output must be the
            model's output (the logits).
        l2: ``λ`` of the fine-tuning objective.
        labels: ``"model"`` (soft labels = the model's softmax outputs, the original method) or ``"true"``.
        class_of_interest: ``"label"`` (the test point's label) or ``"predicted"`` (the model's predicted class).
        normalize: L2-normalise the features ``f`` before appending the bias 1.
        max_iter: L-BFGS iterations for the fine-tuning; tol: stop when ``‖∇J‖_max`` falls below it.
        newton_max_params: when ``Θ`` has at most this many entries, up to 3 exact Newton steps follow L-BFGS so
            that the stationary point (and the representer theorem) holds to machine precision.
        execution: :class:`~wherefrom.execution.Execution` options (``batch_size``, ``progress`` also accepted).
    """

    def __init__(
        self, task: Task, last_layer: str | None = None, *, l2: float = 0.003, labels: str = "model",
        class_of_interest: str = "label", normalize: bool = False, max_iter: int = 1000, tol: float = 1e-10,
        newton_max_params: int = 4096, execution: Execution | None = None, batch_size: int | None = None,
        progress: bool | None = None,
    ) -> None:
        if l2 <= 0:
            raise WherefromError(f"l2 must be > 0 (the representer theorem needs it), got {l2}.")
        if labels not in ("model", "true"):
            raise WherefromError(f"labels must be 'model' or 'true', got {labels!r}.")
        if class_of_interest not in ("label", "predicted"):
            raise WherefromError(f"class_of_interest must be 'label' or 'predicted', got {class_of_interest!r}.")
        self.task = task
        self.last_layer = last_linear_layer(task.model) if last_layer is None else last_layer
        modules = dict(task.model.named_modules())
        if self.last_layer not in modules or not isinstance(modules[self.last_layer], nn.Linear):
            raise WherefromError(f"last_layer {self.last_layer!r} is not an nn.Linear module of the model.")
        self.l2 = float(l2)
        self.labels = labels
        self.class_of_interest = class_of_interest
        self.normalize = normalize
        self.max_iter = max_iter
        self.tol = tol
        self.newton_max_params = newton_max_params
        self.execution = resolve_execution(execution, batch_size=batch_size, progress=progress)
        self.batch_size = self.execution.batch_size
        self.progress = self.execution.progress
        self.theta_: torch.Tensor | None = None
        self.alpha_: torch.Tensor | None = None
        self.features_: torch.Tensor | None = None
        self.grad_norm_: float | None = None

    # ------------------------------------------------------------------ features
    def _capture(self, data: DataLike, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(f̃ [n, d̃], logits [n, c], labels [n])`` of ``data`` at the final checkpoint."""
        loader: DataLoader = as_loader(data, self.batch_size, what=what)
        module = dict(self.task.model.named_modules())[self.last_layer]
        state = self.task.state(None)
        flat = self.task.flat_params(state)
        feats, logits, labels = [], [], []
        seen: dict[str, torch.Tensor] = {}

        def hook(mod, inp, out):
            seen["f"], seen["o"] = inp[0].detach(), out.detach()

        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                for _, batch in batch_loop(self.task, loader, state, check=False, desc=f"{what} features",
                                           progress=self.progress):
                    self.task.outputs(flat, state, batch)
                    if seen["f"].dim() != 2:
                        raise WherefromError(f"The input of {self.last_layer!r} must be [B, d]; got "
                                             f"{tuple(seen['f'].shape)}.")
                    feats.append(seen["f"].to(torch.float64))
                    logits.append(seen["o"].to(torch.float64))
                    labels.append(targets.labels_of(batch).long())
        finally:
            handle.remove()
        f = torch.cat(feats)
        if self.normalize:
            f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if module.bias is not None:
            f = torch.cat([f, torch.ones(f.shape[0], 1, dtype=f.dtype, device=f.device)], dim=1)
        return f, torch.cat(logits), torch.cat(labels)

    # ------------------------------------------------------------------ fitting
    def objective(self, theta: torch.Tensor, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``J(Θ) = (1/n) Σ_i L(Θ f̃_i, y_i) + λ‖Θ‖²_F`` for soft labels ``y`` ``[n, c]``."""
        return -(y * F.log_softmax(f @ theta.T, dim=1)).sum(1).mean() + self.l2 * theta.pow(2).sum()

    def _newton_step(self, theta: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``H⁻¹ ∇J`` with the exact Hessian ``(1/n) Σ_i (diag σ_i − σ_i σ_iᵀ) ⊗ f̃_i f̃_iᵀ + 2λI``."""
        c, d = theta.shape
        sig = F.softmax(f @ theta.T, dim=1)
        S = torch.diag_embed(sig) - sig[:, :, None] * sig[:, None, :]  # [n, c, c]
        H = torch.einsum("iab,ik,il->akbl", S, f, f).reshape(c * d, c * d) / f.shape[0]
        H = H + 2 * self.l2 * torch.eye(c * d, dtype=H.dtype, device=H.device)
        return torch.linalg.solve(H, g.reshape(-1)).reshape(c, d)

    def fit(self, train: DataLike) -> RepresenterPoints:
        """Capture the training features, fine-tune ``Θ`` to stationarity (L-BFGS, float64), compute ``α``."""
        f, logits, labels = self._capture(train, "training")
        n = f.shape[0]
        y = F.softmax(logits, dim=1) if self.labels == "model" else F.one_hot(labels, logits.shape[1]).to(f.dtype)
        module = dict(self.task.model.named_modules())[self.last_layer]
        state = self.task.state(None)
        W = state[param_name(self.last_layer, "weight")].to(torch.float64)
        theta0 = torch.cat([W, state[param_name(self.last_layer, "bias")].to(torch.float64)[:, None]], 1) \
            if module.bias is not None else W
        theta = theta0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=self.max_iter, tolerance_grad=self.tol,
                                tolerance_change=0.0, history_size=50, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = self.objective(theta, f, y)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
            theta.grad = None
            g = torch.autograd.grad(self.objective(theta, f, y), theta)[0]
        theta = theta.detach()
        if theta.numel() <= self.newton_max_params:
            for _ in range(3):  # Newton polish: the objective is strictly convex, so this reaches machine precision
                if float(g.abs().max()) < 1e-14:
                    break
                theta = theta - self._newton_step(theta, f, g)
                with torch.enable_grad():
                    th = theta.clone().requires_grad_(True)
                    g = torch.autograd.grad(self.objective(th, f, y), th)[0]
        self.grad_norm_ = float(g.abs().max())
        if self.grad_norm_ > 1e-6:
            warnings.warn(f"RPS fine-tuning did not reach a stationary point (max |∇J| = {self.grad_norm_:.2e}); "
                          "representer values are approximate. Increase max_iter or l2.", stacklevel=2)
        self.theta_ = theta
        self.alpha_ = (y - F.softmax(f @ theta.T, dim=1)) / (2 * self.l2 * n)  # [n, c]
        self.features_ = f
        self.train_labels_ = labels
        return self

    def _fitted_state(self, directory: str) -> dict[str, Any]:
        self._require_fit()
        return {"theta": self.theta_, "alpha": self.alpha_, "features": self.features_,
                "train_labels": self.train_labels_, "grad_norm": self.grad_norm_}

    def _restore_fitted(self, state: dict[str, Any], *, directory: str, train: Any = None) -> None:
        self.theta_, self.alpha_, self.features_ = state["theta"], state["alpha"], state["features"]
        self.train_labels_, self.grad_norm_ = state["train_labels"], state["grad_norm"]

    def _require_fit(self) -> None:
        if self.theta_ is None:
            raise WherefromError("RepresenterPoints is not fitted: call fit(train) first.")

    # ------------------------------------------------------------------ scoring
    def iter_score_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:
        self._require_fit()
        ft, logits, labels = self._capture(test, "test")
        cls = labels if self.class_of_interest == "label" else logits.argmax(1)
        for start in range(0, self.features_.shape[0], 1024):  # type: ignore[union-attr]
            f = self.features_[start:start + 1024]  # type: ignore[index]
            a = self.alpha_[start:start + 1024]  # type: ignore[index]
            yield start, a[:, cls] * (f @ ft.T)

    def self_influence(self) -> torch.Tensor:
        """``|α_{i, y_i}| ‖f̃_i‖²``: the magnitude of training point ``i``'s representer value on itself, ``[n]``.

        A mislabelled point is fitted against its own label, so its signed value ``α_{i, y_i}`` is large and
        *negative*; like Yeh et al.'s data debugging, ranking uses the magnitude so that larger = more suspicious.
        """
        self._require_fit()
        a = self.alpha_.gather(1, self.train_labels_[:, None])[:, 0]  # type: ignore[union-attr]
        return a.abs() * self.features_.pow(2).sum(1)  # type: ignore[union-attr]
