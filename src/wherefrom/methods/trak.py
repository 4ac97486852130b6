"""TRAK (Park et al. 2023): projected margin gradients, a feature-space kernel inverse and ``Q = 1 − p``.

For each model ``s = 1..M`` (independently trained models ``models=``, or one run's ``checkpoints=``) with its own
random projection ``P_s ∈ R^{p×k}`` (train and test of one model share it):

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

**Kronecker projection** (``projection="kronecker"``). The same composition with LoGra's source
(:class:`~wherefrom.sources.KroneckerProjectedGradients`) on the margin gradients: for every Linear, Conv and
Embedding layer the per-example gradient ``G = Σ_t δ_t ãᵀ_t`` ``[d_out, d_in(+1)]`` is projected as

    (P_out ⊗ P_in) vec(G) = vec(Σ_t (P_out δ_t)(P_in ã_t)ᵀ)        [k_out·k_in]

from the layer captures, without forming ``G``; ``P_in``, ``P_out`` have i.i.d. ``N(0, 1/k)`` entries, drawn per
ensemble member, layer and factor from ``seed``. Other parameters (LayerNorm, parameters of no registered layer)
are projected densely from their (small) per-example gradients. ``proj_dim`` is the *total* feature dimension,
shared equally over the layers and factored per layer into ``k_out·k_in`` (see
:mod:`wherefrom.sources.kronecker`; ``att.source.ranks`` lists the pairs and ``att.source.dim`` the total, at most
``proj_dim``). The per-layer blocks are independent, so ``E[ΦᵀΦ]`` is unchanged, but the Kronecker map
concentrates less than a dense JL map of the same size: for a rank-one gradient ``u vᵀ`` (one position, e.g. an
MLP) ``‖(P_out ⊗ P_in) vec(u vᵀ)‖² = ‖P_out u‖²‖P_in v‖²`` has relative variance about ``2/k_out + 2/k_in``
rather than ``2/(k_out·k_in)``, and the known JL bounds for Kronecker maps need more dimensions for the same
distortion and failure probability. The featurisation costs ``O(T·(d_in·k_in + d_out·k_out + k_in·k_out))`` per
layer on top of one forward and backward pass, instead of ``O(p·k)`` for a dense projection of ``[B, p]``
gradients. A task without a single Kronecker layer is refused.

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
from wherefrom.configurable import Configurable, callable_name
from wherefrom.curvature.kernel import KernelSolver
from wherefrom.errors import WherefromError
from wherefrom.methods.composed import ComposedAttributor
from wherefrom.projection import Projection, make_projection
from wherefrom.sources import FullGradients, GradientSource, KroneckerProjectedGradients
from wherefrom.task import Checkpoint, Task
from wherefrom.warn import warn


class OneMinusProbability(Configurable):
    """Training-row weights ``ρ_i = (1/M) Σ_s (1 − p_i(θ_s)) = mean_s σ(−margin_i(θ_s))`` (float64, ``[n]``), with
    the margin being the attributor's training function (``train_target``)."""

    def fit(self, attributor: ComposedAttributor, loader: DataLoader) -> torch.Tensor:
        task = attributor.task
        margin_fn = attributor.train_fn if targets.is_goodness(attributor.train_fn or task.loss_fn) else None
        margin_fn = margin_fn or targets.margin
        q = torch.zeros(attributor.n_train, dtype=torch.float64, device=task.device)
        for state in attributor._states:
            flat = task.flat_params(state)
            parts = []
            with torch.no_grad():
                for _, batch in batch_loop(task, loader, state, check=False, desc="TRAK 1 - p",
                                           progress=attributor.progress):
                    margin = task.per_example(margin_fn, flat, state, batch)
                    parts.append(torch.sigmoid(-margin.to(torch.float64)))
            q += torch.cat(parts)
        return q / len(attributor._states)


def check_loss(task: Task) -> None:
    """Refuse a regression loss and warn (once per task) that another custom ``loss_fn`` is not used by TRAK."""
    loss = getattr(task.loss_fn, "fn", task.loss_fn)
    if loss is targets.cross_entropy:
        return
    if loss is targets.mean_squared_error:
        raise WherefromError("TRAK needs a classifier trained with cross-entropy (it uses margin gradients and "
                             "1 − p), but the task's loss_fn is mean_squared_error. Use InfluenceFunction, "
                             "ProjectedInfluence or LoGra for a regression task.")
    warn(f"TRAK ignores the task's loss_fn ({callable_name(task.loss_fn)}): it uses margin gradients and Q = 1 − p, "
         "which assume a classifier trained with cross-entropy on batch[1]. If the model was trained with another "
         "loss, use a method that honours it (InfluenceFunction, ProjectedInfluence, LoGra, TracInCP).",
         owner=task, key="trak-loss-fn")


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

    **What it uses.** The training side is the gradient of the *margin* ``log(p_y / (1 − p_y))`` weighted by
    ``Q = 1 − p_y``, which is exact for a classifier trained with cross-entropy on ``batch[1]``; the task's
    ``loss_fn`` is not used. A task whose ``loss_fn`` is ``wf.targets.mean_squared_error`` (regression) is refused;
    any other custom ``loss_fn`` gets a warning (once) saying it is ignored.

    **Which models.** ``models=`` are independently trained models (different seeds or random data subsets): the
    ensemble of the paper. ``checkpoints=`` are checkpoints of one training run used as ensemble members instead
    (cheaper, and usually a weaker estimate). Without either, TRAK uses the task's final model only — it does *not*
    take ``task.checkpoints`` (one run's trajectory) as independent models; a note says so once when the task has
    several.

    **Projection size.** With ``damping = 0`` the kernel ``ΦᵀΦ`` (``k × k``) is singular when ``k`` exceeds the
    number of training examples or the rank of the margin gradients (``≤ (C − 1)·(d + 1)`` for a ``d → C`` linear
    layer), and badly conditioned near it: the scores are then dominated by its smallest eigenvalues and the
    ensemble barely helps (on ``digits-lr``, ``p = 650``: LDS 0.31 at ``k = 512`` for 1, 4 or 10 models). A warning
    says so once, at fit, when ``k > min(n, p) / 4``: pass a smaller ``proj_dim`` or ``damping > 0``.

    Args:
        task: the :class:`~wherefrom.task.Task` (classification with cross-entropy).
        proj_dim: ``k``, the projection dimension (keep ``k ≪ min(n, p)`` when ``damping = 0``).
        checkpoints: checkpoints of one training run (state_dicts or paths) used as the ensemble's members.
        models: independently trained models (state_dicts or paths) of the same architecture: the ensemble.
        projection: ``"rademacher"`` (default), ``"gaussian"``, ``"sparse"`` or a projection object with
            ``project(block, model_index)``; model ``s`` uses matrix index ``s``. ``"kronecker"``: layer-wise
            Kronecker projections of the margin gradients from layer captures, never forming them (see the
            module docstring; ``proj_dim`` is the total over the layers).
        damping: ``λ`` added to ``ΦᵀΦ`` (absolute, on the paper's sum-reduced kernel; the library's mean-reduced
            damping is ``λ/n``, see the module docstring).
        seed: projection seed.
        gradients: how per-example gradients are computed: ``"auto"`` (default: from layer captures when every
            selected parameter belongs to a registered layer type, else vmap), ``"vmap"`` or ``"layers"``. Both give
            the same gradients; captures are much faster on CPU.
        target: what is explained on test points: ``"margin"`` (default, as in the paper), ``"task"`` (the task's
            ``target_fn``) or a callable ``f(outputs, batch) -> [B]``.
        train_target: the training-side margin (its gradients are the training features, ``σ(−margin)`` the row
            weights ``Q``). Default :func:`wherefrom.targets.margin`; for a causal language model
            :func:`wherefrom.targets.causal_lm_margin` (the sum of the next-token margins).
    The remaining keyword arguments (``execution``, ``batch_size``, ``memory_gb``, ``cache_dir``, ``progress``)
    are those of :class:`~wherefrom.methods.composed.ComposedAttributor`.
    """

    def __init__(
        self, task: Task, proj_dim: int = 512, checkpoints: Sequence[Checkpoint] | None = None, *,
        models: Sequence[Checkpoint] | None = None, projection: Projection | str = "rademacher",
        damping: float = 0.0, seed: int = 0, target: str | Callable = "margin", gradients: str = "auto",
        train_target: Callable = targets.margin,
        **execution: Any,
    ) -> None:
        if damping < 0:
            raise WherefromError(f"damping must be >= 0, got {damping}.")
        if models is not None and checkpoints is not None:
            raise WherefromError("Pass models= (independently trained models) or checkpoints= (one run's "
                                 "checkpoints), not both.")
        check_loss(task)
        source: GradientSource
        if isinstance(projection, str) and projection == "kronecker":
            if gradients == "vmap":
                raise WherefromError("projection='kronecker' projects the layer captures and cannot use "
                                     "gradients='vmap'; use gradients='auto' or a dense projection.")
            source, proj = KroneckerProjectedGradients(seed=seed, dim=proj_dim), None
        else:
            source, proj = FullGradients(gradients), make_projection(projection, proj_dim, seed)
        test_fn = target_function(task, target)
        if models is not None:
            cks, self.ensemble_kind = list(models), "models"
        elif checkpoints is not None:
            cks, self.ensemble_kind = list(checkpoints), "checkpoints"
        else:
            cks, self.ensemble_kind = [], "final"
            if len(task.checkpoints) > 1:
                warn(f"TRAK uses the task's final model only: the task's {len(task.checkpoints)} checkpoints are "
                     "one training run, not independently trained models. Pass models=[...] for the paper's "
                     "ensemble, or checkpoints=task.checkpoints to use that run's checkpoints as members.",
                     owner=task, key="trak-final-only")
        super().__init__(task, source, KernelSolver(0.0, label="TRAK"), "dot",
                         checkpoints=cks or None, weights=[1.0 / len(cks)] * len(cks) if cks else None,
                         scale="1/n", weight_decay=False, train_fn=train_target, test_fn=test_fn,
                         train_weights=OneMinusProbability(), projection=proj, **execution)
        if isinstance(self.source, KroneckerProjectedGradients) and not any(
                b.spec is not None for b in self.source.layout):
            raise WherefromError(
                "projection='kronecker' needs at least one layer with Kronecker structure (nn.Linear, nn.Conv1d, "
                "nn.Conv2d, nn.Embedding or a registered layer type), but none of the task's parameters "
                f"({', '.join(task.param_names[:5])}{', ...' if len(task.param_names) > 5 else ''}) belongs to "
                "one. Use a dense projection (projection='rademacher') or register a layer type "
                "(wherefrom.register_layer_type).")
        self.proj_dim = proj_dim
        self.damping = float(damping)
        self.seed = seed

    @property
    def num_models(self) -> int:
        """``M``: the number of ensemble members (1 for the final model alone)."""
        return len(self.checkpoints) if self.checkpoints is not None else 1

    def _before_fit(self, n: int) -> None:
        self.preconditioner.damping = self.damping / n  # ΦᵀΦ + λI = n (ΦᵀΦ/n + (λ/n) I)
        limit = min(n, self.task.num_params) / 4
        if self.damping == 0 and self.source.dim > limit:
            warn(f"TRAK's proj_dim={self.source.dim} is above min(n_train={n}, parameters={self.task.num_params}) / 4: "
                 "with damping=0 its kernel ΦᵀΦ is singular or badly conditioned, the scores are dominated by its "
                 "smallest eigenvalues and ensembling barely helps. Pass proj_dim <= "
                 f"{max(1, int(limit))} or damping > 0.", owner=self.task, key=f"trak-proj-dim-{self.source.dim}-{n}")

    @property
    def use_layers(self) -> bool:
        """Whether per-example gradients come from layer captures (else vmap)."""
        if isinstance(self.source, KroneckerProjectedGradients):
            return True
        return bool(getattr(self.source, "use_layers", False))

    @property
    def q_(self) -> torch.Tensor | None:
        """``Q̄`` of every training example, ``[n_train]`` (float64)."""
        return self._row_weights
