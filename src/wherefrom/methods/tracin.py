"""TracInCP (Pruthi et al. 2020), Grad-Dot and Grad-Cos: gradient similarities at one or more checkpoints.

- TracInCP: ``τ[i, j] = sign · Σ_c η_c ⟨∇ℓ(z_i; θ_c), ∇f(z'_j; θ_c)⟩`` over checkpoints saved along *one*
  training run, ``η_c`` the learning rate around checkpoint ``c``. Natural scale: the first-order change of the
  test target from one SGD step on ``z_i`` at each checkpoint, summed.
- Grad-Dot: ``τ = sign · g_i · q_j`` at the final checkpoint (an influence function with ``H = I``).
- Grad-Cos: ``τ = sign · g_i · q_j / (‖g_i‖ ‖q_j‖)`` at the final checkpoint, in ``[−1, 1]``.

All three are presets of :class:`~wherefrom.methods.composed.ComposedAttributor` with the identity preconditioner
(full or, with ``projection=``, randomly projected gradients).

**One pass per checkpoint.** TracInCP computes each checkpoint's training features in one forward and backward pass
with layer captures, keeping every layer for which it is cheaper as its factors ``(ã, δ)`` and the rest as explicit
per-example gradients (:class:`~wherefrom.sources.FactoredGradients`, whose cost rule compares
``T²·(cols + d_out + 1)`` with ``cols·d_out`` per layer); a pair's score is then ``Σ_layers (ã_iᵀã'_j)(δ_iᵀδ'_j)``
plus the explicit dot product, the same number as the dot product of the full gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from wherefrom.batches import batch_loop
from wherefrom.data.loaders import DataLike, as_loader
from wherefrom.errors import WherefromError
from wherefrom.methods.composed import ComposedAttributor
from wherefrom.similarity import Dot
from wherefrom.sources import FullGradients
from wherefrom.sources.factored import FactoredGradients
from wherefrom.task import Checkpoint, Task


class TracInCP(ComposedAttributor):
    """TracIn over checkpoints of one training run.

    Args:
        checkpoints: the checkpoints (state_dicts or paths); default: the task's.
        learning_rates: one ``η_c`` per checkpoint, or one number for all (default 1.0).
        gradients: ``"auto"`` (default): layers kept as factors where the cost rule says so (see the module
            docstring), explicit per-example gradients elsewhere; ``"full"``: explicit per-example gradients of every
            parameter (:class:`~wherefrom.sources.FullGradients`). Ignored when ``projection`` or ``source`` is given.
    The remaining keyword arguments (``projection``, ``execution``, ``batch_size``, ...) are those of
    :class:`~wherefrom.methods.composed.ComposedAttributor`.
    """

    def __init__(
        self, task: Task, checkpoints: Sequence[Checkpoint] | None = None,
        learning_rates: float | Sequence[float] = 1.0, gradients: str = "auto", **kwargs: Any,
    ) -> None:
        cks = list(checkpoints) if checkpoints is not None else list(task.checkpoints)
        if not cks:
            raise WherefromError("TracInCP needs checkpoints saved along training: pass checkpoints=[...] to "
                                 "TracInCP or to the Task.")
        if isinstance(learning_rates, (int, float)):
            lrs = [float(learning_rates)] * len(cks)
        else:
            lrs = [float(x) for x in learning_rates]
        if len(lrs) != len(cks):
            raise WherefromError(f"learning_rates has {len(lrs)} entries but there are {len(cks)} checkpoints; give "
                                 "one per checkpoint or one number.")
        if gradients not in ("auto", "full"):
            raise WherefromError(f"gradients must be 'auto' or 'full', got {gradients!r}.")
        if kwargs.get("source") is None and kwargs.get("projection") is None:
            kwargs["source"] = FactoredGradients() if gradients == "auto" else FullGradients()
        super().__init__(task, checkpoints=cks, weights=lrs, **kwargs)
        self.learning_rates = lrs
        self.gradients = gradients

    @property
    def _factored(self) -> FactoredGradients | None:
        """The factored source when its inner products are in use (a plan with factored layers), else None."""
        src = self.source
        return src if isinstance(src, FactoredGradients) and src.factored_ else None

    def fit(self, train: DataLike) -> TracInCP:
        """Plan which layers stay factored (from the first training batch), then fit as every composition."""
        src = self.source
        if isinstance(src, FactoredGradients):
            plain = (isinstance(self.similarity, Dot) and self.scale == 1 and self.train_weights is None
                     and self.preconditioner.name == "identity")
            if plain:
                loader = as_loader(train, self.execution.batch_size, what="training")
                state = self._checkpoints()[0][0]
                for _, batch in batch_loop(self.task, loader, state, self.train_function, check=False,
                                           progress=False):
                    src.plan(state, batch, self.train_function)
                    break
            else:
                src.set_plan([], {})
        super().fit(train)
        return self

    def _term(self, c: int, start: int, F: torch.Tensor, TQ: torch.Tensor, col: torch.Tensor | None,
              cols: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        src = self._factored
        if src is None:
            return super()._term(c, start, F, TQ, col, cols)
        return self._weights[c] * src.inner(F, TQ.to(device=F.device, dtype=F.dtype))

    def _self_influence_block(self, parts: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
        src = self._factored
        if src is None:
            return super()._self_influence_block(parts)
        start = parts[0][0]
        acc = sum(self._weights[c] * src.self_inner(F) for c, (_, F) in enumerate(parts))
        return self._finish(start, acc.unsqueeze(1), 1.0)[:, 0]  # type: ignore[union-attr]

    def score_by_module(self, test: DataLike) -> dict[str, torch.Tensor]:
        if self._factored is not None:
            raise WherefromError("score_by_module needs explicit per-example gradients, but this TracInCP keeps "
                                 f"layers {[f.name for f in self._factored.factored_]} as factors: construct it with "
                                 "gradients='full' (and one checkpoint).")
        return super().score_by_module(test)

    def _fitted_state(self, directory: str) -> dict[str, Any]:
        state = super()._fitted_state(directory)
        if isinstance(self.source, FactoredGradients):
            state["factor_plan"] = self.source.plan_state()
        return state

    def _restore_fitted(self, state: dict[str, Any], *, directory: str, train: Any = None) -> None:
        if isinstance(self.source, FactoredGradients) and "factor_plan" in state:
            self.source.load_plan(state["factor_plan"])
        super()._restore_fitted(state, directory=directory, train=train)


class GradDot(ComposedAttributor):
    """Dot product of the training-loss gradient and the test-target gradient at the final checkpoint."""

    def __init__(self, task: Task, **kwargs: Any) -> None:
        super().__init__(task, **kwargs)


class GradCos(ComposedAttributor):
    """Cosine similarity of the training-loss gradient and the test-target gradient at the final checkpoint.

    Self-influence is identically 1 for this method, so it cannot rank training examples.
    """

    def __init__(self, task: Task, **kwargs: Any) -> None:
        super().__init__(task, similarity="cosine", **kwargs)
