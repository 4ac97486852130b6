"""The API of torch-influence 0.1, on wherefrom's Task, TrainingObjective and curvature solvers.

Code written for torch-influence runs with its import line changed::

    from wherefrom.compat.torch_influence import AutogradInfluenceModule, BaseObjective

Subclass :class:`BaseObjective` (``train_outputs``, ``train_loss_on_outputs``, ``train_regularization``,
``test_loss``; all mean-reduced), pass it to :class:`AutogradInfluenceModule`, :class:`CGInfluenceModule` or
:class:`LiSSAInfluenceModule`, and call ``influences(train_idxs, test_idxs)``.

What is computed (same sign and scale as torch-influence). With ``R(θ) = (1/n) Σ_i ℓ_i(θ) + Ω(θ)`` the training
objective (``ℓ_i`` = ``train_loss_on_outputs`` of example ``i``, ``Ω`` = ``train_regularization``), ``H = ∇²R(θ̂)``
(the regulariser enters the Hessian), damping ``λ`` = ``damp``, the mean test loss ``L_test`` over ``test_idxs``:

    s_test = (H + λI)⁻¹ ∇L_test
    influences[k] = ∇(ℓ_i + Ω)ᵀ s_test / n          for i = train_idxs[k]

the predicted *increase* of the mean test loss when training example ``i`` is removed and the model retrained
on the other ``n − 1`` (the regulariser kept as it is). Positive = the example helped, as in wherefrom.

Mapping to wherefrom's native scores ``τ = wf.InfluenceFunction(wf.Task(model, weight_decay=wd), "explicit",
damping=λ).score(test)`` (for ``Ω = (wd/2)‖θ‖²`` and the test loss as the target)::

    influences[k] = mean_{j ∈ test_idxs} ( τ[i, j] + ∇Ω(θ̂)ᵀ s_j / n )

wherefrom's ``τ`` differentiates the loss only (its leave-one-out keeps the ``1/n`` normalisation of the other
examples); torch-influence also differentiates ``Ω`` in each training gradient. The extra term is the same for
every training example, so rankings agree; at a stationary point of ``R`` (``∇Ω = −(1/n) Σ_i ∇ℓ_i``) it equals
``−mean_i τ[i, j]``, i.e. torch-influence's scores are wherefrom's scores centred over the training set.

Differences from torch-influence: indices must be distinct and in range (:class:`~wherefrom.errors.WherefromError`,
an ``IndexError`` for out-of-range ones); ``inverse_hvp`` and ``influences`` also accept a batch of vectors
``[m, p]``; the explicit inverse is a float64 Cholesky solve; CG accepts scipy's ``rtol``/``tol``, ``atol`` and
``maxiter`` (not ``x0``, ``M`` or ``callback``) and stops on negative curvature with a clear error.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from wherefrom.compat.objective_adapter import ObjectiveAdapter, check_indices
from wherefrom.curvature import CGSolver, ExplicitSolver, TrainingObjective
from wherefrom.errors import NonFiniteGradientError, NonPositiveDefiniteError, WherefromError
from wherefrom.progress import track

log = logging.getLogger(__name__)

__all__ = [
    "AutogradInfluenceModule",
    "BaseInfluenceModule",
    "BaseObjective",
    "CGInfluenceModule",
    "LiSSAInfluenceModule",
]


class BaseObjective(abc.ABC):
    """How training and test losses are computed; subclass it and implement the four abstract methods.

    Every loss is **mean**-reduced over the batch. ``params`` is the flat vector of the model's trainable
    parameters (``requires_grad``) in ``named_parameters()`` order.
    """

    @abc.abstractmethod
    def train_outputs(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The model outputs (e.g. logits) of a training batch."""

    @abc.abstractmethod
    def train_loss_on_outputs(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """The mean-reduced training loss of ``outputs`` on ``batch`` (convex in ``outputs`` for ``gnh=True``)."""

    @abc.abstractmethod
    def train_regularization(self, params: torch.Tensor) -> torch.Tensor:
        """The regulariser ``Ω(θ)`` of the flat parameters ``params`` ``[p]`` (a scalar; it enters the Hessian)."""

    def train_loss(self, model: nn.Module, params: torch.Tensor, batch: Any) -> torch.Tensor:
        """``train_loss_on_outputs(train_outputs(model, batch), batch) + train_regularization(params)``."""
        outputs = self.train_outputs(model, batch)
        return self.train_loss_on_outputs(outputs, batch) + self.train_regularization(params)

    @abc.abstractmethod
    def test_loss(self, model: nn.Module, params: torch.Tensor, batch: Any) -> torch.Tensor:
        """The mean-reduced loss of a test batch (usually without the regulariser)."""


def _as_rows(vec: torch.Tensor, p: int) -> tuple[torch.Tensor, bool]:
    """``vec`` ``[p]`` or ``[m, p]`` as ``[m, p]``, and whether it was one vector."""
    if vec.ndim == 1 and vec.shape[0] == p:
        return vec.unsqueeze(0), True
    if vec.ndim == 2 and vec.shape[1] == p:
        return vec, False
    raise WherefromError(f"Expected a vector of the {p} trainable parameters ([{p}] or [m, {p}]), "
                         f"got shape {tuple(vec.shape)}.")


class BaseInfluenceModule(abc.ABC):
    """Influence functions for one model, objective and pair of loaders; subclasses implement :meth:`inverse_hvp`.

    Args:
        model: the trained model (moved to ``device`` and put in eval mode).
        objective: a :class:`BaseObjective`.
        train_loader: the training data (only its dataset, batch size and collation are used; it may shuffle).
        test_loader: the test data (likewise).
        device: where the model and the batches live.
    """

    def __init__(self, model: nn.Module, objective: BaseObjective, train_loader: DataLoader,
                 test_loader: DataLoader, device: torch.device | str) -> None:
        model.eval()
        self.model = model.to(device)
        self.device = torch.device(device)
        self.objective = objective
        self.train_loader = train_loader
        self.test_loader = test_loader
        self._adapter = ObjectiveAdapter(self.model, objective, train_loader, test_loader)
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params_names = tuple(n for n, _ in trainable)
        self.params_shape = tuple(p.shape for _, p in trainable)

    @property
    def num_params(self) -> int:
        """``p``: the number of trainable parameters."""
        return self._adapter.train_task.num_params

    @abc.abstractmethod
    def inverse_hvp(self, vec: torch.Tensor) -> torch.Tensor:
        """``(H + λI)⁻¹ vec`` for the Hessian ``H`` of the mean training objective (``[p]`` or ``[m, p]``)."""

    def training_objective(self, gnh: bool = False) -> TrainingObjective:
        """The mean training objective at the model's current parameters, for custom :meth:`inverse_hvp` code.

        Its ``hvp(V)`` (whole training set), ``minibatch_hvp(V, indices)`` and ``dense()`` give products with the
        Hessian of ``(1/n) Σ_i ℓ_i + Ω`` (``gnh=True``: the Gauss-Newton matrix plus ``∇²Ω``), no damping added.
        """
        return self._adapter.training_objective(gnh)

    def train_loss_grad(self, train_idxs: list[int]) -> torch.Tensor:
        """Gradient of the mean ``train_loss`` (regulariser included) over ``train_idxs``, ``[p]``."""
        idx = check_indices(train_idxs, self._adapter.n_train, "train_idxs")
        return self._adapter.mean_gradient("train", idx)

    def test_loss_grad(self, test_idxs: list[int]) -> torch.Tensor:
        """Gradient of the mean ``test_loss`` over ``test_idxs``, ``[p]``."""
        idx = check_indices(test_idxs, self._adapter.n_test, "test_idxs")
        return self._adapter.mean_gradient("test", idx)

    def stest(self, test_idxs: list[int]) -> torch.Tensor:
        """``s_test = (H + λI)⁻¹ ∇L_test`` for the mean test loss over ``test_idxs``, ``[p]``."""
        return self.inverse_hvp(self.test_loss_grad(test_idxs))

    def influences(self, train_idxs: list[int], test_idxs: list[int],
                   stest: torch.Tensor | None = None) -> torch.Tensor:
        """``∇(ℓ_i + Ω)ᵀ s_test / n`` for each ``i`` in ``train_idxs``: a CPU tensor ``[len(train_idxs)]``.

        It estimates the increase of the mean test loss over ``test_idxs`` when training example ``i`` is removed
        (positive = helpful). ``stest`` (``[p]``, or ``[m, p]`` giving ``[len(train_idxs), m]``) replaces the
        internally computed :meth:`stest`.
        """
        idx = check_indices(train_idxs, self._adapter.n_train, "train_idxs")
        s = self.stest(test_idxs) if stest is None else stest.to(self.device)
        S, single = _as_rows(s, self.num_params)
        out = [G @ S.T.to(G.dtype) for _, G in self._adapter.train_gradient_blocks(idx)]
        scores = torch.cat(out).cpu() / self._adapter.n_train
        return scores[:, 0] if single else scores


class AutogradInfluenceModule(BaseInfluenceModule):
    """Inverse-HVPs with the dense Hessian ``H + λI`` formed by autograd and factored once (at construction).

    Args:
        damp: ``λ``, added to the mean-reduced Hessian.
        check_eigvals: raise :class:`~wherefrom.errors.NonPositiveDefiniteError` (a ``ValueError``) when ``H + λI``
            has a negative eigenvalue; the extreme eigenvalues are logged.

    ``O(p²)`` memory and ``O(p³)`` time: for models with up to a few thousand parameters.
    """

    def __init__(self, model: nn.Module, objective: BaseObjective, train_loader: DataLoader,
                 test_loader: DataLoader, device: torch.device | str, damp: float,
                 check_eigvals: bool = False) -> None:
        super().__init__(model, objective, train_loader, test_loader, device)
        self.damp = damp
        self.check_eigvals = check_eigvals
        self._solver = ExplicitSolver(damping=damp).fit(self.training_objective())
        if check_eigvals:
            H = self._solver.hessian_
            eigvals = torch.linalg.eigvalsh(H + damp * torch.eye(H.shape[0], dtype=H.dtype, device=H.device))
            lo, hi = float(eigvals.min()), float(eigvals.max())
            log.info("hessian min eigval %f", lo)
            log.info("hessian max eigval %f", hi)
            if lo < 0:
                raise NonPositiveDefiniteError(
                    f"The damped Hessian H + {damp:g}·I has a negative eigenvalue ({lo:.4g}): influence functions "
                    "need it positive definite. Increase damp above the most negative eigenvalue."
                )

    def inverse_hvp(self, vec: torch.Tensor) -> torch.Tensor:
        V, single = _as_rows(vec.to(self.device), self.num_params)
        X = self._solver.solve(V)
        return X[0] if single else X


_CG_OPTIONS = ("rtol", "tol", "atol", "maxiter")


class CGInfluenceModule(BaseInfluenceModule):
    """Inverse-HVPs by conjugate gradient with Hessian-vector products over the whole training set.

    Args:
        damp: ``λ``, added to the mean-reduced Hessian.
        gnh: use the Gauss-Newton matrix of ``train_loss_on_outputs`` through ``train_outputs`` (plus ``∇²Ω``)
            instead of the Hessian.
        **kwargs: scipy's CG stopping options: ``rtol`` (or ``tol``, default ``1e-5``), ``atol`` (default 0;
            CG stops when ``‖r‖ ≤ max(rtol·‖v‖, atol)``) and ``maxiter`` (default ``10·p``).
    """

    def __init__(self, model: nn.Module, objective: BaseObjective, train_loader: DataLoader,
                 test_loader: DataLoader, device: torch.device | str, damp: float, gnh: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(model, objective, train_loader, test_loader, device)
        unknown = sorted(set(kwargs) - set(_CG_OPTIONS))
        if unknown:
            raise WherefromError(f"CGInfluenceModule does not support the CG option(s) {unknown}; supported: "
                                 f"{', '.join(_CG_OPTIONS)}.")
        self.damp = damp
        self.gnh = gnh
        self.cg_kwargs = kwargs
        self.solver_: CGSolver | None = None  # the last solve's solver (residuals_, iterations_)

    def inverse_hvp(self, vec: torch.Tensor) -> torch.Tensor:
        objective = self.training_objective(self.gnh)
        V, single = _as_rows(vec.to(self.device, objective.dtype), self.num_params)
        rtol = float(self.cg_kwargs.get("rtol", self.cg_kwargs.get("tol", 1e-5)))
        atol = float(self.cg_kwargs.get("atol", 0.0))
        largest = float(V.norm(dim=1).max()) or 1.0
        tol = max(rtol, atol / largest)
        max_iter = int(self.cg_kwargs.get("maxiter", 10 * self.num_params))
        solver = CGSolver(damping=self.damp, max_iter=max_iter, tol=tol).fit(objective)
        X = solver.solve(V)
        self.solver_ = solver
        if float(solver.residuals_.max()) > tol:
            log.warning("CG stopped after %d iterations with relative residual %.3g > tol %.3g; raise maxiter.",
                        solver.iterations_, float(solver.residuals_.max()), tol)
        return X[0] if single else X


class LiSSAInfluenceModule(BaseInfluenceModule):
    """Inverse-HVPs by LiSSA, the stochastic Neumann series of Agarwal et al. (2017).

    For each of ``repeat`` runs, starting from ``h_0 = v``, ``depth`` steps of

        h_t = v + h_{t−1} − ((H_t + λI) h_{t−1}) / scale

    with ``H_t`` the Hessian of the mean training objective on a batch of ``train_loader.batch_size`` examples
    drawn with replacement (torch's global random generator), then ``(H + λI)⁻¹ v ≈ mean_r h_{r,T} / scale``. It
    converges when ``scale`` exceeds the largest eigenvalue of every ``H_t + λI``.

    Args:
        damp: ``λ``. repeat: number of runs ``R``. depth: steps ``T`` per run. scale: ``σ``.
        gnh: use the Gauss-Newton matrix (plus ``∇²Ω``) instead of the Hessian.
        debug_callback: called as ``debug_callback(r, t, h_{r,t})`` after each step.
    """

    def __init__(self, model: nn.Module, objective: BaseObjective, train_loader: DataLoader,
                 test_loader: DataLoader, device: torch.device | str, damp: float, repeat: int, depth: int,
                 scale: float, gnh: bool = False,
                 debug_callback: Callable[[int, int, torch.Tensor], None] | None = None) -> None:
        super().__init__(model, objective, train_loader, test_loader, device)
        if repeat < 1 or depth < 1:
            raise WherefromError(f"repeat and depth must be >= 1, got repeat={repeat}, depth={depth}.")
        if not scale > 0:
            raise WherefromError(f"scale must be > 0, got {scale}.")
        self.damp = damp
        self.gnh = gnh
        self.repeat = repeat
        self.depth = depth
        self.scale = scale
        self.debug_callback = debug_callback

    def inverse_hvp(self, vec: torch.Tensor) -> torch.Tensor:
        objective = self.training_objective(self.gnh)
        V, single = _as_rows(vec.to(self.device, objective.dtype), self.num_params)
        batch = self._adapter.train_loader.batch_size
        total = torch.zeros_like(V)
        steps = iter(track(range(self.repeat * self.depth), "LiSSA recursion", self.repeat * self.depth))
        for r in range(self.repeat):
            h = V.clone()
            for t in range(self.depth):
                next(steps, None)
                idx = torch.randint(objective.n, (batch,))
                h = V + h - (objective.minibatch_hvp(h, idx) + self.damp * h) / self.scale
                if not bool(torch.isfinite(h).all()):
                    raise NonFiniteGradientError(
                        f"LiSSA diverged at step {t} of run {r}: scale={self.scale:g} is below the largest "
                        "eigenvalue of a mini-batch Hessian plus damp. Use a larger scale."
                    )
                if self.debug_callback is not None:
                    self.debug_callback(r, t, h[0] if single else h)
            total += h / self.scale
        X = total / self.repeat
        return X[0] if single else X
