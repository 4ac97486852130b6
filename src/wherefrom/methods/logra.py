"""LoGra (Choe et al. 2024): layer-wise Kronecker projection of per-example gradients, never forming them.

For a Linear (or unfolded Conv2d) layer ``l`` the per-example gradient is ``G = Σ_t δ_t ãᵀ_t`` (``[d_out, d_in+1]``,
see :mod:`wherefrom.layers`). LoGra projects the two *factors* with ``P_in ∈ R^{k_in×(d_in+1)}`` and
``P_out ∈ R^{k_out×d_out}``:

    G̃ = Σ_t (P_out δ_t)(P_in ã_t)ᵀ = P_out G P_inᵀ,        vec(G̃) = (P_out ⊗ P_in) vec(G)     [k_out·k_in]

(``vec`` row-major, which is the order of the flat parameter vector: weight rows, the bias as the last column).
This is a linear projection of ``G`` of dimension ``k_l = k_in·k_out`` with Kronecker structure; the cost per example
is ``O(T·((d_in+1)·k_in + d_out·k_out) + T·k_in·k_out)`` on top of one forward and backward pass. ``P_in``/``P_out``
have i.i.d. ``N(0, 1/k)`` entries (so ``E[(P_out ⊗ P_in)ᵀ(P_out ⊗ P_in)] = I``), are drawn from
``(seed, checkpoint, layer, factor)`` and shared by train and test. A factor whose ``k`` is not smaller than its
dimension is the identity (no information is lost there).

**Score** (per layer ``l``, summed over layers; ``g̃`` training-loss, ``q̃`` test-target projected gradients)::

    τ[i, j] = sign · Σ_l g̃_ilᵀ (F̃_l + λ_l I)⁻¹ q̃_jl / n

with the preconditioner ``F̃_l``:

- ``"raw"``: the projected empirical Fisher ``F̃_l = (1/n) Σ_i g̃_il g̃_ilᵀ`` (``k_l×k_l``), damped relative to its
  scale, ``λ_l = damping · tr(F̃_l)/k_l``;
- ``"kfac"``: ``F̃_l ≈ S̃_l ⊗ Ã_l`` with ``Ã_l = (1/(nT)) Σ_{i,t} (P_in ã)(P_in ã)ᵀ`` and
  ``S̃_l = (1/n) Σ_{i,t} (P_out δ)(P_out δ)ᵀ``, inverted through the eigendecompositions of the factors,
  ``λ_l = damping · tr(S̃_l)·tr(Ã_l)/k_l`` (this needs one extra pass over the training data);
- ``"identity"``: no preconditioner, ``τ = sign · Σ_l g̃_ilᵀ q̃_jl`` (projected Grad-Dot; no ``1/n``).

With ``"raw"``/``"kfac"`` the natural scale is that of an influence function (the predicted leave-one-out change of
the test target under a mean-reduced objective, with the Fisher as curvature). ``sign`` makes positive = helpful.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from wherefrom.data.loaders import DataLike, as_loader, batch_length
from wherefrom.errors import WherefromError, unknown_name
from wherefrom.gradients import check_finite
from wherefrom.layers import LayerIO, capture_layers, kronecker_layers, uncovered_params
from wherefrom.methods.base import GradientAttributor
from wherefrom.progress import track
from wherefrom.projection import seeded_generator
from wherefrom.task import Task

PRECONDITIONERS = ("raw", "kfac", "identity")


def _factor(rank: int, dim: int, device: torch.device, *keys) -> torch.Tensor | None:
    """``[rank, dim]`` Gaussian factor with ``N(0, 1/rank)`` entries, or ``None`` (identity) if ``rank >= dim``."""
    if rank >= dim:
        return None
    gen = seeded_generator(device, *keys)
    return torch.randn(rank, dim, generator=gen, device=device, dtype=torch.float32).mul_(1.0 / math.sqrt(rank))


class _KroneckerSpec:
    """Stands for LoGra's layer-wise projection in cache keys (``repr``); it is applied to captures, not blocks."""

    def __init__(self, rank: tuple[int, int], seed: int) -> None:
        self.rank, self.seed = rank, seed

    def __repr__(self) -> str:
        return f"KroneckerProjection(rank={self.rank}, seed={self.seed}, kind='gaussian')"

    def project(self, block: torch.Tensor, checkpoint_index: int = 0) -> torch.Tensor:
        raise WherefromError("LoGra projects layer captures, not flattened gradient blocks.")


class LoGra(GradientAttributor):
    """LoGra scores ``[n_train, n_test]`` at the task's final checkpoint (see the module docstring).

    Args:
        task: the :class:`~wherefrom.task.Task`; every selected parameter must belong to a Linear or Conv2d layer
            (select them with ``Task(params=[...])``).
        rank: ``k_in = k_out = rank`` for every layer, or a pair ``(k_in, k_out)``; ``k_l = k_in·k_out``.
        preconditioner: ``"raw"`` (default), ``"kfac"`` or ``"identity"``.
        damping: relative damping (a multiple of the mean eigenvalue of each layer's preconditioner).
        seed: seed of the factor projections.
    The remaining keyword arguments are those of :class:`GradientAttributor`.
    """

    def __init__(
        self, task: Task, rank: int | tuple[int, int] = 16, *, preconditioner: str = "raw", damping: float = 0.1,
        seed: int = 0, batch_size: int = 256, memory_gb: float = 2.0, cache_dir: str | None = None,
        progress: bool | None = None,
    ) -> None:
        super().__init__(task, batch_size=batch_size, memory_gb=memory_gb, cache_dir=cache_dir, progress=progress)
        k_in, k_out = (rank, rank) if isinstance(rank, int) else tuple(rank)
        if not (isinstance(k_in, int) and isinstance(k_out, int) and k_in >= 1 and k_out >= 1):
            raise WherefromError(f"rank must be a positive integer or a pair of them, got {rank!r}.")
        if preconditioner not in PRECONDITIONERS:
            raise unknown_name("LoGra preconditioner", preconditioner, PRECONDITIONERS)
        if damping < 0:
            raise WherefromError(f"damping must be >= 0, got {damping}.")
        self.rank = (k_in, k_out)
        self.preconditioner = preconditioner
        self.damping = float(damping)
        self.seed = seed
        self.projection = _KroneckerSpec(self.rank, seed)  # names the projection in on-disk cache keys
        self.layers = kronecker_layers(task)
        if not self.layers:
            raise WherefromError("LoGra needs Linear or Conv2d layers among the task's parameters; none are selected.")
        missing = uncovered_params(task, self.layers)
        if missing:
            raise WherefromError(f"LoGra projects Linear/Conv2d layers only, but the task also selects {missing[:5]}. "
                                 "Select only those layers' parameters with Task(params=[...]).")
        self._factors: dict[tuple[int, str], tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self._solvers: list[dict[str, tuple]] = []
        self._n: int = 1

    # ------------------------------------------------------------------ projection
    def _dims(self, name: str) -> tuple[int, int]:
        module = self.layers[name]
        if isinstance(module, torch.nn.Linear):
            d_in, d_out = module.in_features, module.out_features
        else:
            d_in, d_out = module.weight[0].numel(), module.out_channels
        has_bias = getattr(module, "bias", None) is not None and f"{name}.bias" in self.task.param_names
        return d_in + int(has_bias), d_out

    def factors(self, c: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (P_in [k_in, d_in(+1)], P_out [k_out, d_out])}`` of checkpoint ``c`` (identity where ``k ≥ d``)."""
        out = {}
        for name in self.layers:
            P_in, P_out = self._layer_factors(c, name, self.task.device)
            d_in, d_out = self._dims(name)
            out[name] = (torch.eye(d_in) if P_in is None else P_in, torch.eye(d_out) if P_out is None else P_out)
        return out

    def _layer_factors(self, c: int, name: str, device: torch.device):
        key = (c, name)
        if key not in self._factors:
            d_in, d_out = self._dims(name)
            self._factors[key] = (_factor(self.rank[0], d_in, device, "logra", self.seed, c, name, "in"),
                                  _factor(self.rank[1], d_out, device, "logra", self.seed, c, name, "out"))
        return self._factors[key]

    def _project_io(self, c: int, io: LayerIO) -> tuple[torch.Tensor, torch.Tensor]:
        P_in, P_out = self._layer_factors(c, io.name, io.a.device)
        a = io.a if P_in is None else io.a @ P_in.T.to(io.a.dtype)  # [B, T, k_in]
        d = io.delta if P_out is None else io.delta @ P_out.T.to(io.delta.dtype)  # [B, T, k_out]
        return a, d

    def _iter_projected(self, c: int, loader: DataLoader, fn, what: str) -> Iterator[tuple[int, list]]:
        """Yield ``(start, [(a_proj, delta_proj) per layer])`` for each batch."""
        fn = self.task.loss_fn if fn is None else fn
        state = self._states[c]
        start = 0
        with self.task.attribution_mode():
            for k, batch in enumerate(track(loader, f"LoGra {what}", len(loader), self.progress)):
                batch = self.task.prepare_batch(batch)
                if k == 0:
                    self.task.check_per_example(fn, state, batch, what)
                ios = capture_layers(self.task, state, batch, fn, self.layers)
                yield start, [self._project_io(c, ios[name]) for name in self.layers]
                start += batch_length(batch)

    def _feature_blocks(self, c: int, loader: DataLoader, fn=None, what: str = "training-loss"):
        for start, parts in self._iter_projected(c, loader, fn, what):
            feats = []
            for a, d in parts:
                # outer product per example (T = 1) or summed over positions
                g = d[:, 0, :, None] * a[:, 0, None, :] if a.shape[1] == 1 else torch.einsum("bto,bti->boi", d, a)
                feats.append(g.reshape(g.shape[0], -1))
            block = torch.cat(feats, dim=1)
            if not bool(torch.isfinite(block.sum())):  # one reduction; the row-wise check only on failure
                check_finite(block, start, what)
            yield start, block

    def projected_gradients(self, data: DataLike, target: bool = False, checkpoint: int = 0) -> torch.Tensor:
        """Projected per-example gradients ``[n, Σ_l k_l]`` of the training loss (or of the target) of ``data``."""
        self._require_fit()
        loader = as_loader(data, self.batch_size)
        fn = self.task.target_fn if target else None
        return torch.cat([b for _, b in self._feature_blocks(checkpoint, loader, fn)], dim=0)

    def layer_dims(self) -> dict[str, int]:
        """``{layer: k_l}`` in feature order."""
        out = {}
        for name in self.layers:
            d_in, d_out = self._dims(name)
            out[name] = min(self.rank[0], d_in) * min(self.rank[1], d_out)
        return out

    # ------------------------------------------------------------------ preconditioner
    def _fit_checkpoint(self, c: int, state: dict[str, torch.Tensor], loader: DataLoader) -> None:
        if self.preconditioner != "kfac":
            return
        A: dict[str, torch.Tensor] = {}
        S: dict[str, torch.Tensor] = {}
        count = 0
        for _, parts in self._iter_projected(c, loader, None, "K-FAC factors"):
            count += parts[0][0].shape[0]
            for name, (a, d) in zip(self.layers, parts):
                a64, d64 = a.to(torch.float64), d.to(torch.float64)
                T = a64.shape[1]
                fa = torch.einsum("bti,btj->ij", a64, a64) / T
                fs = torch.einsum("bti,btj->ij", d64, d64)
                A[name] = fa if name not in A else A[name] + fa
                S[name] = fs if name not in S else S[name] + fs
        solvers = {}
        for name in self.layers:
            ea, Ua = torch.linalg.eigh(A[name] / count)
            es, Us = torch.linalg.eigh(S[name] / count)
            ea, es = ea.clamp_min(0), es.clamp_min(0)
            lam = self.damping * float(es.sum() * ea.sum()) / (ea.numel() * es.numel())
            solvers[name] = ("kfac", Ua, Us, torch.outer(es, ea) + lam)
        self._solvers.append(solvers)

    def fit(self, train: DataLike) -> LoGra:
        """Project the training gradients (one forward + backward per batch) and fit each layer's preconditioner."""
        self._solvers = []
        super().fit(train)
        self._n = self.n_train
        if self.preconditioner == "raw":
            dims = list(self.layer_dims().items())
            for store in self._stores:
                F = {name: None for name, _ in dims}
                for _, block in store.blocks():
                    off = 0
                    for name, k in dims:
                        x = block[:, off:off + k].to(torch.float64)
                        F[name] = x.T @ x if F[name] is None else F[name] + x.T @ x
                        off += k
                solvers = {}
                for name, k in dims:
                    Fl = F[name] / self._n
                    lam = self.damping * float(torch.diagonal(Fl).sum()) / k
                    A = Fl + lam * torch.eye(k, dtype=Fl.dtype, device=Fl.device)
                    chol, info = torch.linalg.cholesky_ex(A)
                    if int(info) != 0:
                        raise WherefromError(f"The projected Fisher of layer {name!r} is singular; use damping > 0.")
                    solvers[name] = ("raw", chol)
                self._solvers.append(solvers)
        return self

    def _transform_query(self, c: int, Q: torch.Tensor) -> torch.Tensor:
        if self.preconditioner == "identity":
            return Q
        out, off = [], 0
        for name, k in self.layer_dims().items():
            q = Q[:, off:off + k].to(torch.float64)
            off += k
            spec = self._solvers[c][name]
            if spec[0] == "raw":
                x = torch.cholesky_solve(q.T, spec[1]).T
            else:
                _, Ua, Us, denom = spec
                G = q.reshape(q.shape[0], Us.shape[0], Ua.shape[0])  # [m, k_out, k_in]
                rot = Us.T @ G @ Ua
                x = (Us @ (rot / denom) @ Ua.T).reshape(q.shape[0], -1)
            out.append(x)
        return (torch.cat(out, dim=1) / self._n).to(Q.dtype)
