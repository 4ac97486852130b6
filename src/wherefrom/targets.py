"""What is explained on a test point: per-example target functions ``f(outputs, batch) -> Tensor[B]``.

A target is either *loss-like* (lower is better, e.g. the cross-entropy) or a *goodness* (higher is better, e.g.
the margin). Every attributor returns "positive = helpful": for a loss-like target a helpful training example
lowers the test target, for a goodness it raises it. A callable marks itself as a goodness with the attribute
``higher_is_better = True`` (see :func:`goodness`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

TargetFn = Callable[[torch.Tensor, Any], torch.Tensor]


def labels_of(batch: Any) -> torch.Tensor:
    """The labels of a ``(inputs, labels, ...)`` batch: its second element."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    if isinstance(batch, dict) and "labels" in batch:
        return batch["labels"]
    raise TypeError(
        "The default loss and targets read labels from batch[1] (or batch['labels']); this batch has none. "
        "Pass loss_fn= / target_fn= that read your labels."
    )


def goodness(fn: TargetFn) -> TargetFn:
    """Mark ``fn`` as a higher-is-better target (returns ``fn`` itself)."""
    fn.higher_is_better = True  # type: ignore[attr-defined]
    return fn


def is_goodness(fn: TargetFn) -> bool:
    """Whether ``fn`` is a higher-is-better target."""
    return bool(getattr(fn, "higher_is_better", False))


def cross_entropy(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """Per-example cross-entropy ``-log p_y``, shape ``[B]`` (the default training loss)."""
    return F.cross_entropy(outputs, labels_of(batch).long(), reduction="none")


@goodness
def margin(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """Per-example classification margin ``logit_y − logsumexp_{c≠y} logit_c = log(p_y / (1 − p_y))``, ``[B]``.

    Computed without forming ``p_y`` so that it stays finite when ``p_y → 1``. Higher is better.
    """
    y = labels_of(batch).long()
    correct = outputs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    is_label = torch.zeros_like(outputs, dtype=torch.bool).scatter(-1, y.unsqueeze(-1), True)  # vmap-safe one-hot
    others = outputs.masked_fill(is_label, float("-inf"))
    return correct - torch.logsumexp(others, dim=-1)


@goodness
def log_probability(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """Per-example log-probability of the labelled class, ``[B]``. Higher is better."""
    return -cross_entropy(outputs, batch)


def mean_squared_error(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """Per-example squared error summed over output dimensions, ``[B]`` (for regression tasks)."""
    y = labels_of(batch).to(outputs.dtype).reshape(outputs.shape)
    return (outputs - y).pow(2).reshape(outputs.shape[0], -1).sum(-1)
