"""TracInCP (Pruthi et al. 2020), Grad-Dot and Grad-Cos: gradient similarities at one or more checkpoints.

- TracInCP: ``τ[i, j] = sign · Σ_c η_c ⟨∇ℓ(z_i; θ_c), ∇f(z'_j; θ_c)⟩`` over checkpoints saved along *one*
  training run, ``η_c`` the learning rate around checkpoint ``c``. Natural scale: the first-order change of the
  test target from one SGD step on ``z_i`` at each checkpoint, summed.
- Grad-Dot: ``τ = sign · g_i · q_j`` at the final checkpoint (an influence function with ``H = I``).
- Grad-Cos: ``τ = sign · g_i · q_j / (‖g_i‖ ‖q_j‖)`` at the final checkpoint, in ``[−1, 1]``.

All three are presets of :class:`~wherefrom.methods.composed.ComposedAttributor` with the identity preconditioner
(full or, with ``projection=``, randomly projected gradients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wherefrom.errors import WherefromError
from wherefrom.methods.composed import ComposedAttributor
from wherefrom.task import Checkpoint, Task


class TracInCP(ComposedAttributor):
    """TracIn over checkpoints of one training run.

    Args:
        checkpoints: the checkpoints (state_dicts or paths); default: the task's.
        learning_rates: one ``η_c`` per checkpoint, or one number for all (default 1.0).
    The remaining keyword arguments (``projection``, ``execution``, ``batch_size``, ...) are those of
    :class:`~wherefrom.methods.composed.ComposedAttributor`.
    """

    def __init__(
        self, task: Task, checkpoints: Sequence[Checkpoint] | None = None,
        learning_rates: float | Sequence[float] = 1.0, **kwargs: Any,
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
        super().__init__(task, checkpoints=cks, weights=lrs, **kwargs)
        self.learning_rates = lrs


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
