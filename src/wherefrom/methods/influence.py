"""Influence functions (Koh & Liang 2017) with a pluggable inverse-Hessian solver.

``τ[i, j] = sign · q_jᵀ (H + λI)⁻¹ g_i / n``: the predicted change of test target ``j`` when training example
``i`` is left out (first order, mean-reduced objective over ``n`` examples), positive = helpful. Koh & Liang's
``I_up,loss = −q_jᵀ H⁻¹ g_i`` so ``τ = −I_up,loss / n`` for a loss target.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch.utils.data import DataLoader

from wherefrom.curvature import Solver, TrainingObjective, make_solver
from wherefrom.curvature.diagnostics import CurvatureReport, check_conditioning
from wherefrom.curvature.gauss_newton import check_curvature as check_curvature_name
from wherefrom.data.loaders import DataLike, as_loader
from wherefrom.methods.base import GradientAttributor
from wherefrom.store import tensor_fingerprint
from wherefrom.task import Task

log = logging.getLogger(__name__)


class InfluenceFunction(GradientAttributor):
    """Influence of each training example on each test target, ``[n_train, n_test]``.

    Args:
        task: the :class:`~wherefrom.task.Task` (the final checkpoint is used).
        solver: ``"explicit"``, ``"cg"``, ``"lissa"``, ``"arnoldi"``, ``"kfac"``, ``"ekfac"``, ``"datainf"`` (or
            any registered solver name, or a Solver instance).
        damping: absolute ``λ`` added to the mean-reduced curvature; the same meaning in every solver. ``None``
            selects a solver's relative default where it has one (K-FAC/EK-FAC ``0.1·mean(Λ)`` per layer,
            DataInf ``0.1·mean g²`` per layer).
        curvature: ``"hessian"`` (default), ``"ggn"`` (Gauss-Newton), ``"fisher"`` (true Fisher, sampled labels)
            or ``"empirical_fisher"``; see :mod:`wherefrom.curvature.gauss_newton`.
        check_curvature: after fitting, estimate the extreme eigenvalues of the curvature (30 Lanczos steps) and
            warn when ``C + λI`` is indefinite or badly conditioned; the result is in ``curvature_report_``.
        **solver_options: passed to the solver (e.g. ``max_iter``/``tol`` for CG, ``depth``/``repeats``/
            ``scale`` for LiSSA, ``rank``/``iterations`` for Arnoldi). LiSSA's mini-batch size is ``hvp_batch_size``
            (``batch_size`` is the attributor's own gradient block size).
    The remaining keyword arguments are those of :class:`GradientAttributor` (``batch_size``, ``memory_gb``,
    ``cache_dir``, ``progress``). With ``cache_dir``, solvers with factors (Arnoldi, K-FAC, EK-FAC, DataInf)
    save them there after fitting and a later ``fit`` on the same checkpoint, data size, curvature and damping
    loads them instead of refitting (``solver_loaded_`` tells which happened).
    """

    def __init__(
        self, task: Task, solver: str | Solver = "explicit", damping: float | None = 0.01, *,
        curvature: str = "hessian", check_curvature: bool = False,
        batch_size: int = 256, memory_gb: float = 2.0, cache_dir: str | None = None,
        progress: bool | None = None, **solver_options: Any,
    ) -> None:
        super().__init__(task, batch_size=batch_size, memory_gb=memory_gb, cache_dir=cache_dir, progress=progress)
        self.solver_name = solver
        self.damping = damping
        self.curvature = check_curvature_name(curvature)
        self.check_curvature = check_curvature
        self.solver_options = solver_options
        self.solver: Solver = make_solver(solver, damping, **solver_options)  # validates the name early
        self.n_: int | None = None
        self.solver_loaded_: bool = False
        self.curvature_report_: CurvatureReport | None = None

    def _solver_cache(self, c: int, objective: TrainingObjective) -> tuple[str, dict[str, Any]] | None:
        if self.cache_dir is None or not self.solver.saveable:
            return None
        meta = {"theta": tensor_fingerprint(objective.theta), "n": objective.n, "curvature": objective.curvature,
                "damping": self.solver.damping, "options": repr(sorted(self.solver_options.items())),
                "params": ",".join(self.task.param_names)}
        return os.path.join(self.cache_dir, f"solver_{self.solver.name}_{c}.pt"), meta

    def _fit_checkpoint(self, c: int, state: dict[str, torch.Tensor], loader: DataLoader) -> None:
        objective = TrainingObjective(self.task, loader, state, progress=False, curvature=self.curvature)
        self.n_ = objective.n
        cache = self._solver_cache(c, objective)
        self.solver_loaded_ = False
        if cache is not None and os.path.exists(cache[0]):
            payload = Solver.read(cache[0])
            if payload.get("meta") == cache[1] and payload.get("solver") == self.solver.name:
                self.solver.load_state_dict(payload["state"])
                self.solver.objective = objective
                self.solver_loaded_ = True
                log.info("Loaded %s factors from %s", self.solver.name, cache[0])
        if not self.solver_loaded_:
            self.solver.fit(objective)
            if cache is not None:
                self.solver.save(cache[0], meta=cache[1])
        if self.check_curvature:
            damping = self.solver.damping if self.solver.damping is not None else 0.0
            self.curvature_report_ = check_conditioning(objective, damping)

    def _transform_query(self, c: int, Q: torch.Tensor) -> torch.Tensor:
        return self.solver.solve(Q) / self.n_

    def score_by_module(self, test: DataLike) -> dict[str, torch.Tensor]:
        """Per-module contributions ``τ_l[i, j] = sign · ⟨g_il, s_jl⟩`` with ``s_j = (C + λI)⁻¹ q_j / n``.

        The modules are the parameter groups (a parameter name without its last component); the contributions
        sum to :meth:`score` exactly. For block-diagonal solvers (K-FAC, EK-FAC, DataInf) ``τ_l`` is the score
        the layer's own curvature block gives; for the others it is that module's share of the inner product.
        Returns ``{module: Tensor[n_train, n_test]}`` (dense: meant for analysis of moderate ``n × m``).
        """
        from wherefrom.curvature.datainf import parameter_groups

        self._require_fit()
        if len(self._states) != 1:
            raise ValueError("score_by_module supports one checkpoint.")
        slices = self.task.param_slices()
        groups = {g: torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in names])
                  for g, names in parameter_groups(self.task.param_names).items()}
        Q = self.query_features(as_loader(test, self.batch_size, what="test"))[0]
        sign = self.task.target_sign
        parts: dict[str, list[torch.Tensor]] = {g: [] for g in groups}
        for _, F in self._stores[0].blocks():
            for g, idx in groups.items():
                idx = idx.to(F.device)
                parts[g].append(sign * self._weights[0] * (F[:, idx] @ Q[:, idx].T.to(F.dtype)))
        return {g: torch.cat(v) for g, v in parts.items()}
