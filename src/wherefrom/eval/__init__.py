"""Metrics that measure how right attribution scores are against retraining ground truth.

All metrics take scores in the library's orientation ``[n_train, n_test]`` (positive = helpful) and are
vectorised over test points. See ``docs/evaluation.md``.
"""

from wherefrom.eval.metrics import (
    BrittlenessResult,
    MetricResult,
    brittleness,
    flip_labels,
    lds,
    loo_correlation,
    noisy_label_auc,
    pearson_columns,
    spearman_columns,
)

__all__ = [
    "BrittlenessResult",
    "MetricResult",
    "brittleness",
    "flip_labels",
    "lds",
    "loo_correlation",
    "noisy_label_auc",
    "pearson_columns",
    "spearman_columns",
]
