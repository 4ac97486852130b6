"""Curvature and preconditioners: the training objective's curvature (Hessian, Gauss-Newton, Fisher) in the feature
space of a gradient source, and preconditioners that apply ``(C + λI)⁻¹`` with one meaning of damping: identity,
explicit, CG, LiSSA, Arnoldi, K-FAC, EK-FAC, DataInf, the kernel solve, diagonal; diagnostics of the spectrum."""

from wherefrom.curvature.arnoldi import ArnoldiSolver
from wherefrom.curvature.base import (
    SOLVERS,
    Preconditioner,
    Solver,
    make_preconditioner,
    make_solver,
    register_preconditioner,
    register_solver,
)
from wherefrom.curvature.cg import CGSolver
from wherefrom.curvature.damping import Relative, relative, resolve_damping
from wherefrom.curvature.datainf import DataInfSolver
from wherefrom.curvature.diagnostics import (
    CurvatureReport,
    check_conditioning,
    extreme_eigenvalues,
    solve_residuals,
)
from wherefrom.curvature.explicit import ExplicitSolver
from wherefrom.curvature.gauss_newton import CURVATURES
from wherefrom.curvature.identity import DiagonalSolver, IdentityPreconditioner
from wherefrom.curvature.kernel import KernelSolver
from wherefrom.curvature.kfac import EKFACSolver, KFACSolver
from wherefrom.curvature.lissa import LissaSolver
from wherefrom.curvature.nystrom import NystromSolver
from wherefrom.curvature.objective import TrainingObjective
from wherefrom.curvature.space import CurvatureOperator, FeatureSpace

__all__ = [
    "CURVATURES",
    "SOLVERS",
    "ArnoldiSolver",
    "CGSolver",
    "CurvatureOperator",
    "CurvatureReport",
    "DataInfSolver",
    "DiagonalSolver",
    "EKFACSolver",
    "ExplicitSolver",
    "FeatureSpace",
    "IdentityPreconditioner",
    "KFACSolver",
    "KernelSolver",
    "LissaSolver",
    "NystromSolver",
    "Preconditioner",
    "Relative",
    "Solver",
    "TrainingObjective",
    "check_conditioning",
    "extreme_eigenvalues",
    "make_preconditioner",
    "make_solver",
    "register_preconditioner",
    "register_solver",
    "relative",
    "resolve_damping",
    "solve_residuals",
]
