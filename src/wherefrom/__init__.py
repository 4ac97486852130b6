"""wherefrom: explain PyTorch predictions by the training data that caused them, and measure how right that is.

    import wherefrom as wf
    task = wf.Task(model)
    scores = wf.InfluenceFunction(task, solver="cg", damping=1e-3).fit(train).score(test)  # [n_train, n_test]

Scores follow one convention: ``scores[i, j] > 0`` means training example ``i`` helped test example ``j``
(removing it would make test target ``j`` worse); influence scores are scaled to the leave-one-out effect.
"""

from wherefrom import curvature, targets
from wherefrom.errors import (
    CheckpointMismatchError,
    DataOrderError,
    LossReductionError,
    NonFiniteGradientError,
    NonPositiveDefiniteError,
    UnknownNameError,
    WherefromError,
)
from wherefrom.methods import (
    TRAK,
    Attributor,
    GradCos,
    GradDot,
    GradientAttributor,
    InfluenceFunction,
    KNNShapley,
    LoGra,
    ProjectedInfluence,
    RelatIF,
    RepresenterPoints,
    TracInCP,
)
from wherefrom.methods.hydra import HYDRA
from wherefrom.progress import set_progress
from wherefrom.projection import RandomProjection
from wherefrom.store import TopK
from wherefrom.task import Task
from wherefrom.trajectory import Trajectory, TrajectoryRecorder

__version__ = "0.1.0"

__all__ = [
    "HYDRA",
    "TRAK",
    "Attributor",
    "CheckpointMismatchError",
    "DataOrderError",
    "GradCos",
    "GradDot",
    "GradientAttributor",
    "InfluenceFunction",
    "KNNShapley",
    "LoGra",
    "LossReductionError",
    "NonFiniteGradientError",
    "NonPositiveDefiniteError",
    "ProjectedInfluence",
    "RandomProjection",
    "RelatIF",
    "RepresenterPoints",
    "Task",
    "TopK",
    "TracInCP",
    "Trajectory",
    "TrajectoryRecorder",
    "UnknownNameError",
    "WherefromError",
    "curvature",
    "set_progress",
    "targets",
]
