"""One optimizer step as a function of the parameters, the optimizer state and the step's loss gradient, with
its exact tangent (forward-mode) and adjoint (reverse-mode) maps, for ``torch.optim.SGD``, ``Adam`` and ``AdamW``.

A step maps ``(θ_t, s_t, g_t) → (θ_{t+1}, s_{t+1})`` where ``g_t = ∇L_{B_t}(θ_t)`` is the gradient of the step's
batch-mean loss (weight decay is the optimizer's business, as in PyTorch). Every map is *per coordinate* once the
hyper-parameters of each coordinate's param group are expanded to ``[p]`` vectors, so the linearisation at a step
is a diagonal linear map; tangents and adjoints carry any number of leading batch dimensions ``[..., p]``.

SGD (PyTorch convention, ``μ`` momentum, ``τ`` dampening, ``λ`` coupled weight decay, ``η`` learning rate)::

    g'  = g + λθ
    b'  = g'                       on the first step (no momentum buffer yet)
    b'  = μ b + (1 − τ) g'         afterwards
    d   = g' + μ b'  (Nesterov)    or  b'  (heavy ball)   or  g'  (μ = 0)
    θ'  = θ − η d

which is linear: ``b' = a·b + c·g'`` and ``d = e·g' + f·b'`` with per-coordinate ``(a, c, e, f)``.

Adam / AdamW (``β1, β2, ε``, step count ``k`` after the increment, ``λ_c`` coupled decay for Adam, ``λ_d``
decoupled decay for AdamW)::

    g' = g + λ_c θ
    m' = β1 m + (1 − β1) g'            v' = β2 v + (1 − β2) g'²
    s  = √v' / √(1 − β2^k) + ε          u  = m' / ((1 − β1^k) s)
    θ' = (1 − η λ_d) θ − η u

Its tangent (derived by hand, checked against ``torch.func.jvp`` of the unrolled optimizer in the tests)::

    dg' = dg + λ_c dθ
    dm' = β1 dm + (1 − β1) dg'         dv' = β2 dv + 2 (1 − β2) g' ⊙ dg'
    du  = A ⊙ dm' + C ⊙ dv'   with  A = 1 / ((1 − β1^k) s),  C = −m' / ((1 − β1^k) s²) · 1 / (2 √v' √(1 − β2^k))
    dθ' = (1 − η λ_d) dθ − η du

(``C = 0`` where ``v' = 0``: such a coordinate has seen only zero gradients.) The adjoint is its transpose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from wherefrom.errors import WherefromError

Tensor = torch.Tensor


class UnsupportedOptimizerError(WherefromError):
    """The optimizer (or one of its settings) has no exact step derivative in wherefrom."""


def expand(values: Tensor, group_index: Tensor) -> Tensor:
    """Per-group values ``[G]`` → per-coordinate vector ``[p]`` (``group_index[k]`` = group of coordinate ``k``);
    a 0-dim tensor (broadcast) when every group has the same value."""
    values = values.to(group_index.device)
    if bool((values == values[0]).all()):
        return values[0]
    return values[group_index]


class SGDLinearisation:
    """The (θ, momentum-buffer, g) → (θ', buffer') step of SGD as a linear map with per-coordinate coefficients.

    ``tangent`` and ``adjoint`` work in place on their arguments (5 fused passes over ``[K, p]``) and return them.
    """

    def __init__(self, lr: Tensor, wd: Tensor, a: Tensor, c: Tensor, e: Tensor, f: Tensor) -> None:
        self.lr, self.wd, self.a, self.c, self.e, self.f = lr, wd, a, c, e, f
        self._neg_lr_e, self._neg_lr_f = -lr * e, -lr * f
        self._has_wd = bool((wd != 0).any())

    def tangent(self, dtheta: Tensor, dstate: Sequence[Tensor], dgrad: Tensor) -> tuple[Tensor, tuple[Tensor]]:
        """Push tangents ``(dθ, (db,), dg)`` through the step: ``(dθ', (db',))``."""
        (dbuf,) = dstate
        dg = dgrad.addcmul_(self.wd, dtheta) if self._has_wd else dgrad  # g' tangent
        dbuf = dbuf.mul_(self.a).addcmul_(self.c, dg)  # b' = a b + c g'
        dtheta = dtheta.addcmul_(self._neg_lr_e, dg).addcmul_(self._neg_lr_f, dbuf)  # θ' = θ − η (e g' + f b')
        return dtheta, (dbuf,)

    def adjoint(self, btheta: Tensor, bstate: Sequence[Tensor]) -> tuple[Tensor, tuple[Tensor], Tensor]:
        """Pull adjoints ``(θ̄', (b̄',))`` back: ``(θ̄, (b̄,), ḡ)`` (θ̄ without the Hessian term ``H ḡ``)."""
        (bbuf,) = bstate
        bbuf = bbuf.addcmul_(self._neg_lr_f, btheta)  # b̄' + f d̄ with d̄ = −η θ̄'
        bg = (bbuf * self.c).addcmul_(self._neg_lr_e, btheta)  # ḡ = e d̄ + c (b̄' + f d̄)
        if self._has_wd:
            btheta = btheta.addcmul_(self.wd, bg)
        return btheta, (bbuf.mul_(self.a),), bg


class AdamLinearisation:
    """The (θ, m, v, g) → (θ', m', v') step of Adam/AdamW linearised at the recorded primal values.

    ``tangent`` and ``adjoint`` work in place on their arguments and return them.
    """

    def __init__(self, lr: Tensor, wd_coupled: Tensor, wd_decoupled: Tensor, beta1: Tensor, beta2: Tensor,
                 grad_eff: Tensor, A: Tensor, C: Tensor) -> None:
        self.lr, self.wdc, self.keep = lr, wd_coupled, 1.0 - lr * wd_decoupled
        self.b1, self.b2, self.gp, self.A, self.C = beta1, beta2, grad_eff, A, C
        self._one_b1, self._two_b2_g = 1.0 - beta1, 2.0 * (1.0 - beta2) * grad_eff
        self._neg_lr_A, self._neg_lr_C = -lr * A, -lr * C

    def tangent(self, dtheta: Tensor, dstate: Sequence[Tensor], dgrad: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        dm, dv = dstate
        dg = dgrad.addcmul_(self.wdc, dtheta)
        dm = dm.mul_(self.b1).addcmul_(self._one_b1, dg)
        dv = dv.mul_(self.b2).addcmul_(self._two_b2_g, dg)
        dtheta = dtheta.mul_(self.keep).addcmul_(self._neg_lr_A, dm).addcmul_(self._neg_lr_C, dv)
        return dtheta, (dm, dv)

    def adjoint(self, btheta: Tensor, bstate: Sequence[Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        bm, bv = bstate
        bm = bm.addcmul_(self._neg_lr_A, btheta)  # m̄' + A ū with ū = −η θ̄'
        bv = bv.addcmul_(self._neg_lr_C, btheta)  # v̄' + C ū
        bg = (bm * self._one_b1).addcmul_(self._two_b2_g, bv)
        btheta = btheta.mul_(self.keep).addcmul_(self.wdc, bg)
        return btheta, (bm.mul_(self.b1), bv.mul_(self.b2)), bg


class StepRule:
    """How one optimizer family steps, what the recorder must read, and the step's linearisation.

    Attributes:
        name: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        hyper_names: per-group hyper-parameters recorded at every step (floats; booleans as 0/1).
        state_names: names of the optimizer-state tangent/adjoint slots (each ``[..., p]``).
        recorded_state: optimizer state tensors snapshotted (pre-step) at every step, because the linearisation
            depends on them and they cannot be rebuilt exactly from the parameters.
        needs_grad: whether the linearisation needs the step's batch gradient ``g_t``.
        scalar_coefficients: whether the linearisation without the Hessian has the same scalar coefficients for
            every coordinate of a param group (what the lean engine needs).
    """

    name: str = ""
    hyper_names: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ()
    recorded_state: tuple[str, ...] = ()
    needs_grad: bool = False
    scalar_coefficients: bool = False

    def read_group(self, group: Mapping, state: Sequence[Mapping], names: Sequence[str]) -> dict[str, float]:
        """Validate one param group and read its hyper-parameters (and pre-step state flags) for this step."""
        raise NotImplementedError

    def linearise(self, hyper: Mapping[str, Tensor], group_index: Tensor, theta: Tensor | None,
                  grad: Tensor | None, state: Mapping[str, Tensor]):
        """The step's linearisation from per-group ``hyper`` values ``[G]`` and the primal values it needs."""
        raise NotImplementedError


def _refuse(group: Mapping, key: str, bad, what: str, names: Sequence[str]) -> None:
    if group.get(key, None) == bad or (bad is True and bool(group.get(key, False))):
        raise UnsupportedOptimizerError(
            f"{what} (param group with {list(names)[:3]}...) has no exact step derivative in wherefrom. "
            "Train with it turned off to attribute the run with HYDRA."
        )


def _as_float(value) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class SGDRule(StepRule):
    """``torch.optim.SGD`` with momentum, dampening, Nesterov and coupled weight decay."""

    name = "sgd"
    hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "has_buffer")
    state_names = ("momentum_buffer",)
    scalar_coefficients = True

    def read_group(self, group, state, names):
        _refuse(group, "maximize", True, "SGD(maximize=True)", names)
        momentum = _as_float(group["momentum"])
        flags = {s.get("momentum_buffer") is not None for s in state} if momentum != 0 else {False}
        if len(flags) > 1:
            raise UnsupportedOptimizerError(
                f"Some parameters of the param group with {list(names)[:3]} have a momentum buffer and others do "
                "not (a parameter without a gradient on an earlier step?). Every parameter of the optimizer must "
                "get a gradient at every recorded step."
            )
        return {"lr": _as_float(group["lr"]), "momentum": momentum, "dampening": _as_float(group["dampening"]),
                "weight_decay": _as_float(group["weight_decay"]), "nesterov": float(bool(group["nesterov"])),
                "has_buffer": float(flags.pop())}

    @staticmethod
    def group_coefficients(hyper: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-group ``(lr, wd, a, c, e, f)`` of the linear step (see the module docstring), each ``[G]``."""
        mu, tau = hyper["momentum"], hyper["dampening"]
        on = mu != 0
        first = hyper["has_buffer"] == 0
        nesterov = hyper["nesterov"] != 0
        zero, one = torch.zeros_like(mu), torch.ones_like(mu)
        a = torch.where(on & ~first, mu, zero)
        c = torch.where(on, torch.where(first, one, 1.0 - tau), zero)
        e = torch.where(on, torch.where(nesterov, one, zero), one)
        f = torch.where(on, torch.where(nesterov, mu, one), zero)
        return {"lr": hyper["lr"], "wd": hyper["weight_decay"], "a": a, "c": c, "e": e, "f": f}

    def linearise(self, hyper, group_index, theta=None, grad=None, state=None) -> SGDLinearisation:
        co = self.group_coefficients(hyper)
        dtype = theta.dtype if theta is not None else torch.float64
        v = {k: expand(t, group_index).to(dtype) for k, t in co.items()}
        return SGDLinearisation(v["lr"], v["wd"], v["a"], v["c"], v["e"], v["f"])

    def step(self, hyper, group_index, theta: Tensor, buffer: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        """The primal step ``(θ, b, g) → (θ', b')`` (used to replay a run whose parameters were not stored)."""
        lin = self.linearise(hyper, group_index, theta)
        g = grad + lin.wd * theta
        new_buf = lin.a * buffer + lin.c * g
        return theta - lin.lr * (lin.e * g + lin.f * new_buf), new_buf


class AdamRule(StepRule):
    """``torch.optim.Adam`` (coupled weight decay, or ``decoupled_weight_decay=True``) and ``AdamW``."""

    hyper_names = ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled", "count")
    state_names = ("exp_avg", "exp_avg_sq")
    recorded_state = ("exp_avg", "exp_avg_sq")
    needs_grad = True

    def __init__(self, name: str = "adam") -> None:
        self.name = name

    def read_group(self, group, state, names):
        what = "AdamW" if self.name == "adamw" else "Adam"
        _refuse(group, "maximize", True, f"{what}(maximize=True)", names)
        _refuse(group, "amsgrad", True, f"{what}(amsgrad=True)", names)
        counts = {int(_as_float(s["step"])) if "step" in s else 0 for s in state}
        if len(counts) > 1:
            raise UnsupportedOptimizerError(
                f"Parameters of the param group with {list(names)[:3]} have different Adam step counts {counts}: "
                "every parameter of the optimizer must get a gradient at every recorded step."
            )
        decoupled = self.name == "adamw" or bool(group.get("decoupled_weight_decay", False))
        b1, b2 = group["betas"]
        return {"lr": _as_float(group["lr"]), "beta1": _as_float(b1), "beta2": _as_float(b2),
                "eps": _as_float(group["eps"]), "weight_decay": _as_float(group["weight_decay"]),
                "decoupled": float(decoupled), "count": float(counts.pop())}

    def linearise(self, hyper, group_index, theta, grad, state) -> AdamLinearisation:
        dtype = theta.dtype
        h = {k: expand(v, group_index).to(dtype) for k, v in hyper.items()}
        decoupled = h["decoupled"] != 0
        wd_c = torch.where(decoupled, torch.zeros_like(h["weight_decay"]), h["weight_decay"])
        wd_d = torch.where(decoupled, h["weight_decay"], torch.zeros_like(h["weight_decay"]))
        k = h["count"] + 1.0
        bc1, bc2 = 1.0 - h["beta1"] ** k, 1.0 - h["beta2"] ** k
        gp = grad + wd_c * theta
        m_new = h["beta1"] * state["exp_avg"] + (1.0 - h["beta1"]) * gp
        v_new = h["beta2"] * state["exp_avg_sq"] + (1.0 - h["beta2"]) * gp * gp
        sqrt_v = v_new.sqrt()
        s = sqrt_v / bc2.sqrt() + h["eps"]
        A = 1.0 / (bc1 * s)
        inv = torch.where(sqrt_v > 0, 1.0 / (2.0 * sqrt_v.clamp_min(torch.finfo(dtype).tiny) * bc2.sqrt()),
                          torch.zeros_like(sqrt_v))
        C = -m_new / (bc1 * s * s) * inv
        return AdamLinearisation(h["lr"], wd_c, wd_d, h["beta1"], h["beta2"], gp, A, C)


def rule_for(optimizer_or_name) -> StepRule:
    """The :class:`StepRule` of an optimizer instance or of a recorded name (``"sgd"``, ``"adam"``, ``"adamw"``)."""
    if isinstance(optimizer_or_name, str):
        name = optimizer_or_name
    else:
        kind = type(optimizer_or_name)
        known = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
        if kind not in known:
            raise UnsupportedOptimizerError(
                f"{kind.__name__} is not supported for trajectory attribution: wherefrom differentiates exactly "
                "torch.optim.SGD (momentum, dampening, Nesterov, weight decay), torch.optim.Adam and "
                "torch.optim.AdamW (subclasses too could change the step). Train with one of those."
            )
        name = known[kind]
    if name == "sgd":
        return SGDRule()
    if name in ("adam", "adamw"):
        return AdamRule(name)
    raise UnsupportedOptimizerError(f"Unknown optimizer {name!r} in a recorded trajectory.")
