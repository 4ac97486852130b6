"""Registrations of the built-in methods in :mod:`wherefrom.registry` (imported lazily by the registry)."""

from __future__ import annotations

from wherefrom.methods.influence import InfluenceFunction
from wherefrom.methods.tracin import GradCos, GradDot, TracInCP
from wherefrom.registry import MethodContext, register_method


def _influence(solver: str, default_damping: float):
    def factory(ctx: MethodContext):
        opts = {"damping": default_damping, **ctx.options}
        return InfluenceFunction(ctx.task, solver=solver, **opts)

    return factory


register_method("if-explicit", "Influence function, explicit Hessian inverse")(_influence("explicit", 0.01))
register_method("if-cg", "Influence function, conjugate-gradient inverse-HVP")(_influence("cg", 0.01))
register_method("if-lissa", "Influence function, LiSSA inverse-HVP")(_influence("lissa", 0.01))


@register_method("tracin", "TracInCP over the checkpoints of the reference training run")
def _tracin(ctx: MethodContext):
    lrs = list(ctx.learning_rates) if ctx.learning_rates else 1.0
    return TracInCP(ctx.task, checkpoints=list(ctx.trajectory) or None, learning_rates=lrs, **ctx.options)


@register_method("grad-dot", "Gradient dot product at the final checkpoint")
def _grad_dot(ctx: MethodContext):
    return GradDot(ctx.task, **ctx.options)


@register_method("grad-cos", "Gradient cosine similarity at the final checkpoint")
def _grad_cos(ctx: MethodContext):
    return GradCos(ctx.task, **ctx.options)
