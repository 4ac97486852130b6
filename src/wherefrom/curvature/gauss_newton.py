"""Gauss-Newton and Fisher curvature: the pieces shared by the HVP-based objective and the layer-wise solvers.

For a model with outputs ``o_i = f(x_i; θ)`` (``[C]`` per example) and a per-example loss ``ℓ(o_i, y_i)``:

- generalised Gauss-Newton (GGN): ``G = (1/n) Σ_i J_iᵀ Λ_i J_i`` with ``J_i = ∂o_i/∂θ`` (``[C, p]``) and
  ``Λ_i = ∂²ℓ/∂o_i²`` (``[C, C]``). It equals the Hessian minus the terms with second derivatives of the model.
  For softmax cross-entropy ``Λ_i = diag(π_i) − π_i π_iᵀ``, formed in closed form (no autodiff) whenever the loss
  is the default :func:`wherefrom.targets.cross_entropy`; other losses get ``Λ_i`` from ``C`` autodiff products.
- true Fisher: ``F = (1/n) Σ_i E_{ŷ∼p(·|x_i)} [∇ℓ(x_i, ŷ) ∇ℓ(x_i, ŷ)ᵀ]``; estimated with one label ``ŷ_i``
  sampled from the model's softmax per example (seeded, fixed for the life of the objective). For
  cross-entropy its expectation is the GGN.
- empirical Fisher: ``(1/n) Σ_i g_i g_iᵀ`` with the true labels.

The weight-decay term ``(wd/2)‖θ‖²`` of the objective adds ``wd·I`` to each of them.

The Hessian equals the GGN when the model's outputs are affine in the selected parameters and the loss is convex in
the outputs: :func:`affine_output_reason` checks both (with :func:`nonconvex_output_reason`) before the structured
products (:mod:`wherefrom.curvature.structured`) stand in for Hessian-vector products.

Factorising ``Λ_i = L_i L_iᵀ`` (``L_i = U_i diag(√e_i)`` from its eigendecomposition) turns the GGN into a sum
of outer products of *pseudo-gradients* ``J_iᵀ l_ik`` (one per column ``k`` of ``L_i``): this is how the
layer-wise solvers (K-FAC, EK-FAC) reach the exact GGN without sampling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import grad, jvp

from wherefrom import targets
from wherefrom.errors import WherefromError
from wherefrom.targets import labels_of

CURVATURES = ("hessian", "ggn", "fisher", "empirical_fisher")


def check_curvature(name: str) -> str:
    """Validate a curvature name (``"gauss_newton"``/``"gn"`` are accepted for ``"ggn"``)."""
    aliases = {"gn": "ggn", "gauss_newton": "ggn", "gauss-newton": "ggn", "true_fisher": "fisher",
               "empirical-fisher": "empirical_fisher", "ef": "empirical_fisher"}
    name = aliases.get(name, name)
    if name not in CURVATURES:
        raise WherefromError(f"Unknown curvature {name!r}. Choose one of: {', '.join(CURVATURES)}.")
    return name


#: ``ignore_index`` of ``F.cross_entropy`` (the default loss): such examples add nothing to the loss.
IGNORE_INDEX = -100


def is_cross_entropy(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` is the default softmax cross-entropy (:func:`wherefrom.targets.cross_entropy`), whose
    output Hessian has the closed form ``diag(π) − ππᵀ``."""
    return loss_fn is targets.cross_entropy


def _check_2d(outputs: torch.Tensor) -> None:
    if outputs.ndim != 2:
        raise WherefromError(
            f"The Gauss-Newton curvature needs model outputs of shape [B, C]; got {tuple(outputs.shape)}. "
            "Use curvature='empirical_fisher' (or 'fisher') for other output shapes."
        )


def _kept(batch: Any, outputs: torch.Tensor) -> torch.Tensor:
    """``[B]`` 1 for examples whose label counts, 0 for ``ignore_index`` labels (their loss is 0)."""
    labels = labels_of(batch).reshape(-1)
    return (labels != IGNORE_INDEX).to(device=outputs.device, dtype=outputs.dtype)


def cross_entropy_output_hessians(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """``Λ_i = diag(π_i) − π_i π_iᵀ`` with ``π_i = softmax(o_i)``, ``[B, C, C]``: the output Hessian of softmax
    cross-entropy in closed form (zero for examples labelled ``ignore_index``), no autodiff."""
    _check_2d(outputs)
    pi = torch.softmax(outputs.detach(), dim=-1)
    Lam = torch.diag_embed(pi) - pi.unsqueeze(2) * pi.unsqueeze(1)
    return Lam * _kept(batch, outputs)[:, None, None]


def cross_entropy_output_product(outputs: torch.Tensor, batch: Any, U: torch.Tensor) -> torch.Tensor:
    """``Λ_i u`` for every example and tangent: ``π ⊙ u − π (πᵀu)``; ``U`` ``[..., B, C]`` (any leading dims)."""
    pi = torch.softmax(outputs.detach(), dim=-1)
    pu = pi * U
    return (pu - pi * pu.sum(-1, keepdim=True)) * _kept(batch, outputs).unsqueeze(1)


def output_hessians(loss_fn, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """``Λ_i = ∂²ℓ(o_i, y_i)/∂o_i²`` of every example, ``[B, C, C]``, for 2-D outputs ``[B, C]``.

    Softmax cross-entropy (the default loss) has the closed form :func:`cross_entropy_output_hessians`. Any other
    loss uses that ``Σ_i ℓ_i`` is block-diagonal in the outputs: one forward-over-reverse product with the tangent
    ``e_c`` (in every row at once) gives column ``c`` of every ``Λ_i``; ``C`` products in all.
    """
    _check_2d(outputs)
    if is_cross_entropy(loss_fn):
        return cross_entropy_output_hessians(outputs, batch)
    return autodiff_output_hessians(loss_fn, outputs, batch)


def autodiff_output_hessians(loss_fn, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """``Λ_i`` of any loss by ``C`` forward-over-reverse products (the generic path of :func:`output_hessians`)."""
    _check_2d(outputs)
    outputs = outputs.detach()
    _B, C = outputs.shape

    def total(o: torch.Tensor) -> torch.Tensor:
        return loss_fn(o, batch).sum()

    g = grad(total)
    cols = []
    for c in range(C):
        tangent = torch.zeros_like(outputs)
        tangent[:, c] = 1.0
        cols.append(jvp(g, (outputs,), (tangent,))[1])
    Lam = torch.stack(cols, dim=2)  # [B, C(row), C(col)]
    return (Lam + Lam.transpose(1, 2)) / 2


def output_hessian_roots(Lam: torch.Tensor, drop_tol: float = 1e-10) -> torch.Tensor:
    """``L_i`` with ``L_i L_iᵀ = Λ_i`` (``[B, C, K]``), dropping columns that are zero for every example.

    Negative eigenvalues (a loss that is not convex in the outputs) are clipped to zero: the GGN is then the
    positive part, which is what keeps it positive semi-definite.
    """
    evals, evecs = torch.linalg.eigh(Lam.to(torch.float64))
    evals = evals.clamp_min(0.0)
    L = evecs * evals.sqrt().unsqueeze(1)  # column k scaled by sqrt(e_k)
    scale = float(evals.max()) if evals.numel() else 0.0
    keep = evals.amax(dim=0) > drop_tol * max(scale, 1e-300)
    return L[:, :, keep].to(Lam.dtype)


def sample_labels(outputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per example sampled from ``softmax(outputs)`` (classification logits ``[B, C]``), ``[B]``."""
    if outputs.ndim != 2:
        raise WherefromError(
            f"The true Fisher samples labels from softmax(outputs) and needs outputs of shape [B, C]; got "
            f"{tuple(outputs.shape)}. Use curvature='empirical_fisher' or 'ggn'."
        )
    probs = torch.softmax(outputs.detach().to(torch.float64), dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(outputs.device)


def with_labels(batch: Any, labels: torch.Tensor) -> Any:
    """A copy of ``batch`` whose labels (``batch[1]`` or ``batch['labels']``) are replaced by ``labels``."""
    labels_of(batch)  # raises a clear error when the batch has no labels
    if isinstance(batch, dict):
        out = dict(batch)
        out["labels"] = labels.to(batch["labels"].dtype)
        return out
    items = list(batch)
    items[1] = labels.to(items[1].dtype)
    return type(batch)(items) if isinstance(batch, tuple) else items


def nonconvex_output_reason(task: Any, loader: Any, state: Any) -> str | None:
    """Why the loss is not convex in the outputs on ``loader`` (some ``Λ_i`` has a negative eigenvalue beyond the
    rounding of its dtype), or ``None``. Softmax cross-entropy and the squared error are convex; other losses are
    checked in one pass over the data. A Gauss-Newton matrix from roots of ``Λ_i`` keeps only the positive part, so
    only for a convex loss does it equal the Hessian of a model affine in its parameters."""
    from wherefrom.batches import batch_loop

    if is_cross_entropy(task.loss_fn) or task.loss_fn is targets.mean_squared_error:
        return None
    theta = task.flat_params(state)
    for _, batch in batch_loop(task, loader, state, check=False, progress=False):
        with torch.no_grad():
            outputs = task.outputs(theta, state, batch)
        try:
            Lam = output_hessians(task.loss_fn, outputs, batch)
        except WherefromError as exc:  # e.g. outputs that are not [B, C]
            return str(exc)
        evals = torch.linalg.eigvalsh(Lam.to(torch.float64))
        rounding = max(1e-10, 64 * torch.finfo(Lam.dtype).eps)  # Λ of a convex loss, rounded in its own dtype
        if evals.numel() and float(evals.min()) < -rounding * max(float(evals.abs().max()), 1e-300):
            return (f"the loss is not convex in the model outputs (an output Hessian has the eigenvalue "
                    f"{float(evals.min()):.3g}), so the Hessian has terms the Gauss-Newton samples do not describe")
    return None


def affine_output_reason(objective: Any) -> str | None:
    """``None`` when the model's outputs are affine in the selected parameters and the loss is convex in the outputs
    (so that the Hessian is the Gauss-Newton matrix, whose samples clip negative output curvature): exactly one
    tracked Kronecker layer owns every selected parameter, that layer's output tensor *is* the model output, and
    every output Hessian ``Λ_i`` is positive semi-definite. Otherwise the reason."""
    layers = objective.source.layers
    if layers.fallback or len(layers.layers) != 1:
        return "the Hessian of a model with several selected layers has second-derivative terms"
    (layer,) = layers.layers.values()
    if not layer.kronecker:
        return f"layer {layer.name!r} has no Kronecker structure"
    from wherefrom.batches import batch_loop

    task, state = objective.task, objective.state
    seen: list[torch.Tensor] = []
    handle = layer.module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        for _, batch in batch_loop(task, objective.require_data(), state, check=False, progress=False):
            with torch.no_grad():
                outputs = task.outputs(task.flat_params(state), state, batch)
            break
        else:
            return "no training data"
    finally:
        handle.remove()
    if len(seen) != 1 or seen[0] is not outputs:
        return f"the output of layer {layer.name!r} is not the model output (the model is not affine in it)"
    return nonconvex_output_reason(task, objective.require_data(), objective.state)
