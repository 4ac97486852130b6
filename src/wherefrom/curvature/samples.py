"""Curvature samples: the per-example (pseudo-)gradients whose outer products make up a curvature matrix.

For a curvature ``C = (1/n) Σ_i Σ_k s_ik s_ikᵀ`` (plus ``wd·I``) the samples ``s_ik`` are gradients of *probes*
(per-example functions) of each example:

- ``"ggn"`` (also used for ``"hessian"``, whose Gauss-Newton part is what factored approximations describe): one
  probe per column ``l_ik`` of ``L_i`` with ``L_i L_iᵀ = Λ_i``, the output-space Hessian of the loss — the pseudo-loss
  ``o ↦ o · l_ik``, whose gradient is ``J_iᵀ l_ik``. This is the exact generalised Gauss-Newton, no sampling;
- ``"fisher"``: the loss with one label per example sampled from the model (seeded, drawn once);
- ``"empirical_fisher"``: the loss with the true labels.

:func:`iter_samples` walks the training data once (through :func:`wherefrom.batches.batch_loop`) and yields, per
batch, one :class:`~wherefrom.sources.SampleBatch` per probe, in the feature space of a gradient source.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from wherefrom.batches import batch_loop
from wherefrom.curvature.gauss_newton import output_hessian_roots, output_hessians, sample_labels, with_labels
from wherefrom.data.loaders import batch_length
from wherefrom.gradients import Probe
from wherefrom.sources.base import GradientSource, SampleBatch
from wherefrom.task import Task


def _pseudo_loss(outputs: torch.Tensor, batch: Any, l: torch.Tensor) -> torch.Tensor:  # noqa: E741
    """``o · l`` per example: its output gradient is ``l`` (a column of ``L_i``), so ``δ = J_iᵀ l``."""
    return (outputs * l.to(outputs.dtype)).sum(-1)


def sampled_fisher_labels(task: Task, loader: DataLoader, state: Mapping[str, torch.Tensor],
                          seed: int = 0) -> torch.Tensor:
    """Labels ``ŷ_i ∼ softmax(f(x_i; θ̂))`` for the true Fisher, ``[n]``, drawn with a generator seeded ``seed``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    theta = task.flat_params(state)
    parts = []
    with torch.no_grad():
        for _, batch in batch_loop(task, loader, state, check=False, progress=False):
            parts.append(sample_labels(task.outputs(theta, state, batch), gen))
    return torch.cat(parts)


def curvature_probes(task: Task, state: Mapping[str, torch.Tensor], batch: Any, curvature: str,
                     labels: torch.Tensor | None = None, fn: Any = None) -> list[tuple[Probe, Any]]:
    """``[(probe, batch)]`` whose per-example gradients are the curvature samples of one prepared batch.

    ``labels`` are this batch's sampled labels (``curvature="fisher"``); ``fn`` is the per-example function of the
    empirical Fisher (default: the training loss; TRAK's features use the margin).
    """
    if curvature in ("ggn", "hessian"):
        with torch.no_grad():
            outputs = task.outputs(task.flat_params(state), state, batch)
        L = output_hessian_roots(output_hessians(task.loss_fn, outputs, batch))  # [B, C, K]
        return [(Probe(_pseudo_loss, L[:, :, k].contiguous()), batch) for k in range(L.shape[2])]
    if curvature == "fisher":
        batch = with_labels(batch, labels)  # type: ignore[arg-type]
        return [(Probe(task.loss_fn), batch)]
    return [(Probe(task.loss_fn if fn is None else fn), batch)]


def iter_samples(source: GradientSource, loader: DataLoader, state: Mapping[str, torch.Tensor], curvature: str,
                 c: int = 0, labels: torch.Tensor | None = None, desc: str = "curvature samples",
                 progress: bool | None = None, fn: Any = None) -> Iterator[list[SampleBatch]]:
    """Per batch, the samples of every probe in ``source``'s feature space (one pass over ``loader``)."""
    task = source.require_setup()
    for start, batch in batch_loop(task, loader, state, check=False, desc=desc, progress=progress):
        size = batch_length(batch)
        batch_labels = labels[start: start + size] if labels is not None else None
        yield [source.batch_sample(state, b, probe, c)
               for probe, b in curvature_probes(task, state, batch, curvature, batch_labels, fn)]


def same_input(a0: torch.Tensor, a: torch.Tensor) -> bool:
    """Whether two probes of one batch captured the same layer inputs ``ã`` (the same tensor, or equal ones). They
    do for every probe of an ordinary layer; a tied weight's transposed member has output gradients in the role of
    inputs, one per probe."""
    return a0 is a or (a0.shape == a.shape and torch.equal(a0, a))


def share_inputs(probes: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]
                 ) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The samples of one batch with equal inputs ``ã`` of a block made the same tensor (the probes of one batch
    capture the same layer inputs), so they are stored and rotated once."""
    first: dict[str, torch.Tensor] = {}
    out = []
    for probe in probes:
        shared = {}
        for name, (a, d) in probe.items():
            a0 = first.setdefault(name, a)
            shared[name] = (a0 if same_input(a0, a) else a, d)
        out.append(shared)
    return out
