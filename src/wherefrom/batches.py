"""The one loop over a dataset that every pass of the library goes through.

:func:`batch_loop` puts the model in attribution mode (eval, with deliberate exceptions restored afterwards),
moves and casts every batch to the model's device and dtype, validates the first batch (:func:`validate_first_batch`,
the single place where input checks live), and shows progress. Gradient sources, curvature products, K-FAC sample
passes and per-example statistics all iterate through it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from wherefrom.data.loaders import batch_length
from wherefrom.progress import track
from wherefrom.task import LossFn, Task


def validate_first_batch(task: Task, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | None,
                         what: str) -> None:
    """Checks run on the first batch of every pass that computes ``fn``: one value per example.

    This is the one place for input validation (shapes, dtypes, labels): every loop calls it.
    """
    if fn is not None and getattr(fn, "aux", None) is None:
        task.check_per_example(getattr(fn, "fn", fn), state, batch, what)


def batch_loop(
    task: Task, loader: DataLoader, state: Mapping[str, torch.Tensor] | None = None, fn: LossFn | None = None,
    what: str = "training-loss", progress: bool | None = None, desc: str | None = None, check: bool = True,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(start, batch)``: each prepared batch with the index of its first example.

    Args:
        task: the task (its model runs in attribution mode during the loop).
        loader: an order-stable loader (see :func:`wherefrom.data.as_loader`).
        state: the checkpoint the first-batch check evaluates ``fn`` at (default: the task's final state).
        fn: the per-example function of this pass (checked on the first batch when ``check``).
        what: what the values are, for messages (``"training-loss"``, ``"target"``, ...).
        progress: show a progress bar (``None``: the library default).
        desc: progress-bar label (default ``"{what} gradients"``).
        check: validate the first batch.
    """
    start = 0
    try:
        total = len(loader)
    except TypeError:
        total = None
    with task.attribution_mode():
        for k, batch in enumerate(track(loader, desc or f"{what} gradients", total, progress)):
            batch = task.prepare_batch(batch)
            if k == 0 and check and fn is not None:
                validate_first_batch(task, task.state(None) if state is None else state, batch, fn, what)
            yield start, batch
            start += batch_length(batch)
