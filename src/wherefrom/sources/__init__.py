"""Gradient sources: where the per-example features of every gradient method come from.

- :class:`FullGradients` — per-example gradients ``[B, p]`` (layer captures or vmap);
- :class:`FactoredGradients` — the same with layers kept as factors ``(ã, δ)`` where cheaper (TracInCP);
- :class:`ProjectedGradients` — random projections ``Pᵀg`` of another source;
- :class:`KroneckerProjectedGradients` — LoGra's layer-wise ``(P_out ⊗ P_in)`` projections from captures;
- :class:`LastLayerGradients` — one module's parameters only.

See :mod:`wherefrom.sources.base` for the interface and :func:`feature_blocks` for the loop.
"""

from wherefrom.sources.base import FeatureBlock, GradientSource, SampleBatch, feature_blocks
from wherefrom.sources.factored import FactoredGradients
from wherefrom.sources.full import FullGradients
from wherefrom.sources.kronecker import KroneckerProjectedGradients
from wherefrom.sources.last_layer import LastLayerGradients
from wherefrom.sources.projected import ProjectedGradients


def make_source(spec: GradientSource | None = None, projection=None) -> GradientSource:
    """A source from a specification: a source (passed through), or ``None`` for full gradients — randomly
    projected when ``projection`` is given."""
    if spec is not None:
        if projection is not None:
            return ProjectedGradients(projection, spec)
        return spec
    return FullGradients() if projection is None else ProjectedGradients(projection)


__all__ = [
    "FactoredGradients",
    "FeatureBlock",
    "FullGradients",
    "GradientSource",
    "KroneckerProjectedGradients",
    "LastLayerGradients",
    "ProjectedGradients",
    "SampleBatch",
    "feature_blocks",
    "make_source",
]
