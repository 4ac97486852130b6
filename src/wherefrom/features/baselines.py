"""Baseline feature attributions with one sign convention: **positive = supports the target class**.

* ``integrated_gradients``: ``IG_j = (x_j − x'_j) · (1/M) Σ_{k=0}^{M−1} ∂F/∂x_j (x' + k/(M−1)·(x − x'))`` — the
  grid has both endpoints (as the reference code). ``F`` is the target's softmax probability by default
  (``output="prob"``, the reference choice) or its logit / log-probability. For token inputs the path runs in
  embedding space (baseline: the embedding of ``baseline_token`` at every position, or zero vectors) and the
  attribution is summed over the embedding dimension.
* ``gradient_times_input``: ``x ⊙ ∂F/∂x`` with ``F`` the target logit by default. (The reference code returns
  ``x ⊙ ∂NLL/∂x``, i.e. the negative of ``output="log_prob"`` here.)
* ``occlusion``: ``F(x) − F(x with the group set to baseline)``; ``build_up``: ``F(x with only the group kept)``.
  Groups are masks as in :func:`~wherefrom.features.cd` (one, or ``[M, ...]`` for several).

Helpers: :func:`block_masks` and :func:`span_masks` make the groups; :func:`block_sum` sums a pixel attribution
over channels and blocks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wherefrom.errors import WherefromError, unknown_name
from wherefrom.features.propagate import is_token_input, normalise_masks
from wherefrom.features.scoring import contrast_scores

OUTPUTS = ("logit", "prob", "log_prob")


def _select(logits: Tensor, target: Any, output: str, contrast: bool = False) -> Tensor:
    """``F`` per row: the target's logit / probability / log-probability (``contrast``: against the others)."""
    if output not in OUTPUTS:
        raise unknown_name("output", output, OUTPUTS)
    values = {"logit": logits, "prob": F.softmax(logits, -1), "log_prob": F.log_softmax(logits, -1)}[output]
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if t.numel() == 1:
        return contrast_scores(values, int(t), contrast)
    if t.numel() != values.shape[0]:
        raise WherefromError(f"target has {t.numel()} entries for a batch of {values.shape[0]}.")
    own = values.gather(-1, t[:, None])[:, 0]
    if not contrast or values.shape[-1] == 1:
        return own
    return own - (values.sum(-1) - own) / (values.shape[-1] - 1)


def find_embedding(model: nn.Module, embedding: nn.Module | None = None) -> nn.Module:
    """The model's token embedding: ``embedding`` if given, else its only ``nn.Embedding``."""
    if embedding is not None:
        return embedding
    found = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if len(found) != 1:
        raise WherefromError(f"{type(model).__name__} has {len(found)} nn.Embedding modules; pass embedding= to "
                             "say which one reads the token input.")
    return found[0]


def _forward_with_embedding(model: nn.Module, embedding: nn.Module, ids: Tensor, vectors: Tensor) -> Tensor:
    """``model(ids)`` with the embedding output replaced by ``vectors`` (same shape)."""
    handle = embedding.register_forward_hook(lambda _m, _inp, _out: vectors)
    try:
        return model(ids)
    finally:
        handle.remove()


def _grad_of(model: nn.Module, x: Tensor, target: Any, output: str, embedding: nn.Module | None,
             points: Tensor, contrast: bool = False) -> Tensor:
    """``∂F/∂points`` where ``points`` are inputs (float) or embedding vectors (tokens), one row per input row."""
    points = points.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(points) if embedding is None else _forward_with_embedding(model, embedding, x, points)
        (grad,) = torch.autograd.grad(_select(logits, target, output, contrast).sum(), points)
    return grad


def _embed(model: nn.Module, x: Tensor, embedding: nn.Module | None) -> tuple[nn.Module, Tensor]:
    emb = find_embedding(model, embedding)
    with torch.no_grad():
        return emb, emb(x)


def integrated_gradients(model: nn.Module, x: Tensor, target: Any, *, baseline: Any = None, steps: int = 100,
                         output: str = "prob", embedding: nn.Module | None = None,
                         baseline_token: int | None = None, contrast: bool = False,
                         batch_size: int = 256) -> Tensor:
    """Integrated gradients of ``F`` (default: target probability) for a batch ``x``.

    Returns the shape of ``x`` for float inputs, ``[B, T]`` for token inputs. ``baseline`` (float inputs) defaults
    to 0; for tokens the baseline is the embedding of ``baseline_token`` (default: zero vectors). ``contrast``:
    ``F`` of the target minus the mean ``F`` of the other classes.
    """
    if steps < 2:
        raise WherefromError("integrated_gradients needs steps >= 2 (the grid has both endpoints).")
    tokens = is_token_input(x)
    emb = None
    if tokens:
        emb, start_point = _embed(model, x, embedding)
        if baseline_token is None:
            base = torch.zeros_like(start_point)
        else:
            with torch.no_grad():
                base = emb(torch.full_like(x, baseline_token))
        end = start_point
    else:
        end = x.detach()
        base = torch.zeros_like(end) if baseline is None else torch.as_tensor(baseline, dtype=x.dtype,
                                                                                device=x.device).expand_as(end)
    alphas = torch.linspace(0.0, 1.0, steps, dtype=end.dtype, device=end.device)
    total = torch.zeros_like(end)
    per = max(1, batch_size // max(x.shape[0], 1))
    for a in range(0, steps, per):
        al = alphas[a:a + per].reshape(-1, *([1] * end.dim()))
        pts = (base.unsqueeze(0) + al * (end - base).unsqueeze(0)).reshape(-1, *end.shape[1:])
        ids = x.repeat(al.shape[0], *([1] * (x.dim() - 1))) if tokens else None
        tgt = _repeat_target(target, x.shape[0], al.shape[0], x.device)
        grad = _grad_of(model, ids if tokens else pts, tgt, output, emb, pts, contrast)
        total += grad.reshape(al.shape[0], *end.shape).sum(0)
    attribution = (end - base) * total / steps
    return attribution.sum(-1) if tokens else attribution


def _repeat_target(target: Any, batch: int, times: int, device: torch.device) -> Any:
    t = torch.as_tensor(target, device=device).long().reshape(-1)
    return t if t.numel() == 1 else t.repeat(times)


def gradient_times_input(model: nn.Module, x: Tensor, target: Any, *, output: str = "logit",
                         embedding: nn.Module | None = None, contrast: bool = False) -> Tensor:
    """``x ⊙ ∂F/∂x`` (default ``F``: target logit); token inputs: embedding ⊙ gradient summed to ``[B, T]``."""
    if is_token_input(x):
        emb, vectors = _embed(model, x, embedding)
        return (vectors * _grad_of(model, x, target, output, emb, vectors, contrast)).sum(-1)
    return x.detach() * _grad_of(model, x, target, output, None, x, contrast)


def _replace(x: Tensor, masks: Tensor, baseline: Any, keep: bool) -> Tensor:
    """Rows ``m·B + b``: ``x_b`` with mask ``m`` kept (``keep``) or set to ``baseline``."""
    n_masks = masks.shape[0]
    x_rep = x.unsqueeze(0).expand(n_masks, *x.shape)
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    m = masks > 0.5
    out = torch.where(m, x_rep, base) if keep else torch.where(m, base, x_rep)
    return out.reshape(n_masks * x.shape[0], *x.shape[1:])


def _masked_scores(model: nn.Module, x: Tensor, target: Any, mask: Any, baseline: Any, output: str,
                   contrast: bool, keep: bool, batch_size: int) -> tuple[Tensor, bool]:
    masks, many = normalise_masks(x, mask)
    inputs = _replace(x, masks, baseline, keep)
    tgt = _repeat_target(target, x.shape[0], masks.shape[0], x.device)
    with torch.no_grad():
        logits = torch.cat([model(inputs[i:i + batch_size]) for i in range(0, inputs.shape[0], batch_size)])
    return _select(logits, tgt, output, contrast).reshape(masks.shape[0], x.shape[0]), many


def occlusion(model: nn.Module, x: Tensor, target: Any, mask: Any, *, baseline: Any = 0, output: str = "logit",
              contrast: bool = False, batch_size: int = 1024) -> Tensor:
    """``F(x) − F(x with the masked features set to baseline)``: ``[B]`` or ``[M, B]`` for M masks."""
    scores, many = _masked_scores(model, x, target, mask, baseline, output, contrast, False, batch_size)
    with torch.no_grad():
        full = _select(model(x), target, output, contrast)
    out = full.unsqueeze(0) - scores
    return out if many else out[0]


def build_up(model: nn.Module, x: Tensor, target: Any, mask: Any, *, baseline: Any = 0, output: str = "logit",
             contrast: bool = False, batch_size: int = 1024) -> Tensor:
    """``F(x with only the masked features kept, the rest set to baseline)``: ``[B]`` or ``[M, B]``."""
    scores, many = _masked_scores(model, x, target, mask, baseline, output, contrast, True, batch_size)
    return scores if many else scores[0]


def block_masks(height: int, width: int, block_size: int = 1) -> Tensor:
    """One bool mask ``[H, W]`` per ``block_size × block_size`` block, row-major: ``[⌈H/b⌉·⌈W/b⌉, H, W]``."""
    rows, cols = math.ceil(height / block_size), math.ceil(width / block_size)
    eye = torch.eye(rows * cols, dtype=torch.bool).reshape(-1, rows, cols)
    return eye.repeat_interleave(block_size, 1).repeat_interleave(block_size, 2)[:, :height, :width]


def span_masks(length: int, width: int = 1) -> Tensor:
    """One bool mask ``[T]`` per window of ``width`` consecutive positions: ``[T − width + 1, T]``."""
    if not 1 <= width <= length:
        raise WherefromError(f"span width {width} must be between 1 and the length {length}.")
    starts = torch.arange(length - width + 1)
    pos = torch.arange(length)
    return (pos[None, :] >= starts[:, None]) & (pos[None, :] < starts[:, None] + width)


def block_sum(attribution: Tensor, block_size: int = 1) -> Tensor:
    """Sum a pixel attribution ``[B, (C,) H, W]`` over channels and over blocks: ``[B, ⌈H/b⌉, ⌈W/b⌉]``."""
    a = attribution.sum(1) if attribution.dim() == 4 else attribution
    h, w = a.shape[-2:]
    pad_h, pad_w = (-h) % block_size, (-w) % block_size
    a = F.pad(a, (0, pad_w, 0, pad_h))
    return F.avg_pool2d(a.unsqueeze(1), block_size).squeeze(1) * block_size * block_size
