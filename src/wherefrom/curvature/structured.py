"""Structured curvature: products and the dense matrix from factored samples, without Hessian-vector products.

Every curvature except the Hessian of a nonlinear model is a sum of outer products of *samples*
(:mod:`wherefrom.curvature.samples`): ``C_data = Σ_i Σ_k s_ik s_ikᵀ`` (no ``1/n``, no ``wd·I``), ``K`` samples per
example (``K ≤ C`` pseudo-gradients ``J_iᵀ l_ik`` for the Gauss-Newton matrix; one gradient for the true or
empirical Fisher). For a model whose outputs are *affine* in the selected parameters (one Linear, Conv or Embedding
layer whose output is the model's output, e.g. logistic regression or the last layer) the Hessian equals the
Gauss-Newton matrix, so the same samples describe it exactly when the loss is convex in the outputs (the samples
hold the positive part of the output curvature only; other losses keep Hessian-vector products).

Per tracked Kronecker layer a sample is ``s_ik = Σ_t δ_ikt ãᵀ_it`` (``ã`` ``[T, cols]`` the layer input, shared by
the ``K`` samples of one example, ``δ`` ``[K, T, d_out]``). The samples are taken **once** (one forward and ``K``
backward passes per batch) and kept while they fit in ``budget_bytes``; every product then costs two matrix
products per layer and no autodiff:

- ``C V`` for ``V`` ``[m, p]``: ``u_mik = Σ_l Σ_t δ_iktᵀ V_l ã_it`` (``[m, n, K]``), then
  ``(C V)_l = Σ_i Σ_t (Σ_k u_mik δ_ikt) ã_itᵀ``; a block with many positions (``T > K``) or without Kronecker
  structure is kept as explicit rows ``[n, K, size]`` instead;
- the dense ``C``: for two one-position layers ``l, l'`` the block is ``Σ_i M_i ⊗ ã_i ã'_iᵀ`` with
  ``M_i = Σ_k δ_ik δ'_ikᵀ`` (``[d_out, d_out']``), i.e. for logistic regression the closed form
  ``H = Σ_i Λ_i ⊗ ã_i ã_iᵀ`` (``Λ_i`` the output Hessian of the loss); blocks involving explicit rows are their
  Gram matrices.

When the samples do not fit, each product takes them again (``K`` backward passes per batch), which is still
cheaper than ``m`` forward-over-reverse products whenever ``K ≤ m``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from wherefrom.curvature.gauss_newton import affine_output_reason
from wherefrom.curvature.samples import same_input
from wherefrom.errors import WherefromError
from wherefrom.layers.base import LayerCaptureError, LayerSpec

log = logging.getLogger(__name__)

#: default memory for the kept samples (bytes).
DEFAULT_BUDGET = 1 << 30
#: memory of the batches concatenated into one group (bytes): kept samples are grouped once, so that products and
#: the dense closed form run a few large matrix products instead of many small ones.
_GROUP_BYTES = 64 << 20
#: elements of the ``[rows, m, d_out]`` temporaries of one chunk of a single-layer product.
_PRODUCT_ELEMENTS = 1 << 24


@dataclass
class KroneckerPart:
    """One Kronecker layer of one batch: ``a`` ``[B, T, cols]`` and ``delta`` ``[B, K, T, d_out]``.

    ``M`` (optional, one-position layers): the output curvature ``M_b = Σ_k δ_bk δ_bkᵀ`` ``[B, d_out, d_out]``,
    formed once when the layer is the only block (then ``C = Σ_b M_b ⊗ ã_b ã_bᵀ`` needs nothing else)."""

    spec: LayerSpec
    a: torch.Tensor
    delta: torch.Tensor
    M: torch.Tensor | None = None


@dataclass
class RowsPart:
    """Explicit sample rows of one block of one batch, ``[B, K, size]`` at flat positions ``index``."""

    index: torch.Tensor
    rows: torch.Tensor


@dataclass
class FactoredBatch:
    """The samples of one batch: Kronecker parts and explicit-row parts (disjoint blocks covering ``p``)."""

    kronecker: list[KroneckerPart] = field(default_factory=list)
    rows: list[RowsPart] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        total = sum(p.a.numel() * p.a.element_size() + p.delta.numel() * p.delta.element_size()
                    + (0 if p.M is None else p.M.numel() * p.M.element_size()) for p in self.kronecker)
        return total + sum(p.rows.numel() * p.rows.element_size() for p in self.rows)

    @property
    def samples(self) -> int:
        """``K`` (samples per example)."""
        if self.kronecker:
            return self.kronecker[0].delta.shape[1]
        return self.rows[0].rows.shape[1]


    def subset(self, indices: torch.Tensor | slice) -> FactoredBatch:
        """The samples of the examples ``indices`` (positions in this batch; a slice gives views)."""
        return FactoredBatch([KroneckerPart(p.spec, p.a[indices], p.delta[indices],
                                            None if p.M is None else p.M[indices]) for p in self.kronecker],
                             [RowsPart(p.index, p.rows[indices]) for p in self.rows])


def stack_batches(batches: list[FactoredBatch]) -> FactoredBatch | bool:
    """The batches concatenated along the examples, or ``False`` when their parts do not line up."""
    if not batches:
        return False
    first = batches[0]
    kron_names = [p.spec.name for p in first.kronecker]
    for fb in batches[1:]:
        if [p.spec.name for p in fb.kronecker] != kron_names or len(fb.rows) != len(first.rows):
            return False
        for p, q in zip(fb.kronecker, first.kronecker):
            if p.a.shape[1:] != q.a.shape[1:] or p.delta.shape[1:] != q.delta.shape[1:]:
                return False
        for p, q in zip(fb.rows, first.rows):
            if p.rows.shape[1:] != q.rows.shape[1:] or not torch.equal(p.index, q.index):
                return False
    if len(batches) == 1:
        return first
    kron = [KroneckerPart(parts[0].spec, torch.cat([p.a for p in parts]), torch.cat([p.delta for p in parts]),
                          torch.cat([p.M for p in parts]) if all(p.M is not None for p in parts) else None)
            for parts in zip(*[fb.kronecker for fb in batches])]
    rows = [RowsPart(parts[0].index, torch.cat([p.rows for p in parts]))
            for parts in zip(*[fb.rows for fb in batches])]
    return FactoredBatch(kron, rows)


def product_over(batches: Iterator[FactoredBatch] | list[FactoredBatch], V: torch.Tensor) -> torch.Tensor:
    """``Σ_{batches} Σ_i Σ_k s_ik s_ikᵀ V`` for ``V`` ``[m, p]``."""
    out = torch.zeros_like(V)
    mats: dict[str, torch.Tensor] = {}
    specs: dict[str, LayerSpec] = {}
    for fb in batches:
        specs.update({part.spec.name: part.spec for part in fb.kronecker})
        batch_product(fb, V, mats, out)
    for name, spec in specs.items():
        out[:, spec.indices().to(out.device)] += flat_matrix(spec, mats[name + "/out"])
    return out


def flat_matrix(spec: LayerSpec, M: torch.Tensor) -> torch.Tensor:
    """Layer matrices ``[..., d_out, cols]`` as rows in the order of ``spec.indices()`` (weight, then bias)."""
    W = M[..., : spec.d_in]
    if spec.transposed:
        W = W.transpose(-1, -2)
    parts = [W.reshape(*M.shape[:-2], -1)]
    if spec.bias is not None:
        parts.append(M[..., -1])
    return torch.cat(parts, dim=-1)


def positions(spec: LayerSpec, device: torch.device) -> torch.Tensor:
    """Flat position of every entry ``(o, c)`` of the layer matrix, ``[d_out, cols]``."""
    o = torch.arange(spec.d_out).unsqueeze(1)
    c = torch.arange(spec.d_in).unsqueeze(0)
    w = spec.weight[0] + (c * spec.d_out + o if spec.transposed else o * spec.d_in + c)
    if spec.bias is not None:
        w = torch.cat([w, (spec.bias[0] + torch.arange(spec.d_out)).unsqueeze(1)], dim=1)
    return w.to(device)


def factor_batch(samples: list[Any], layout: list[Any], dtype: torch.dtype, prefer: str | None = None) -> FactoredBatch:
    """Stack one batch's ``K`` :class:`~wherefrom.sources.SampleBatch` es (one per probe) into a :class:`FactoredBatch`.

    A Kronecker block keeps ``(a, δ)`` when that is cheaper per product than explicit rows (``T·cols + K·T`` versus
    ``K·cols`` multiplications per output unit), else its rows ``Σ_t δ_t ãᵀ_t`` are formed once; ``prefer``
    (``"factored"`` or ``"rows"``) forces one form. A block whose inputs ``ã`` differ between the probes (a tied
    weight: a member stored the other way round has output gradients in the role of inputs) is always kept as
    rows, each probe with its own ``ã``.
    """
    out = FactoredBatch()
    K = len(samples)
    for block in layout:
        if block.spec is not None:
            pairs = [s.kronecker[block.name] for s in samples]
            a = pairs[0][0].to(dtype)
            delta = torch.stack([d for _a, d in pairs], dim=1).to(dtype)  # [B, K, T, o]
            T, cols = a.shape[1], a.shape[2]
            shared = all(same_input(pairs[0][0], ak) for ak, _d in pairs[1:])
            if not shared:
                G = torch.stack([torch.einsum("bto,btc->boc", d.to(dtype), ak.to(dtype)) for ak, d in pairs], dim=1)
                out.rows.append(RowsPart(block.spec.indices().to(a.device), flat_matrix(block.spec, G)))
                continue
            factored = T * cols + K * T <= K * cols if prefer is None else prefer == "factored"
            if factored:
                out.kronecker.append(KroneckerPart(block.spec, a, delta))
            else:
                G = torch.einsum("bkto,btc->bkoc", delta, a)
                out.rows.append(RowsPart(block.spec.indices().to(a.device), flat_matrix(block.spec, G)))
        else:
            rows = torch.stack([s.dense[block.name] for s in samples], dim=1).to(dtype)  # [B, K, size]
            out.rows.append(RowsPart(block.index.to(rows.device), rows))
    return out


# ---------------------------------------------------------------------------------------------- products
def _zeros(like: torch.Tensor) -> torch.Tensor:
    """A contiguous zero tensor of ``like``'s shape (``zeros_like`` keeps the strides of a transposed layer matrix,
    which :func:`single_layer_product` cannot view as ``[m·d_out, cols]``)."""
    return torch.zeros(like.shape, dtype=like.dtype, device=like.device)


def single_layer_product(part: KroneckerPart, Vl: torch.Tensor, acc: torch.Tensor) -> None:
    """Add ``Σ_b (M_b (V_l ã_b)) ã_bᵀ`` to ``acc`` ``[m, d_out, cols]`` for a one-position layer that is the only block.

    Two matrix products over the batch (``P = Ã V_lᵀ`` ``[B, m·d_out]`` and ``Pᴹᵀ Ã``) around a batched
    ``[m, d_out] × [d_out, d_out]`` product with the output curvature ``M_b`` (or ``(P δ_bᵀ) δ_b`` with the ``K``
    samples when they are fewer than ``d_out``); no permuted copies. Rows are taken in chunks that bound the
    ``[rows, m, d_out]`` temporaries.
    """
    m, o, c = Vl.shape
    a = part.a[:, 0]
    Vt = Vl.reshape(m * o, c).T  # [cols, m·o], a transposed view
    step = max(1, _PRODUCT_ELEMENTS // max(1, m * o))
    out = acc.view(m * o, c)
    for r0 in range(0, a.shape[0], step):
        ar = a[r0: r0 + step]
        P = (ar @ Vt).view(-1, m, o)  # [rows, m, o]: V_l ã_b
        if part.M is not None:
            Q = torch.bmm(P, part.M[r0: r0 + step])  # M_b symmetric
        else:
            D = part.delta[r0: r0 + step, :, 0]  # [rows, K, o]
            Q = torch.bmm(torch.bmm(P, D.transpose(1, 2)), D)
        out.addmm_(Q.view(-1, m * o).T, ar)


def batch_product(fb: FactoredBatch, V: torch.Tensor, mats: dict[str, torch.Tensor], out: torch.Tensor) -> None:
    """Add ``Σ_{i∈batch} Σ_k s_ik s_ikᵀ V`` to ``out`` ``[m, p]``.

    ``mats`` holds, per Kronecker layer name, ``V`` as layer matrices ``[m, d_out, cols]`` (filled on first use)
    and, under ``name + "/out"``, the layer's accumulated result (written into ``out`` by the caller).
    """
    if not fb.rows and len(fb.kronecker) == 1 and fb.kronecker[0].a.shape[1] == 1:
        part = fb.kronecker[0]
        name = part.spec.name
        if name not in mats:
            mats[name] = part.spec.to_matrix(V)
            mats[name + "/out"] = _zeros(mats[name])
        single_layer_product(part, mats[name], mats[name + "/out"])
        return
    u = None  # [m, B, K]: s_ikᵀ v_m
    for part in fb.kronecker:
        name = part.spec.name
        if name not in mats:
            mats[name] = part.spec.to_matrix(V)
            mats[name + "/out"] = _zeros(mats[name])
        Vl = mats[name]
        m, o, c = Vl.shape
        B, _k, T, _ = part.delta.shape
        if T == 1:
            P = (Vl.reshape(m * o, c) @ part.a[:, 0].T).reshape(m, o, B)  # V_l ã_i
            term = torch.einsum("mob,bko->mbk", P, part.delta[:, :, 0])
        else:
            P = torch.einsum("moc,btc->mbto", Vl, part.a)
            term = torch.einsum("mbto,bkto->mbk", P, part.delta)
        u = term if u is None else u + term
    for part in fb.rows:
        term = torch.einsum("mq,bkq->mbk", V[:, part.index], part.rows)
        u = term if u is None else u + term
    assert u is not None
    for part in fb.kronecker:
        acc = mats[part.spec.name + "/out"]
        m, o, c = acc.shape
        B, _K, T, _ = part.delta.shape
        if T == 1:
            W = torch.einsum("mbk,bko->mob", u, part.delta[:, :, 0])
            acc += (W.reshape(m * o, B) @ part.a[:, 0]).reshape(m, o, c)
        else:
            W = torch.einsum("mbk,bkto->mbto", u, part.delta)
            acc += torch.einsum("mbto,btc->moc", W, part.a)
    for part in fb.rows:
        out[:, part.index] += torch.einsum("mbk,bkq->mq", u, part.rows)


def group_batches(batches: Iterator[FactoredBatch], max_bytes: int) -> Iterator[FactoredBatch]:
    """Consecutive batches concatenated along the examples into groups of at most ``max_bytes`` (at least one batch
    per group; batches whose parts do not line up stay apart), so that products and the dense closed form run a few
    large matrix products instead of many small ones."""
    group: list[FactoredBatch] = []
    size = 0
    for fb in batches:
        if group and size + fb.nbytes > max_bytes:
            yield from _group(group)
            group, size = [], 0
        group.append(fb)
        size += fb.nbytes
    if group:
        yield from _group(group)


def _group(batches: list[FactoredBatch]) -> list[FactoredBatch]:
    whole = stack_batches(batches)
    return batches if whole is False else [whole]  # type: ignore[list-item]


def batch_dense(fb: FactoredBatch, H: torch.Tensor) -> None:
    """Add ``Σ_{i∈batch} Σ_k s_ik s_ikᵀ`` to the dense ``H`` ``[p, p]`` (closed form between one-position layers).

    Between two one-position layers ``l, l'`` the block of output units ``(o, o')`` is ``Ãᵀ diag(M_:oo') Ã'``
    (``Ã`` ``[B, cols]`` the layer inputs, ``M_b = Σ_k δ_bk δ'_bkᵀ``): one ``[cols, B] × [B, cols']`` matrix product
    per pair of units (``o ≤ o'`` within a layer; the other half is its transpose), added into strided views of ``H``
    (no index assignment). Explicit-row blocks add their Gram matrices ``RᵀR`` and cross terms ``SᵀR``.
    """
    one = [p for p in fb.kronecker if p.delta.shape[2] == 1]
    many = [p for p in fb.kronecker if p.delta.shape[2] != 1]
    rows = list(fb.rows)
    for part in many:  # explicit rows for the rare factored multi-position block
        G = torch.einsum("bkto,btc->bkoc", part.delta, part.a)
        rows.append(RowsPart(part.spec.indices().to(G.device), flat_matrix(part.spec, G)))
    views = [_LayerViews(H, p.spec) for p in one]
    for i, pi in enumerate(one):
        for j in range(i, len(one)):
            _add_kron_block(views[i], views[j], pi, one[j], same=i == j)
    if rows:
        R = torch.cat([r.rows for r in rows], dim=2).flatten(0, 1)  # [B·K, q]
        idx = torch.cat([r.index for r in rows])
        gram = R.T @ R
        H[idx.reshape(-1, 1), idx.reshape(1, -1)] += (gram + gram.T) / 2
        for part in one:
            q = positions(part.spec, H.device)
            S = torch.einsum("bko,bc->bkoc", part.delta[:, :, 0], part.a[:, 0]).flatten(0, 1).flatten(1)
            cross = S.T @ R  # [(o c), q]
            H[q.reshape(-1, 1), idx.reshape(1, -1)] += cross
            H[idx.reshape(-1, 1), q.reshape(1, -1)] += cross.T


class _LayerViews:
    """Strided views of the rows (or columns) of ``H`` that belong to one layer, indexed by output unit."""

    def __init__(self, H: torch.Tensor, spec: LayerSpec) -> None:
        self.H, self.spec = H, spec

    def block(self, other: _LayerViews, o: int, o2: int) -> list[tuple[torch.Tensor, slice, slice]]:
        """``[(view of H, rows of Y, cols of Y)]``: where the ``[cols, cols']`` block of units ``(o, o2)`` goes."""
        s, t, H = self.spec, other.spec, self.H
        rows = [(self._weight_index(o), slice(0, s.d_in))]
        if s.bias is not None:
            rows.append((s.bias[0] + o, slice(s.d_in, s.d_in + 1)))
        cols = [(other._weight_index(o2), slice(0, t.d_in))]
        if t.bias is not None:
            cols.append((t.bias[0] + o2, slice(t.d_in, t.d_in + 1)))
        out = []
        for r, ry in rows:
            for c, cy in cols:
                out.append((H[_as_slice(r)][:, _as_slice(c)], ry, cy))
        return out

    def _weight_index(self, o: int) -> slice:
        s = self.spec
        if s.transposed:  # stored [d_in, d_out]: unit o's weights are every d_out-th entry
            return slice(s.weight[0] + o, s.weight[1], s.d_out)
        return slice(s.weight[0] + o * s.d_in, s.weight[0] + (o + 1) * s.d_in)


def _as_slice(i: int | slice) -> slice:
    return i if isinstance(i, slice) else slice(i, i + 1)


def _add_kron_block(vi: _LayerViews, vj: _LayerViews, pi: KroneckerPart, pj: KroneckerPart, same: bool) -> None:
    """Add ``Σ_b M_b ⊗ ã_b ã'_bᵀ`` (``M_b = Σ_k δ_bk δ'_bkᵀ``) between two one-position layers (and its mirror)."""
    a, b = pi.a[:, 0], pj.a[:, 0]  # [B, cols], [B, cols']
    M = pi.M if same and pi.M is not None else torch.einsum("bko,bkq->boq", pi.delta[:, :, 0], pj.delta[:, :, 0])
    o1, o2 = M.shape[1], M.shape[2]
    for u in range(o1):
        for w in range(u if same else 0, o2):
            Y = (a * M[:, u, w, None]).T @ b  # [cols, cols']
            if same and u == w:
                Y = (Y + Y.T) / 2
            for view, ry, cy in vi.block(vj, u, w):
                view += Y[ry, cy]
            if not same or u != w:
                Yt = Y.T
                for view, ry, cy in vj.block(vi, w, u):
                    view += Yt[ry, cy]


def _add_output_curvature(fb: FactoredBatch) -> None:
    """Form ``M_b = Σ_k δ_bk δ_bkᵀ`` of a one-position layer that is the batch's only block, when ``d_out ≤ 2K``
    (``M`` then takes at most twice the memory of ``δ``, and the products need ``d_out²`` instead of ``2·K·d_out``
    multiply-adds per example and vector; the GGN of a softmax has ``K = d_out − 1``)."""
    if fb.rows or len(fb.kronecker) != 1:
        return
    part = fb.kronecker[0]
    _b, K, T, o = part.delta.shape
    if T == 1 and o <= 2 * K:
        d = part.delta[:, :, 0]
        part.M = torch.bmm(d.transpose(1, 2), d)


def _costs(fb: FactoredBatch) -> tuple[float, float]:
    """``(multiply-adds of one vector product with the samples, of forming the dense C_data)`` for one batch."""
    per_vector = build = 0.0
    for part in fb.kronecker:
        B, K, T, o = part.delta.shape
        cols = part.a.shape[2]
        per_vector += 2 * B * T * o * cols + B * T * o * (o if part.M is not None else 2 * K)
        build += B * (o * cols) ** 2 / 2 if T == 1 else B * K * (o * cols) ** 2
    for part in fb.rows:
        B, K, q = part.rows.shape
        per_vector += 2 * B * K * q
        build += B * K * q * q
    return per_vector, build


# ---------------------------------------------------------------------------------------------- the operator
class StructuredCurvature:
    """The data term ``Σ_i Σ_k s_ik s_ikᵀ`` of a :class:`~wherefrom.curvature.TrainingObjective` from its samples.

    Build it with :meth:`for_objective`, which returns ``None`` (with the reason logged) when the objective's model or
    curvature has no such structure; the objective then uses its generic products.

    Attributes:
        cached: whether the samples of the whole training set are kept (within ``budget_bytes``).
        samples_per_example: ``K`` of the first batch (the number of probes).
    """

    def __init__(self, objective: Any, budget_bytes: int = DEFAULT_BUDGET, prefer: str | None = None) -> None:
        self.objective = objective
        self.prefer = prefer
        self.budget_bytes = budget_bytes
        self.cached = False
        self._batches: list[FactoredBatch] = []
        self._whole: FactoredBatch | bool | None = None  # None: not stacked yet; False: cannot be stacked
        self._minibatch: Any = None  # MinibatchProducts of the stacked samples (built on first use)
        self.samples_per_example = 0
        self.vector_products = 0
        self._dense_data: torch.Tensor | None = None
        self._dense_cost = self._sample_cost = 0.0

    def _use_dense(self) -> bool:
        """The cost rule for products (multiply-adds, samples kept): a product with the samples costs ``F`` per vector
        (``≈ 2·n·p`` for one layer), one with the dense ``C_data`` ``D = p²`` per vector, and forming ``C_data`` once
        ``B`` (``≈ n·p²/2`` for one layer, plus ``p²`` memory). Switch when the dense matrix is cheaper per vector,
        fits in ``budget_bytes`` next to the samples, and the vector products taken so far (this call included)
        would already have paid for forming it: ``vectors · (F − D) ≥ B``. Like renting skis until the rent paid
        equals the price, this never costs more than twice the better fixed choice, whatever the number of
        iterations still to come. E.g. logistic regression on digits (p = 650, n = 1297) switches during the
        first CG iteration with 500 right-hand sides; on MNIST (p = 7,850, n = 5000) after about 18 of them."""
        p = self.objective.p
        esize = torch.finfo(self.objective.dtype).bits // 8
        if not self.cached or p * p * esize + sum(fb.nbytes for fb in self._batches) > self.budget_bytes:
            return False
        saving = self._sample_cost - p * p
        return saving > 0 and self.vector_products * saving >= self._dense_cost

    @staticmethod
    def unsupported(objective: Any) -> str | None:
        """Why ``objective`` has no structured path (``None``: it has one)."""
        source, task = objective.source, objective.task
        if getattr(source, "layers", None) is None or not getattr(source, "parameter_space", False):
            return "the gradient source has no layer captures"
        if task.train_mode_modules:
            return "modules are kept in training mode (a stochastic objective)"
        if not source.layers.layers:
            return "no selected parameter belongs to a registered layer type"
        if objective.curvature == "hessian":
            return affine_output_reason(objective)
        return None

    @classmethod
    def for_objective(cls, objective: Any, budget_bytes: int = DEFAULT_BUDGET,
                      prefer: str | None = None) -> StructuredCurvature | None:
        """The structured operator of ``objective`` with its samples taken (``None`` when it has none).

        ``prefer`` forces the form of the Kronecker blocks (``"factored"`` or ``"rows"``; default: the cheaper)."""
        reason = cls.unsupported(objective)
        if reason is not None:
            log.info("curvature products use Hessian-vector products: %s", reason)
            return None
        op = cls(objective, budget_bytes, prefer)
        try:
            op._fill()
        except (LayerCaptureError, WherefromError) as exc:
            log.info("curvature products use Hessian-vector products: %s", exc)
            return None
        return op

    def _iter(self, desc: str) -> Iterator[FactoredBatch]:
        from wherefrom.curvature.samples import iter_samples

        obj = self.objective
        labels = obj.sampled_labels() if obj.curvature == "fisher" else None
        # the training loss itself (not the attributor's training function), as in the generic products
        for samples in iter_samples(obj.source, obj.require_data(), obj.state, obj.curvature, obj.c, labels, desc,
                                    obj.progress):
            yield factor_batch(samples, obj.layout, obj.dtype, self.prefer)

    def _fill(self) -> None:
        total = 0
        batches: list[FactoredBatch] = []
        pending: list[FactoredBatch] = []
        pending_bytes = 0
        for fb in self._iter("curvature samples (structured)"):
            if not self.samples_per_example:
                self.samples_per_example = fb.samples
            total += fb.nbytes
            if total > self.budget_bytes:
                self.cached = False
                self._batches = []
                log.info("structured curvature samples exceed %d MB: they are taken again for every product",
                         self.budget_bytes >> 20)
                return
            if pending and pending_bytes + fb.nbytes > _GROUP_BYTES:
                batches.extend(_group(pending))
                pending, pending_bytes = [], 0
            pending.append(fb)
            pending_bytes += fb.nbytes
        if pending:
            batches.extend(_group(pending))
        for fb in batches:
            _add_output_curvature(fb)
        self._batches, self.cached, self._whole, self._minibatch = batches, True, None, None
        self._dense_cost = sum(_costs(fb)[1] for fb in batches)
        self._sample_cost = sum(_costs(fb)[0] for fb in batches)

    def batches(self) -> Iterator[FactoredBatch]:
        if self.cached:
            yield from self._batches
        else:
            yield from self._iter("curvature samples")

    def worth_it(self, m: int) -> bool:
        """Whether a product with ``m`` vectors should use the samples (always when kept; else when ``K ≤ m``)."""
        return self.cached or self.samples_per_example <= m

    def product(self, V: torch.Tensor, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        """``scale · Σ_i Σ_k s_ik s_ikᵀ V + shift · V`` for ``V`` ``[m, p]`` (by default no ``1/n``, no weight decay).

        With the samples kept, products switch to the dense matrix ``C_data`` once that pays (:meth:`_use_dense`);
        that product, its scale and its shift are then one fused ``addmm``."""
        self.vector_products += V.shape[0]
        if self._dense_data is None and self._use_dense():
            self._dense_data = self.dense()
            log.info("structured curvature: products use the dense %d×%d matrix from now on", *self._dense_data.shape)
        if self._dense_data is not None:  # symmetric: (C Vᵀ)ᵀ = V C
            return torch.addmm(V, V, self._dense_data.to(V.dtype), beta=shift, alpha=scale)
        out = product_over(self.batches(), V)
        if scale != 1.0:
            out.mul_(scale)
        return out.add_(V, alpha=shift) if shift else out

    def subset_product(self, V: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        """``Σ_{i∈indices} Σ_k s_ik s_ikᵀ V`` (no ``1/|S|``, no weight decay) from the kept samples: a mini-batch
        curvature product (LiSSA) with no forward or backward pass. ``None`` when the samples are not kept or
        their batches cannot be stacked (e.g. different numbers of positions)."""
        whole = self.whole()
        if whole is None:
            return None
        if self._minibatch is None:
            from wherefrom.curvature.minibatch import MinibatchProducts

            self._minibatch = MinibatchProducts(whole)
        return self._minibatch.product(V, indices)

    def whole(self) -> FactoredBatch | None:
        """The kept samples of the whole training set as one :class:`FactoredBatch` (built on first use)."""
        if self._whole is None:
            whole = stack_batches(self._batches) if self.cached else False
            if whole is not False:  # keep one copy: the batches become views of the stacked samples
                sizes = [fb.kronecker[0].a.shape[0] if fb.kronecker else fb.rows[0].rows.shape[0]
                         for fb in self._batches]
                starts = [sum(sizes[:k]) for k in range(len(sizes))]
                self._batches = [whole.subset(slice(a, a + b)) for a, b in zip(starts, sizes)]  # type: ignore
            self._whole = whole
        return self._whole or None

    def dense(self) -> torch.Tensor:
        """``Σ_i Σ_k s_ik s_ikᵀ`` as a dense ``[p, p]`` matrix, exactly symmetric (every off-diagonal block is added
        together with its transpose; diagonal blocks are symmetrised)."""
        if self._dense_data is not None:
            return self._dense_data.clone()
        obj = self.objective
        H = torch.zeros(obj.p, obj.p, dtype=obj.dtype, device=obj.device)
        for fb in group_batches(self.batches(), _GROUP_BYTES):
            batch_dense(fb, H)
        return H
