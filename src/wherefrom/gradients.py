"""Per-example gradients with ``torch.func`` (vmap over grad), produced in blocks.

For a flat parameter vector ``θ ∈ R^p`` and a function ``fn`` (training loss or target) the block for a batch of
``B`` examples is ``G[b] = ∇_θ fn(z_b; θ)``, shape ``[B, p]``. Blocks are produced one batch at a time so that
``[n, p]`` never has to be in memory; :mod:`wherefrom.store` keeps them when it fits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.func import grad, vmap
from torch.utils.data import DataLoader

from wherefrom.data.loaders import batch_length
from wherefrom.errors import NonFiniteGradientError
from wherefrom.progress import track
from wherefrom.task import LossFn, Task


def _unsqueeze_tree(example: Any) -> Any:
    if isinstance(example, torch.Tensor):
        return example.unsqueeze(0)
    if isinstance(example, (list, tuple)):
        return type(example)(_unsqueeze_tree(e) for e in example)
    if isinstance(example, dict):
        return {k: _unsqueeze_tree(v) for k, v in example.items()}
    return example


def per_example_grad_fn(task: Task, fn: LossFn, state: Mapping[str, torch.Tensor]):
    """Return ``g(θ, batch) -> Tensor[B, p]``, the per-example gradients of ``fn`` at ``θ`` (vmap over grad).

    Each example is evaluated as a batch of one, so ``fn`` and the model see the shapes they expect.
    """

    def single(flat: torch.Tensor, example: Any) -> torch.Tensor:
        batch1 = _unsqueeze_tree(example)
        return task.per_example(fn, flat, state, batch1).reshape(-1)[0]

    return vmap(grad(single), in_dims=(None, 0), randomness=task.vmap_randomness)


def check_finite(block: torch.Tensor, start: int, what: str) -> None:
    """Raise :class:`NonFiniteGradientError` naming the examples whose row of ``block`` is not finite."""
    bad = ~torch.isfinite(block).reshape(block.shape[0], -1).all(dim=1)
    if bool(bad.any()):
        idx = (torch.nonzero(bad).flatten() + start).tolist()
        raise NonFiniteGradientError(
            f"The {what} gradients of examples {idx[:10]} contain NaN or inf. Check those inputs and labels, the "
            "model's numerical stability (e.g. log of 0), and that the checkpoint is trained without divergence."
        )


def iter_gradient_blocks(
    task: Task,
    loader: DataLoader,
    state: Mapping[str, torch.Tensor],
    fn: LossFn | None = None,
    what: str = "training-loss",
    progress: bool | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, G)`` for each batch of ``loader``: rows ``start .. start+B`` of the gradient matrix.

    ``fn`` defaults to the task's training loss. The model runs in eval mode; the first batch is checked to
    return one value per example, and every block is checked for NaN/inf.
    """
    fn = task.loss_fn if fn is None else fn
    flat = task.flat_params(state)
    grad_fn = per_example_grad_fn(task, fn, state)
    start = 0
    with task.attribution_mode():
        for k, batch in enumerate(track(loader, desc=f"{what} gradients", total=len(loader), enabled=progress)):
            batch = task.prepare_batch(batch)
            if k == 0:
                task.check_per_example(fn, state, batch, what)
            block = grad_fn(flat, batch).detach()
            check_finite(block, start, what)
            yield start, block
            start += batch_length(batch)


def collect_gradients(
    task: Task,
    loader: DataLoader,
    state: Mapping[str, torch.Tensor],
    fn: LossFn | None = None,
    what: str = "training-loss",
    progress: bool | None = None,
) -> torch.Tensor:
    """All per-example gradients of ``loader`` in one ``[n, p]`` tensor (use only when it fits in memory)."""
    blocks = [b for _, b in iter_gradient_blocks(task, loader, state, fn, what, progress)]
    return torch.cat(blocks, dim=0)
