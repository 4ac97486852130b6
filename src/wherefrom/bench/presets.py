"""Benchmark presets: the named method configurations ``wherefrom bench`` runs (``if-cg``, ``trak-10``, ...).

Each preset is a class, its default options and how it reads a :class:`~wherefrom.registry.MethodContext`; the
options a user gives (``ctx.options``, e.g. ``--option if-cg.damping=1e-3``) override the defaults, and a benchmark
setting's own per-method options (:mod:`wherefrom.bench.settings`) are applied by the runner on top of those. A
preset repeats no class default: only what differs from the class is listed here.

- ``if-explicit``, ``if-cg``, ``if-lissa``: influence functions (``λ = 0.01``, the class default);
- ``if-arnoldi``: Gauss-Newton curvature (positive semi-definite, so no eigenvalue is dropped), top 50 of 100 Ritz
  pairs; ``if-kfac`` / ``if-ekfac`` / ``if-datainf``: ``damping="auto"`` (0.1 × the mean eigenvalue per block);
  ``relatif``: ℓ-relative influence with EK-FAC;
- ``tracin``, ``grad-dot``, ``grad-cos``; ``tracin-proj``, ``grad-dot-proj``: on 512-d Rademacher projections;
  ``if-proj``: influence with the damped projected empirical Fisher (512-d Gaussian projection);
- ``trak`` (every model of ``ctx.ensemble``, option ``num_models``), ``trak-1``, ``trak-10``, ``trak-50`` (the first
  M models; an error if fewer exist), ``proj_dim=512``;
- ``logra`` / ``logra-kfac``: LoGra with the raw / K-FAC projected Fisher, rank 16 per factor;
- ``rps``: representer points of ``ctx.last_layer``; ``knn-shapley``: KNN-Shapley (``k=10``) on ``ctx.features_fn``
  (default: the input of the last Linear layer).

``ctx.seed`` seeds every random projection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wherefrom.errors import WherefromError
from wherefrom.methods import (
    TRAK,
    GradCos,
    GradDot,
    InfluenceFunction,
    KNNShapley,
    LoGra,
    ProjectedInfluence,
    RelatIF,
    RepresenterPoints,
    TracInCP,
)
from wherefrom.methods.representer import last_layer_features_fn
from wherefrom.projection import RandomProjection
from wherefrom.registry import MethodContext, register_method

Build = Callable[[MethodContext, dict[str, Any]], Any]


@dataclass(frozen=True)
class Preset:
    """A named method configuration: ``build(ctx, options)`` with ``options = {**defaults, **ctx.options}``."""

    name: str
    description: str
    build: Build
    defaults: dict[str, Any] = field(default_factory=dict)

    def register(self) -> Preset:
        register_method(self.name, self.description)(lambda ctx: self.build(ctx, {**self.defaults, **ctx.options}))
        return self


# ---------------------------------------------------------------------------------------------- builders
def _influence(cls: type, solver: str) -> Build:
    def build(ctx: MethodContext, opts: dict[str, Any]) -> Any:
        if solver == "arnoldi":
            opts.setdefault("seed", ctx.seed)
        return cls(ctx.task, solver=opts.pop("solver", solver), **opts)

    return build


def _trajectory(ctx: MethodContext) -> dict[str, Any]:
    return {"checkpoints": list(ctx.trajectory) or None,
            "learning_rates": list(ctx.learning_rates) if ctx.learning_rates else 1.0}


def _projection(ctx: MethodContext, opts: dict[str, Any], kind: str) -> dict[str, Any]:
    dim = opts.pop("proj_dim", 512)
    kind = opts.pop("projection", kind)
    opts["projection"] = RandomProjection(dim, kind, seed=ctx.seed) if isinstance(kind, str) else kind
    return opts


def _trak(num_models: int | None) -> Build:
    def build(ctx: MethodContext, opts: dict[str, Any]) -> TRAK:
        opts.setdefault("seed", ctx.seed)
        m = opts.pop("num_models", num_models)
        models = list(ctx.ensemble)
        if not models:
            raise WherefromError("TRAK needs an ensemble of independently trained models (MethodContext.ensemble "
                                 "is empty); this benchmark setting provides none.")
        if m is not None:
            if len(models) < m:
                raise WherefromError(f"trak-{m} needs {m} independently trained models but the setting provides "
                                     f"{len(models)} (MethodContext.ensemble); train more or use a smaller trak-M.")
            models = models[:m]
        return TRAK(ctx.task, checkpoints=models, **opts)

    return build


def _knn(ctx: MethodContext, opts: dict[str, Any]) -> KNNShapley:
    fn = ctx.features_fn if ctx.features_fn is not None else last_layer_features_fn(ctx.task, ctx.last_layer)
    return KNNShapley(fn, **opts)


def _logra(ctx: MethodContext, opts: dict[str, Any]) -> LoGra:
    opts.setdefault("seed", ctx.seed)
    return LoGra(ctx.task, **opts)


def _if_proj(ctx: MethodContext, opts: dict[str, Any]) -> ProjectedInfluence:
    opts.setdefault("seed", ctx.seed)
    return ProjectedInfluence(ctx.task, **opts)


PRESETS: dict[str, Preset] = {p.name: p.register() for p in [
    Preset("if-explicit", "Influence function, explicit Hessian inverse", _influence(InfluenceFunction, "explicit")),
    Preset("if-cg", "Influence function, conjugate-gradient inverse-HVP", _influence(InfluenceFunction, "cg")),
    Preset("if-lissa", "Influence function, LiSSA inverse-HVP", _influence(InfluenceFunction, "lissa")),
    Preset("if-arnoldi", "Influence function, Arnoldi low-rank inverse of the Gauss-Newton matrix",
           _influence(InfluenceFunction, "arnoldi"), {"curvature": "ggn", "rank": 50, "iterations": 100}),
    Preset("if-kfac", "Influence function, K-FAC (Kronecker-factored Gauss-Newton) inverse",
           _influence(InfluenceFunction, "kfac"), {"damping": "auto"}),
    Preset("if-ekfac", "Influence function, EK-FAC (eigenvalue-corrected K-FAC) inverse",
           _influence(InfluenceFunction, "ekfac"), {"damping": "auto"}),
    Preset("if-datainf", "Influence function, DataInf layer-wise closed-form inverse",
           _influence(InfluenceFunction, "datainf"), {"damping": "auto"}),
    Preset("relatif", "RelatIF: ℓ-relative influence (EK-FAC inverse)", _influence(RelatIF, "ekfac"),
           {"damping": "auto"}),
    Preset("tracin", "TracInCP over the checkpoints of the reference training run",
           lambda ctx, opts: TracInCP(ctx.task, **{**_trajectory(ctx), **opts})),
    Preset("grad-dot", "Gradient dot product at the final checkpoint", lambda ctx, opts: GradDot(ctx.task, **opts)),
    Preset("grad-cos", "Gradient cosine similarity at the final checkpoint",
           lambda ctx, opts: GradCos(ctx.task, **opts)),
    Preset("tracin-proj", "TracInCP over the reference run's checkpoints, 512-d Rademacher projection",
           lambda ctx, opts: TracInCP(ctx.task, **{**_trajectory(ctx), **_projection(ctx, opts, "rademacher")})),
    Preset("grad-dot-proj", "Grad-Dot on 512-d Rademacher projections of the gradients",
           lambda ctx, opts: GradDot(ctx.task, **_projection(ctx, opts, "rademacher"))),
    Preset("if-proj", "Influence function with the damped projected empirical Fisher (512-d)", _if_proj),
    Preset("trak", "TRAK over every model of the ensemble (options: num_models, proj_dim, damping)", _trak(None)),
    *[Preset(f"trak-{m}", f"TRAK over the first {m} independently trained models, 512-d projection", _trak(m))
      for m in (1, 10, 50)],
    Preset("logra", "LoGra: Kronecker-projected gradients (rank 16 per factor), raw projected Fisher", _logra),
    Preset("logra-kfac", "LoGra with the K-FAC preconditioner in the projected space", _logra,
           {"preconditioner": "kfac"}),
    Preset("rps", "Representer points (RPS-L2) of the last linear layer",
           lambda ctx, opts: RepresenterPoints(ctx.task, ctx.last_layer, **opts)),
    Preset("knn-shapley", "Exact KNN-Shapley values (k=10) on the penultimate-layer embedding", _knn, {"k": 10}),
]}
