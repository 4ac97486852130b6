"""What is explained on a test point: per-example target functions ``f(outputs, batch) -> Tensor[B]``.

A target is either *loss-like* (lower is better, e.g. the cross-entropy) or a *goodness* (higher is better, e.g.
the margin). Sequence models (token logits ``[B, T, V]``) use :func:`sequence_cross_entropy`: the per-example loss
is the sum (or mean) of the token losses, with padding and ignored labels (``-100``) masked out.

Every attributor returns "positive = helpful": for a loss-like target a helpful training example lowers the test
target, for a goodness it raises it. A callable marks itself as a goodness with the attribute
``higher_is_better = True`` (see :func:`goodness`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from wherefrom.errors import WherefromError

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
    labels = labels_of(batch)
    if outputs.dim() == 3 and labels.dim() == 2:
        raise WherefromError(
            f"The outputs are token logits {tuple(outputs.shape)} with token labels {tuple(labels.shape)}, but the "
            "default loss is one cross-entropy per example. Pass loss_fn=wf.targets.causal_lm_loss for a causal "
            "language model (labels shifted by one), wf.targets.token_cross_entropy for per-token labels, or "
            "wf.targets.sequence_cross_entropy(reduction='mean', shift=...) for the mean over tokens.")
    return F.cross_entropy(outputs, labels.long(), reduction="none")


@goodness
def margin(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """Per-example classification margin ``logit_y − logsumexp_{c≠y} logit_c = log(p_y / (1 − p_y))``, ``[B]``.

    Computed without forming ``p_y`` so that it stays finite when ``p_y → 1``. Higher is better.
    """
    y = labels_of(batch).long()
    correct = outputs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    is_label = torch.arange(outputs.shape[-1], device=outputs.device) == y.unsqueeze(-1)  # vmap-safe one-hot
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


# ---------------------------------------------------------------------------------------------- sequence losses
IGNORE_INDEX = -100


def _token_losses(outputs: torch.Tensor, batch: Any, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token losses ``[B, T']`` and the mask ``[B, T']`` of the tokens that count.

    Labels are ``batch["labels"]`` (or ``batch[1]``; for ``shift`` a dict batch without labels uses its
    ``input_ids``). A token counts when its label is not ``-100`` and, when the batch has an ``attention_mask``,
    the mask is 1 at the label's position. With ``shift`` the logits at ``t`` predict the label at ``t + 1``.
    """
    if isinstance(batch, dict) and "labels" not in batch and shift and "input_ids" in batch:
        labels = batch["input_ids"]
    else:
        labels = labels_of(batch)
    if outputs.dim() != 3 or labels.shape != outputs.shape[:2]:
        raise WherefromError(
            f"Sequence losses need token logits [B, T, V] and labels [B, T]; got outputs {tuple(outputs.shape)} and "
            f"labels {tuple(labels.shape)}. Use wf.targets.cross_entropy for one label per example.")
    labels = labels.long()
    mask = labels != IGNORE_INDEX
    if isinstance(batch, dict) and "attention_mask" in batch:
        mask = mask & (batch["attention_mask"] != 0)
    if shift:
        outputs, labels, mask = outputs[:, :-1], labels[:, 1:], mask[:, 1:]
    safe = torch.where(mask, labels, torch.zeros_like(labels))  # vmap-safe: no ignore_index branch
    losses = F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), safe.reshape(-1), reduction="none")
    return losses.reshape(labels.shape) * mask.to(losses.dtype), mask


def _reduce(losses: torch.Tensor, mask: torch.Tensor, mean: bool) -> torch.Tensor:
    total = losses.sum(dim=1)
    return total / mask.sum(dim=1).clamp(min=1).to(total.dtype) if mean else total


def causal_lm_loss(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """Per-example causal language-model loss, ``[B]``: ``Σ_t −log p(y_{t+1} | y_{≤t})`` over the tokens that count.

    Outputs are logits ``[B, T, V]``; labels ``[B, T]`` are the input ids (``batch["labels"]``, else
    ``batch["input_ids"]``), shifted inside as in Hugging Face models. Labels ``-100`` and positions where the
    ``attention_mask`` is 0 (padding) do not count, so padding changes nothing.
    """
    return _reduce(*_token_losses(outputs, batch, shift=True), mean=False)


def causal_lm_mean_loss(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """As :func:`causal_lm_loss`, averaged over the tokens that count in each example, ``[B]``."""
    return _reduce(*_token_losses(outputs, batch, shift=True), mean=True)


def token_cross_entropy(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """Per-example sum of token cross-entropies without shifting (token classification, masked LM), ``[B]``.

    Labels ``-100`` and padding (``attention_mask`` 0) do not count.
    """
    return _reduce(*_token_losses(outputs, batch, shift=False), mean=False)


def token_cross_entropy_mean(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """As :func:`token_cross_entropy`, averaged over the tokens that count in each example, ``[B]``."""
    return _reduce(*_token_losses(outputs, batch, shift=False), mean=True)


@goodness
def causal_lm_margin(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """Per-example sum of next-token margins ``Σ_t log(p_t / (1 − p_t))`` of a causal LM over the tokens that count
    (as in :func:`causal_lm_loss`), ``[B]``. Higher is better. TRAK's training side for language models
    (``TRAK(task, train_target=causal_lm_margin)``).
    """
    if isinstance(batch, dict) and "labels" not in batch and "input_ids" in batch:
        labels = batch["input_ids"]
    else:
        labels = labels_of(batch)
    _, mask = _token_losses(outputs, batch, shift=True)  # validates shapes, builds the mask
    logits, y = outputs[:, :-1], labels[:, 1:].long()
    y = torch.where(mask, y, torch.zeros_like(y))
    correct = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    is_label = torch.arange(logits.shape[-1], device=logits.device) == y.unsqueeze(-1)
    others = torch.logsumexp(logits.masked_fill(is_label, float("-inf")), dim=-1)
    return ((correct - others) * mask.to(logits.dtype)).sum(dim=1)


def sequence_cross_entropy(reduction: str = "sum", shift: bool = True) -> TargetFn:
    """The per-example sequence loss for ``reduction`` (``"sum"`` or ``"mean"`` of the token losses) and ``shift``
    (``True``: causal LM, the logits at ``t`` predict token ``t + 1``; ``False``: one label per position).

    Returns one of the named functions :func:`causal_lm_loss`, :func:`causal_lm_mean_loss`,
    :func:`token_cross_entropy`, :func:`token_cross_entropy_mean` (so a saved attributor finds it again).
    """
    table = {("sum", True): causal_lm_loss, ("mean", True): causal_lm_mean_loss,
             ("sum", False): token_cross_entropy, ("mean", False): token_cross_entropy_mean}
    if (reduction, bool(shift)) not in table:
        raise WherefromError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
    return table[(reduction, bool(shift))]
