"""dattri 0.3.0: IFAttributor{Explicit,CG,LiSSA,Arnoldi}, TRAKAttributor and TracInAttributor.

dattri's influence attributors return ``g_iᵀ (H + r I)⁻¹ q_j`` with ``H`` the Hessian of the loss function given
to the task (here the mean cross-entropy over the cached full-training batch), i.e. ``n`` times wherefrom's
leave-one-out scale with the same sign (positive = helpful); we divide by ``n``. TRAK and TracIn scores are
positive = helpful as returned. Loaders: the training and test sets each in one batch, so that dattri computes
each inverse-HVP once (it recomputes the test transformation for every pair of train and test batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import (
    ARNOLDI_ITER,
    ARNOLDI_RANK,
    CG_MAX_ITER,
    CG_TOL,
    HVP_BATCH,
    LISSA_DEPTH,
    PROJ_DIM,
    Context,
    default_dtype,
    margin,
)
from torch.func import functional_call


def _batch(data):
    x, y = data
    if x.dim() == 1:  # vmap over in_dims=0 hands single examples without a batch dimension
        x, y = x.unsqueeze(0), y.reshape(1)
    return x, y.long()


def _task(ctx: Context, fn, checkpoints=None):
    from dattri.task import AttributionTask

    model = ctx.model()

    def f(params, data):
        x, y = _batch(data)
        logits = functional_call(model, params, (x.to(ctx.dtype),))
        return fn(logits, y)

    return AttributionTask(loss_func=f, model=model, checkpoints=ctx.state if checkpoints is None else checkpoints)


def _ce(logits, y):
    return F.cross_entropy(logits, y)


def _margin_sum(logits, y):
    return margin(logits, y).sum()


def _full(ctx: Context):
    return ctx.loader("train", len(ctx.y_train)), ctx.loader("test", len(ctx.y_test))


def _influence(ctx: Context, attributor) -> torch.Tensor:
    train, test = _full(ctx)
    attributor.cache(train)
    return attributor.attribute(train, test) / len(ctx.y_train)


def explicit(ctx):
    from dattri.algorithm.influence_function import IFAttributorExplicit

    return _influence(ctx, IFAttributorExplicit(_task(ctx, _ce), regularization=ctx.peer_damping)), {}


def cg(ctx):
    from dattri.algorithm.influence_function import IFAttributorCG

    att = IFAttributorCG(_task(ctx, _ce), max_iter=CG_MAX_ITER, tol=CG_TOL, regularization=ctx.peer_damping)
    return _influence(ctx, att), {"iterations": CG_MAX_ITER}


def lissa(ctx):
    """dattri's recursion returns ``(H + damping·scaling·I)⁻¹ v``: damping = (wd + λ) / scaling (default 50)."""
    from dattri.algorithm.influence_function import IFAttributorLiSSA

    scaling = 50.0
    att = IFAttributorLiSSA(_task(ctx, _ce), batch_size=HVP_BATCH, recursion_depth=LISSA_DEPTH,
                            damping=ctx.peer_damping / scaling, scaling=scaling)
    return _influence(ctx, att), {}


def _arnoldi(ctx, proj_dim: int):
    """dattri draws its start vector and Hessenberg matrix in torch's default dtype: run in the model's dtype."""
    from dattri.algorithm.influence_function import IFAttributorArnoldi

    att = IFAttributorArnoldi(_task(ctx, _ce), proj_dim=proj_dim, max_iter=ARNOLDI_ITER,
                              regularization=ctx.peer_damping)
    with default_dtype(ctx.dtype):
        return _influence(ctx, att), {}


def arnoldi(ctx):
    """proj_dim = ARNOLDI_RANK of its default 100 Arnoldi iterations (uniform random start vector)."""
    return _arnoldi(ctx, ARNOLDI_RANK)


def arnoldi_all(ctx):
    """dattri's defaults: proj_dim = 100 of 100 iterations, i.e. every Ritz pair kept."""
    return _arnoldi(ctx, ARNOLDI_ITER)


def trak(ctx):
    """TRAKAttributor: margin gradients, 1 − p weights, default projector (the basic one on CPU)."""
    from dattri.algorithm.trak import TRAKAttributor

    model = ctx.model()

    def prob(params, data):
        x, y = _batch(data)
        logits = functional_call(model, params, (x.to(ctx.dtype),))
        return torch.exp(-F.cross_entropy(logits, y))

    att = TRAKAttributor(_task(ctx, _margin_sum, checkpoints=[ctx.state]), correct_probability_func=prob,
                         projector_kwargs={"proj_dim": PROJ_DIM, "device": "cpu"}, device="cpu")
    att.cache(ctx.loader("train"))
    return att.attribute(ctx.loader("test")), {}


def tracin(ctx):
    from dattri.algorithm.tracin import TracInAttributor

    att = TracInAttributor(_task(ctx, _ce, checkpoints=list(ctx.trajectory)),
                           weight_list=torch.tensor(ctx.learning_rates, dtype=ctx.dtype), normalized_grad=False,
                           device="cpu")
    train, test = _full(ctx)
    return att.attribute(train, test), {}


METHODS = {"explicit": explicit, "cg": cg, "lissa": lissa, "arnoldi": arnoldi, "arnoldi-all": arnoldi_all,
           "trak": trak, "tracin": tracin}
