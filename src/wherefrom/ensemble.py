"""Dropout ensembles (Deng et al. 2024): average any attributor over ``M`` dropout masks of one trained model.

Member ``s`` is the sub-network ``θ ⊙ mask_s``: every chosen dropout layer is replaced by a *fixed* mask
``m_s ~ Bernoulli(1 − p)``, scaled by ``1/(1 − p)`` (inverted dropout, as in training), drawn once per member from
``numpy.random.default_rng([seed, s, layer])`` over the layer's feature shape (all dimensions but the batch one).
The same mask applies to every training and test example, in every batch and in every forward pass of that member,
so the member is a deterministic model and per-example gradients are ordinary gradients of it. (dattri instead
keeps the layers in training mode under ``vmap(randomness="different")``, which draws a fresh mask per example and
per call; that is a noisier estimator.) The ensemble score is ``τ = (1/M) Σ_s τ_s``.

    ens = DropoutEnsemble(task, lambda t: wf.GradDot(t), n_masks=10, p=0.1)
    scores = ens.fit(train).score(test)
    ens.save("fits/ens")                              # one sub-directory per member
    ens = wf.load("fits/ens", task, make_attributor=lambda t: wf.GradDot(t))  # a lambda cannot be found by name
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from wherefrom.data.loaders import DataLike
from wherefrom.errors import WherefromError
from wherefrom.methods.base import Attributor
from wherefrom.task import Task

_DROPOUT = nn.modules.dropout._DropoutNd


class FixedMaskDropout(nn.Module):
    """Multiply by a fixed Bernoulli(1−p) mask over the feature dimensions, scaled by ``1/(1−p)``."""

    def __init__(self, p: float, seed: Sequence[int]) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise WherefromError(f"dropout probability must be in [0, 1), got {p}.")
        self.p = float(p)
        self.seed = list(seed)
        self._masks: dict[tuple, torch.Tensor] = {}

    def mask(self, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The member's mask for features of ``shape`` (drawn once, with numpy, so vmap cannot re-randomise it)."""
        if shape not in self._masks:
            keep = np.random.default_rng(self.seed).random(shape) >= self.p
            self._masks[shape] = torch.from_numpy(keep.astype(np.float64) / (1.0 - self.p))
        return self._masks[shape].to(dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[1:]) if x.ndim >= 2 else tuple(x.shape)
        return x * self.mask(shape, x.dtype, x.device)


def dropout_layers(model: nn.Module) -> list[str]:
    """Names of the dropout modules of ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, _DROPOUT)]


def masked_copy(model: nn.Module, layers: Sequence[str] | None, p: float | None, seed: Sequence[int]) -> nn.Module:
    """A copy of ``model`` (eval mode) whose chosen dropout layers are fixed masks drawn from ``seed``.

    ``layers=None`` selects every dropout layer; ``p=None`` keeps each layer's own probability. Raises
    :class:`WherefromError` when a named layer is not a dropout module, or when nothing would be masked (a model
    without dropout would otherwise give ``M`` identical members silently).
    """
    available = dropout_layers(model)
    chosen = available if layers is None else list(layers)
    if not chosen:
        raise WherefromError("The model has no dropout layer, so a dropout ensemble would be M identical copies. "
                             "Add nn.Dropout modules (e.g. train the setting with --dropout 0.1).")
    modules = dict(model.named_modules())
    for name in chosen:
        if name not in modules or not isinstance(modules[name], _DROPOUT):
            raise WherefromError(f"{name!r} is not a dropout layer of the model; dropout layers are: {available}.")
    clone = copy.deepcopy(model).eval()
    for k, name in enumerate(chosen):
        prob = modules[name].p if p is None else p
        parent_name, _, child = name.rpartition(".")
        parent = clone.get_submodule(parent_name) if parent_name else clone
        setattr(parent, child, FixedMaskDropout(prob, [*seed, k]))
    return clone


class DropoutEnsemble(Attributor):
    """Average of an attributor over ``n_masks`` fixed dropout masks of one trained model.

    Args:
        task: the task; its model must contain dropout layers (at the final checkpoint's weights).
        make_attributor: ``make_attributor(member_task) -> Attributor`` (e.g. ``lambda t: GradDot(t)``).
        n_masks: ``M``, the number of members.
        layers: names of the dropout layers to activate (default: all of them).
        p: dropout probability for the chosen layers (default: each layer's own).
        seed: members use masks from ``default_rng([seed, s, layer_index])``.
    """

    def __init__(self, task: Task, make_attributor: Callable[[Task], Attributor], n_masks: int = 10,
                 layers: Sequence[str] | None = None, p: float | None = None, seed: int = 0) -> None:
        if n_masks < 1:
            raise WherefromError(f"n_masks must be >= 1, got {n_masks}.")
        self.task = task
        self.make_attributor = make_attributor
        self.n_masks = n_masks
        self.layers = layers
        self.p = p
        self.seed = seed
        self.members_: list[Attributor] = []

    def member_task(self, s: int) -> Task:
        """The task of member ``s``: the model at the final checkpoint with member ``s``'s fixed masks."""
        t = self.task
        model = copy.deepcopy(t.model)
        model.load_state_dict(t.state(None))
        masked = masked_copy(model, self.layers, self.p, [self.seed, s])
        return Task(masked, loss_fn=t.loss_fn, target_fn=t.target_fn, params=t.param_names,
                    weight_decay=t.weight_decay, input_fn=t.input_fn, output_fn=t.output_fn)

    def fit(self, train: DataLike) -> DropoutEnsemble:
        self.members_ = [self.make_attributor(self.member_task(s)).fit(train) for s in range(self.n_masks)]
        return self

    def _require_fit(self) -> None:
        if not self.members_:
            raise WherefromError("DropoutEnsemble is not fitted: call fit(train) first.")

    def iter_score_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:
        self._require_fit()
        streams = [m.iter_score_blocks(test) for m in self.members_]
        for parts in zip(*streams):
            starts = {start for start, _ in parts}
            if len(starts) != 1:
                raise WherefromError("Ensemble members returned misaligned score blocks.")
            yield parts[0][0], sum(b for _, b in parts) / len(parts)

    def self_influence(self) -> torch.Tensor:
        self._require_fit()
        return sum(m.self_influence() for m in self.members_) / len(self.members_)

    def _fitted_state(self, directory: str) -> dict[str, Any]:
        """Each member is saved in ``member-<s>/`` of ``directory`` (its own config, task fingerprint, tensors)."""
        self._require_fit()
        for s, member in enumerate(self.members_):
            member.save(os.path.join(directory, f"member-{s}"))
        return {"n_members": len(self.members_)}

    def _restore_fitted(self, state: dict[str, Any], *, directory: str, train: Any = None) -> None:
        """Reload each member against its own masked task, rebuilt from the seed (its fingerprint is checked)."""
        from wherefrom.persist import load

        if state["n_members"] != self.n_masks:
            raise WherefromError(f"{directory!r} holds {state['n_members']} members but n_masks={self.n_masks}: "
                                 "do not override n_masks when loading.")
        self.members_ = [load(os.path.join(directory, f"member-{s}"), self.member_task(s), train=train)
                         for s in range(self.n_masks)]
