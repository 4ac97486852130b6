"""Layer types: everything wherefrom knows about a kind of layer, registered in one place.

See :mod:`wherefrom.layers.base` for the concepts (Kronecker and dense layers, the flat layout, the registry),
:mod:`wherefrom.layers.builtin` for the built-in types and :mod:`wherefrom.layers.tracking` for binding them to a
task and capturing a batch.
"""

from wherefrom.layers.base import (
    LAYER_TYPES,
    DenseIO,
    DenseLayer,
    KroneckerLayer,
    LayerCaptureError,
    LayerIO,
    LayerSpec,
    LayerType,
    layer_type_for,
    param_name,
    register_layer_type,
)
from wherefrom.layers.builtin import (
    Conv1dLayer,
    Conv2dLayer,
    EmbeddingLayer,
    GPT2Conv1DLayer,
    LayerNormLayer,
    LinearLayer,
)
from wherefrom.layers.tracking import (
    LayerSet,
    capture_layers,
    flat_from_layers,
    kronecker_layers,
    last_linear_layer,
    uncovered_params,
)

__all__ = [
    "LAYER_TYPES",
    "Conv1dLayer",
    "Conv2dLayer",
    "DenseIO",
    "DenseLayer",
    "EmbeddingLayer",
    "GPT2Conv1DLayer",
    "KroneckerLayer",
    "LayerCaptureError",
    "LayerIO",
    "LayerNormLayer",
    "LayerSet",
    "LayerSpec",
    "LayerType",
    "LinearLayer",
    "capture_layers",
    "flat_from_layers",
    "kronecker_layers",
    "last_linear_layer",
    "layer_type_for",
    "param_name",
    "register_layer_type",
    "uncovered_params",
]
