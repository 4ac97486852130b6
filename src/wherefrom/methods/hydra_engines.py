"""The three HYDRA engines: forward (tangents per tracked example), reverse (adjoints per test target) and lean
(two scalars per example and target, SGD without the Hessian).

Every engine differentiates the recorded run with respect to per-example loss weights ``w_i`` (1 in the recorded
run; ``w_i = 0`` removes example ``i`` from every batch that holds it). At step ``t`` the step gradient is
``g_t(θ; w) = (1/B_t) Σ_{j∈B_t} w_j ∇ℓ_j(θ)``, so with ``Z_t = dθ_t/dw_i`` and optimizer state tangents ``S_t``:

    dg_t = H_t Z_t + 1[i∈B_t] g_i(θ_t) / B_t          (H_t: Hessian of the batch-mean loss at θ_t; 0 if hessian=False)
    (Z_{t+1}, S_{t+1}) = J_t (Z_t, S_t, dg_t)          (J_t: the optimizer step's linearisation)

- **forward**: carries ``(Z, S)`` for ``K`` tracked examples at once (``K`` HVPs per step);
- **reverse**: carries adjoints ``(λ_θ, λ_S)`` of ``⟨q, θ_T⟩`` for ``K`` test targets ``q`` backwards from
  ``λ_θ = q``: per step ``(λ_θ, λ_S, λ_g) = J_tᵀ(λ_θ, λ_S)``, ``λ_θ += H_t λ_g`` and every batch example gets
  ``d⟨q, θ_T⟩/dw_i += ⟨λ_g, g_i(θ_t)⟩ / B_t`` — all training examples at the cost of ``K`` HVPs per step;
- **lean**: without the Hessian an SGD step acts on each param group with scalar coefficients, so projecting
  ``(Z, S)`` on the group's part of a fixed ``q`` commutes with the recursion: two scalars per example, target
  and group, updated for every example at every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from wherefrom.methods.hydra_steps import StepEvaluator, TrajectoryMismatchError
from wherefrom.progress import track
from wherefrom.trajectory.optimizers import SGDRule


def reverse_weight_gradients(ev: StepEvaluator, Q: torch.Tensor, n_train: int, hessian: bool,
                             progress: bool | None = None) -> torch.Tensor:
    """``D[i, k] = d⟨q_k, θ_T⟩/dw_i`` for every training example, ``[n_train, K]``, from targets ``Q`` ``[K, p]``.

    Per step: one batch gradient when needed (Adam, the first check) and one vmapped forward-over-reverse pass
    over the ``K`` adjoints, which yields both ``H_t λ_g`` and every batch example's ``⟨g_i, λ_g⟩``.
    Memory: about ``(3 + n_state)·K·p`` for the adjoints and their HVP, and ``n_train·K`` outputs. Without the
    Hessian: one adjoint vector, the batch's per-example gradients and ``Q`` (``K·p``).
    """
    Q = Q.to(device=ev.device, dtype=ev.dtype)
    K = Q.shape[0]
    # Without the Hessian every adjoint map is diagonal, so the adjoint of target q is c_t ⊙ q with c_t the
    # adjoint of the all-ones target: carry one vector instead of K and weight the per-example gradients by c_t.
    lam = Q.clone() if hessian else torch.ones(1, Q.shape[1], device=ev.device, dtype=ev.dtype)
    lam_state = [torch.zeros_like(lam) for _ in ev.rule.state_names]
    out = torch.zeros(n_train, K, device=ev.device, dtype=ev.dtype)
    traj = ev.trajectory
    desc = f"HYDRA reverse ({'exact' if hessian else 'approximate'}, {K} targets)"
    for step in track(traj.steps(reverse=True), desc, len(traj), progress):
        data = ev.load(step)
        g = ev.batch_grad(data) if (ev.rule.needs_grad or ev.needs_check(step.t)) else None
        if ev.needs_check(step.t):
            ev.check(data, g)
        lam, lam_state, lam_g = ev.linearise(data, g).adjoint(lam, lam_state)
        if hessian:
            HV, dots = ev.hvp(data, lam_g, with_dots=True)  # one forward-over-reverse pass gives both
            lam = lam.add_(HV)
        else:
            dots = ev.example_dots(data, Q, scale=lam_g[0])
        out.index_add_(0, step.indices.to(ev.device), dots / data.size)
    return out


def forward_tangents(ev: StepEvaluator, tracked: torch.Tensor, n_train: int, hessian: bool,
                     resume: dict | None = None, checkpoint: Callable[[dict], None] | None = None,
                     checkpoint_every: int | None = None, progress: bool | None = None) -> torch.Tensor:
    """``Z_T[k] = dθ_T/dw_{tracked[k]}``, ``[K, p]``, by the forward recursion over the recorded run.

    ``resume`` is a dict saved by an earlier ``checkpoint`` call (``{"t", "z", "state", "active"}``): the recursion
    continues after step ``t``. ``checkpoint(dict)`` is called every ``checkpoint_every`` steps.
    Memory: ``(1 + n_state)·K·p`` for the tangents plus ``K·p`` for the step's ``dg``.
    """
    K, p = int(tracked.numel()), ev.num_params
    row_of = torch.full((n_train,), -1, dtype=torch.long)
    row_of[tracked.cpu()] = torch.arange(K)
    z = torch.zeros(K, p, device=ev.device, dtype=ev.dtype)
    state = [torch.zeros_like(z) for _ in ev.rule.state_names]
    active = torch.zeros(K, dtype=torch.bool, device=ev.device)
    start = 0
    if resume is not None:
        z = resume["z"].to(ev.device, ev.dtype)
        state = [s.to(ev.device, ev.dtype) for s in resume["state"]]
        active, start = resume["active"].to(ev.device), int(resume["t"]) + 1
    traj = ev.trajectory
    desc = f"HYDRA forward ({'exact' if hessian else 'approximate'}, {K} examples)"
    for t in track(range(start, len(traj)), desc, len(traj) - start, progress):
        data = ev.load(traj.step(t))
        dg = torch.zeros_like(z)
        if hessian and bool(active.any()):
            act = torch.nonzero(active).flatten()
            dg[act] = ev.hvp(data, z[act])
        rows = row_of[data.step.indices]
        positions = torch.nonzero(rows >= 0).flatten()
        if positions.numel():
            r = rows[positions].to(ev.device)
            dg.index_add_(0, r, ev.example_grads(data, positions) / data.size)
            active[r] = True
        g = None
        if ev.rule.needs_grad or ev.needs_check(t):
            g = ev.batch_grad(data)
            if ev.needs_check(t):
                ev.check(data, g)
        z, state = ev.linearise(data, g).tangent(z, state, dg)
        state = list(state)
        if checkpoint is not None and checkpoint_every and (t + 1) % checkpoint_every == 0 and t + 1 < len(traj):
            checkpoint({"t": t, "z": z.detach().cpu().clone(), "state": [s.detach().cpu().clone() for s in state],
                        "active": active.cpu().clone()})
    return z


def lean_weight_gradients(ev: StepEvaluator, Q: torch.Tensor, n_train: int, replay: bool, replay_tol: float,
                          progress: bool | None = None) -> torch.Tensor:
    """``D[i, k] = d⟨q_k, θ_T⟩/dw_i`` without the Hessian, for SGD, with two scalars per example, target and group.

    With ``replay=True`` the parameters are not read from the trajectory but recomputed step by step from ``θ_0``
    (the run is replayed: each step's gradient must match the recorded check to ``replay_tol`` and the replayed
    ``θ_T`` the recorded one), so the run needs no stored ``θ_t``. Memory: ``2·G·n_train·K`` scalars.
    """
    if not isinstance(ev.rule, SGDRule):
        raise TrajectoryMismatchError(
            f"engine='lean' needs scalar step coefficients per param group (SGD); a {ev.trajectory.optimizer} step "
            "scales every coordinate differently. Use engine='reverse' with hessian=False instead."
        )
    traj, G_groups = ev.trajectory, ev.trajectory.n_groups
    Q = Q.to(device=ev.device, dtype=ev.dtype)
    masks = torch.stack([(ev.group_index == g).to(ev.dtype) for g in range(G_groups)])  # [G, p]
    QG = masks[:, None, :] * Q[None]  # [G, K, p]
    K = Q.shape[0]
    zeta = torch.zeros(G_groups, n_train, K, device=ev.device, dtype=ev.dtype)
    beta = torch.zeros_like(zeta)
    theta = buffer = None
    if replay:
        first = traj.step(0)
        if bool((first.hyper["has_buffer"] != 0).any()):
            raise TrajectoryMismatchError("The run starts with an existing momentum buffer that was not recorded, "
                                          "so it cannot be replayed: record from a fresh optimizer.")
        theta = traj.initial_theta.to(ev.device, ev.dtype)
        buffer = torch.zeros_like(theta)
    desc = f"HYDRA lean ({K} targets{', replaying' if replay else ''})"
    for step in track(traj.steps(with_theta=not replay), desc, len(traj), progress):
        data = ev.load(step, theta if replay else None)
        idx = step.indices.to(ev.device)
        dots = ev.example_dots(data, QG.reshape(G_groups * K, -1)) / data.size  # [B, G·K]
        direct = torch.zeros_like(zeta)
        direct.index_add_(1, idx, dots.reshape(-1, G_groups, K).transpose(0, 1))
        g = ev.batch_grad(data) if replay or ev.needs_check(step.t) else None
        if replay:
            ev.check(data, g, tol=replay_tol)
        elif g is not None:
            ev.check(data, g)
        co = {k: v.to(device=ev.device, dtype=ev.dtype)[:, None, None]
              for k, v in SGDRule.group_coefficients(step.hyper).items()}
        dg = direct + co["wd"] * zeta
        beta = co["a"] * beta + co["c"] * dg
        zeta = zeta - co["lr"] * (co["e"] * dg + co["f"] * beta)
        if replay:
            theta, buffer = ev.rule.step(step.hyper, ev.group_index, theta, buffer, g)
    if replay:
        final = traj.final_theta.to(ev.device, ev.dtype)
        rel = float((theta - final).abs().max()) / max(float(final.abs().max()), 1.0)
        if rel > replay_tol:
            raise TrajectoryMismatchError(
                f"Replaying the run did not reproduce its final parameters (max relative difference {rel:.2e} > "
                f"replay_tol {replay_tol:.1e}): the training was not deterministic, or not the recorded steps."
            )
    return zeta.sum(0)


def approx_self_weight_gradients(ev: StepEvaluator, n_train: int, progress: bool | None = None) -> torch.Tensor:
    """``s_i = ⟨∇ℓ_i(θ_T), dθ_T/dw_i⟩`` without the Hessian, for every example, in one reverse pass.

    Without the Hessian the adjoint maps are diagonal, so the adjoint ``λ_g`` of any target ``q`` at step ``t``
    is ``c_t ⊙ q`` with ``c_t`` the adjoint of the all-ones target:
    ``s_i = Σ_{t: i∈B_t} ⟨c_t ⊙ g_i(θ_T), g_i(θ_t)⟩ / B_t``.
    """
    traj = ev.trajectory
    theta_T = traj.final_theta.to(ev.device, ev.dtype)
    lam = torch.ones(1, ev.num_params, device=ev.device, dtype=ev.dtype)
    lam_state = [torch.zeros_like(lam) for _ in ev.rule.state_names]
    out = torch.zeros(n_train, device=ev.device, dtype=ev.dtype)
    for step in track(traj.steps(reverse=True), "HYDRA approximate self-influence", len(traj), progress):
        data = ev.load(step)
        g = ev.batch_grad(data) if (ev.rule.needs_grad or ev.needs_check(step.t)) else None
        if g is not None and ev.needs_check(step.t):
            ev.check(data, g)
        lam, lam_state, lam_g = ev.linearise(data, g).adjoint(lam, lam_state)
        G = ev.example_grads(data)
        G_T = ev.example_grads(data, theta=theta_T)
        out.index_add_(0, step.indices.to(ev.device), (G_T * lam_g * G).sum(1) / data.size)
    return out
