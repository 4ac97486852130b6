"""What every HYDRA engine needs at one recorded step ``t``: the batch, ``θ_t``, per-example gradients, the batch
gradient, batched Hessian-vector products of the step loss and the optimizer step's linearisation.

The step loss is the batch mean ``L_t(θ) = (1/B_t) Σ_{j∈B_t} ℓ_j(θ)`` of ``task.loss_fn`` over the recorded batch
(its real size, so a ragged last batch is exact); the optimizer adds its own weight decay. Derivatives are taken
at the *pre-step* parameters ``θ_t`` of the same batch. The model runs in eval mode with the task's (final)
buffers; the recorder refused train-mode dropout and batch norm, so that is the function the step used.

Before a step's numbers are used, the recomputed batch gradient is compared with the check the recorder took of
the gradient the optimizer actually stepped with (norm and two random sketches): a mismatch means the run did
something this maths does not describe (gradient clipping, another loss, augmentation, another model or data).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import grad, jvp, vmap
from torch.utils.data import DataLoader

from wherefrom.data.loaders import collate_indices
from wherefrom.errors import WherefromError
from wherefrom.gradients import unsqueeze_example
from wherefrom.task import Task
from wherefrom.trajectory.optimizers import rule_for
from wherefrom.trajectory.store import Trajectory, TrajectoryStep


class TrajectoryMismatchError(WherefromError):
    """A recorded trajectory does not belong to this task, model or training data, or its steps do not replay."""


def default_check_tol(dtype: torch.dtype) -> float:
    """Relative tolerance of the gradient check: 1e-8 in float64, 1e-4 otherwise."""
    return 1e-8 if dtype == torch.float64 else 1e-4


@dataclass
class StepData:
    """One step's evaluation point: the trajectory step, ``θ_t`` ``[p]``, the collated batch and its size."""

    step: TrajectoryStep
    theta: torch.Tensor
    batch: Any
    size: int


def check_compatible(task: Task, trajectory: Trajectory, n_train: int) -> None:
    """Raise :class:`TrajectoryMismatchError` unless ``trajectory`` was recorded on ``task``'s model and data."""
    if list(task.param_names) != trajectory.param_names:
        only_task = [n for n in task.param_names if n not in trajectory.param_names]
        only_traj = [n for n in trajectory.param_names if n not in task.param_names]
        raise TrajectoryMismatchError(
            "The task's parameters are not the ones the recorded optimizer trained "
            f"(only in the task: {only_task[:5]}; only in the trajectory: {only_traj[:5]}). HYDRA differentiates "
            "every trained parameter: build the Task with params=trajectory.param_names (or None) on the model "
            "that was trained."
        )
    shapes = [tuple(s) for s in task.param_shapes]
    if shapes != trajectory.param_shapes:
        bad = [f"{n}: task {a} vs trajectory {b}" for n, a, b in zip(task.param_names, shapes,
                                                                          trajectory.param_shapes) if a != b]
        raise TrajectoryMismatchError(f"The trajectory was recorded on another model: shape mismatches {bad[:5]}.")
    if task.train_mode_modules:
        raise TrajectoryMismatchError(
            "HYDRA differentiates deterministic steps: the task keeps modules "
            f"{list(task.train_mode_modules)[:5]} in training mode; clear train_mode_modules."
        )
    final = trajectory.final_theta.to(torch.float64)
    mine = task.flat_params(task.state(None)).detach().to("cpu", torch.float64)
    dtype = torch.promote_types(trajectory.dtype, task.dtype)
    rel = float((mine - final).abs().max()) / max(float(final.abs().max()), 1.0)
    if rel > (1e-12 if dtype == torch.float64 else 1e-6):
        raise TrajectoryMismatchError(
            f"The task's model parameters are not the final parameters of the recorded run (max relative "
            f"difference {rel:.2e}). Build the Task on the model as it was after the last recorded step (or pass "
            "that state as the task's checkpoint)."
        )
    top = trajectory.max_index()
    if top >= n_train:
        raise TrajectoryMismatchError(f"The trajectory's batches use training index {top} but the training data "
                                      f"has {n_train} examples: pass the dataset the run was trained on.")


def _rows(batch: Any, rows: torch.Tensor) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[rows]
    if isinstance(batch, tuple):
        return tuple(_rows(b, rows) for b in batch)
    if isinstance(batch, list):
        return [_rows(b, rows) for b in batch]
    if isinstance(batch, Mapping):
        return {k: _rows(v, rows) for k, v in batch.items()}
    return batch


class StepEvaluator:
    """Binds a task, a trajectory and the training data; evaluates what the engines need at each step.

    Derivatives are taken with respect to the parameters as a dict of tensors (views of the flat ``θ``), which
    avoids scattering every gradient into a flat ``[p]`` buffer; results are returned flat.

    Args:
        task: the attributed task.
        trajectory: the recorded run.
        loader: the (ordered) training data.
        grad_block: examples per block of per-example gradients.
        hvp_chunk: vectors per vmapped Hessian-vector product.
        check_tol: relative tolerance of the gradient check (``None``: :func:`default_check_tol`).
    """

    def __init__(self, task: Task, trajectory: Trajectory, loader: DataLoader, grad_block: int = 64,
                 hvp_chunk: int = 128, check_tol: float | None = None) -> None:
        self.task, self.trajectory, self.loader = task, trajectory, loader
        self.rule = rule_for(trajectory.optimizer)
        self.device, self.dtype = task.device, task.dtype
        self.state = task.state(None)
        self.group_index = trajectory.group_index(self.device)
        self.sketch = trajectory.sketch_vectors(self.device, self.dtype)
        self.grad_block, self.hvp_chunk = max(1, grad_block), max(1, hvp_chunk)
        self.check_tol = default_check_tol(self.dtype) if check_tol is None else float(check_tol)
        self._slices = task.param_slices()
        self._shapes = dict(zip(task.param_names, task.param_shapes))
        self.checked_steps: set[int] = set()

    @property
    def num_params(self) -> int:
        return self.trajectory.num_params

    def load(self, step: TrajectoryStep, theta: torch.Tensor | None = None) -> StepData:
        """Collate the step's batch and place ``θ_t`` (the recorded one, or ``theta`` when replaying)."""
        th = step.theta if theta is None else theta
        if th is None:
            raise TrajectoryMismatchError(f"Step {step.t} has no stored parameters (recorded with "
                                          "store_params=False): only engine='lean' can replay such a run.")
        batch = self.task.prepare_batch(collate_indices(self.loader, step.indices.tolist()))
        return StepData(step, th.to(device=self.device, dtype=self.dtype), batch, int(step.indices.numel()))

    # ------------------------------------------------------------------ functional model
    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., p]`` → ``{name: [..., *shape]}`` views."""
        lead = flat.shape[:-1]
        return {n: flat[..., sl].reshape(*lead, *self._shapes[n]) for n, sl in self._slices.items()}

    def join(self, parts: Mapping[str, torch.Tensor], lead: int = 0) -> torch.Tensor:
        """``{name: [*lead, *shape]}`` → ``[*lead, p]``."""
        first = next(iter(parts.values()))
        shape = first.shape[:lead]
        return torch.cat([parts[n].reshape(*shape, -1) for n in self._slices], dim=-1)

    def losses(self, params: Mapping[str, torch.Tensor], batch: Any, fn=None) -> torch.Tensor:
        """Per-example training losses ``[B]`` (or ``fn``, e.g. the target) at the parameters ``params``."""
        out = self.task.call_model({**self.state, **params}, batch)
        return (self.task.loss_fn if fn is None else fn)(out, batch)

    # ------------------------------------------------------------------ gradients
    def example_grads(self, data: StepData, rows: torch.Tensor | None = None,
                      theta: torch.Tensor | None = None, fn=None) -> torch.Tensor:
        """Per-example loss (or ``fn``) gradients ``[b, p]`` of batch positions ``rows`` (default all) at ``θ_t``
        (or ``theta``)."""
        rows = torch.arange(data.size) if rows is None else rows
        params = self.split(data.theta if theta is None else theta)

        def single(pd, example):
            return self.losses(pd, unsqueeze_example(example), fn).reshape(-1)[0]

        per_example = vmap(grad(single), in_dims=(None, 0), randomness=self.task.vmap_randomness)
        blocks = [self.join(per_example(params, _rows(data.batch, r.to(self.device))), 1).detach()
                  for r in rows.split(self.grad_block)]
        return torch.cat(blocks) if blocks else torch.zeros(0, self.num_params, device=self.device, dtype=self.dtype)

    def batch_grad(self, data: StepData) -> torch.Tensor:
        """``g_t = ∇L_t(θ_t)``, ``[p]``."""
        return self.join(grad(lambda pd: self.losses(pd, data.batch).mean())(self.split(data.theta))).detach()

    def example_dots(self, data: StepData, V: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``⟨g_i(θ_t), s ⊙ v_k⟩`` for every batch example and vector, ``[B, K]`` (``s = scale`` ``[p]`` or 1).

        Per-example gradients (per parameter, never concatenated) times ``Vᵀ`` when ``K ≥ B``; otherwise
        forward-mode derivatives of the per-example losses along each ``s ⊙ v_k`` (no ``[B, p]`` matrix)."""
        params = self.split(data.theta)
        if V.shape[0] >= data.size:
            def single(pd, example):
                return self.losses(pd, unsqueeze_example(example)).reshape(-1)[0]

            per_example = vmap(grad(single), in_dims=(None, 0), randomness=self.task.vmap_randomness)
            out = []
            for r in torch.arange(data.size).split(self.grad_block):
                G = per_example(params, _rows(data.batch, r.to(self.device)))
                acc = None
                for name, sl in self._slices.items():
                    Gn = G[name].reshape(len(r), -1)
                    if scale is not None:
                        Gn = Gn * scale[sl]
                    term = Gn @ V[:, sl].T
                    acc = term if acc is None else acc.add_(term)
                out.append(acc.detach())
            return torch.cat(out)
        if scale is not None:
            V = V * scale

        def one(vd):
            return jvp(lambda pd: self.losses(pd, data.batch), (params,), (vd,))[1]

        many = vmap(one, randomness=self.task.vmap_randomness)
        return torch.cat([many(self.split(c)).detach() for c in V.split(self.hvp_chunk)]).T

    def hvp(self, data: StepData, V: torch.Tensor, with_dots: bool = False):
        """``H_t V`` for vectors ``V`` ``[K, p]`` (forward-over-reverse, vmapped in chunks).

        With ``with_dots`` also ``⟨g_i(θ_t), v_k⟩`` ``[B, K]``: the same forward-mode pass carries the tangents of
        the per-example losses, so all batch examples' dot products come at no extra pass."""
        params = self.split(data.theta)

        def grad_and_losses(pd):
            def f(q):
                values = self.losses(q, data.batch)
                return values.mean(), values

            return grad(f, has_aux=True)(pd)

        def one(vd):
            return jvp(grad_and_losses, (params,), (vd,))[1]

        many = vmap(one, randomness=self.task.vmap_randomness)
        hv, dots = [], []
        for chunk in V.split(self.hvp_chunk):
            h, d = many(self.split(chunk))
            hv.append(self.join(h, 1).detach())
            dots.append(d.detach())
        if not hv:
            empty = V.new_zeros(0, self.num_params)
            return (empty, V.new_zeros(data.size, 0)) if with_dots else empty
        HV = torch.cat(hv)
        return (HV, torch.cat(dots).T) if with_dots else HV

    # ------------------------------------------------------------------ checks and linearisation
    def check(self, data: StepData, g: torch.Tensor, tol: float | None = None) -> None:
        """Compare the recomputed batch gradient ``g`` with the recorded gradient check of the step."""
        t = data.step.t
        rec = data.step.grad_check.to(torch.float64)
        mine = torch.cat([g.norm().reshape(1), self.sketch @ g]).to("cpu", torch.float64)
        scale = max(float(rec[0]), float(mine[0]), torch.finfo(torch.float64).tiny)
        rel = float((rec - mine).abs().max()) / scale
        tol = self.check_tol if tol is None else tol
        if rel > tol:
            ratio = float(rec[0] / mine[0]) if float(mine[0]) > 0 else float("nan")
            sketch_ratio = (rec[1:] / mine[1:]).tolist() if bool((mine[1:] != 0).all()) else []
            scaled = ratio < 1 and all(abs(r - ratio) < 1e-3 * max(1.0, abs(ratio)) for r in sketch_ratio)
            hint = (f" The recorded gradient is the recomputed one scaled by {ratio:.6g}: this looks like gradient "
                    "clipping, which has no exact derivative here; train without clipping." if scaled else "")
            raise TrajectoryMismatchError(
                f"Step {t}: the gradient the optimizer used (norm {float(rec[0]):.6g}) differs from the batch-mean "
                f"gradient of task.loss_fn recomputed at the recorded θ_t (norm {float(mine[0]):.6g}; relative "
                f"mismatch {rel:.2e} > tol {tol:.1e}).{hint} HYDRA differentiates steps whose gradient is the mean "
                "of task.loss_fn over the recorded batch: no clipping, no extra loss terms (put weight decay in the "
                "optimizer), no augmentation, the same model, data and example order. If the difference is only "
                "round-off, raise check_tol."
            )
        self.checked_steps.add(t)

    def needs_check(self, t: int) -> bool:
        return t not in self.checked_steps

    def linearise(self, data: StepData, g: torch.Tensor | None):
        """The optimizer step's linearisation at this step (``g`` only needed by Adam/AdamW)."""
        state = {k: v.to(device=self.device, dtype=self.dtype) for k, v in data.step.state.items()}
        return self.rule.linearise(data.step.hyper, self.group_index, data.theta, g, state)
