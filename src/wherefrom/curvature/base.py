"""The preconditioner interface and registry: fit on a curvature space, then apply ``(C + λI)⁻¹`` to rows.

Every preconditioner:

- ``fit(space) -> self`` on the training side of one checkpoint in the feature space it works in (see
  :mod:`wherefrom.curvature.space`; a :class:`~wherefrom.curvature.TrainingObjective` is the parameter space);
- ``solve(Q [m, d]) -> [m, d]``: ``(C + λI)⁻¹ q`` for every row ``q``;
- ``damping``: a settable property with one meaning everywhere (:mod:`wherefrom.curvature.damping`) — changing it
  after ``fit`` takes effect at the next ``solve`` without refitting;
- ``state_dict()`` / ``load_state_dict(state)``: its fitted factors as tensors and JSON-able values (empty for the
  ones that work from the space directly, CG and LiSSA, which need the space again to solve: ``needs_space``);
- ``config()``: its registered name and constructor options (:mod:`wherefrom.configurable`).

``Solver`` is the older name of :class:`Preconditioner`; ``make_solver``/``register_solver``/``SOLVERS`` keep
working.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import torch

from wherefrom.configurable import Configurable
from wherefrom.curvature.damping import check_damping, damping_config, is_relative, resolve_damping
from wherefrom.curvature.gauss_newton import check_curvature
from wherefrom.errors import WherefromError, unknown_name


class Preconditioner(Configurable):
    """Base class: ``fit(space) -> self``; ``solve(V [m, d]) -> (C + λI)⁻¹ V`` as ``[m, d]``.

    Args:
        damping: ``λ`` — a number, ``"auto"`` or ``relative(f)`` (see :mod:`wherefrom.curvature.damping`).
        curvature: the curvature to invert (``"hessian"``, ``"ggn"``, ``"fisher"``, ``"empirical_fisher"``);
            ``None`` follows the space (the attributor's ``curvature=``).
    """

    name: ClassVar[str] = "preconditioner"
    #: ``damping=None`` means ``"auto"`` (kept for K-FAC, EK-FAC and DataInf, where it always did).
    allows_none_damping: ClassVar[bool] = False
    #: fitted factors worth caching on disk (Arnoldi, K-FAC, EK-FAC, DataInf, explicit, kernel).
    has_factors: ClassVar[bool] = False
    #: ``solve`` needs the space (the training data) after fitting (CG, LiSSA).
    needs_space: ClassVar[bool] = False

    def __init__(self, damping: Any = 0.0, curvature: str | None = None) -> None:
        self._damping = check_damping(damping, self.name, self.allows_none_damping)
        self.curvature = check_curvature(curvature) if curvature is not None else None
        self.objective: Any = None
        self.mean_eigenvalue_: float | None = None

    # ------------------------------------------------------------------ damping
    @property
    def damping(self) -> Any:
        """``λ`` as configured: a number, ``"auto"``, ``relative(f)`` (or ``None`` = ``"auto"`` where allowed)."""
        return self._damping

    @damping.setter
    def damping(self, value: Any) -> None:
        self._damping = check_damping(value, self.name, self.allows_none_damping)
        self._damping_changed()

    def _damping_changed(self) -> None:
        """Hook: drop whatever depends on ``λ`` (a factorisation)."""

    @property
    def effective_damping(self) -> float:
        """The absolute ``λ`` in use (a relative damping resolved against the fitted curvature's mean eigenvalue)."""
        if not is_relative(self._damping):
            return float(self._damping)
        if self.mean_eigenvalue_ is None:
            if self.objective is None:
                raise WherefromError(f"The {self.name} preconditioner resolves damping={self._damping!r} when "
                                     "fitted; fit it first.")
            self.mean_eigenvalue_ = self.objective.trace_estimate() / self.objective.p
        return resolve_damping(self._damping, self.mean_eigenvalue_)

    # ------------------------------------------------------------------ fitting and solving
    def fit(self, objective: Any) -> Preconditioner:
        self.objective = objective
        self.mean_eigenvalue_ = None
        return self

    def solve(self, V: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _require_fit(self) -> Any:
        if self.objective is None:
            raise WherefromError(f"The {self.name} solver must be fitted before solve(); call fit(objective).")
        return self.objective

    def resolved_curvature(self, default: str) -> str:
        """The curvature this preconditioner inverts, given the attributor's default."""
        return self.curvature or default

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The fitted factors (tensors and JSON-able values); empty for preconditioners without factors."""
        return {"mean_eigenvalue": self.mean_eigenvalue_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the space, if needed, is attached separately as ``objective``)."""
        self.mean_eigenvalue_ = state.get("mean_eigenvalue")

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["args"]["damping"] = damping_config(self._damping)
        return cfg

    @property
    def saveable(self) -> bool:
        """Whether this preconditioner's fitted factors are worth saving (it can always be saved)."""
        return self.has_factors

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
        """Write the fitted state (and the name, damping and ``meta``) to one safetensors file at ``path``."""
        from wherefrom.persist import pack, write_tensors

        tensors: dict[str, torch.Tensor] = {}
        payload = {"solver": self.name, "damping": damping_config(self._damping),
                   "state": pack(self.state_dict(), tensors, "state"), "meta": meta or {}}
        write_tensors(os.fspath(path), tensors, {"wherefrom": json.dumps(payload)})

    @staticmethod
    def read(path: str | os.PathLike) -> dict[str, Any]:
        """The saved payload (``solver``, ``damping``, ``state``, ``meta``) of :meth:`save`."""
        from wherefrom.persist import read_tensors, unpack

        tensors, metadata = read_tensors(os.fspath(path))
        if "wherefrom" not in metadata:
            raise WherefromError(f"{os.fspath(path)!r} is not a saved wherefrom preconditioner.")
        payload = json.loads(metadata["wherefrom"])
        payload["state"] = unpack(payload["state"], tensors)
        return payload

    @classmethod
    def load(cls, path: str | os.PathLike, objective: Any = None, **options: Any) -> Preconditioner:
        """A preconditioner rebuilt from :meth:`save` output without refitting; ``options`` are its constructor
        options. ``objective`` (optional) is attached for preconditioners that still need it when solving."""
        payload = cls.read(path)
        solver = make_solver(payload["solver"], payload["damping"], **options)
        if cls is not Preconditioner and not isinstance(solver, cls):
            raise WherefromError(f"{os.fspath(path)!r} holds a {payload['solver']!r} solver, not {cls.name!r}.")
        solver.load_state_dict(payload["state"])
        solver.objective = objective
        return solver


Solver = Preconditioner

SOLVERS: dict[str, type[Preconditioner]] = {}


def register_solver(name: str):
    """Class decorator: make a preconditioner class available by ``name`` (``InfluenceFunction(solver=name)``)."""

    def deco(cls: type[Preconditioner]) -> type[Preconditioner]:
        cls.name = name
        SOLVERS[name] = cls
        return cls

    return deco


register_preconditioner = register_solver


def make_solver(name: str | Preconditioner, damping: Any = 0.0, **options: Any) -> Preconditioner:
    """Build the preconditioner registered as ``name`` with ``damping`` and its own options (or pass one through)."""
    if isinstance(name, Preconditioner):
        return name
    if name not in SOLVERS:
        raise unknown_name("solver", name, list(SOLVERS))
    try:
        return SOLVERS[name](damping=damping, **options)
    except WherefromError:
        raise
    except (TypeError, ValueError) as exc:  # an unknown option, or a value of the wrong kind (int("many"))
        raise WherefromError(f"Bad options for the {name!r} solver: {exc}") from exc


make_preconditioner = make_solver
