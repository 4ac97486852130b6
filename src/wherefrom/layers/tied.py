"""Tied weights: one parameter used by several Kronecker layers (GPT-2's token embedding and output head).

When a weight ``W`` is shared by layers ``m = 1..M`` (e.g. ``transformer.wte`` (an ``nn.Embedding``) and
``lm_head`` (an ``nn.Linear``) of a Hugging Face causal LM with ``tie_word_embeddings``), its per-example gradient is
the sum of every use:

    G = Σ_m G_m,        G_m = Σ_t δ^m_t (ã^m_t)ᵀ

Each ``G_m`` is a Kronecker sum in its own layer's orientation. The tied layer takes the orientation of the first
member (model order); a member whose weight is stored the other way round (``transposed`` differs) contributes
``G_mᵀ = Σ_t ã^m_t (δ^m_t)ᵀ``, i.e. its ``a`` and ``δ`` swap roles. Concatenating every member's positions then gives
one Kronecker sum ``G = Σ_{t over all members} δ_t ã_tᵀ``, so per-example gradients, K-FAC/EK-FAC factors and LoGra's
projected features all work on it unchanged (K-FAC's factors then mix the members' statistics, an approximation as
usual for K-FAC; per-example gradients are exact).

Members must own only the shared weight (no bias), which is the case for tied embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wherefrom.layers.base import KroneckerLayer, LayerIO


class TiedLayer(KroneckerLayer):
    """Several Kronecker layers sharing one weight, captured as one Kronecker layer (see the module docstring).

    Args:
        members: the layers that use the weight, in model order; each is captured on its own module.
        owned: the shared parameter's name (as ``named_parameters()`` lists it).
    """

    def __init__(self, members: Sequence[KroneckerLayer], owned: str) -> None:
        first = members[0]
        super().__init__(first.name, first.module, [owned])
        self.members = list(members)
        self.transposed = first.transposed  # type: ignore[misc]

    @classmethod
    def reason_unsupported(cls, members: Sequence[object]) -> str | None:
        """Why these layers cannot be captured as one tied layer (``None``: they can)."""
        if not all(isinstance(m, KroneckerLayer) for m in members):
            return "a tied weight shared with a layer that is not a Kronecker layer"
        if any(m.has_bias for m in members):  # type: ignore[attr-defined]
            return "a tied weight in a layer whose bias is selected too"
        return None

    def dims(self) -> tuple[int, int]:
        return self.members[0].dims()

    def capture_members(self, ios: Sequence[LayerIO]) -> LayerIO:
        """One :class:`LayerIO` from the members' captures: positions concatenated, roles swapped where the
        member's orientation differs from the first member's."""
        a_parts, d_parts = [], []
        for member, io in zip(self.members, ios):
            if member.transposed == self.transposed:
                a_parts.append(io.a)
                d_parts.append(io.delta)
            else:
                a_parts.append(io.delta.to(io.a.dtype))
                d_parts.append(io.a.to(io.delta.dtype))
        a = torch.cat([p.to(d_parts[0].dtype) for p in a_parts], dim=1)
        delta = torch.cat(d_parts, dim=1)
        return LayerIO(self.name, a, delta, False, self.transposed, sum(io.real_positions for io in ios))

    def member_names(self) -> list[str]:
        return [m.name for m in self.members]
