"""``acd(model, x, target)``: the agglomerative contextual decomposition hierarchy of one prediction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wherefrom.errors import WherefromError
from wherefrom.features.agglomerate import agglomerate_1d, agglomerate_2d
from wherefrom.features.hierarchy import Hierarchy
from wherefrom.features.propagate import is_token_input
from wherefrom.features.scoring import GroupScorer, unit_grid

# Defaults of the reference code: text (notebook) and images (MNIST/ImageNet agglomerate()).
TEXT_DEFAULTS = {"percentile": 99.5, "num_iters": 25, "contrast": True, "absolute": True}
IMAGE_DEFAULTS = {"percentile": 99.0, "num_iters": 5, "contrast": False, "absolute": False}


def acd(model: nn.Module, x: Tensor, target: int | None = None,
        method: str | Callable[[np.ndarray], Any] = "cd", *, percentile: float | None = None,
        num_iters: int | None = None, block_size: int = 1, contrast: bool | None = None,
        absolute: bool | None = None, smooth: bool = True, final_merge: bool = True, baseline: Any = 0,
        labels: Sequence[str] | None = None, batch_size: int = 256, output: str = "logit",
        progress: bool | None = None) -> Hierarchy:
    """Build the ACD hierarchy of ``model``'s prediction on one input.

    Args:
        model: an ``nn.Module`` in eval mode (traceable by ``torch.fx`` for ``method="cd"``).
        x: one input with a batch dimension of 1: token ids ``[1, T]`` (1-D agglomeration over words) or an image
            ``[1, (C,) H, W]`` (2-D agglomeration over ``block_size × block_size`` blocks).
        target: the explained class (default: the predicted one). Any number of classes.
        method: ``"cd"``, ``"occlusion"``, ``"build-up"``, or any ``score(groups [K, *grid]) -> [K]`` callable.
        percentile: selection threshold (default 99.5 for text, 99 for images).
        num_iters: growing iterations (default 25 for text, 5 for images).
        block_size: image block side in pixels (the reference's ``sweep_dim``).
        contrast: score the target class against the mean of the others (default on for text, off for images).
        absolute: threshold on ``|score|`` (default on for text, off for images).
        smooth: (images) add blocks with ≥ 3 of 4 neighbours selected after each iteration.
        final_merge: (images) merge the final components over all pairs until one is left.
        baseline: "zero" for occlusion / build-up: a value in the model's input space, or a token id.
        labels: the words of a text input, kept for plots.
        batch_size: rows per model pass.
        output: what occlusion / build-up read: ``"logit"`` (default), ``"log_prob"`` (the reference MNIST
            setting) or ``"prob"``. CD always decomposes the logits.

    Returns:
        A :class:`~wherefrom.features.hierarchy.Hierarchy` (levels, ``order()``, ``to_dict()``, ``plot()``).
    """
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] != 1:
        raise WherefromError("acd explains one input: pass it with a batch dimension of 1, e.g. x[None] "
                             f"(got shape {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}).")
    text = is_token_input(x)
    defaults = TEXT_DEFAULTS if text else IMAGE_DEFAULTS
    if target is None:
        with torch.no_grad():
            target = int(model(x)[0].argmax())
    contrast = defaults["contrast"] if contrast is None else contrast
    if callable(method):
        score, name = method, getattr(method, "__name__", "custom")
    else:
        score = GroupScorer(model, x, int(target), method, block_size=block_size, contrast=contrast,
                            baseline=baseline, batch_size=batch_size, output=output)
        name = method
    grid = unit_grid(x, block_size)
    p = defaults["percentile"] if percentile is None else percentile
    iters = defaults["num_iters"] if num_iters is None else num_iters
    use_abs = defaults["absolute"] if absolute is None else absolute
    if text:
        if labels is not None and len(labels) != grid[0]:
            raise WherefromError(f"{len(labels)} labels for {grid[0]} tokens.")
        hierarchy = agglomerate_1d(score, grid[0], p, iters, use_abs, progress=progress)
    else:
        hierarchy = agglomerate_2d(score, grid, p, iters, use_abs, smooth, final_merge, progress=progress)
        img = x[0].detach().double().cpu()
        hierarchy.image = (img.mean(0) if img.dim() == 3 else img).numpy()
    hierarchy.method, hierarchy.target, hierarchy.block_size = name, int(target), block_size
    hierarchy.labels = list(labels) if labels is not None else None
    hierarchy.params.update({"contrast": contrast, "baseline": baseline if np.isscalar(baseline) else "tensor",
                             "output": output})
    return hierarchy
