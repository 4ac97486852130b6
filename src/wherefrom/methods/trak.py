"""TRAK (Park et al. 2023): projected margin gradients, a feature-space kernel inverse and ``Q = 1 − p``.

For each model ``s = 1..M`` (independently trained models, or checkpoints) with its own random projection
``P_s ∈ R^{p×k}`` (train and test of one model share it):

    φ_s(z) = P_sᵀ ∇_θ f(z; θ_s)                 f = margin  log(p_y / (1 − p_y)),   [k]
    Φ_s = [φ_s(z_1); …; φ_s(z_n)]               [n, k]
    K_s = Φ_sᵀ Φ_s + λ I                         [k, k]
    A_s[i, j] = φ_s(z_i)ᵀ K_s⁻¹ φ_s(z'_j)        [n, m]
    Q̄_i = (1/M) Σ_s (1 − p_i(θ_s))              train points, p_i the probability of the label

    τ[i, j] = Q̄_i · (1/M) Σ_s A_s[i, j]

The two averages are taken **separately** and then multiplied, as the paper's ``finalize_scores`` does. No
soft-thresholding is applied.

**Scale and sign.** Under a linearised logistic model, ``τ[i, j]`` is the first-order change of the test margin
``f(z'_j)`` caused by *including* training example ``i`` in a sum-reduced objective (one Newton step with the
per-example curvature ``W`` dropped from the kernel, as the paper does). Positive = helpful: including ``z_i``
raises test margin ``j``. With ``λ = 0`` the scores do not depend on the projection's global scale. The test-side
function is the margin by default (``target="margin"``); ``target="task"`` uses the task's ``target_fn`` (or pass
a callable). The sign follows the target: for a loss-like target the scores are negated, so positive stays
helpful.

``Q = 1 − p = σ(−margin)`` is ``−∂ℓ/∂f`` for the cross-entropy, so the method assumes a classification task
trained with cross-entropy; the train features use margin gradients (not loss gradients, which would count
``1 − p`` twice).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from wherefrom import targets
from wherefrom.data.loaders import DataLike, as_loader
from wherefrom.errors import WherefromError
from wherefrom.gradients import check_finite
from wherefrom.layers import capture_layers, flat_from_layers, kronecker_layers, uncovered_params
from wherefrom.methods.base import GradientAttributor
from wherefrom.progress import track
from wherefrom.projection import Projection, make_projection
from wherefrom.task import Checkpoint, Task


def layer_gradient_blocks(task: Task, loader: DataLoader, state: dict[str, torch.Tensor], fn, what: str,
                          progress: bool | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Per-example gradients ``[B, p]`` from layer captures ``G = Σ_t δ_t ãᵀ_t`` instead of vmap.

    The same blocks as :func:`wherefrom.gradients.iter_gradient_blocks`, for tasks whose selected parameters all
    belong to Linear/Conv2d layers (see :func:`uses_layer_gradients`); one forward and backward pass per batch plus
    the outer products, many times faster than vmap over small layers on CPU.
    """
    start = 0
    with task.attribution_mode():
        for k, batch in enumerate(track(loader, f"{what} gradients", len(loader), progress)):
            batch = task.prepare_batch(batch)
            if k == 0:
                task.check_per_example(fn, state, batch, what)
            block = flat_from_layers(task, capture_layers(task, state, batch, fn))
            if not bool(torch.isfinite(block.sum())):
                check_finite(block, start, what)
            yield start, block
            start += block.shape[0]


def uses_layer_gradients(task: Task, gradients: str) -> bool:
    """Whether ``gradients`` (``"auto"``, ``"vmap"`` or ``"layers"``) selects layer captures for ``task``."""
    if gradients not in ("auto", "vmap", "layers"):
        raise WherefromError(f"gradients must be 'auto', 'vmap' or 'layers', got {gradients!r}.")
    if gradients == "vmap":
        return False
    layers = kronecker_layers(task)
    covered = bool(layers) and not uncovered_params(task, layers)
    if gradients == "layers" and not covered:
        raise WherefromError("gradients='layers' needs every selected parameter to belong to a Linear or Conv2d "
                             "layer; use gradients='vmap'.")
    return covered and not task.train_mode_modules


class KernelSolve:
    """``(C + λI)⁻¹`` for a symmetric ``C`` such as ``ΦᵀΦ``: a float64 Cholesky factorisation, or when that fails
    (singular or indefinite) the pseudo-inverse on the positive eigenvalues, with a warning."""

    def __init__(self, kernel: torch.Tensor, damping: float, what: str) -> None:
        A = kernel + damping * torch.eye(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
        chol, info = torch.linalg.cholesky_ex(A)
        self._chol: torch.Tensor | None = chol if int(info) == 0 else None
        self._pinv: torch.Tensor | None = None
        if self._chol is None:
            evals, evecs = torch.linalg.eigh(A)
            cut = evals.max().clamp_min(0) * A.shape[0] * torch.finfo(A.dtype).eps
            inv = torch.where(evals > cut, 1.0 / evals, torch.zeros_like(evals))
            warnings.warn(f"The {what} matrix is singular or indefinite ({int((evals > cut).sum())} of {A.shape[0]} "
                          "eigenvalues are positive): inverting it on its positive eigenvalues only. Use a projection "
                          "dimension below the number of training examples, or damping > 0.", stacklevel=3)
            self._pinv = (evecs * inv) @ evecs.T

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """``(ΦᵀΦ + λI)⁻¹ Vᵀ`` returned as ``[m, k]`` for ``V`` ``[m, k]``."""
        B = V.to(torch.float64).T
        X = torch.cholesky_solve(B, self._chol) if self._chol is not None else self._pinv @ B
        return X.T.to(V.dtype).contiguous()


class TRAK(GradientAttributor):
    """TRAK scores ``[n_train, n_test]`` from an ensemble of models (see the module docstring for the formula).

    Args:
        task: the :class:`~wherefrom.task.Task` (classification with cross-entropy).
        proj_dim: ``k``, the projection dimension (keep ``k < n`` when ``damping = 0``).
        checkpoints: the models to ensemble (state_dicts or paths): independently trained models (different seeds
            or random data subsets) as in the paper. Default: the task's checkpoints, or the current model.
        projection: ``"rademacher"`` (default), ``"gaussian"``, ``"sparse"`` or a projection object with
            ``project(block, model_index)``; model ``s`` uses matrix index ``s``.
        damping: ``λ`` added to ``ΦᵀΦ`` (absolute, on the sum-reduced kernel of projected features).
        seed: projection seed.
        gradients: how per-example gradients are computed: ``"auto"`` (default: from layer captures when every
            selected parameter belongs to a Linear/Conv2d layer, else vmap), ``"vmap"`` or ``"layers"``. Both give
            the same gradients; captures are much faster on CPU.
        target: what is explained on test points: ``"margin"`` (default, as in the paper), ``"task"`` (the task's
            ``target_fn``) or a callable ``f(outputs, batch) -> [B]``.
    The remaining keyword arguments are those of :class:`GradientAttributor`.
    """

    def __init__(
        self, task: Task, proj_dim: int = 512, checkpoints: Sequence[Checkpoint] | None = None, *,
        projection: Projection | str = "rademacher", damping: float = 0.0, seed: int = 0,
        target: str | Callable = "margin", gradients: str = "auto", batch_size: int = 256, memory_gb: float = 2.0,
        cache_dir: str | None = None, progress: bool | None = None,
    ) -> None:
        if damping < 0:
            raise WherefromError(f"damping must be >= 0, got {damping}.")
        proj = make_projection(projection, proj_dim, seed)
        super().__init__(task, batch_size=batch_size, memory_gb=memory_gb, cache_dir=cache_dir, projection=proj,
                         progress=progress)
        self.proj_dim = proj_dim
        self.checkpoints = list(checkpoints) if checkpoints is not None else list(task.checkpoints)
        self.damping = float(damping)
        self.seed = seed
        self.use_layers = uses_layer_gradients(task, gradients)
        if target == "margin":
            self.test_fn = targets.margin
        elif target == "task":
            self.test_fn = task.target_fn
        elif callable(target):
            self.test_fn = target
        else:
            raise WherefromError(f"target must be 'margin', 'task' or a callable, got {target!r}.")
        self.kernels_: list[KernelSolve] = []
        self.q_: torch.Tensor | None = None

    # ------------------------------------------------------------------ hooks
    def _checkpoints(self) -> list[tuple[dict[str, torch.Tensor], float]]:
        if not self.checkpoints:
            return [(self.task.state(None), 1.0)]
        M = len(self.checkpoints)
        return [(self.task.state(ck), 1.0 / M) for ck in self.checkpoints]

    def _feature_blocks(self, c: int, loader: DataLoader, fn=None, what: str = "train margin"):
        if fn is None:  # training features: margin gradients, not loss gradients
            fn, what = targets.margin, "train margin"
        if not self.use_layers:
            yield from super()._feature_blocks(c, loader, fn, what)
            return
        for start, block in layer_gradient_blocks(self.task, loader, self._states[c], fn, what, self.progress):
            yield start, self._featurize(c, block)

    def _transform_query(self, c: int, Q: torch.Tensor) -> torch.Tensor:
        return self.kernels_[c].solve(Q)

    # ------------------------------------------------------------------ fitting
    def fit(self, train: DataLike) -> TRAK:
        """Project the training margin gradients of every model, invert each kernel and average ``Q = 1 − p``."""
        super().fit(train)
        n = self.n_train
        self.kernels_ = []
        q = torch.zeros(n, dtype=torch.float64, device=self.task.device)
        for c, store in enumerate(self._stores):
            K = None
            for _, F in store.blocks():
                F64 = F.to(torch.float64)
                K = F64.T @ F64 if K is None else K + F64.T @ F64
            self.kernels_.append(KernelSolve(K, self.damping, "TRAK"))
            q += self._one_minus_p(self._states[c], self._train_loader)
        self.q_ = q / len(self._stores)
        return self

    def _one_minus_p(self, state: dict[str, torch.Tensor], loader: DataLoader) -> torch.Tensor:
        """``1 − p_i = σ(−margin_i)`` of every training example at ``state``, ``[n]`` (float64)."""
        flat = self.task.flat_params(state)
        out = []
        with torch.no_grad(), self.task.attribution_mode():
            for batch in track(loader, "TRAK 1 - p", len(loader), self.progress):
                batch = self.task.prepare_batch(batch)
                m = self.task.per_example(targets.margin, flat, state, batch)
                out.append(torch.sigmoid(-m.to(torch.float64)))
        return torch.cat(out)

    # ------------------------------------------------------------------ scoring
    def query_features(self, test: DataLike) -> list[torch.Tensor]:
        """``K_s⁻¹ φ_s(z'_j)`` for every model ``s``: a list of ``[m, k]`` tensors."""
        self._require_fit()
        loader = as_loader(test, self.batch_size, what="test")
        out = []
        for c in range(len(self._states)):
            Q = torch.cat([b for _, b in self._feature_blocks(c, loader, self.test_fn, "test target")], dim=0)
            out.append(self._transform_query(c, Q))
        return out

    def iter_score_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:
        queries = self.query_features(test)
        sign = 1.0 if targets.is_goodness(self.test_fn) else -1.0
        for parts in zip(*[store.blocks() for store in self._stores]):
            start = parts[0][0]
            acc: Any = None
            for c, (_, F) in enumerate(parts):
                term = self._weights[c] * (F @ queries[c].T.to(F.dtype))
                acc = term if acc is None else acc + term
            q = self.q_[start:start + acc.shape[0]].to(acc.dtype).unsqueeze(1)  # type: ignore[index]
            yield start, sign * q * acc

    def self_influence(self) -> torch.Tensor:
        """``Q̄_i · (1/M) Σ_s φ_s(z_i)ᵀ K_s⁻¹ φ_s(z_i)`` (margin gradients on both sides), ``[n_train]``."""
        base = super().self_influence()
        return self.q_.to(base.dtype) * base  # type: ignore[union-attr]
