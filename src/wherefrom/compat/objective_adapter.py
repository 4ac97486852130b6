"""The one adapter between a torch-influence-style objective and wherefrom's ``Task`` and ``TrainingObjective``.

An *objective* (:class:`wherefrom.compat.torch_influence.BaseObjective`) describes training with mean-reduced
pieces: ``train_outputs(model, batch)``, ``train_loss_on_outputs(outputs, batch)``, ``train_regularization(params)``
and ``test_loss(model, params, batch)``, where ``params`` is the flat vector ``θ ∈ R^p`` of the model's trainable
parameters in ``named_parameters()`` order, and ``train_loss = train_loss_on_outputs + train_regularization``.

:class:`ObjectiveModel` wraps the model and the objective into one ``nn.Module`` whose ``forward(batch, part)``
evaluates one piece, so ``torch.func.functional_call`` can evaluate every piece at any ``θ``. Each piece becomes a
:class:`~wherefrom.task.Task` whose per-example value is the piece's mean-reduced value ``L(b)`` of the batch ``b``,
given to each of its ``B`` examples::

    Σ_{i∈b} value_i = B · L(b)

so wherefrom's :class:`~wherefrom.curvature.TrainingObjective` (sum over examples, divide by ``n``) forms exactly the
batch-size-weighted Hessian ``H = (1/n) Σ_b B_b ∇²L(b) = ∇²[(1/n) Σ_i ℓ_i + Ω]``, and a batch of one gives the
true per-example value ``ℓ_i + Ω`` (its gradient is torch-influence's per-example ``grad_z``).

With the Gauss-Newton curvature the model outputs are ``train_outputs`` and the regulariser lies outside them, so
:class:`RegularisedObjective` adds ``∇²Ω`` to every product, as torch-influence does.

The compat modules reach wherefrom internals only through this module.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import grad, jvp, vmap
from torch.utils.data import DataLoader, Subset

from wherefrom.curvature import TrainingObjective
from wherefrom.data.loaders import batch_length
from wherefrom.errors import LossReductionError, WherefromError
from wherefrom.gradients import iter_gradient_blocks
from wherefrom.task import Task

PARTS = ("outputs", "train_loss", "test_loss")


class IndexOutOfRangeError(WherefromError, IndexError):
    """A training or test index lies outside its dataset (also an ``IndexError``, as in torch-influence)."""


def _attribute(module: nn.Module, dotted: str) -> torch.Tensor:
    return functools.reduce(getattr, dotted.split("."), module)


def scalar_value(value: Any, what: str) -> torch.Tensor:
    """``value`` as a 0-d tensor, or a :class:`LossReductionError` naming ``what`` when it is not one number."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise LossReductionError(
            f"{what} must return the mean-reduced loss of the batch (one number); it returned {shape}. "
            "Reduce it with reduction='mean' (torch-influence's objectives are mean-reduced)."
        )
    return value.reshape(())


def spread_over_batch(value: torch.Tensor, batch: Any) -> torch.Tensor:
    """The batch's mean-reduced value given to each of its ``B`` examples, ``[B]`` (sums to ``B·value``)."""
    return value.reshape(()).expand(batch_length(batch))


class ObjectiveModel(nn.Module):
    """The model and an objective as one module: ``forward(batch, part)`` evaluates one piece of the objective.

    ``part`` is ``"outputs"`` (``train_outputs``), ``"train_loss"`` (``train_loss``, regulariser included) or
    ``"test_loss"``. The model's trainable parameters are this module's parameters ``model.<name>``, in the
    model's order, so a wherefrom ``Task`` over this module flattens them exactly like torch-influence.
    """

    def __init__(self, model: nn.Module, objective: Any) -> None:
        super().__init__()
        self.model = model
        self.__dict__["objective"] = objective  # plain attribute: never registered as a submodule
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.param_names:
            raise WherefromError("The model has no parameter with requires_grad=True: there is nothing to attribute.")

    def flat_params(self) -> torch.Tensor:
        """The trainable parameters (as currently bound, also inside ``functional_call``) as one flat ``[p]``."""
        return torch.cat([_attribute(self.model, n).reshape(-1) for n in self.param_names])

    def forward(self, batch: Any, part: str) -> torch.Tensor:
        objective = self.objective
        if part == "outputs":
            return objective.train_outputs(self.model, batch)
        if part == "train_loss":
            return scalar_value(objective.train_loss(self.model, self.flat_params(), batch), "objective.train_loss")
        if part == "test_loss":
            return scalar_value(objective.test_loss(self.model, self.flat_params(), batch), "objective.test_loss")
        raise WherefromError(f"Unknown objective part {part!r}; expected one of {PARTS}.")


def _inputs_for(part: str, batch: Any) -> tuple[Any, str]:
    return (batch, part)


class RegularisedObjective(TrainingObjective):
    """A :class:`TrainingObjective` whose products also include ``∇²Ω`` of a regulariser ``Ω(θ)`` (flat ``θ``)."""

    def __init__(self, task: Task, loader: DataLoader, state: dict[str, torch.Tensor], regulariser, **kwargs):
        super().__init__(task, loader, state, **kwargs)
        self.regulariser = regulariser

    def regulariser_hvp(self, V: torch.Tensor) -> torch.Tensor:
        """``∇²Ω(θ̂) V`` for ``V`` ``[m, p]``, by forward-over-reverse differentiation."""
        g = grad(lambda theta: scalar_value(self.regulariser(theta), "objective.train_regularization"))

        def one(v: torch.Tensor) -> torch.Tensor:
            return jvp(g, (self.theta,), (v,))[1]

        return vmap(one)(V)

    def hvp(self, V: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        squeeze = V.ndim == 1
        V = V.reshape(-1, self.p).to(self.dtype)
        out = super().hvp(V, shift) + self.regulariser_hvp(V)
        return out[0] if squeeze else out

    def minibatch_hvp(self, V: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        V = V.to(self.dtype)
        return super().minibatch_hvp(V, indices) + self.regulariser_hvp(V)


def ordered_loader(loader: DataLoader, indices: Sequence[int] | None = None, batch_size: int | None = None
                   ) -> DataLoader:
    """A loader over ``loader.dataset`` (or the ``indices`` of it) in index order, with the loader's collation.

    Only the dataset, batch size, ``collate_fn`` and worker settings of ``loader`` are used (its sampler, e.g.
    ``shuffle=True``, is not): rows of every result then mean dataset indices.
    """
    size = batch_size if batch_size is not None else loader.batch_size
    if size is None:
        raise WherefromError("The DataLoader has batch_size=None (a custom batch_sampler); build it with a batch size.")
    dataset = loader.dataset if indices is None else Subset(loader.dataset, list(indices))
    return DataLoader(dataset, batch_size=size, shuffle=False, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, worker_init_fn=loader.worker_init_fn)


def check_indices(indices: Any, n: int, what: str) -> list[int]:
    """Validate a 1-D list of distinct integer indices into a dataset of ``n`` examples."""
    arr = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
    if arr.ndim != 1 or arr.size == 0:
        raise WherefromError(f"{what} must be a non-empty 1-D list of indices, got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise WherefromError(f"{what} must hold integers, got dtype {arr.dtype}.")
    if len(np.unique(arr)) != arr.size:
        raise WherefromError(f"{what} holds repeated indices; give each index once.")
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise IndexOutOfRangeError(f"{what} {bad[:5].tolist()} lie outside the dataset of {n} examples.")
    return arr.tolist()


class ObjectiveAdapter:
    """The model, objective and loaders of a torch-influence module mapped onto wherefrom pieces.

    Attributes:
        module: the :class:`ObjectiveModel`.
        train_task: the Task whose per-example loss is ``train_loss`` (regulariser included).
        test_task: the Task whose per-example loss is ``test_loss``.
        outputs_task: the Task with outputs ``train_outputs`` and loss ``train_loss_on_outputs`` (Gauss-Newton).
        train_loader: the training data in index order.
    """

    def __init__(self, model: nn.Module, objective: Any, train_loader: DataLoader, test_loader: DataLoader) -> None:
        self.module = ObjectiveModel(model, objective)
        self.objective = objective
        self.train_loader = ordered_loader(train_loader)
        self.test_loader = test_loader
        self.train_task = self._task("train_loss", spread_over_batch)
        self.test_task = self._task("test_loss", spread_over_batch)

        def loss_on_outputs(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
            value = scalar_value(objective.train_loss_on_outputs(outputs, batch), "objective.train_loss_on_outputs")
            return spread_over_batch(value, batch)

        self.outputs_task = self._task("outputs", loss_on_outputs)

    def _task(self, part: str, loss_fn) -> Task:
        return Task(self.module, loss_fn=loss_fn, target_fn=loss_fn, input_fn=functools.partial(_inputs_for, part))

    @property
    def n_train(self) -> int:
        return len(self.train_loader.dataset)

    @property
    def n_test(self) -> int:
        return len(self.test_loader.dataset)

    def training_objective(self, gnh: bool = False) -> TrainingObjective:
        """The mean-reduced training objective at the model's current parameters.

        ``gnh=False``: the Hessian of ``(1/n) Σ_i ℓ_i + Ω``. ``gnh=True``: the Gauss-Newton matrix of
        ``train_loss_on_outputs`` through ``train_outputs``, plus ``∇²Ω``.
        """
        if gnh:
            task = self.outputs_task
            return RegularisedObjective(task, self.train_loader, task.state(None), self.objective.train_regularization,
                                        curvature="ggn")
        return TrainingObjective(self.train_task, self.train_loader, self.train_task.state(None))

    def mean_gradient(self, split: str, indices: Sequence[int]) -> torch.Tensor:
        """``∇_θ`` of the mean ``train_loss`` / ``test_loss`` over ``indices``, batched as the split's loader, ``[p]``.

        Each batch's mean-reduced loss is weighted by its size, so the result is the gradient of the mean over the
        chosen examples.
        """
        task, source = (self.train_task, self.train_loader) if split == "train" else (self.test_task, self.test_loader)
        state = task.state(None)
        theta = task.flat_params(state)
        total, count = torch.zeros_like(theta), 0
        with task.attribution_mode():
            for batch in ordered_loader(source, indices):
                batch = task.prepare_batch(batch)
                size = batch_length(batch)
                total += size * grad(lambda th, b=batch: task.outputs(th, state, b))(theta).detach()
                count += size
        return total / count

    def train_gradient_blocks(self, indices: Sequence[int], progress: bool | None = None
                              ) -> Iterator[tuple[int, torch.Tensor]]:
        """Per-example gradients of ``train_loss`` (``ℓ_i + Ω``) of the training ``indices``: ``(start, [B, p])``."""
        task = self.train_task
        loader = ordered_loader(self.train_loader, indices)
        yield from iter_gradient_blocks(task, loader, task.state(None), None, "training-loss", progress)
