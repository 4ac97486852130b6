"""``nn.Embedding`` from token ids, without one-hot inputs unless a consumer asks for them.

An embedding ``y_t = W[x_t]`` (``W`` ``[V, d]``) is a bias-free Linear layer on one-hot inputs ``a_t = e_{x_t}``
(``[V]``), so its per-example gradient matrix (``[d, V]``, the transpose of ``W``'s layout) is

    G = Σ_t δ_t e_{x_t}ᵀ,        i.e. column v of G is Σ_{t: x_t = v} δ_t.

:class:`IndexedIO` keeps the ids ``[B, T]`` instead of the one-hot ``[B, T, V]``: per-example gradients are a
scatter-add of ``δ`` (``O(B·T·d)`` work instead of ``O(B·T·V·d)``) and projections ``P a_t = P[:, x_t]`` are a
gather (LoGra). Consumers that need ``a`` itself (K-FAC's input covariance) get the one-hot on first access. Ids
equal to ``padding_idx`` and dropped positions (padding) have ``a_t = 0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wherefrom.layers.base import LayerIO, register_layer_type
from wherefrom.layers.builtin import EmbeddingLayer, _rows


class IndexedIO(LayerIO):
    """A Kronecker capture whose inputs are one-hot rows given by ids (see the module docstring).

    Args:
        name: the layer's module name.
        index: ``[B, T]`` ids; ``-1`` where ``a_t = 0``.
        num_classes: ``V``.
        delta: ``[B, T, d]`` output gradients.
        positions: the real (non-padding) positions (``None``: all ``B·T``).
    """

    def __init__(self, name: str, index: torch.Tensor, num_classes: int, delta: torch.Tensor,
                 positions: int | None = None) -> None:
        # LayerIO's fields, except ``a`` (a property here)
        self.name, self.delta, self.has_bias, self.transposed = name, delta, False, True
        self.positions = positions
        self.index, self.num_classes = index, num_classes
        self._a: torch.Tensor | None = None

    @property
    def a(self) -> torch.Tensor:  # type: ignore[override]
        """The one-hot inputs ``[B, T, V]`` (built on first access)."""
        if self._a is None:
            keep = self.index >= 0
            self._a = F.one_hot(self.index.clamp(min=0), self.num_classes).to(self.delta.dtype)
            self._a = self._a * keep.unsqueeze(-1).to(self.delta.dtype)
        return self._a

    def gradients(self) -> torch.Tensor:
        """``G_b`` ``[B, d, V]`` by a scatter-add of ``δ`` into the columns of the ids."""
        B, T, d = self.delta.shape
        V = self.num_classes
        keep = (self.index >= 0).to(self.delta.dtype).unsqueeze(-1)
        rows = (self.index.clamp(min=0) + V * torch.arange(B, device=self.index.device).unsqueeze(1)).reshape(-1)
        out = torch.zeros(B * V, d, dtype=self.delta.dtype, device=self.delta.device)
        out.index_add_(0, rows, (self.delta * keep).reshape(B * T, d))
        return out.view(B, V, d).transpose(1, 2)

    def project_inputs(self, P: torch.Tensor | None) -> torch.Tensor:
        """``P a_t = P[:, x_t]`` (``0`` where ``a_t = 0``), ``[B, T, k]``."""
        if P is None:
            return self.a
        keep = (self.index >= 0).to(self.delta.dtype).unsqueeze(-1)
        cols = P.T.to(device=self.delta.device, dtype=self.delta.dtype)[self.index.clamp(min=0)]
        return cols * keep

    def without_positions(self, drop: torch.Tensor) -> IndexedIO:
        return IndexedIO(self.name, self.index.masked_fill(drop, -1), self.num_classes, self.delta,
                         self.real_positions - int(drop.sum()))


@register_layer_type(nn.Embedding)
class IndexedEmbeddingLayer(EmbeddingLayer):
    """``nn.Embedding`` captured as ids (:class:`IndexedIO`); same gradients as the one-hot rule, less memory."""

    def capture(self, x: torch.Tensor, g: torch.Tensor) -> LayerIO:
        delta = _rows(g)
        idx = x.reshape(x.shape[0], -1).long()
        if self.module.padding_idx is not None:
            idx = idx.masked_fill(idx == self.module.padding_idx, -1)
        return IndexedIO(self.name, idx, self.module.num_embeddings, delta)
