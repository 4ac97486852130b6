"""Influence functions (Koh & Liang 2017) with a pluggable inverse-curvature preconditioner.

``τ[i, j] = sign · q_jᵀ (C + λI)⁻¹ g_i / n``: the predicted change of test target ``j`` when training example
``i`` is left out (first order, mean-reduced objective over ``n`` examples), positive = helpful. Koh & Liang's
``I_up,loss = −q_jᵀ H⁻¹ g_i`` so ``τ = −I_up,loss / n`` for a loss target. A preset of
:class:`~wherefrom.methods.composed.ComposedAttributor`: full gradients × a preconditioner × dot, scale ``1/n``.
"""

from __future__ import annotations

from typing import Any

from wherefrom.curvature import Preconditioner, make_solver
from wherefrom.curvature.diagnostics import CurvatureReport, check_conditioning
from wherefrom.curvature.gauss_newton import check_curvature as check_curvature_name
from wherefrom.methods.composed import ComposedAttributor
from wherefrom.task import Task

#: keyword arguments of the composition that the preset passes on (everything else goes to the solver; ``scale`` is
#: LiSSA's, since an influence function's score scale is always ``1/n``).
COMPOSITION_OPTIONS = ("source", "similarity", "execution", "batch_size", "memory_gb", "cache_dir",
                       "progress")


class InfluenceFunction(ComposedAttributor):
    """Influence of each training example on each test target, ``[n_train, n_test]``.

    Args:
        task: the :class:`~wherefrom.task.Task` (the final checkpoint is used).
        solver: ``"explicit"``, ``"cg"``, ``"lissa"``, ``"arnoldi"``, ``"kfac"``, ``"ekfac"``, ``"datainf"``,
            ``"kernel"``, ``"diagonal"``, ``"identity"`` (or any registered name, or a Preconditioner instance).
        damping: ``λ`` added to the mean-reduced curvature — one meaning in every solver
            (:mod:`wherefrom.curvature.damping`): a number, ``"auto"`` (``0.1 ×`` the mean eigenvalue of the
            curvature, per block for block-diagonal solvers) or ``relative(f)``; ``None`` is ``"auto"`` for K-FAC,
            EK-FAC and DataInf, where it always was.
        curvature: ``"hessian"`` (default), ``"ggn"`` (Gauss-Newton), ``"fisher"`` (true Fisher, sampled labels)
            or ``"empirical_fisher"``; see :mod:`wherefrom.curvature.gauss_newton`.
        check_curvature: after fitting, estimate the extreme eigenvalues of the curvature (30 Lanczos steps) and
            warn when ``C + λI`` is indefinite or badly conditioned; the result is in ``curvature_report_``.
        **options: passed to the solver (e.g. ``max_iter``/``tol`` for CG, ``depth``/``repeats``/
            ``scale`` for LiSSA, ``rank``/``iterations`` for Arnoldi). LiSSA's mini-batch size is ``hvp_batch_size``
            (``batch_size`` is the attributor's own gradient block size).
    The composition's keyword arguments (``source``, ``execution``, ``batch_size``, ``memory_gb``, ``cache_dir``,
    ``progress``) are accepted too. With ``cache_dir``, solvers with factors (explicit, Arnoldi, K-FAC, EK-FAC,
    DataInf) save them there after fitting and a later ``fit`` with the same configuration, checkpoint and data size
    loads them instead of refitting (``solver_loaded_`` tells which happened).
    """

    #: the composition's score scale: ``1/n``, the leave-one-out scale (a preset such as RelatIF overrides it).
    score_scale: float | str = "1/n"

    def __init__(
        self, task: Task, solver: str | Preconditioner = "explicit", damping: Any = 0.01, *,
        curvature: str = "hessian", check_curvature: bool = False, **options: Any,
    ) -> None:
        composition = {k: options.pop(k) for k in COMPOSITION_OPTIONS if k in options}
        self.solver_name = solver
        self.solver_options = options
        precond = make_solver(solver, damping, **options)  # validates the name early
        super().__init__(task, preconditioner=precond, curvature=check_curvature_name(curvature),
                         scale=self.score_scale, **composition)
        self.check_curvature = check_curvature
        self.curvature_report_: CurvatureReport | None = None

    @property
    def solver(self) -> Preconditioner:
        """The preconditioner (fitted for the final checkpoint after ``fit``)."""
        return self.preconditioner

    @property
    def damping(self) -> Any:
        return self.preconditioner.damping

    @property
    def solver_loaded_(self) -> bool:
        return self.preconditioner_loaded_

    @property
    def n_(self) -> int | None:
        return self.n_train_

    def _after_fit(self) -> None:
        if self.check_curvature:
            self.curvature_report_ = check_conditioning(self.spaces_[0], self.preconditioner.effective_damping)
