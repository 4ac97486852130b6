"""Turn one example's model input into something a browser can show, whatever the data is.

A *view* is a small JSON-able dict saved with the results, so ``wherefrom report DIR`` re-renders without the data:

- ``{"kind": "image", "png": <base64 PNG>, "width": w, "height": h}``: ``[C, H, W]`` or ``[H, W, C]`` tensors with
  1 or 3 channels, or ``[H, W]`` (any size; shrunk to ``max_side`` pixels), through the spec's ``denormalize``;
- ``{"kind": "tokens", "tokens": [...], "more": n}``: 1-D integer token ids, spelled by a vocabulary or ``decode``;
- ``{"kind": "tabular", "cells": [[name, value], ...], "more": n}``: 1-D rows of numbers;
- ``{"kind": "index"}``: anything else (the report shows the example's index).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

MAX_TOKENS = 120
MAX_CELLS = 12


@dataclass
class ViewOptions:
    """How inputs are shown (the display fields of :class:`~wherefrom.report.Spec`)."""

    input_kind: str = "auto"
    denormalize: Callable[[torch.Tensor], Any] | None = None
    vocabulary: Sequence[str] | Mapping[str, int] | None = None
    decode: Callable[[list[int]], str] | None = None
    feature_names: Sequence[str] | None = None
    max_side: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.vocabulary, Mapping):  # token -> id  ⇒  id -> token
            inverse: dict[int, str] = {int(i): str(t) for t, i in self.vocabulary.items()}
            self._vocab: Callable[[int], str | None] = inverse.get
        elif self.vocabulary is not None:
            vocab = list(self.vocabulary)
            self._vocab = lambda i: str(vocab[i]) if 0 <= i < len(vocab) else None
        else:
            self._vocab = lambda i: None

    @property
    def spells_tokens(self) -> bool:
        return self.vocabulary is not None or self.decode is not None


def input_kind(x: Any, options: ViewOptions) -> str:
    """The kind of view for one example's input ``x`` (no batch dimension)."""
    if options.input_kind != "auto":
        return options.input_kind
    if not isinstance(x, torch.Tensor):
        return "index"
    if x.ndim == 1 and not x.is_floating_point() and options.spells_tokens:
        return "tokens"
    if x.ndim == 3 and (x.shape[0] in (1, 3) or x.shape[-1] in (1, 3)):
        return "image"
    if x.ndim == 2 and min(x.shape) >= 4:
        return "image"
    if x.ndim == 1:
        return "tabular"
    return "index"


def make_view(x: Any, options: ViewOptions) -> dict[str, Any]:
    """The view of one example's input ``x`` (see the module docstring)."""
    kind = input_kind(x, options)
    if not isinstance(x, torch.Tensor):
        return {"kind": "index"}
    x = x.detach().cpu()
    if kind == "image":
        image = _as_image_array(x, options.denormalize)
        if image is not None:
            return _image_view(image, options.max_side)
    elif kind == "tokens" and x.ndim == 1:
        return _token_view(x, options)
    elif kind == "tabular" and x.ndim == 1:
        return _tabular_view(x, options.feature_names)
    return {"kind": "index"}


# ---------------------------------------------------------------------------------------------- images
def _channels_first(x: torch.Tensor) -> torch.Tensor | None:
    if x.ndim == 2:
        return x.unsqueeze(0)
    if x.ndim == 3 and x.shape[0] in (1, 3):
        return x
    if x.ndim == 3 and x.shape[-1] in (1, 3):
        return x.permute(2, 0, 1)
    if x.ndim == 1:  # a flattened square image: 1 or 3 channels
        for c in (1, 3):
            side = math.isqrt(x.numel() // c)
            if c * side * side == x.numel() and side >= 4:
                return x.reshape(c, side, side)
    return None


def _as_image_array(x: torch.Tensor, denormalize: Callable | None) -> np.ndarray | None:
    """``[H, W]`` or ``[H, W, 3]`` uint8 pixels, or None when ``x`` is not an image."""
    chw = _channels_first(x)
    if chw is None:
        return None
    if denormalize is not None:
        arr = np.asarray(torch.as_tensor(denormalize(chw.float())).detach().cpu(), dtype=np.float64)
        if arr.shape != tuple(chw.shape):
            arr = arr.reshape(tuple(chw.shape))
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 + 1e-6 else 1.0
        arr = np.clip(arr * scale, 0, 255)
    elif chw.dtype == torch.uint8:
        arr = chw.numpy().astype(np.float64)
    else:
        arr = chw.double().numpy()
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    pixels = np.rint(arr).astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else np.transpose(pixels, (1, 2, 0))


def _image_view(pixels: np.ndarray, max_side: int) -> dict[str, Any]:
    image = Image.fromarray(pixels)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"kind": "image", "png": base64.b64encode(buf.getvalue()).decode("ascii"),
            "width": image.size[0], "height": image.size[1]}


# ---------------------------------------------------------------------------------------------- tokens, rows
def _token_view(x: torch.Tensor, options: ViewOptions) -> dict[str, Any]:
    ids = [int(i) for i in x.tolist()]
    shown = ids[:MAX_TOKENS]
    tokens = []
    for i in shown:
        text = options._vocab(i)
        if text is None and options.decode is not None:
            text = str(options.decode([i]))
        tokens.append(text if text is not None else f"[{i}]")
    return {"kind": "tokens", "tokens": tokens, "more": len(ids) - len(shown)}


def _tabular_view(x: torch.Tensor, names: Sequence[str] | None) -> dict[str, Any]:
    values = x.tolist()
    cells = []
    for k, v in enumerate(values[:MAX_CELLS]):
        name = names[k] if names is not None and k < len(names) else f"x{k}"
        cells.append([name, f"{v:.4g}" if isinstance(v, float) else str(v)])
    return {"kind": "tabular", "cells": cells, "more": max(0, len(values) - MAX_CELLS)}
