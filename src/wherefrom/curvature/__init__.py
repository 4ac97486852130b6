"""Curvature: the training objective's Hessian and solvers that apply ``(H + λI)⁻¹`` (explicit, CG, LiSSA)."""

from wherefrom.curvature.base import SOLVERS, Solver, make_solver, register_solver
from wherefrom.curvature.cg import CGSolver
from wherefrom.curvature.explicit import ExplicitSolver
from wherefrom.curvature.lissa import LissaSolver
from wherefrom.curvature.objective import TrainingObjective

__all__ = [
    "SOLVERS",
    "CGSolver",
    "ExplicitSolver",
    "LissaSolver",
    "Solver",
    "TrainingObjective",
    "make_solver",
    "register_solver",
]
