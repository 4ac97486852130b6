"""TracInCP (Pruthi et al. 2020), Grad-Dot and Grad-Cos: gradient similarities at one or more checkpoints.

- TracInCP: ``τ[i, j] = sign · Σ_c η_c ⟨∇ℓ(z_i; θ_c), ∇f(z'_j; θ_c)⟩`` over checkpoints saved along *one*
  training run, ``η_c`` the learning rate around checkpoint ``c``. Natural scale: the first-order change of the
  test target from one SGD step on ``z_i`` at each checkpoint, summed.
- Grad-Dot: ``τ = sign · g_i · q_j`` at the final checkpoint (an influence function with ``H = I``).
- Grad-Cos: ``τ = sign · g_i · q_j / (‖g_i‖ ‖q_j‖)`` at the final checkpoint, in ``[−1, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wherefrom.errors import WherefromError
from wherefrom.methods.base import GradientAttributor
from wherefrom.task import Checkpoint, Task


class TracInCP(GradientAttributor):
    """TracIn over checkpoints of one training run.

    Args:
        checkpoints: the checkpoints (state_dicts or paths); default: the task's.
        learning_rates: one ``η_c`` per checkpoint, or one number for all (default 1.0).
    """

    def __init__(
        self, task: Task, checkpoints: Sequence[Checkpoint] | None = None,
        learning_rates: float | Sequence[float] = 1.0, **kwargs,
    ) -> None:
        super().__init__(task, **kwargs)
        self.checkpoints = list(checkpoints) if checkpoints is not None else list(task.checkpoints)
        if not self.checkpoints:
            raise WherefromError("TracInCP needs checkpoints saved along training: pass checkpoints=[...] to "
                                 "TracInCP or to the Task.")
        if isinstance(learning_rates, (int, float)):
            self.learning_rates = [float(learning_rates)] * len(self.checkpoints)
        else:
            self.learning_rates = [float(x) for x in learning_rates]
        if len(self.learning_rates) != len(self.checkpoints):
            raise WherefromError(f"learning_rates has {len(self.learning_rates)} entries but there are "
                                 f"{len(self.checkpoints)} checkpoints; give one per checkpoint or one number.")

    def _checkpoints(self):
        return [(self.task.state(ck), lr) for ck, lr in zip(self.checkpoints, self.learning_rates)]


class GradDot(GradientAttributor):
    """Dot product of the training-loss gradient and the test-target gradient at the final checkpoint."""


class GradCos(GradientAttributor):
    """Cosine similarity of the training-loss gradient and the test-target gradient at the final checkpoint.

    Self-influence is identically 1 for this method, so it cannot rank training examples.
    """

    def _featurize(self, c: int, block: torch.Tensor) -> torch.Tensor:
        block = super()._featurize(c, block)
        return block / block.norm(dim=1, keepdim=True).clamp_min(torch.finfo(block.dtype).tiny)
