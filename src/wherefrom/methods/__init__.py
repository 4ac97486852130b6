"""Attributors: training-data attribution methods with one protocol (fit / score / self_influence / top_k)."""

from wherefrom.methods.base import Attributor, GradientAttributor
from wherefrom.methods.influence import InfluenceFunction
from wherefrom.methods.relatif import RelatIF
from wherefrom.methods.tracin import GradCos, GradDot, TracInCP

__all__ = ["Attributor", "GradCos", "GradDot", "GradientAttributor", "InfluenceFunction", "RelatIF", "TracInCP"]
