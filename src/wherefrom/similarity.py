"""Similarities: how a training feature ``g_i`` and a preconditioned query ``P⁻¹ q_j`` become a score.

With ``u(g, q) = gᵀ P⁻¹ q`` (``P⁻¹`` the fitted preconditioner of one checkpoint), a similarity is

    sim(g_i, q_j) = r_i · u(g_i, q_j) · c_j

with a training-side factor ``r_i`` (computed once, at fit) and a query-side factor ``c_j``:

- :class:`Dot`: ``r = c = 1``;
- :class:`Cosine`: ``r_i = 1/sqrt(u(g_i, g_i))``, ``c_j = 1/sqrt(u(q_j, q_j))`` — the cosine in the metric of the
  preconditioner (the plain cosine ``g·q/(‖g‖‖q‖)`` with the identity);
- :class:`RelativeInfluence` (RelatIF, Barshan et al. 2020): ``c = 1`` and ``r_i = 1/sqrt(u(g_i, g_i))``
  (``normalization="l"``) or ``1/‖P⁻¹ g_i‖`` (``"theta"``): each training example's influence divided by how much
  it moves the model overall.

Denominators are clamped at ``1e-12``. A negative ``u(g_i, g_i)`` (an indefinite damped curvature) is reported with
a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch

from wherefrom.configurable import Configurable
from wherefrom.errors import WherefromError, unknown_name

CLAMP = 1e-12


class Similarity(Configurable):
    """Base class: :meth:`fit` computes the training-side factors, :meth:`query_factors` the query side."""

    name = "similarity"
    #: needs ``u(g_i, g_i)`` (one preconditioner solve per training example at fit time).
    needs_self = False

    def fit(self, blocks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Training-side state from ``(F, P⁻¹F)`` blocks of the training features: ``{"row": [n], ...}``."""
        return {}

    def query_factors(self, Q: torch.Tensor, TQ: torch.Tensor) -> torch.Tensor | None:
        """``c`` ``[m]`` from queries ``Q`` and ``P⁻¹Q`` (or None for 1)."""
        return None

    def self_similarity(self, state: dict[str, torch.Tensor], start: int, quad: torch.Tensor,
                        scale: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``s · sim(g_i, g_i)`` of training rows ``start ..`` from ``quad = s · u(g_i, g_i)`` (``scale`` is ``s·``)."""
        return quad


class Dot(Similarity):
    """``sim = gᵀ P⁻¹ q``."""

    name = "dot"


def _quadratic(F: torch.Tensor, TF: torch.Tensor) -> torch.Tensor:
    return (F * TF.to(F.dtype)).sum(1)


def _check_quadratic(quad: torch.Tensor, who: str) -> None:
    neg = int((quad < 0).sum())
    if neg:
        warnings.warn(f"{who}: g_iᵀ(C + λI)⁻¹g_i < 0 for {neg} training examples (the damped curvature is "
                      "indefinite); their denominators were clamped. Increase damping or use curvature='ggn'.",
                      stacklevel=4)


class Cosine(Similarity):
    """``sim = u(g, q) / sqrt(u(g, g) · u(q, q))``, the cosine in the preconditioner's metric."""

    name = "cosine"
    needs_self = True

    def fit(self, blocks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        quad = torch.cat([_quadratic(F, TF) for F, TF in blocks])
        _check_quadratic(quad, "cosine similarity")
        return {"row": 1.0 / quad.clamp_min(CLAMP).sqrt(), "self_quadratic": quad}

    def query_factors(self, Q: torch.Tensor, TQ: torch.Tensor) -> torch.Tensor:
        return 1.0 / _quadratic(Q, TQ).clamp_min(CLAMP).sqrt()

    def self_similarity(self, state: dict[str, torch.Tensor], start: int, quad: torch.Tensor,
                        scale: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return scale(torch.ones_like(quad))  # a vector's cosine with itself: self-influence cannot rank examples


class RelativeInfluence(Similarity):
    """RelatIF: ``sim = u(g_i, q_j) / sqrt(u(g_i, g_i))`` (``"l"``) or ``/ ‖P⁻¹ g_i‖`` (``"theta"``)."""

    name = "relatif"
    needs_self = True

    def __init__(self, normalization: str = "l") -> None:
        if normalization not in ("l", "theta"):
            raise WherefromError(f"normalization must be 'l' or 'theta', got {normalization!r}.")
        self.normalization = normalization

    def fit(self, blocks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        quads, dens = [], []
        for F, TF in blocks:
            quad = _quadratic(F, TF)
            quads.append(quad)
            dens.append(quad.clamp_min(CLAMP).sqrt() if self.normalization == "l" else TF.norm(dim=1).clamp_min(
                CLAMP))
        quad, den = torch.cat(quads), torch.cat(dens)
        _check_quadratic(quad, "RelatIF")
        return {"row": 1.0 / den, "denominators": den, "self_quadratic": quad}

    def self_similarity(self, state: dict[str, torch.Tensor], start: int, quad: torch.Tensor,
                        scale: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return quad * state["row"][start: start + quad.shape[0]].to(quad.dtype)


SIMILARITIES: dict[str, Callable[[], Similarity]] = {
    "dot": Dot,
    "cosine": Cosine,
    "relatif": RelativeInfluence,
    "relatif-theta": lambda: RelativeInfluence("theta"),
}


def make_similarity(spec: Similarity | str | None) -> Similarity:
    """A similarity from a name (``"dot"``, ``"cosine"``, ``"relatif"``, ``"relatif-theta"``) or an instance."""
    if spec is None:
        return Dot()
    if isinstance(spec, Similarity):
        return spec
    if spec not in SIMILARITIES:
        raise unknown_name("similarity", str(spec), list(SIMILARITIES))
    return SIMILARITIES[spec]()
