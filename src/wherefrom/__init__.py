"""wherefrom: explain PyTorch predictions by the training data that caused them, and measure how right that is.

    import wherefrom as wf
    task = wf.Task(model)
    scores = wf.InfluenceFunction(task, solver="cg", damping=1e-3).fit(train).score(test)  # [n_train, n_test]
    wf.InfluenceFunction(task, solver="ekfac").fit(train).save("fits/ekfac")  # later: wf.load("fits/ekfac", task)

Scores follow one convention: ``scores[i, j] > 0`` means training example ``i`` helped test example ``j``
(removing it would make test target ``j`` worse); influence scores are scaled to the leave-one-out effect.

Feature attribution (which input features drove a prediction) lives in ``wf.features`` (imported on first use):
``wf.features.cd(model, x, mask)``, ``wf.features.acd(model, x, target)``.
"""

from wherefrom import curvature, layers, similarity, sources, targets
from wherefrom.errors import (
    ArgumentError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    DataOrderError,
    DeviceError,
    DisconnectedFunctionError,
    EmptyDataError,
    InputDtypeError,
    InputMismatchError,
    InputShapeError,
    LabelError,
    LossReductionError,
    NonFiniteGradientError,
    NonPositiveDefiniteError,
    NotApplicableError,
    ParameterSelectionError,
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
from wherefrom.methods.hydra import HYDRA
from wherefrom.persist import load
from wherefrom.progress import set_progress
from wherefrom.projection import RandomProjection
from wherefrom.ranking import top_k
from wherefrom.store import TopK
from wherefrom.task import Task
from wherefrom.trajectory import Trajectory, TrajectoryRecorder

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import ``wherefrom.features`` and ``wherefrom.scale`` on first use (``wf.features.cd(...)``,
    ``wf.scale.top_k(...)``) to keep ``import wherefrom`` cheap."""
    if name in ("features", "scale"):
        import importlib

        module = importlib.import_module(f"wherefrom.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'wherefrom' has no attribute {name!r}")


__all__ = [
    "HYDRA",
    "TRAK",
    "ArgumentError",
    "Attributor",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "ComposedAttributor",
    "DataOrderError",
    "DeviceError",
    "DisconnectedFunctionError",
    "EmptyDataError",
    "Execution",
    "GradCos",
    "GradDot",
    "GradientAttributor",
    "InfluenceFunction",
    "InputDtypeError",
    "InputMismatchError",
    "InputShapeError",
    "KNNShapley",
    "LabelError",
    "LoGra",
    "LossReductionError",
    "NonFiniteGradientError",
    "NonPositiveDefiniteError",
    "NotApplicableError",
    "ParameterSelectionError",
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
    "features",
    "layers",
    "load",
    "register_layer_type",
    "scale",
    "set_progress",
    "similarity",
    "sources",
    "targets",
    "top_k",
]
