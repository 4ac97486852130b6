"""LoGra's source (Choe et al. 2024): layer-wise Kronecker projections of per-example gradients, never forming them.

For a Kronecker layer (``G = Σ_t δ_t ãᵀ_t``, ``[d_out, d_in(+1)]``, see :mod:`wherefrom.layers`) the two *factors*
are projected with ``P_in ∈ R^{k_in×(d_in+1)}`` and ``P_out ∈ R^{k_out×d_out}``:

    G̃ = Σ_t (P_out δ_t)(P_in ã_t)ᵀ = P_out G P_inᵀ,        vec(G̃) = (P_out ⊗ P_in) vec(G)     [k_out·k_in]

(``vec`` row-major). ``P_in``/``P_out`` have i.i.d. ``N(0, 1/k)`` entries (so ``E[(P_out ⊗ P_in)ᵀ(P_out ⊗ P_in)] = I``),
are drawn from ``(seed, checkpoint, layer, factor)`` and shared by train and test. A factor whose ``k`` is not smaller
than its dimension is the identity. Dense layers (LayerNorm) and fallback parameters have no factors: their
per-example gradient rows are projected by one seeded ``N(0, 1/k)`` matrix to ``k = k_in·k_out`` dimensions
(identity when that is not smaller than their size). Blocks come in model order.

**A total dimension instead of a rank** (``dim=k``, TRAK's ``projection="kronecker"``): ``k`` is shared equally
among the blocks (layers and fallback parameters) by water-filling — a block that cannot take its share (its
gradient has fewer entries) keeps its full size and the rest is shared among the others, the first blocks in model
order taking the remainder — and each Kronecker block's share ``k_l`` is factored as ``k_out·k_in ≤ k_l`` with
``k_out ≤ d_out``, ``k_in ≤ d_in(+1)``, the largest product and, among equal products, the most balanced pair
(:func:`allocate_ranks`). The feature dimension (``dim`` after ``setup``) is therefore at most ``k`` and can be a
little less where a share has no exact factorisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from wherefrom.errors import WherefromError
from wherefrom.gradients import Probe
from wherefrom.layers.base import LayerIO, LayerSpec
from wherefrom.layers.tracking import LayerSet
from wherefrom.projection import seeded_generator
from wherefrom.sources.base import FeatureBlock, GradientSource, SampleBatch
from wherefrom.sources.full import parameter_layout
from wherefrom.task import LossFn, Task


def gaussian_factor(rank: int, dim: int, device: torch.device | str, *keys) -> torch.Tensor | None:
    """``[rank, dim]`` Gaussian factor with ``N(0, 1/rank)`` entries, or ``None`` (identity) if ``rank >= dim``."""
    if rank >= dim:
        return None
    gen = seeded_generator(device, *keys)
    return torch.randn(rank, dim, generator=gen, device=device, dtype=torch.float32).mul_(1.0 / math.sqrt(rank))


def _apply(x: torch.Tensor, P: torch.Tensor | None) -> torch.Tensor:
    return x if P is None else x @ P.T.to(device=x.device, dtype=x.dtype)


def factor_pair(budget: int, d_in: int, d_out: int) -> tuple[int, int]:
    """``(k_in, k_out)`` with ``k_in ≤ d_in``, ``k_out ≤ d_out`` and the largest ``k_in·k_out ≤ budget``; among
    equal products the most balanced pair, then the larger ``k_in``."""
    best = (0, 0, 0, 0)  # (product, −|k_in − k_out|, k_in, k_out)
    for k_out in range(1, min(d_out, budget) + 1):
        k_in = min(d_in, budget // k_out)
        best = max(best, (k_in * k_out, -abs(k_in - k_out), k_in, k_out))
    return best[2], best[3]


def allocate_ranks(dim: int, blocks: list[FeatureBlock]) -> dict[str, tuple[int, int] | int]:
    """Split a total feature dimension ``dim`` over parameter blocks (see the module docstring).

    Returns ``{block: (k_in, k_out)}`` for a Kronecker block and ``{block: k}`` for a dense one."""
    if dim < len(blocks):
        raise WherefromError(f"A Kronecker projection to {dim} dimensions cannot cover the task's {len(blocks)} "
                             f"layers and parameter groups (at least one dimension each): pass a dimension >= "
                             f"{len(blocks)}.")
    caps = {b.name: b.size for b in blocks}  # spec.size for a Kronecker block: d_out·(d_in+1)
    share: dict[str, int] = {}
    open_, left = [b.name for b in blocks], dim
    while open_:
        each, extra = divmod(left, len(open_))
        quota = {name: each + (1 if i < extra else 0) for i, name in enumerate(open_)}
        full = [name for name in open_ if caps[name] <= quota[name]]
        if not full:
            share.update(quota)
            break
        for name in full:
            share[name] = caps[name]
            left -= caps[name]
        open_ = [name for name in open_ if name not in full]
    out: dict[str, tuple[int, int] | int] = {}
    for b in blocks:
        out[b.name] = factor_pair(share[b.name], b.spec.cols, b.spec.d_out) if b.spec is not None else share[b.name]
    return out


class KroneckerProjectedGradients(GradientSource):
    """LoGra features (see the module docstring).

    Args:
        rank: ``k_in = k_out = rank`` for every layer, or a pair ``(k_in, k_out)``.
        seed: seed of the factor projections.
        dim: a total feature dimension shared over the layers instead of one ``rank`` for all (see the module
            docstring; ``rank`` is then ignored).
    """

    def __init__(self, rank: int | tuple[int, int] = 16, seed: int = 0, *, dim: int | None = None) -> None:
        k_in, k_out = (rank, rank) if isinstance(rank, int) else tuple(rank)
        if not (isinstance(k_in, int) and isinstance(k_out, int) and k_in >= 1 and k_out >= 1):
            raise WherefromError(f"rank must be a positive integer or a pair of them, got {rank!r}.")
        if dim is not None and not (isinstance(dim, int) and dim >= 1):
            raise WherefromError(f"dim must be a positive integer or None, got {dim!r}.")
        self.rank = (k_in, k_out)
        self.total_dim = dim
        self.seed = seed
        self.task = None  # type: ignore[assignment]
        self._factors: dict[tuple, Any] = {}

    def setup(self, task: Task) -> KroneckerProjectedGradients:
        self.task = task
        self.layers = LayerSet(task)
        self._param_layout = parameter_layout(task, self.layers)
        k_in, k_out = self.rank
        ranks = allocate_ranks(self.total_dim, self._param_layout) if self.total_dim is not None else {}
        blocks, offset = [], 0
        self._dims: dict[str, tuple[int, int]] = {}
        self.ranks: dict[str, tuple[int, int] | int] = {}  # {block: (k_in, k_out)} or {block: k}
        for pb in self._param_layout:
            if pb.spec is not None:
                d_in, d_out = pb.spec.cols, pb.spec.d_out
                self._dims[pb.name] = (d_in, d_out)
                ki, ko = ranks[pb.name] if ranks else (min(k_in, d_in), min(k_out, d_out))  # type: ignore[misc]
                self.ranks[pb.name] = (ki, ko)
                spec = LayerSpec(pb.name, (offset, offset + ki * ko), None, ko, ki)
                blocks.append(FeatureBlock(pb.name, spec.indices(), spec))
                offset += ki * ko
            else:
                k = int(ranks[pb.name]) if ranks else min(k_in * k_out, pb.size)  # type: ignore[arg-type]
                self.ranks[pb.name] = k
                blocks.append(FeatureBlock(pb.name, torch.arange(offset, offset + k), None, pb.fallback))
                offset += k
        self.layout, self.dim = blocks, offset
        self._factors = {}
        return self

    # ------------------------------------------------------------------ factors
    def layer_factors(self, c: int, name: str, device: torch.device | str):
        """``(P_in, P_out)`` of a Kronecker block (``None`` = identity)."""
        key = (c, name, str(device))
        if key not in self._factors:
            d_in, d_out = self._dims[name]
            k_in, k_out = self.ranks[name]  # type: ignore[misc]
            self._factors[key] = (gaussian_factor(k_in, d_in, device, "logra", self.seed, c, name, "in"),
                                  gaussian_factor(k_out, d_out, device, "logra", self.seed, c, name, "out"))
        return self._factors[key]

    def dense_factor(self, c: int, block: FeatureBlock, size: int, device: torch.device | str):
        """The ``[k, size]`` projection of a dense block (``None`` = identity)."""
        key = (c, block.name, str(device))
        if key not in self._factors:
            self._factors[key] = gaussian_factor(block.size, size, device, "logra", self.seed, c, block.name,
                                                 "dense")
        return self._factors[key]

    # ------------------------------------------------------------------ features
    def _parts(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe, c: int) -> SampleBatch:
        """Projected ``(a, δ)`` per Kronecker block and projected rows per dense block."""
        out = SampleBatch()
        captures = self.layers.capture(state, batch, fn) if self.layers.layers else {}
        fallback = self.layers.fallback_gradients(state, batch, fn) if self.layers.fallback else None
        slices = self.task.param_slices()
        offsets, off = {}, 0
        for pname in self.layers.fallback:
            offsets[pname] = off
            off += slices[pname].stop - slices[pname].start
        for block, pb in zip(self.layout, self._param_layout):
            if block.spec is not None:
                io = captures[block.name]
                assert isinstance(io, LayerIO)
                P_in, P_out = self.layer_factors(c, block.name, io.delta.device)
                out.kronecker[block.name] = (io.project_inputs(P_in), _apply(io.delta, P_out))
                out.positions[block.name] = io.real_positions
                continue
            if block.fallback:
                rows = fallback[:, offsets[block.name]: offsets[block.name] + pb.size]  # type: ignore[index]
            else:
                io = captures[block.name]
                rows = torch.cat([io.grads[p] for p in self.layers.layers[block.name].owned], dim=1)
            out.dense[block.name] = _apply(rows, self.dense_factor(c, block, pb.size, rows.device))
        return out

    def batch_features(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe,
                       c: int = 0) -> torch.Tensor:
        parts = self._parts(state, batch, fn, c)
        feats = []
        for block in self.layout:
            if block.spec is not None:
                a, d = parts.kronecker[block.name]
                g = d[:, 0, :, None] * a[:, 0, None, :] if a.shape[1] == 1 else torch.einsum("bto,bti->boi", d, a)
                feats.append(g.reshape(g.shape[0], -1))
            else:
                feats.append(parts.dense[block.name])
        return torch.cat(feats, dim=1)

    def batch_sample(self, state: Mapping[str, torch.Tensor], batch: Any, probe: LossFn | Probe,
                     c: int = 0) -> SampleBatch:
        return self._parts(state, batch, probe, c)

    def matrix(self, c: int = 0, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The ``[p, d]`` map ``g ↦ features`` (block-diagonal: ``(P_out ⊗ P_in)ᵀ`` per layer)."""
        p = self.task.num_params
        M = torch.zeros(p, self.dim, dtype=dtype, device=device)
        positions = torch.arange(p, dtype=torch.float64).unsqueeze(0)
        for block, pb in zip(self.layout, self._param_layout):
            cols = block.index.to(device)
            if block.spec is not None:
                P_in, P_out = self.layer_factors(c, block.name, device)
                d_in, d_out = self._dims[block.name]
                P_in = torch.eye(d_in, device=device) if P_in is None else P_in
                P_out = torch.eye(d_out, device=device) if P_out is None else P_out
                rows = pb.spec.to_matrix(positions).reshape(-1).long().to(device)  # flat index of vec(G) entries
                K = torch.kron(P_out.to(dtype), P_in.to(dtype))  # [k, d_out·(d_in+1)]
            else:
                P = self.dense_factor(c, block, pb.size, device)
                rows = pb.index.to(device)
                K = torch.eye(pb.size, dtype=dtype, device=device) if P is None else P.to(dtype)
            M[rows[:, None], cols[None, :]] = K.T
        return M
