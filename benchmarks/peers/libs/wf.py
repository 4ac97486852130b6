"""wherefrom (from the working tree) on every method of the comparison, with the settings of common.py."""

from __future__ import annotations

import torch
from common import ARNOLDI_ITER, ARNOLDI_RANK, CG_MAX_ITER, CG_TOL, HVP_BATCH, LAMBDA, LISSA_DEPTH, PROJ_DIM, Context

import wherefrom as wf

wf.set_progress(False)


def _task(ctx: Context) -> wf.Task:
    return wf.Task(ctx.model(), weight_decay=ctx.weight_decay)


def _influence(ctx: Context, solver: str, **options) -> tuple[torch.Tensor, wf.InfluenceFunction]:
    method = wf.InfluenceFunction(_task(ctx), solver=solver, damping=LAMBDA, **options).fit(ctx.train_set())
    return method.score(ctx.test_set()), method


def explicit(ctx):
    return _influence(ctx, "explicit")[0], {}


def kfac(ctx):
    return _influence(ctx, "kfac")[0], {}


def ekfac(ctx):
    return _influence(ctx, "ekfac")[0], {}


def cg(ctx):
    scores, m = _influence(ctx, "cg", max_iter=CG_MAX_ITER, tol=CG_TOL)
    res = m.solver.residuals_
    return scores, {"iterations": m.solver.iterations_, "max_residual": float(res.max()) if res is not None else None}


def lissa(ctx):
    scores, m = _influence(ctx, "lissa", depth=LISSA_DEPTH, hvp_batch_size=HVP_BATCH)
    info = {k: v for k, v in vars(m.solver).items() if k.endswith("_") and isinstance(v, (int, float))}
    res = getattr(m.solver, "residuals_", None)
    if isinstance(res, torch.Tensor):
        info["median_residual"] = float(res.median())
    return scores, info


def _arnoldi(ctx, rank: int, iterations: int, **options):
    scores, m = _influence(ctx, "arnoldi", curvature="hessian", rank=rank, iterations=iterations, **options)
    return scores, {"kept": len(m.solver.eigenvalues_), "iterations": len(m.solver.ritz_values_),
                    "block_size": m.solver.block_size}


def arnoldi(ctx):
    """Same curvature (Hessian), damping, rank, Krylov dimension and iteration (single-vector Arnoldi, as dattri's
    and pyDVL's) as the peers."""
    return _arnoldi(ctx, ARNOLDI_RANK, ARNOLDI_ITER, block_size=1)


def arnoldi_all(ctx):
    """dattri's default budget: every Ritz pair of a 100-dimensional Krylov space kept."""
    return _arnoldi(ctx, ARNOLDI_ITER, ARNOLDI_ITER)


def trak(ctx):
    method = wf.TRAK(_task(ctx), proj_dim=PROJ_DIM, checkpoints=[ctx.state]).fit(ctx.train_set())
    return method.score(ctx.test_set()), {}


def tracin(ctx):
    method = wf.TracInCP(_task(ctx), checkpoints=ctx.trajectory, learning_rates=ctx.learning_rates)
    return method.fit(ctx.train_set()).score(ctx.test_set()), {}


METHODS = {"explicit": explicit, "kfac": kfac, "ekfac": ekfac, "cg": cg, "lissa": lissa, "arnoldi": arnoldi,
           "arnoldi-all": arnoldi_all, "trak": trak, "tracin": tracin}
