"""Recorded training runs (trajectories) and the exact derivatives of their optimizer steps.

- :class:`TrajectoryRecorder` hooks a ``torch.optim`` optimizer in the user's own loop and records every step;
- :class:`Trajectory` is the recorded run, in memory or in a zarr store (:meth:`Trajectory.load`);
- :mod:`wherefrom.trajectory.optimizers` has one step rule per optimizer (SGD, Adam, AdamW) with its tangent and
  adjoint maps, which :class:`wherefrom.methods.hydra.HYDRA` chains through the run.
"""

from wherefrom.trajectory.optimizers import UnsupportedOptimizerError, rule_for
from wherefrom.trajectory.recorder import TrajectoryRecorder, TrajectoryRecordingError
from wherefrom.trajectory.store import Trajectory, TrajectoryStep

__all__ = [
    "Trajectory",
    "TrajectoryRecorder",
    "TrajectoryRecordingError",
    "TrajectoryStep",
    "UnsupportedOptimizerError",
    "rule_for",
]
