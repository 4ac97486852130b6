"""Group scores for agglomeration: CD, occlusion and build-up of groups of words or image blocks.

A group is a bool array over the *units* (token positions ``[T]``, or blocks ``[H_b, W_b]`` of
``block_size × block_size`` pixels). All scores read the model's outputs (logits) for a ``target`` class:

* ``"cd"``: the relevant part of the logits, ``β_L``, of the group's mask (:func:`~wherefrom.features.cd`);
* ``"build-up"``: the logits of the input with only the group kept (everything else set to ``baseline``);
* ``"occlusion"``: ``f(x) − f(x with the group set to baseline)``.

Occlusion and build-up may read ``output="log_prob"`` (the reference MNIST setting) or ``"prob"`` instead of the
logits. With ``contrast`` the target logit is taken against the rest: ``s_c − mean_{k≠c} s_k``, which is
``s_c − s_{1−c}`` for two classes (the reference text score) and extends it to several classes. "Zero"
(``baseline``) is 0 in the space the model reads (the normalisation mean for normalised images) and a token id
for text (default 0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wherefrom.errors import WherefromError, unknown_name
from wherefrom.features.propagate import Decomposer, is_token_input

METHODS = ("cd", "occlusion", "build-up")
OUTPUTS = ("logit", "log_prob", "prob")


def contrast_scores(logits: Tensor, target: int, contrast: bool) -> Tensor:
    """``logits[..., c]``, or ``logits[..., c] − mean of the other classes`` with ``contrast``; shape ``[...]``."""
    n_classes = logits.shape[-1]
    if not 0 <= target < n_classes:
        raise WherefromError(f"target class {target} is out of range for {n_classes} outputs.")
    own = logits[..., target]
    if not contrast or n_classes == 1:
        return own
    return own - (logits.sum(-1) - own) / (n_classes - 1)


def unit_grid(x: Tensor, block_size: int) -> tuple[int, ...]:
    """The unit grid of a single input ``x`` (batch of one): ``(T,)`` for tokens, ``(⌈H/b⌉, ⌈W/b⌉)`` for images."""
    if is_token_input(x):
        return (x.shape[-1],)
    if x.dim() < 3:
        raise WherefromError(f"image input needs shape [1, (C,) H, W]; got {tuple(x.shape)}.")
    h, w = x.shape[-2:]
    return (math.ceil(h / block_size), math.ceil(w / block_size))


def group_masks(groups: np.ndarray, x: Tensor, block_size: int) -> Tensor:
    """Input masks ``[K, *broadcastable to x]`` (float, on x's device) for unit groups ``[K, *grid]``."""
    g = torch.as_tensor(np.asarray(groups, dtype=bool), device=x.device)
    if is_token_input(x):
        return g.reshape(g.shape[0], *([1] * (x.dim() - 1)), g.shape[-1]).to(torch.get_default_dtype())
    h, w = x.shape[-2:]
    if block_size > 1:
        g = g.repeat_interleave(block_size, dim=1).repeat_interleave(block_size, dim=2)[:, :h, :w]
    return g.reshape(g.shape[0], *([1] * (x.dim() - 2)), h, w).to(x.dtype)


class GroupScorer:
    """``score(groups [K, *grid]) -> np.ndarray [K]`` for one input ``x`` (a batch of one) and one target class."""

    def __init__(self, model: nn.Module, x: Tensor, target: int, method: str = "cd", *, block_size: int = 1,
                 contrast: bool = False, baseline: Any = 0, batch_size: int = 256,
                 decomposer: Decomposer | None = None, output: str = "logit"):
        if method not in METHODS:
            raise unknown_name("agglomeration score", method, METHODS)
        if output not in OUTPUTS:
            raise unknown_name("output", output, OUTPUTS)
        if method == "cd" and output != "logit":
            raise WherefromError("CD decomposes the logits (softmax has no CD rule); output= applies to occlusion "
                                 "and build-up only.")
        self.output = output
        if x.shape[0] != 1:
            raise WherefromError(f"agglomeration explains one input: give a batch of one, not {x.shape[0]} rows.")
        self.model, self.x, self.target, self.method = model, x, int(target), method
        self.block_size, self.contrast, self.batch_size = block_size, contrast, batch_size
        self.baseline = baseline
        self.grid = unit_grid(x, block_size)
        self.decomposer = decomposer if method != "cd" else (decomposer or Decomposer(model))
        self._full: Tensor | None = None

    def logits(self, inputs: Tensor) -> Tensor:
        """Model outputs (``output``: logits, log-probabilities or probabilities) of a batch, in chunks."""
        with torch.no_grad():
            out = torch.cat([self.model(inputs[i:i + self.batch_size])
                             for i in range(0, inputs.shape[0], self.batch_size)])
        if self.output == "log_prob":
            return torch.log_softmax(out, -1)
        return torch.softmax(out, -1) if self.output == "prob" else out

    def _target(self, logits: Tensor) -> Tensor:
        return contrast_scores(logits, self.target, self.contrast)

    def _replaced(self, masks: Tensor, keep: bool) -> Tensor:
        """Inputs with the masked units kept (``keep``) or set to ``baseline`` (occlusion), one row per mask."""
        x = self.x.expand(masks.shape[0], *self.x.shape[1:])
        base = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        m = masks[:, 0].expand(masks.shape[0], *self.x.shape[1:]) > 0.5
        return torch.where(m, x, base) if keep else torch.where(m, base, x)

    def __call__(self, groups: np.ndarray) -> np.ndarray:
        masks = group_masks(groups, self.x, self.block_size)
        if self.method == "cd":
            assert self.decomposer is not None
            rel = self.decomposer.decompose(self.x, masks, batch_size=self.batch_size).rel[:, 0]
            out = self._target(rel)
        elif self.method == "build-up":
            out = self._target(self.logits(self._replaced(masks, keep=True)))
        else:
            if self._full is None:
                self._full = self._target(self.logits(self.x))[0]
            out = self._full - self._target(self.logits(self._replaced(masks, keep=False)))
        return out.detach().double().cpu().numpy()
