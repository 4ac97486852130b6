"""The built-in layer types: Linear, Conv1d, Conv2d, Embedding, GPT-2's Conv1D (Kronecker) and LayerNorm (dense).

- **Linear** ``y_t = W x_t + b`` at positions ``t`` (any leading shape): ``a_t = x_t``, ``δ_t = ∂f/∂y_t``.
- **Conv1d / Conv2d** are Linear layers on unfolded patches (im2col): ``a_t`` is the input patch at output position
  ``t`` (``C_in·k`` or ``C_in·k_h·k_w`` values, in the order of ``weight.reshape(C_out, -1)``), ``δ_t`` the output
  gradient there. Zero padding given as numbers and ``groups=1`` are supported; other configurations fall back.
- **Embedding** ``y_t = W[k_t]`` is a bias-free Linear layer on the one-hot input ``a_t = e_{k_t}``
  (``d_in = num_embeddings``, ``d_out = embedding_dim``; positions equal to ``padding_idx`` get ``a_t = 0``). Its
  weight is stored ``[num_embeddings, dim]``, *transposed* with respect to the gradient matrix. The one-hot inputs
  are materialised, so this suits vocabularies of moderate size. ``max_norm``, ``scale_grad_by_freq`` and
  ``sparse`` fall back.
- **GPT-2 Conv1D** (``transformers.pytorch_utils.Conv1D``, registered by name so that transformers is not
  imported): ``y = x W + b`` with ``W`` stored ``[d_in, d_out]``, a transposed Linear layer.
- **LayerNorm** ``y = x̂ ⊙ w + b`` with ``x̂ = (x − mean)/sqrt(var + eps)`` over the normalised dimensions: dense, with
  per-example gradients ``∂f/∂w = Σ_t δ_t ⊙ x̂_t`` and ``∂f/∂b = Σ_t δ_t`` computed from the captured input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wherefrom.layers.base import DenseLayer, KroneckerLayer, register_layer_type


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``[B, ..., d]`` → ``[B, T, d]``."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


@register_layer_type(nn.Linear)
class LinearLayer(KroneckerLayer):
    """``nn.Linear``, with or without bias, on inputs of any leading shape."""

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return _rows(x)

    def output_grads(self, g: torch.Tensor) -> torch.Tensor:
        return _rows(g)


@register_layer_type(nn.Conv2d)
class Conv2dLayer(KroneckerLayer):
    """``nn.Conv2d`` through im2col (``F.unfold``)."""

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return f"padding={module.padding!r}, padding_mode={module.padding_mode!r} (only numeric zero padding)"
        if module.groups != 1:
            return f"groups={module.groups} (only groups=1)"
        return None

    def geometry(self) -> tuple[tuple[int, int], ...]:
        """``(kernel, dilation, padding, stride)`` of the 2-d unfold."""
        m = self.module
        return m.kernel_size, m.dilation, m.padding, m.stride

    def image(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        kernel, dilation, padding, stride = self.geometry()
        cols = F.unfold(self.image(x), kernel, dilation=dilation, padding=padding, stride=stride)  # [B, C·k, L]
        return cols.transpose(1, 2)

    def output_grads(self, g: torch.Tensor) -> torch.Tensor:
        return g.flatten(2).transpose(1, 2)  # [B, C_out, H, W] (or [B, C_out, L]) -> [B, L, C_out]


@register_layer_type(nn.Conv1d)
class Conv1dLayer(Conv2dLayer):
    """``nn.Conv1d`` as a Conv2d on a height-1 image."""

    def geometry(self) -> tuple[tuple[int, int], ...]:
        m = self.module
        return (1, m.kernel_size[0]), (1, m.dilation[0]), (0, m.padding[0]), (1, m.stride[0])

    def image(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(2)


@register_layer_type(nn.Embedding)
class EmbeddingLayer(KroneckerLayer):
    """``nn.Embedding`` as a bias-free Linear layer on one-hot inputs (weight stored transposed)."""

    transposed = True

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            return "max_norm, scale_grad_by_freq or sparse=True"
        return None

    def dims(self) -> tuple[int, int]:
        return self.module.num_embeddings, self.module.embedding_dim

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        idx = x.reshape(x.shape[0], -1).long()
        a = F.one_hot(idx, self.module.num_embeddings).to(self.module.weight.dtype)
        if self.module.padding_idx is not None:
            a = a * (idx != self.module.padding_idx).unsqueeze(-1).to(a.dtype)
        return a

    def output_grads(self, g: torch.Tensor) -> torch.Tensor:
        return _rows(g)


@register_layer_type("transformers.pytorch_utils:Conv1D")
class GPT2Conv1DLayer(LinearLayer):
    """Hugging Face GPT-2's ``Conv1D``: a Linear layer whose weight is stored ``[d_in, d_out]``."""

    transposed = True

    def dims(self) -> tuple[int, int]:
        d_in, d_out = self.module.weight.shape
        return d_in, d_out


@register_layer_type(nn.LayerNorm)
class LayerNormLayer(DenseLayer):
    """``nn.LayerNorm`` with elementwise affine parameters (weight and/or bias)."""

    def gradients(self, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.module
        dims = tuple(range(x.dim() - len(m.normalized_shape), x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, keepdim=True, unbiased=False)
        xhat = (x - mean) / torch.sqrt(var + m.eps)
        lead = tuple(range(1, x.dim() - len(m.normalized_shape)))  # positions between batch and normalised dims
        out = {"weight": (g * xhat).sum(dim=lead) if lead else g * xhat}
        out["bias"] = g.sum(dim=lead) if lead else g
        return out
