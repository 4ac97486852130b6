"""Record a real training run from the user's own loop, for trajectory attribution (HYDRA).

    recorder = wf.TrajectoryRecorder(model, optimizer, path="run.zarr")   # path=None keeps it in memory
    for indices, (x, y) in batches:                                        # indices: training-set positions
        optimizer.zero_grad()
        loss_fn(model(x), y).mean().backward()
        recorder.record(indices)                                           # before optimizer.step()
        optimizer.step()
    trajectory = recorder.trajectory                                       # or wf.Trajectory.load("run.zarr")

The recorder hooks ``optimizer.step``: just before each step it snapshots ``θ_t``, the hyper-parameters of every
param group as they are *now* (so learning-rate schedulers just work), the optimizer state the derivative needs
(Adam's moments) and a check of the gradient the optimizer is about to use (its norm and two random sketches).
What it refuses, with an error that names the problem:

- optimizers other than ``torch.optim.SGD`` / ``Adam`` / ``AdamW``; ``maximize=True``; AMSGrad; a closure passed to
  ``step``; AMP's ``grad_scale``/``found_inf`` arguments; a parameter without a gradient; sparse gradients;
- dropout (``p > 0``) or batch-norm layers in training mode during a recorded step: the per-example loss must be a
  deterministic function of ``(θ, example)`` for its derivative to mean anything (dropout masks are not recorded;
  batch statistics couple the examples of a batch). Train them in eval mode (frozen statistics, no dropout);
- parameters changed between two steps by anything but the optimizer (manual edits, a second optimizer, EMA
  swaps).

Gradient clipping, a loss that is not the batch mean of the attributed ``loss_fn``, or a different model are
caught later, when HYDRA recomputes each step's gradient and compares it with the recorded check. A ``record``
without a following ``optimizer.step()`` (e.g. a step skipped by a gradient scaler after an overflow) is dropped:
that step changed nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from wherefrom.errors import WherefromError
from wherefrom.trajectory.optimizers import rule_for
from wherefrom.trajectory.store import TRAJECTORY_FORMAT, MemoryBackend, Trajectory, ZarrBackend, sketch_vectors

_BATCHNORM = nn.modules.batchnorm._BatchNorm
_DROPOUT = nn.modules.dropout._DropoutNd


class TrajectoryRecordingError(WherefromError):
    """The training loop did something a recorded trajectory cannot represent exactly."""


def _as_index_tensor(indices) -> torch.Tensor:
    try:
        idx = torch.as_tensor(np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices))
    except Exception as exc:
        raise TrajectoryRecordingError(f"record(indices) needs a 1-D sequence of integers, got {indices!r}.") from exc
    if idx.ndim != 1 or idx.numel() == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise TrajectoryRecordingError(
            f"record(indices) needs a non-empty 1-D sequence of integer training-set indices (the positions of the "
            f"mini-batch's examples), got shape {tuple(idx.shape)} and dtype {idx.dtype}."
        )
    if int(idx.min()) < 0:
        raise TrajectoryRecordingError("record(indices) got a negative index; pass training-set positions (>= 0).")
    return idx.long()


class TrajectoryRecorder:
    """Records the steps of ``optimizer`` on ``model`` (see the module docstring).

    Args:
        model: the model being trained. Its parameters that the optimizer updates define ``θ``.
        optimizer: a ``torch.optim.SGD``, ``Adam`` or ``AdamW`` over (some of) the model's parameters.
        path: a folder for an on-disk zarr store (chunked, compressed); ``None`` keeps the run in memory.
        store_params: store ``θ_t`` at every step (needed by the exact engines). ``False`` stores only ``θ_0`` and
            ``θ_T`` (``O(T)`` memory instead of ``O(T·p)``); then only the lean engine, which replays the run, can
            use it.
        sketch_seed: seed of the two random vectors of the gradient check.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, path: str | os.PathLike | None = None,
                 store_params: bool = True, sketch_seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise TrajectoryRecordingError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.rule = rule_for(optimizer)
        self.model, self.optimizer = model, optimizer
        by_id = {id(p): n for n, p in model.named_parameters()}
        group_of: dict[str, int] = {}
        for g, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if id(p) not in by_id:
                    raise TrajectoryRecordingError(
                        f"The optimizer updates a tensor of shape {tuple(p.shape)} that is not a parameter of the "
                        "model. Pass the model whose parameters the optimizer trains."
                    )
                if by_id[id(p)] in group_of:
                    raise TrajectoryRecordingError(f"Parameter {by_id[id(p)]!r} is in two param groups.")
                group_of[by_id[id(p)]] = g
        named = dict(model.named_parameters())
        self.names = [n for n in named if n in group_of]
        self.params = [named[n] for n in self.names]
        self._groups = [[named[n] for n in self.names if group_of[n] == g] for g in range(len(optimizer.param_groups))]
        self._group_names = [[n for n in self.names if group_of[n] == g] for g in range(len(optimizer.param_groups))]
        first = self.params[0]
        self.meta = {
            "format": TRAJECTORY_FORMAT, "optimizer": self.rule.name, "param_names": self.names,
            "param_shapes": [list(p.shape) for p in self.params], "group_of_param": [group_of[n] for n in self.names],
            "n_groups": len(optimizer.param_groups), "dtype": str(first.dtype), "store_params": bool(store_params),
            "sketch_seed": int(sketch_seed), "hyper_names": list(self.rule.hyper_names),
            "recorded_state": list(self.rule.recorded_state), "skipped_records": 0, "has_final": False,
        }
        p = sum(t.numel() for t in self.params)
        self._sketch = sketch_vectors(p, sketch_seed).to(device=first.device, dtype=first.dtype)
        self._backend = (ZarrBackend(os.fspath(path), self.meta, mode="w") if path is not None else MemoryBackend())
        self._pending: torch.Tensor | None = None
        self._after: torch.Tensor | None = None  # fingerprint of θ after the last step
        self._handles = [optimizer.register_step_pre_hook(self._pre_step),
                         optimizer.register_step_post_hook(self._post_step)]
        self._closed = False

    # ------------------------------------------------------------------ user API
    def record(self, indices: Sequence[int] | torch.Tensor) -> None:
        """Declare the training-set indices of the mini-batch the next ``optimizer.step()`` uses."""
        if self._closed:
            raise TrajectoryRecordingError("This recorder is closed; create a new TrajectoryRecorder to record more.")
        if self._pending is not None:
            self.meta["skipped_records"] += 1  # the previous record had no step (e.g. skipped by a GradScaler)
        self._pending = _as_index_tensor(indices)

    @property
    def trajectory(self) -> Trajectory:
        """The recorded run so far, with ``θ_T`` = the model's current parameters."""
        if len(self._backend) == 0:
            raise TrajectoryRecordingError("No optimizer step was recorded: call recorder.record(indices) right "
                                           "before every optimizer.step().")
        theta = self._flat_params()
        self._check_unchanged(theta, "before the trajectory was taken")
        self.meta["has_final"] = True
        self._backend.set_final(theta.detach().clone().cpu(), self.meta)
        return Trajectory(dict(self.meta), self._backend)

    def close(self) -> Trajectory | None:
        """Stop recording (remove the optimizer hooks); return the trajectory (``None`` if nothing was recorded)."""
        if not self._closed:
            for h in self._handles:
                h.remove()
            self._closed = True
        return self.trajectory if len(self._backend) else None

    def __enter__(self) -> TrajectoryRecorder:
        return self

    def __exit__(self, *exc) -> None:
        if not self._closed:
            for h in self._handles:
                h.remove()
            self._closed = True

    # ------------------------------------------------------------------ hooks
    def _flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _fingerprint(self, theta: torch.Tensor) -> torch.Tensor:
        return self._sketch @ theta

    def _check_unchanged(self, theta: torch.Tensor, when: str) -> None:
        if self._after is None:
            return
        now = self._fingerprint(theta)
        tol = (1e-12 if theta.dtype == torch.float64 else 1e-6) * (float(theta.abs().sum()) + 1.0)
        if float((now - self._after).abs().max()) > tol:
            raise TrajectoryRecordingError(
                f"The parameters changed {when} without optimizer.step() (manual edits, a second optimizer, weight "
                "averaging?). A recorded trajectory must consist of this optimizer's steps only."
            )

    def _check_modules(self) -> None:
        bad = [n or "<model>" for n, m in self.model.named_modules()
               if m.training and ((isinstance(m, _DROPOUT) and m.p > 0) or isinstance(m, _BATCHNORM))]
        if bad:
            raise TrajectoryRecordingError(
                f"Modules {bad[:5]} are in training mode with dropout or batch statistics during a recorded step. "
                "Trajectory attribution needs each example's loss to be a fixed function of the parameters: put "
                "these modules in eval mode while training (frozen batch-norm statistics, no dropout), e.g. "
                "model.eval() before the loop."
            )

    def _pre_step(self, optimizer, args, kwargs) -> None:
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
        if closure is not None:
            raise TrajectoryRecordingError("optimizer.step(closure) is not supported while recording: compute the "
                                           "loss and backward() yourself, then call optimizer.step().")
        if "grad_scale" in kwargs or "found_inf" in kwargs:
            raise TrajectoryRecordingError("Recording does not support AMP gradient scaling inside a fused "
                                           "optimizer step (grad_scale/found_inf); train without it.")
        if self._pending is None:
            raise TrajectoryRecordingError("optimizer.step() was called without recorder.record(indices) before it: "
                                           "declare the training-set indices of every mini-batch.")
        self._check_modules()
        grads = []
        for name, p in zip(self.names, self.params):
            if p.grad is None:
                raise TrajectoryRecordingError(
                    f"Parameter {name!r} has no gradient at step {len(self._backend)}: the optimizer would skip it, "
                    "which has no exact derivative here. Freeze it (requires_grad=False, not in the optimizer) or "
                    "make every parameter take part in the loss."
                )
            if p.grad.is_sparse:
                raise TrajectoryRecordingError(f"Parameter {name!r} has a sparse gradient; use dense gradients.")
            grads.append(p.grad.detach().reshape(-1))
        theta = self._flat_params()
        self._check_unchanged(theta, f"between step {len(self._backend) - 1} and step {len(self._backend)}")
        grad = torch.cat(grads).to(theta.dtype)
        check = torch.cat([grad.norm().reshape(1), self._sketch @ grad]).double().cpu()
        hyper_rows = []
        for g, group in enumerate(optimizer.param_groups):
            state = [optimizer.state.get(p, {}) for p in self._groups[g]]
            hyper_rows.append(self.rule.read_group(group, state, self._group_names[g]))
        hyper = {k: torch.tensor([row[k] for row in hyper_rows], dtype=torch.float64) for k in self.rule.hyper_names}
        state = {}
        for name in self.rule.recorded_state:
            parts = [optimizer.state.get(p, {}).get(name) for p in self.params]
            state[name] = torch.cat([torch.zeros(p.numel(), dtype=theta.dtype, device=theta.device) if s is None
                                     else s.detach().reshape(-1).to(theta.dtype) for s, p in zip(parts, self.params)])
            state[name] = state[name].cpu().clone()
        keep_theta = self.meta["store_params"] or len(self._backend) == 0
        self._backend.append({"indices": self._pending, "theta": theta.cpu().clone() if keep_theta else None,
                              "hyper": hyper, "state": state, "grad_check": check})
        self._pending = None

    def _post_step(self, optimizer, args, kwargs) -> None:
        self._after = self._fingerprint(self._flat_params())
