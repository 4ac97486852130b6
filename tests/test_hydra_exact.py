"""HYDRA equals exact references: forward-mode autodiff of the unrolled optimizer, closed forms, real retraining."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacfwd

import wherefrom as wf
from hydra_refs import batch_plan, example_grads, target_grads, tiny_data, tiny_mlp, train_recorded, unrolled

TRAIN, TEST = tiny_data()
PLAN = batch_plan(10, 4, 2)  # 6 steps, batches of 4, 4, 2 (ragged) per epoch


def _optimizer(kind, two_groups, **kw):
    lr2 = kw.pop("lr2", 0.1)

    def make(model):
        ps = list(model.parameters())
        # the second group differs in lr, weight decay and momentum (SGD: none) or betas (Adam)
        other = {"momentum": 0.0} if kind == "sgd" else {"betas": (0.8, 0.99)}
        params = ([{"params": ps[:2]}, {"params": ps[2:], "lr": lr2, "weight_decay": 0.1, **other}] if two_groups
                  else ps)
        return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](params, **kw)

    return make


def _lr_schedule(opt, t):
    for g in opt.param_groups:
        g["lr"] = g.setdefault("initial_lr", g["lr"]) * 0.8 ** t


CASES = {
    "sgd-momentum-wd-schedule": ("sgd", False, dict(lr=0.3, momentum=0.9, weight_decay=0.01), _lr_schedule),
    "sgd-nesterov": ("sgd", False, dict(lr=0.3, momentum=0.9, nesterov=True, weight_decay=0.01), None),
    "sgd-dampening": ("sgd", False, dict(lr=0.3, momentum=0.9, dampening=0.3), None),
    "sgd-two-groups": ("sgd", True, dict(lr=0.3, momentum=0.5, weight_decay=0.01), _lr_schedule),
    "adam": ("adam", False, dict(lr=0.05, weight_decay=0.01), None),
    "adamw": ("adamw", False, dict(lr=0.05, weight_decay=0.1), _lr_schedule),
    "adam-two-groups": ("adam", True, dict(lr=0.05, lr2=0.02), None),
}


def _run(case):
    kind, two, kw, schedule = CASES[case]
    model = tiny_mlp()
    params0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    traj, hypers = train_recorded(model, _optimizer(kind, two, **dict(kw)), TRAIN, PLAN, schedule)
    names = [n for n, _ in model.named_parameters()]
    groups = [names[:2], names[2:]] if two else [names]

    def final_params(w):
        return unrolled(model, params0, w, TRAIN, PLAN, hypers, kind, groups)

    w = torch.ones(10, dtype=torch.float64)
    # the written-out optimizer reproduces the real torch.optim run ...
    torch.testing.assert_close(final_params(w), traj.final_theta, rtol=0, atol=1e-12)
    J = jacfwd(final_params)(w).T  # ... and forward-mode autodiff of it gives dθ_T/dw_i, [n, p]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model.eval(), traj, J, target_grads(model, state, TEST)


@pytest.mark.parametrize("case", list(CASES))
def test_exact_hydra_equals_forward_mode_autodiff_of_the_unrolled_optimizer(case):
    model, traj, J, Q = _run(case)
    expected = -(J @ Q.T)  # scores[i, j] = −⟨∇f_j(θ_T), dθ_T/dw_i⟩ (loss target: sign +1)
    task = wf.Task(model)
    reverse = wf.HYDRA(task, traj, engine="reverse", targets_per_pass=3).fit(TRAIN).score(TEST)
    forward = wf.HYDRA(task, traj, engine="forward", track_chunk=4).fit(TRAIN).score(TEST)
    scale = expected.abs().max()
    assert float((reverse - expected).abs().max() / scale) < 1e-8
    assert float((forward - expected).abs().max() / scale) < 1e-8
    assert float((reverse - forward).abs().max() / scale) < 1e-8
    # the ε-parametrisation of the paper: −⟨∇f, dθ_T/dε_i⟩/N with ε_i = (w_i − 1)/N gives the same numbers
    torch.testing.assert_close(-(J * len(J)) @ Q.T / len(J), expected)


def test_higher_is_better_target_flips_sign():
    model, traj, J, _ = _run("sgd-nesterov")
    task = wf.Task(model, target_fn=wf.targets.margin)
    X, y = TEST
    rows = []
    for j in range(len(y)):
        model.zero_grad()
        wf.targets.margin(model(X[j:j + 1]), (X[j:j + 1], y[j:j + 1]))[0].backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    expected = J @ torch.stack(rows).T  # helpful = removing it would lower the margin
    got = wf.HYDRA(task, traj).fit(TRAIN).score(TEST)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


def _example_grads_at(model, theta, X, y):
    torch.nn.utils.vector_to_parameters(theta, model.parameters())
    return example_grads(model, X, y)


@pytest.mark.parametrize("momentum,wd", [(0.9, 0.01), (0.0, 0.0)])
def test_approximate_hydra_closed_form(momentum, wd):
    """Without the Hessian: Z_i = Σ_{t: i∈B_t} κ_t g_i(θ_t)/B_t, κ_t from the scalar 2×2 recursion (μ = λ = 0: −η_t)."""
    model = tiny_mlp()
    opt = _optimizer("sgd", False, lr=0.3, momentum=momentum, weight_decay=wd)
    traj, hypers = train_recorded(model, opt, TRAIN, PLAN, _lr_schedule)
    final = traj.final_theta
    Q = _example_grads_at(model, final, *TEST)
    T = len(PLAN)
    lrs = [h[0]["lr"] for h in hypers]
    Z = torch.zeros(10, traj.num_params, dtype=torch.float64)
    for t, b in enumerate(PLAN):
        v = torch.tensor([-lrs[t], 1.0], dtype=torch.float64)
        for s in range(t + 1, T):
            v = torch.tensor([[1 - lrs[s] * wd, -lrs[s] * momentum], [wd, momentum]], dtype=torch.float64) @ v
        if momentum == 0 and wd == 0:
            assert math.isclose(float(v[0]), -lrs[t])
        G = _example_grads_at(model, traj.step(t).theta, *TRAIN)  # a direct log of per-step gradients
        Z[b] += v[0] * G[b] / len(b)
    expected = -(Z @ Q.T)
    torch.nn.utils.vector_to_parameters(final, model.parameters())
    model.eval()
    task = wf.Task(model)
    for engine in ("reverse", "forward", "lean"):
        got = wf.HYDRA(task, traj, hessian=False, engine=engine).fit(TRAIN).score(TEST)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)
    # approximate HYDRA uses the final test gradient throughout; TracIn over every step would use ∇f(θ_t)
    tracin = torch.zeros_like(expected)
    for t, b in enumerate(PLAN):
        theta = traj.step(t).theta
        G, Qt = _example_grads_at(model, theta, *TRAIN), _example_grads_at(model, theta, *TEST)
        tracin[b] += lrs[t] * G[b] @ Qt.T / len(b)
    assert float((tracin - expected).abs().max()) > 1e-3 * float(expected.abs().max())


class _Quadratic(nn.Module):
    """ℓ_j(θ) = ½ (θ − a_j)ᵀ A (θ − a_j): the model outputs θ − a_j, the loss applies A."""

    def __init__(self, theta0):
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())

    def forward(self, a):
        return self.theta - a


def test_quadratic_closed_form():
    """Full-batch GD on a shared quadratic: N·Z_T = −ηT A(I−ηA)^{T−1} e_0 − [I − (I−ηA)^T](ā − a_i) (Part D 1)."""
    g = torch.Generator().manual_seed(3)
    d, N, T, eta = 4, 6, 25, 0.2
    M = torch.randn(d, d, dtype=torch.float64, generator=g)
    A = M @ M.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    a = torch.randn(N, d, dtype=torch.float64, generator=g)
    theta0 = torch.randn(d, dtype=torch.float64, generator=g)

    def loss_fn(out, batch):
        return 0.5 * torch.einsum("bi,ij,bj->b", out, A, out)

    model = _Quadratic(theta0)
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    rec = wf.TrajectoryRecorder(model, opt)
    for _ in range(T):
        opt.zero_grad()
        loss_fn(model(a), None).mean().backward()
        rec.record(torch.arange(N))
        opt.step()
    traj = rec.close()

    def coordinate(out, batch):  # test target k: the k-th coordinate of θ, so ∇f_k = e_k and scores = −Z
        return out.gather(1, batch[1][:, None]).squeeze(1)

    task = wf.Task(model, loss_fn=loss_fn, target_fn=coordinate)
    test = (torch.zeros(d, d, dtype=torch.float64), torch.arange(d))
    train = (a, torch.zeros(N, dtype=torch.long))
    Z = -wf.HYDRA(task, traj).fit(train).score(test)
    step = torch.eye(d, dtype=torch.float64) - eta * A
    e0 = theta0 - a.mean(0)
    first = eta * T * A @ torch.linalg.matrix_power(step, T - 1) @ e0
    second = (torch.eye(d, dtype=torch.float64) - torch.linalg.matrix_power(step, T)) @ (a.mean(0) - a).T
    expected = (-(first[:, None] + second) / N).T
    torch.testing.assert_close(Z, expected, rtol=1e-10, atol=1e-13)


def _weighted_run(model0_state, w, train, plan, act=nn.Tanh):
    model = tiny_mlp(act=act)
    model.load_state_dict(model0_state)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    X, y = train
    for b in plan:
        opt.zero_grad()
        ((w[b] * F.cross_entropy(model(X[b]), y[b], reduction="none")).sum() / len(b)).backward()
        opt.step()
    return model


def test_first_order_agreement_with_weight_zeroed_retraining():
    """Scores ≈ the real change of test loss when the same run is retrained with w_i = 0 (sign and scale)."""
    train, test = tiny_data(n=40, m=6, seed=5)
    plan = batch_plan(40, 8, 3, seed=6)
    model = tiny_mlp(seed=4)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    traj, _ = train_recorded(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3),
                             train, plan)
    scores = wf.HYDRA(wf.Task(model.eval()), traj).fit(train).score(test)

    def test_loss(m):
        with torch.no_grad():
            return F.cross_entropy(m(test[0]), test[1], reduction="none")

    base = test_loss(_weighted_run(init, torch.ones(40, dtype=torch.float64), train, plan))
    torch.testing.assert_close(base, test_loss(model), rtol=0, atol=1e-12)
    actual = []
    for i in range(40):
        w = torch.ones(40, dtype=torch.float64)
        w[i] = 0.0
        actual.append(test_loss(_weighted_run(init, w, train, plan)) - base)
    actual = torch.stack(actual)  # [n_train, n_test]: loss change when i is removed (> 0: i was helpful)
    r = torch.corrcoef(torch.stack([scores.flatten(), actual.flatten()]))[0, 1]
    assert float(r) >= 0.95
