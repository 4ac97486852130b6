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

**As a composition**: projected margin gradients (source) × the kernel preconditioner
(:class:`~wherefrom.curvature.KernelSolver`, the empirical Fisher of the features ``C = ΦᵀΦ/n``, no weight decay)
× dot, checkpoint weights ``1/M``, scale ``1/n`` and training-row weights ``Q̄``. Since ``ΦᵀΦ + λI = n(C + (λ/n)I)``,
TRAK's ``damping`` ``λ`` — kept in the paper's units, on the *sum*-reduced kernel — is the preconditioner's
``λ/n`` in the library's units (the mean-reduced curvature); the scores are the same.

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

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from wherefrom import targets
from wherefrom.batches import batch_loop
from wherefrom.configurable import Configurable
from wherefrom.curvature.kernel import KernelSolver
from wherefrom.errors import WherefromError
from wherefrom.methods.composed import ComposedAttributor
from wherefrom.projection import Projection, make_projection
from wherefrom.sources import FullGradients
from wherefrom.task import Checkpoint, Task


class OneMinusProbability(Configurable):
    """Training-row weights ``ρ_i = (1/M) Σ_s (1 − p_i(θ_s)) = mean_s σ(−margin_i(θ_s))`` (float64, ``[n]``)."""

    def fit(self, attributor: ComposedAttributor, loader: DataLoader) -> torch.Tensor:
        task = attributor.task
        q = torch.zeros(attributor.n_train, dtype=torch.float64, device=task.device)
        for state in attributor._states:
            flat = task.flat_params(state)
            parts = []
            with torch.no_grad():
                for _, batch in batch_loop(task, loader, state, check=False, desc="TRAK 1 - p",
                                           progress=attributor.progress):
                    margin = task.per_example(targets.margin, flat, state, batch)
                    parts.append(torch.sigmoid(-margin.to(torch.float64)))
            q += torch.cat(parts)
        return q / len(attributor._states)


def target_function(task: Task, target: str | Callable) -> Callable:
    """TRAK's test-side function: ``"margin"``, ``"task"`` (the task's target) or a callable."""
    if target == "margin":
        return targets.margin
    if target == "task":
        return task.target_fn
    if callable(target):
        return target
    raise WherefromError(f"target must be 'margin', 'task' or a callable, got {target!r}.")


class TRAK(ComposedAttributor):
    """TRAK scores ``[n_train, n_test]`` from an ensemble of models (see the module docstring for the formula).

    Args:
        task: the :class:`~wherefrom.task.Task` (classification with cross-entropy).
        proj_dim: ``k``, the projection dimension (keep ``k < n`` when ``damping = 0``).
        checkpoints: the models to ensemble (state_dicts or paths): independently trained models (different seeds
            or random data subsets) as in the paper. Default: the task's checkpoints, or the current model.
        projection: ``"rademacher"`` (default), ``"gaussian"``, ``"sparse"`` or a projection object with
            ``project(block, model_index)``; model ``s`` uses matrix index ``s``.
        damping: ``λ`` added to ``ΦᵀΦ`` (absolute, on the paper's sum-reduced kernel; the library's mean-reduced
            damping is ``λ/n``, see the module docstring).
        seed: projection seed.
        gradients: how per-example gradients are computed: ``"auto"`` (default: from layer captures when every
            selected parameter belongs to a registered layer type, else vmap), ``"vmap"`` or ``"layers"``. Both give
            the same gradients; captures are much faster on CPU.
        target: what is explained on test points: ``"margin"`` (default, as in the paper), ``"task"`` (the task's
            ``target_fn``) or a callable ``f(outputs, batch) -> [B]``.
    The remaining keyword arguments (``execution``, ``batch_size``, ``memory_gb``, ``cache_dir``, ``progress``)
    are those of :class:`~wherefrom.methods.composed.ComposedAttributor`.
    """

    def __init__(
        self, task: Task, proj_dim: int = 512, checkpoints: Sequence[Checkpoint] | None = None, *,
        projection: Projection | str = "rademacher", damping: float = 0.0, seed: int = 0,
        target: str | Callable = "margin", gradients: str = "auto", **execution: Any,
    ) -> None:
        if damping < 0:
            raise WherefromError(f"damping must be >= 0, got {damping}.")
        proj = make_projection(projection, proj_dim, seed)
        test_fn = target_function(task, target)
        cks = list(checkpoints) if checkpoints is not None else list(task.checkpoints)
        super().__init__(task, FullGradients(gradients), KernelSolver(0.0, label="TRAK"), "dot",
                         checkpoints=cks or None, weights=[1.0 / len(cks)] * len(cks) if cks else None,
                         scale="1/n", weight_decay=False, train_fn=targets.margin, test_fn=test_fn,
                         train_weights=OneMinusProbability(), projection=proj, **execution)
        self.proj_dim = proj_dim
        self.damping = float(damping)
        self.seed = seed

    def _before_fit(self, n: int) -> None:
        self.preconditioner.damping = self.damping / n  # ΦᵀΦ + λI = n (ΦᵀΦ/n + (λ/n) I)

    @property
    def use_layers(self) -> bool:
        """Whether per-example gradients come from layer captures (else vmap)."""
        return bool(getattr(self.source, "use_layers", False))

    @property
    def q_(self) -> torch.Tensor | None:
        """``Q̄`` of every training example, ``[n_train]`` (float64)."""
        return self._row_weights
