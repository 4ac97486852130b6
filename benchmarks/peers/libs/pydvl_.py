"""pyDVL 0.10.0 (``pydvl[influence]``): DirectInfluence, CgInfluence, LissaInfluence, ArnoldiInfluence, EkfacInfluence.

``influences(x_test, y_test, x, y)`` returns ``[n_test, n_train]`` values ``⟨H⁻¹ ∇ℓ(z_test), ∇ℓ(z)⟩`` for the
up-weighting mode, with ``H`` the Hessian of the mean loss over the fitted loader: ``n`` times wherefrom's scale,
same sign. We transpose and divide by ``n``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import ARNOLDI_RANK, CG_MAX_ITER, CG_TOL, HVP_BATCH, LISSA_DEPTH, Context, default_dtype


def _scores(ctx: Context, model, loader) -> torch.Tensor:
    model.fit(loader)
    values = model.influences(ctx.x_test, ctx.y_test, ctx.x_train, ctx.y_train)
    return values.T / len(ctx.y_train)


def explicit(ctx):
    from pydvl.influence.torch import DirectInfluence

    m = DirectInfluence(ctx.model(), F.cross_entropy, regularization=ctx.peer_damping)
    return _scores(ctx, m, ctx.loader("train")), {}


def cg(ctx):
    """Block CG over all test right-hand sides (solve_simultaneously=True), rtol = CG_TOL, atol = 0."""
    from pydvl.influence.torch import CgInfluence

    m = CgInfluence(ctx.model(), F.cross_entropy, regularization=ctx.peer_damping, rtol=CG_TOL, atol=0.0,
                    maxiter=CG_MAX_ITER, solve_simultaneously=True, warn_on_max_iteration=False)
    return _scores(ctx, m, ctx.loader("train")), {}


def lissa(ctx):
    """pyDVL's defaults (scale 10, rtol 1e-4) with maxiter = LISSA_DEPTH and mini-batches of HVP_BATCH."""
    from pydvl.influence.torch import LissaInfluence

    m = LissaInfluence(ctx.model(), F.cross_entropy, regularization=ctx.peer_damping, maxiter=LISSA_DEPTH,
                       warn_on_max_iteration=False)
    return _scores(ctx, m, ctx.loader("train", HVP_BATCH)), {}


def arnoldi(ctx):
    """ArnoldiInfluence (ARPACK via scipy) with rank = ARNOLDI_RANK, its default Krylov dimension (2·rank + 1)."""
    from pydvl.influence.torch import ArnoldiInfluence

    m = ArnoldiInfluence(ctx.model(), F.cross_entropy, regularization=ctx.peer_damping, rank=ARNOLDI_RANK)
    return _scores(ctx, m, ctx.loader("train")), {}


def ekfac(ctx):
    """EkfacInfluence with update_diagonal=True (the eigenvalue correction; its default False is plain K-FAC)."""
    from pydvl.influence.torch import EkfacInfluence

    m = EkfacInfluence(ctx.model(), update_diagonal=True, hessian_regularization=ctx.peer_damping)
    with default_dtype(ctx.dtype):  # its Kronecker buffers use torch's default dtype
        return _scores(ctx, m, ctx.loader("train")), {}


METHODS = {"explicit": explicit, "cg": cg, "lissa": lissa, "arnoldi": arnoldi, "ekfac": ekfac}
