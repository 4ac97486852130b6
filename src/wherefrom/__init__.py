"""wherefrom: explain PyTorch predictions by the training data that caused them, and measure how right that is.

    import wherefrom as wf
    task = wf.Task(model)
    scores = wf.InfluenceFunction(task, solver="cg", damping=1e-3).fit(train).score(test)  # [n_train, n_test]
    wf.InfluenceFunction(task, solver="ekfac").fit(train).save("fits/ekfac")  # later: wf.load("fits/ekfac", task)

Scores follow one convention: ``scores[i, j] > 0`` means training example ``i`` helped test example ``j``
(removing it would make test target ``j`` worse); influence scores are scaled to the leave-one-out effect.
"""

from wherefrom import curvature, layers, similarity, sources, targets
from wherefrom.errors import (
    CheckpointMismatchError,
    DataOrderError,
    LossReductionError,
    NonFiniteGradientError,
    NonPositiveDefiniteError,
    UnknownNameError,
    WherefromError,
)
from wherefrom.execution import Execution
from wherefrom.layers import register_layer_type
from wherefrom.methods import (
    TRAK,
    Attributor,
    ComposedAttributor,
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
from wherefrom.persist import load
from wherefrom.progress import set_progress
from wherefrom.projection import RandomProjection
from wherefrom.store import TopK
from wherefrom.task import Task

__version__ = "0.1.0"

__all__ = [
    "TRAK",
    "Attributor",
    "CheckpointMismatchError",
    "ComposedAttributor",
    "DataOrderError",
    "Execution",
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
    "UnknownNameError",
    "WherefromError",
    "curvature",
    "layers",
    "load",
    "register_layer_type",
    "set_progress",
    "similarity",
    "sources",
    "targets",
]
