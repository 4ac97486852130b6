"""Random projections of per-example gradients (Johnson-Lindenstrauss sketches) and explicit ones.

Every projection has ``project(block [B, p], checkpoint_index) -> [B, k]``, so it can be given to any gradient
attributor as ``projection=``. See :mod:`wherefrom.projection.random` and ``docs/projection.md``.
"""

from wherefrom.projection.random import (
    PROJECTION_KINDS,
    IdentityProjection,
    MatrixProjection,
    Projection,
    RandomProjection,
    make_projection,
    seeded_generator,
    stream_seed,
)

__all__ = [
    "PROJECTION_KINDS",
    "IdentityProjection",
    "MatrixProjection",
    "Projection",
    "RandomProjection",
    "make_projection",
    "seeded_generator",
    "stream_seed",
]
