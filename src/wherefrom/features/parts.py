"""Decomposed values: a tensor split into a relevant and an irrelevant part, and masked token inputs.

Contextual decomposition (CD) carries every input-dependent activation ``g(x)`` of a network as two tensors of the
same shape, ``rel`` (β, the part due to the chosen feature group S) and ``irrel`` (γ, the part due to everything
else and to the biases), with ``rel + irrel == g(x)`` at every node. Values that do not depend on the input
(parameters, constants, shapes) stay plain tensors and are treated like biases where they are added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Parts:
    """An activation ``rel + irrel`` decomposed into the relevant part ``rel`` and the irrelevant part ``irrel``.

    Both tensors have the activation's shape; their leading dimension is the (masks × examples) batch.
    """

    rel: Tensor
    irrel: Tensor

    @property
    def full(self) -> Tensor:
        """The activation itself, ``rel + irrel``."""
        return self.rel + self.irrel

    def map(self, fn: Callable[[Tensor], Tensor]) -> Parts:
        """Apply a map that is linear without offset (reshape, permute, average, index) to both parts."""
        return Parts(fn(self.rel), fn(self.irrel))


@dataclass
class TokenPositions:
    """Integer token ids ``[N, T]`` with a relevance mask of the same shape (1 = position in the group S).

    The decomposition of a token input starts at the embedding lookup: the embedding of a position with mask 1 goes
    to the relevant part, the embedding of a position with mask 0 to the irrelevant part (fractional masks split it).
    """

    ids: Tensor
    mask: Tensor

    def map(self, fn: Callable[[Tensor], Tensor]) -> TokenPositions:
        """Apply an index-preserving map (transpose, reshape, slice) to the ids and the mask alike."""
        return TokenPositions(fn(self.ids), fn(self.mask))


def is_decomposed(value: Any) -> bool:
    """Whether ``value`` (or anything nested in a tuple / list / dict) depends on the decomposed input."""
    if isinstance(value, (Parts, TokenPositions)):
        return True
    if isinstance(value, (tuple, list)):
        return any(is_decomposed(v) for v in value)
    if isinstance(value, dict):
        return any(is_decomposed(v) for v in value.values())
    if isinstance(value, slice):
        return any(is_decomposed(v) for v in (value.start, value.stop, value.step))
    return False


def _identically_zero(t: Tensor) -> Tensor:
    """Per batch row: whether every entry of ``t`` is exactly zero. Shape ``[N, 1, 1, ...]`` (broadcastable)."""
    flat = t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1)
    zero = (flat == 0).all(dim=1)
    return zero.reshape((t.shape[0],) + (1,) * max(t.dim() - 1, 0)) if t.dim() > 0 else zero


def relevant_share(rel: Tensor, irrel: Tensor, source: Parts | None = None) -> Tensor:
    """The share of a bias that goes to the relevant part: ``|rel| / (|rel| + |irrel|)`` elementwise.

    Where both are exactly 0 (``0/0``) the share is 1 if the irrelevant part of ``source`` (the layer's input
    parts; default ``rel``/``irrel`` themselves) is identically zero in that batch row (e.g. the full mask), 0 if
    its relevant part is (e.g. the empty mask), and ½ otherwise (the reference code's 50/50 split). This keeps
    ``CD(full mask) = model(x)`` and ``CD(empty mask) = 0`` exact.
    """
    a, b = rel.abs(), irrel.abs()
    denom = a + b
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    share = a / safe
    if bool((denom == 0).any()):
        src_rel, src_irrel = (rel, irrel) if source is None else (source.rel, source.irrel)
        rel_zero = _identically_zero(src_rel).reshape((-1,) + (1,) * max(share.dim() - 1, 0))
        irrel_zero = _identically_zero(src_irrel).reshape((-1,) + (1,) * max(share.dim() - 1, 0))
        tie = 0.5 + 0.5 * irrel_zero.to(share.dtype) - 0.5 * rel_zero.to(share.dtype)
        share = torch.where(denom > 0, share, tie.expand_as(share))
    return share


def add_bias(rel: Tensor, irrel: Tensor, bias: Tensor | float | None, source: Parts | None = None) -> Parts:
    """Add ``bias`` to ``rel + irrel``, splitting it in proportion to the parts' magnitudes (CD paper eq. 5–6).

    ``rel' = rel + bias·s``, ``irrel' = irrel + bias·(1 − s)`` with ``s = relevant_share(rel, irrel, source)``,
    elementwise per output unit (per location for convolutions). The sum is exactly ``rel + irrel + bias``.
    """
    if bias is None:
        return Parts(rel, irrel)
    share = relevant_share(rel, irrel, source)
    rel_bias = bias * share
    return Parts(rel + rel_bias, irrel + (bias - rel_bias))
