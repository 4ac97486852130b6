"""Registrations of the projection-family methods (TRAK, LoGra, RPS, KNN-Shapley, projected TracIn / IF).

Bench names and what they take from the :class:`~wherefrom.registry.MethodContext`:

- ``trak-1``, ``trak-10``, ``trak-50``: TRAK over the first 1 / 10 / 50 models of ``ctx.ensemble`` (models trained
  independently, e.g. on random 50% subsets); an error if fewer exist. ``trak``: every model of the ensemble (or
  ``options["num_models"]`` of them). ``proj_dim`` defaults to 512 (dattri's benchmark setting).
- ``logra`` / ``logra-kfac``: LoGra with the raw / K-FAC projected Fisher at the final model, ``rank=16`` per factor.
- ``rps``: representer points of ``ctx.last_layer`` (default: the last Linear layer).
- ``knn-shapley``: KNN-Shapley (``k=10``) on ``ctx.features_fn``, by default the input of the last Linear layer.
- ``tracin-proj``, ``grad-dot-proj``: TracInCP / Grad-Dot on 512-d Rademacher projections of the gradients.
- ``if-proj``: influence function with the damped projected empirical Fisher (512-d Gaussian projection).

``ctx.options`` are passed to the constructors and override these defaults; ``ctx.seed`` seeds the projections.
"""

from __future__ import annotations

from typing import Any

from wherefrom.errors import WherefromError
from wherefrom.methods.knn_shapley import KNNShapley
from wherefrom.methods.logra import LoGra
from wherefrom.methods.projected_influence import ProjectedInfluence
from wherefrom.methods.representer import RepresenterPoints, last_layer_features_fn
from wherefrom.methods.tracin import GradDot, TracInCP
from wherefrom.methods.trak import TRAK
from wherefrom.projection import RandomProjection
from wherefrom.registry import MethodContext, register_method


def _trak(num_models: int | None):
    def factory(ctx: MethodContext) -> TRAK:
        opts: dict[str, Any] = {"proj_dim": 512, "seed": ctx.seed, **ctx.options}
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

    return factory


register_method("trak", "TRAK over every model of the ensemble (options: num_models, proj_dim, damping)")(_trak(None))
for _m in (1, 10, 50):
    register_method(f"trak-{_m}", f"TRAK over the first {_m} independently trained models, 512-d projection")(
        _trak(_m))


@register_method("logra", "LoGra: Kronecker-projected gradients (rank 16 per factor), raw projected Fisher")
def _logra(ctx: MethodContext) -> LoGra:
    return LoGra(ctx.task, **{"rank": 16, "preconditioner": "raw", "seed": ctx.seed, **ctx.options})


@register_method("logra-kfac", "LoGra with the K-FAC preconditioner in the projected space")
def _logra_kfac(ctx: MethodContext) -> LoGra:
    return LoGra(ctx.task, **{"rank": 16, "preconditioner": "kfac", "seed": ctx.seed, **ctx.options})


@register_method("rps", "Representer points (RPS-L2) of the last linear layer")
def _rps(ctx: MethodContext) -> RepresenterPoints:
    return RepresenterPoints(ctx.task, ctx.last_layer, **ctx.options)


@register_method("knn-shapley", "Exact KNN-Shapley values (k=10) on the penultimate-layer embedding")
def _knn(ctx: MethodContext) -> KNNShapley:
    opts: dict[str, Any] = {"k": 10, **ctx.options}
    fn = ctx.features_fn if ctx.features_fn is not None else last_layer_features_fn(ctx.task, ctx.last_layer)
    return KNNShapley(fn, **opts)


def _projection(ctx: MethodContext, opts: dict[str, Any], kind: str) -> dict[str, Any]:
    dim = opts.pop("proj_dim", 512)
    kind = opts.pop("projection", kind)
    if isinstance(kind, str):
        opts["projection"] = RandomProjection(dim, kind, seed=ctx.seed)
    else:
        opts["projection"] = kind
    return opts


@register_method("tracin-proj", "TracInCP over the reference run's checkpoints, 512-d Rademacher projection")
def _tracin_proj(ctx: MethodContext) -> TracInCP:
    opts = _projection(ctx, dict(ctx.options), "rademacher")
    lrs = list(ctx.learning_rates) if ctx.learning_rates else 1.0
    return TracInCP(ctx.task, checkpoints=list(ctx.trajectory) or None, learning_rates=lrs, **opts)


@register_method("grad-dot-proj", "Grad-Dot on 512-d Rademacher projections of the gradients")
def _grad_dot_proj(ctx: MethodContext) -> GradDot:
    return GradDot(ctx.task, **_projection(ctx, dict(ctx.options), "rademacher"))


@register_method("if-proj", "Influence function with the damped projected empirical Fisher (512-d)")
def _if_proj(ctx: MethodContext) -> ProjectedInfluence:
    return ProjectedInfluence(ctx.task, **{"proj_dim": 512, "seed": ctx.seed, "damping": 0.01, **ctx.options})
