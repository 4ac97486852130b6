"""Curvature: the training objective's curvature (Hessian, Gauss-Newton, Fisher) and solvers that apply
``(C + λI)⁻¹``: explicit, CG, LiSSA, Arnoldi, K-FAC, EK-FAC, DataInf; diagnostics of the spectrum."""

from wherefrom.curvature.arnoldi import ArnoldiSolver
from wherefrom.curvature.base import SOLVERS, Solver, make_solver, register_solver
from wherefrom.curvature.cg import CGSolver
from wherefrom.curvature.datainf import DataInfSolver
from wherefrom.curvature.diagnostics import (
    CurvatureReport,
    check_conditioning,
    extreme_eigenvalues,
    solve_residuals,
)
from wherefrom.curvature.explicit import ExplicitSolver
from wherefrom.curvature.gauss_newton import CURVATURES
from wherefrom.curvature.kfac import EKFACSolver, KFACSolver
from wherefrom.curvature.lissa import LissaSolver
from wherefrom.curvature.objective import TrainingObjective

__all__ = [
    "CURVATURES",
    "SOLVERS",
    "ArnoldiSolver",
    "CGSolver",
    "CurvatureReport",
    "DataInfSolver",
    "EKFACSolver",
    "ExplicitSolver",
    "KFACSolver",
    "LissaSolver",
    "Solver",
    "TrainingObjective",
    "check_conditioning",
    "extreme_eigenvalues",
    "make_solver",
    "register_solver",
    "solve_residuals",
]
