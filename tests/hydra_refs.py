"""Independent references for the HYDRA tests: a tiny float64 MLP trained by a real torch.optim loop (recorded), and
the same training written out as a pure function of per-example loss weights ``w``, so that ``torch.func.jvp`` of
the unrolled optimizer gives ``dθ_T/dw_i`` without any of the library's derivative code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

import wherefrom as wf


def tiny_mlp(seed: int = 0, act: type[nn.Module] = nn.Tanh) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 2)).double()


def tiny_data(n: int = 10, m: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, dtype=torch.float64, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    Xt = torch.randn(m, 3, dtype=torch.float64, generator=g)
    yt = torch.randint(0, 2, (m,), generator=g)
    return (X, y), (Xt, yt)


def batch_plan(n: int, batch: int, epochs: int, seed: int = 2) -> list[torch.Tensor]:
    """Fixed batch order: a seeded permutation per epoch, cut into batches (the last one ragged)."""
    g = torch.Generator().manual_seed(seed)
    plan = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        plan += [perm[s:s + batch] for s in range(0, n, batch)]
    return plan


def train_recorded(model, make_opt, data, plan, schedule=None, path=None, clip=None, store_params=True):
    """Train ``model`` with the optimizer from ``make_opt(model)`` over ``plan``, recording every step.

    ``schedule(opt, t)`` may change param-group hyper-parameters before step ``t``. Returns (trajectory, hypers)
    with ``hypers[t]`` the list of per-group dicts the step used.
    """
    X, y = data
    opt = make_opt(model)
    rec = wf.TrajectoryRecorder(model, opt, path=path, store_params=store_params)
    hypers = []
    for t, b in enumerate(plan):
        if schedule is not None:
            schedule(opt, t)
        opt.zero_grad()
        F.cross_entropy(model(X[b]), y[b]).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        rec.record(b)
        hypers.append([dict(g) for g in opt.param_groups])
        opt.step()
    return rec.close(), hypers


def unrolled(model, params0: dict, w: torch.Tensor, data, plan, hypers, kind: str, groups: list[list[str]]):
    """θ_T as a function of the example weights ``w``: torch's SGD / Adam / AdamW formulas, written out."""
    X, y = data
    names = [n for g in groups for n in g]
    params = dict(params0)
    state = {n: {} for n in names}

    def batch_loss(p, b, wb):
        out = functional_call(model, p, (X[b],))
        return (wb * F.cross_entropy(out, y[b], reduction="none")).sum() / len(b)

    for t, b in enumerate(plan):
        grads = grad(batch_loss)(params, b, w[b])
        new = {}
        for gi, group in enumerate(groups):
            h = hypers[t][gi]
            for n in group:
                theta, g, st = params[n], grads[n], state[n]
                if kind == "sgd":
                    g = g + h["weight_decay"] * theta
                    if h["momentum"] != 0:
                        st["buf"] = g if "buf" not in st else h["momentum"] * st["buf"] + (1 - h["dampening"]) * g
                        g = g + h["momentum"] * st["buf"] if h["nesterov"] else st["buf"]
                    new[n] = theta - h["lr"] * g
                else:
                    b1, b2 = h["betas"]
                    k = st.get("k", 0) + 1
                    decoupled = kind == "adamw" or h.get("decoupled_weight_decay", False)
                    if decoupled:
                        theta = theta * (1 - h["lr"] * h["weight_decay"])
                    else:
                        g = g + h["weight_decay"] * theta
                    m = b1 * st.get("m", torch.zeros_like(g)) + (1 - b1) * g
                    v = b2 * st.get("v", torch.zeros_like(g)) + (1 - b2) * g * g
                    denom = v.sqrt() / (1 - b2 ** k) ** 0.5 + h["eps"]
                    new[n] = theta - h["lr"] / (1 - b1 ** k) * m / denom
                    st.update(m=m, v=v, k=k)
        params.update(new)
    return torch.cat([params[n].reshape(-1) for n in names])


def jvp_weight_derivatives(model, params0, data, plan, hypers, kind, groups) -> torch.Tensor:
    """``[n, p]``: row i = dθ_T/dw_i by forward-mode autodiff of :func:`unrolled` at w = 1."""
    n = len(data[1])
    w = torch.ones(n, dtype=torch.float64)
    rows = []
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = 1.0
        rows.append(jvp(lambda ww: unrolled(model, params0, ww, data, plan, hypers, kind, groups), (w,), (e,))[1])
    return torch.stack(rows)


def target_grads(model, state, test) -> torch.Tensor:
    """``[m, p]`` per-example test-loss gradients at ``state`` (one backward per example)."""
    model.load_state_dict(state)
    return example_grads(model, *test)


def example_grads(model, X, y) -> torch.Tensor:
    """``[n, p]`` per-example cross-entropy gradients at the model's current parameters (one backward each)."""
    rows = []
    for j in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(X[j:j + 1]), y[j:j + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)
