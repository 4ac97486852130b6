"""Attributors: training-data attribution methods with one protocol (fit / score / self_influence / top_k)."""

from wherefrom.methods.base import Attributor
from wherefrom.methods.composed import ComposedAttributor, GradientAttributor
from wherefrom.methods.influence import InfluenceFunction
from wherefrom.methods.knn_shapley import KNNShapley
from wherefrom.methods.logra import LoGra
from wherefrom.methods.projected_influence import ProjectedInfluence
from wherefrom.methods.relatif import RelatIF
from wherefrom.methods.representer import RepresenterPoints
from wherefrom.methods.tracin import GradCos, GradDot, TracInCP
from wherefrom.methods.trak import TRAK

__all__ = [
    "TRAK",
    "Attributor",
    "ComposedAttributor",
    "GradCos",
    "GradDot",
    "GradientAttributor",
    "InfluenceFunction",
    "KNNShapley",
    "LoGra",
    "ProjectedInfluence",
    "RelatIF",
    "RepresenterPoints",
    "TracInCP",
]
