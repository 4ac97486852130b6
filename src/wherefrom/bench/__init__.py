"""Benchmark settings, retraining ground truth and the benchmark runner (``wherefrom bench``)."""

from wherefrom.bench.groundtruth import LDSGroundTruth, LOOGroundTruth, Workspace, cache_root
from wherefrom.bench.settings import SETTINGS, Recipe, Setting, get_setting, setting_names

__all__ = [
    "SETTINGS",
    "LDSGroundTruth",
    "LOOGroundTruth",
    "Recipe",
    "Setting",
    "Workspace",
    "cache_root",
    "get_setting",
    "setting_names",
]
