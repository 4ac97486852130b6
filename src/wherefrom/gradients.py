"""Per-example gradients with ``torch.func`` (vmap over grad), the finiteness check, and probes.

For a flat parameter vector ``θ ∈ R^p`` and a function ``fn`` (training loss or target) the block for a batch of
``B`` examples is ``G[b] = ∇_θ fn(z_b; θ)``, shape ``[B, p]``. Blocks are produced one batch at a time so that
``[n, p]`` never has to be in memory. Gradient *sources* (:mod:`wherefrom.sources`) decide how features are
computed (vmap here, or layer captures in :mod:`wherefrom.layers`) and the one loop over the data is
:func:`wherefrom.batches.batch_loop`.

A :class:`Probe` is a per-example function with optional per-example extra data ``aux`` (e.g. a column of the
output-Hessian root for the exact Gauss-Newton factors): ``fn(outputs, batch, aux) -> [B]``. vmap slices ``aux``
together with the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import grad, vmap
from torch.utils.data import DataLoader

from wherefrom.batches import batch_loop
from wherefrom.errors import NonFiniteGradientError, WherefromError
from wherefrom.task import LossFn, Task


@dataclass(frozen=True)
class Probe:
    """A per-example function ``fn(outputs, batch, aux) -> [B]`` with its per-example data ``aux`` ``[B, ...]``.

    Called like a loss function, ``probe(outputs, batch)``; vmap slices ``aux`` per example.
    """

    fn: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]
    aux: torch.Tensor | None = None

    def __call__(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        return self.fn(outputs, batch) if self.aux is None else self.fn(outputs, batch, self.aux)


def unsqueeze_example(example: Any) -> Any:
    """One example inside ``vmap`` (tensors, or lists / tuples / mappings of them) as a batch of one."""
    if isinstance(example, torch.Tensor):
        return example.unsqueeze(0)
    if isinstance(example, (list, tuple)):
        return type(example)(unsqueeze_example(e) for e in example)
    if isinstance(example, Mapping):
        return {k: unsqueeze_example(v) for k, v in example.items()}
    return example


def per_example_grad_fn(task: Task, fn: LossFn | Probe, state: Mapping[str, torch.Tensor]):
    """Return ``g(θ, batch) -> Tensor[B, p]``, the per-example gradients of ``fn`` at ``θ`` (vmap over grad).

    Each example is evaluated as a batch of one, so ``fn`` and the model see the shapes they expect. A
    :class:`Probe` with ``aux`` has its data sliced per example too.
    """
    if isinstance(fn, Probe) and fn.aux is not None:
        aux_fn, aux = fn.fn, fn.aux

        def single_aux(flat: torch.Tensor, example: Any, aux_row: torch.Tensor) -> torch.Tensor:
            batch1, aux1 = unsqueeze_example(example), aux_row.unsqueeze(0)
            return task.per_example(lambda o, b: aux_fn(o, b, aux1), flat, state, batch1).reshape(-1)[0]

        mapped = vmap(grad(single_aux), in_dims=(None, 0, 0), randomness=task.vmap_randomness)
        return lambda flat, batch: mapped(flat, batch, aux)
    plain = fn.fn if isinstance(fn, Probe) else fn

    def single(flat: torch.Tensor, example: Any) -> torch.Tensor:
        return task.per_example(plain, flat, state, unsqueeze_example(example)).reshape(-1)[0]

    return vmap(grad(single), in_dims=(None, 0), randomness=task.vmap_randomness)


def vmap_gradients(task: Task, fn: LossFn | Probe, state: Mapping[str, torch.Tensor], batch: Any,
                   flat: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`per_example_grad_fn` applied to a batch, with a clear error when the model cannot be vmapped.

    Models whose forward branches on data (Hugging Face attention-mask code, ``.item()``) cannot run under
    ``torch.func.vmap``; their parameters must then all belong to registered layer types (layer captures).
    """
    flat = task.flat_params(state) if flat is None else flat
    try:
        return per_example_grad_fn(task, fn, state)(flat, batch).detach()
    except RuntimeError as exc:
        if "vmap" not in str(exc):
            raise
        raise WherefromError(
            f"Per-example gradients of parameters {task.param_names[:6]} need torch.func.vmap, which this model does "
            "not support (its forward branches on data, as Hugging Face attention-mask code does). Select only "
            "parameters of registered layer types (wherefrom.layers: Linear, Embedding, LayerNorm, GPT-2 Conv1D, "
            "...) with gradients='auto', or register a layer type for the module that owns them."
        ) from exc


def check_finite(block: torch.Tensor, start: int, what: str) -> None:
    """Raise :class:`NonFiniteGradientError` naming the examples whose row of ``block`` is not finite."""
    if bool(torch.isfinite(block.sum())):  # one reduction; the row-wise check only when it fails
        return
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
    """Yield ``(start, G)`` for each batch of ``loader``: rows ``start .. start+B`` of the vmap gradient matrix.

    ``fn`` defaults to the task's training loss. Equivalent to the ``FullGradients("vmap")`` source; kept as the
    plain reference path.
    """
    fn = task.loss_fn if fn is None else fn
    flat = task.flat_params(state)
    grad_fn = per_example_grad_fn(task, fn, state)
    for start, batch in batch_loop(task, loader, state, fn, what, progress):
        block = grad_fn(flat, batch).detach()
        check_finite(block, start, what)
        yield start, block


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
