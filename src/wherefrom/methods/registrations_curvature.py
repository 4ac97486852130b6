"""Registrations of the scalable-curvature methods in :mod:`wherefrom.registry` (imported lazily by the registry).

Defaults are chosen for small networks such as the ``mnist-mlp`` setting (784→128→10, ``p ≈ 10⁵``) and every
default can be overridden through ``ctx.options`` (e.g. ``{"damping": 1e-3, "rank": 100}``):

- ``if-arnoldi``: Gauss-Newton curvature (positive semi-definite, so no eigenvalue is dropped), top 50 of 100
  Ritz pairs, ``λ = 0.01``;
- ``if-kfac`` / ``if-ekfac``: exact-GGN Kronecker factors, ``λ = None`` → ``0.1·mean(Λ)`` per layer;
- ``if-datainf``: DataInf's per-layer heuristic ``λ_l = 0.1·mean g²``;
- ``relatif``: ℓ-relative influence with EK-FAC (one cheap inverse product per training example).
"""

from __future__ import annotations

from typing import Any

from wherefrom.methods.influence import InfluenceFunction
from wherefrom.methods.relatif import RelatIF
from wherefrom.registry import MethodContext, register_method


def _factory(cls, solver: str, defaults: dict[str, Any]):
    def factory(ctx: MethodContext):
        opts = {**defaults, **ctx.options}
        if solver == "arnoldi":
            opts.setdefault("seed", ctx.seed)
        return cls(ctx.task, solver=opts.pop("solver", solver), **opts)

    return factory


register_method("if-arnoldi", "Influence function, Arnoldi low-rank inverse of the Gauss-Newton matrix")(
    _factory(InfluenceFunction, "arnoldi", {"damping": 0.01, "curvature": "ggn", "rank": 50, "iterations": 100}))
register_method("if-kfac", "Influence function, K-FAC (Kronecker-factored Gauss-Newton) inverse")(
    _factory(InfluenceFunction, "kfac", {"damping": None}))
register_method("if-ekfac", "Influence function, EK-FAC (eigenvalue-corrected K-FAC) inverse")(
    _factory(InfluenceFunction, "ekfac", {"damping": None}))
register_method("if-datainf", "Influence function, DataInf layer-wise closed-form inverse")(
    _factory(InfluenceFunction, "datainf", {"damping": None}))
register_method("relatif", "RelatIF: ℓ-relative influence (EK-FAC inverse)")(
    _factory(RelatIF, "ekfac", {"damping": None}))
