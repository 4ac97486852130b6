"""K-FAC / EK-FAC against brute-force Kronecker factors, exact Gauss-Newton blocks and explicit solves."""

import pytest
import torch
from torch import nn

import wherefrom as wf
from curvature_refs import classification_data, corr, dense_ggn, mlp, per_example_grads
from wherefrom.curvature import EKFACSolver, KFACSolver, Solver, TrainingObjective


def _flat_index(layout, d_out, d_in, w0, b0=None, transposed=False):
    """Flat positions of the vec (row-major) of the [d_out, d_in(+1)] layer matrix, bias = last column."""
    idx = []
    for o in range(d_out):
        for i in range(d_in):
            idx.append(w0 + (i * d_out + o if transposed else o * d_in + i))
        if b0 is not None:
            idx.append(b0 + o)
    return torch.tensor(idx)


def _layer_index(task, name, module):
    sl = task.param_slices()
    w = sl[f"{name}.weight" if name else "weight"]
    b = sl.get(f"{name}.bias" if name else "bias")
    if isinstance(module, nn.Embedding):
        return _flat_index(None, module.embedding_dim, module.num_embeddings, w.start, None, True)
    d_out, d_in = module.weight.shape[0], module.weight[0].numel()
    return _flat_index(None, d_out, d_in, w.start, b.start if b is not None else None)


def test_single_linear_layer_kfac_and_ekfac_equal_the_exact_gauss_newton():
    """y = Wx + b with squared error: Λ_i = 2I for every example, so GN = 2I ⊗ mean(ããᵀ) = S ⊗ A exactly."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    X = torch.randn(20, 4, dtype=torch.float64)
    Y = torch.randn(20, 3, dtype=torch.float64)
    task = wf.Task(model, loss_fn=wf.targets.mean_squared_error, weight_decay=0.05)
    obj = TrainingObjective(task, wf.data.as_loader((X, Y), batch_size=8), task.state())
    H = obj.dense()  # exact Hessian = GN here
    V = torch.randn(4, task.num_params, dtype=torch.float64)
    ref = torch.linalg.solve(H + 0.1 * torch.eye(task.num_params, dtype=torch.float64), V.T).T
    for cls in (KFACSolver, EKFACSolver):
        s = cls(damping=0.1).fit(obj)
        torch.testing.assert_close(s.dense(), H + 0.1 * torch.eye(task.num_params, dtype=torch.float64),
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(s.solve(V), ref, rtol=1e-9, atol=1e-11)
    # and through the attributor, against the explicit influence function
    inf_k = wf.InfluenceFunction(task, solver="kfac", damping=0.1).fit((X, Y))
    inf_e = wf.InfluenceFunction(task, solver="explicit", damping=0.1).fit((X, Y))
    torch.testing.assert_close(inf_k.score((X[:5], Y[:5])), inf_e.score((X[:5], Y[:5])), rtol=1e-8, atol=1e-12)


def test_kfac_matrix_equals_the_kfac_definition_built_by_brute_force():
    """S = (1/n) Σ J_yᵀ Λ J_y, A = (1/n) Σ ã ãᵀ per layer, F̂ = blockdiag(S ⊗ A) + (wd + λ) I."""
    model = mlp()
    X, y = classification_data()
    task = wf.Task(model, weight_decay=0.02)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=10), task.state())
    solver = KFACSolver(damping=0.3).fit(obj)  # "hessian" objective -> GGN factors
    W0, b0, W2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    P = torch.softmax(model(X), -1).detach()
    Lam = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]  # softmax-CE output Hessian
    z = X @ W0.T + b0
    h = torch.tanh(z)
    ones = torch.ones(len(X), 1, dtype=torch.float64)
    J0 = W2.unsqueeze(0) * (1 - h ** 2).unsqueeze(1)  # ∂o/∂z: [n, C, hidden]
    factors = {
        "0": (torch.einsum("nco,ncd,ndq->oq", J0, Lam, J0) / len(X), torch.cat([X, ones], 1)),
        "2": (Lam.mean(0), torch.cat([h, ones], 1)),
    }
    p = task.num_params
    ref = (task.weight_decay + 0.3) * torch.eye(p, dtype=torch.float64)
    for name, (S, Ain) in factors.items():
        idx = _layer_index(task, name, model[int(name)])
        ref[idx[:, None], idx[None, :]] += torch.kron(S, Ain.T @ Ain / len(X))
    torch.testing.assert_close(solver.dense(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cache_gb", [1.0, 1e-6, 0.0])  # all samples cached, overflow mid-way, second pass
def test_ekfac_eigenvalues_are_the_gauss_newton_diagonal_in_the_kronecker_eigenbasis(cache_gb):
    model = mlp()
    X, y = classification_data()
    task = wf.Task(model)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=10), task.state(), curvature="ggn")
    solver = EKFACSolver(damping=0.0, sample_cache_gb=cache_gb).fit(obj)
    assert solver.data_passes_ == (1 if cache_gb == 1.0 else 2)  # the correction reuses the first pass's samples
    G = dense_ggn(task, X, y)
    for name in ("0", "2"):
        f = solver.factors_[name]
        idx = _layer_index(task, name, model[int(name)])
        block = G[idx[:, None], idx[None, :]]
        Q = torch.kron(f["QS"], f["QA"])  # column (a, b) = q_S,a ⊗ q_A,b: vec of q_S,a q_A,bᵀ
        torch.testing.assert_close(f["eigenvalues"].flatten(), torch.diagonal(Q.T @ block @ Q),
                                   rtol=1e-9, atol=1e-12)
        # the swapped orientation (Q_S G Q_Aᵀ) would give a different, wrong diagonal
        Qw = torch.kron(f["QS"].T, f["QA"].T)
        assert not torch.allclose(f["eigenvalues"].flatten(), torch.diagonal(Qw.T @ block @ Qw), rtol=1e-3)


def test_ekfac_correlates_at_least_as_well_as_kfac_with_exact_gauss_newton_influence():
    model = mlp(d_in=6, hidden=8, d_out=4)
    X, y = classification_data(n=40, d_in=6, classes=4)
    task = wf.Task(model)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=20), task.state(), curvature="ggn")
    G = per_example_grads(task, X, y)
    lam = 1e-3
    exact = G @ torch.linalg.solve(dense_ggn(task, X, y) + lam * torch.eye(task.num_params, dtype=torch.float64),
                                   G[:10].T)
    kfac, ekfac = KFACSolver(damping=lam).fit(obj), EKFACSolver(damping=lam).fit(obj)
    r_k = corr(G @ kfac.solve(G[:10]).T, exact)
    r_e = corr(G @ ekfac.solve(G[:10]).T, exact)
    assert r_e >= r_k - 1e-6, (r_e, r_k)
    assert r_e > 0.5
    # what holds on every model: in the same Kronecker eigenbasis, the corrected eigenvalues (the exact diagonal) are
    # the Frobenius-nearest approximation of each layer's block, so EK-FAC's curvature error is never above K-FAC's
    C = dense_ggn(task, X, y) + lam * torch.eye(task.num_params, dtype=torch.float64)
    for s in kfac.specs_:
        idx = s.indices()
        block = C[idx][:, idx]
        err_k = float((kfac.dense()[idx][:, idx] - block).norm())
        err_e = float((ekfac.dense()[idx][:, idx] - block).norm())
        assert err_e <= err_k + 1e-12, (s.name, err_e, err_k)


class ConvEmb(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 2, padding_idx=0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1, stride=2)
        self.fc = nn.Linear(2 * 2 * 2 + 2, 3)
        self.scale = nn.Parameter(torch.tensor(1.5))  # no Kronecker rule: diagonal fallback

    def forward(self, x):
        img, tok = x[:, :16].reshape(-1, 1, 4, 4), x[:, 16:].long()
        e = self.emb(tok).mean(1)
        return self.scale * self.fc(torch.cat([torch.tanh(self.conv(img)).flatten(1), e], 1))


def test_conv_embedding_and_diagonal_fallback_match_the_empirical_fisher():
    torch.manual_seed(0)
    model = ConvEmb().double()
    n = 12
    X = torch.cat([torch.randn(n, 16, dtype=torch.float64), torch.randint(0, 6, (n, 3)).double()], 1)
    X[0, 16] = 0.0  # a padding token
    y = torch.randint(0, 3, (n,))
    task = wf.Task(model, weight_decay=0.01)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=5), task.state(),
                            curvature="empirical_fisher")
    with pytest.warns(UserWarning, match="diagonal"):
        solver = EKFACSolver(damping=None).fit(obj)
    G = per_example_grads(task, X, y)
    F = G.T @ G / n
    for name in ("emb", "conv", "fc"):
        f = solver.factors_[name]
        idx = _layer_index(task, name, getattr(model, name))
        Q = torch.kron(f["QS"], f["QA"])
        torch.testing.assert_close(f["eigenvalues"].flatten(), torch.diagonal(Q.T @ F[idx[:, None], idx] @ Q),
                                   rtol=1e-9, atol=1e-13)
        assert float(f["damping"]) == pytest.approx(0.1 * float(f["eigenvalues"].mean()))
    k = task.param_slices()["scale"].start
    d = solver.diagonal_["scale"]
    assert float(d["values"][0]) == pytest.approx(float(F[k, k]), rel=1e-10)
    v = torch.zeros(1, task.num_params, dtype=torch.float64)
    v[0, k] = 1.0
    expected = 1.0 / (float(F[k, k]) + 0.01 + float(d["damping"]))
    assert float(solver.solve(v)[0, k]) == pytest.approx(expected, rel=1e-10)


def test_true_fisher_factors_use_the_sampled_labels():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    X, y = classification_data(n=15)
    task = wf.Task(model)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=15), task.state(), curvature="fisher")
    solver = EKFACSolver(damping=0.0).fit(obj)
    G = per_example_grads(task, X, obj.sampled_labels())
    f = solver.factors_[""]
    Q = torch.kron(f["QS"], f["QA"])
    idx = _layer_index(task, "", model)
    torch.testing.assert_close(f["eigenvalues"].flatten(), torch.diagonal(Q.T @ (G.T @ G / 15)[idx[:, None], idx] @ Q),
                               rtol=1e-9, atol=1e-13)


def test_per_module_scores_sum_to_the_total():
    model = mlp()
    X, y = classification_data()
    task = wf.Task(model)
    for solver in ("ekfac", "explicit"):
        inf = wf.InfluenceFunction(task, solver=solver, damping=0.01).fit((X, y))
        parts = inf.score_by_module((X[:3], y[:3]))
        assert set(parts) == {"0", "2"}
        torch.testing.assert_close(sum(parts.values()), inf.score((X[:3], y[:3])), rtol=1e-10, atol=1e-14)
    # for a block-diagonal solver each part is the layer's own influence: q_lᵀ (F_l + λ)⁻¹ g_l / n
    G = per_example_grads(task, X, y)
    blk = wf.InfluenceFunction(task, solver="kfac", damping=0.01).fit((X, y))
    sl = task.param_slices()
    s = blk.solver.solve(G[:3])
    a, b = sl["2.weight"].start, sl["2.bias"].stop
    torch.testing.assert_close(blk.score_by_module((X[:3], y[:3]))["2"], G[:, a:b] @ s[:, a:b].T / len(X))


def test_saved_factors_give_identical_solves_without_refitting(tmp_path):
    model = mlp()
    X, y = classification_data()
    task = wf.Task(model)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=10), task.state())
    V = torch.randn(3, task.num_params, dtype=torch.float64)
    for name, opts in (("ekfac", {}), ("kfac", {}), ("arnoldi", {"rank": 8, "iterations": 20}), ("datainf", {})):
        solver = wf.curvature.make_solver(name, 0.05, **opts).fit(obj)
        solver.save(tmp_path / f"{name}.pt")
        loaded = Solver.load(tmp_path / f"{name}.pt", **opts)
        assert type(loaded) is type(solver) and loaded.objective is None  # nothing refitted
        torch.testing.assert_close(loaded.solve(V), solver.solve(V), rtol=0, atol=0)
    # through the attributor: the second fit loads the factors (no pass over the data for them)
    first = wf.InfluenceFunction(task, solver="ekfac", damping=None, cache_dir=str(tmp_path / "c")).fit((X, y))
    second = wf.InfluenceFunction(task, solver="ekfac", damping=None, cache_dir=str(tmp_path / "c")).fit((X, y))
    assert not first.solver_loaded_ and second.solver_loaded_
    assert first.solver.data_passes_ == 1 and second.solver.data_passes_ == 0
    torch.testing.assert_close(second.score((X[:4], y[:4])), first.score((X[:4], y[:4])), rtol=0, atol=0)
    other = wf.InfluenceFunction(task, solver="ekfac", damping=0.5, cache_dir=str(tmp_path / "c")).fit((X, y))
    assert not other.solver_loaded_  # different damping: refitted, not silently reused


def test_diagonal_fallback_with_exact_gauss_newton_samples():
    torch.manual_seed(0)
    model = ConvEmb().double()
    n = 8
    X = torch.cat([torch.randn(n, 16, dtype=torch.float64), torch.randint(0, 6, (n, 3)).double()], 1)
    y = torch.randint(0, 3, (n,))
    task = wf.Task(model)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=5), task.state(), curvature="ggn")
    with pytest.warns(UserWarning, match="diagonal"):
        solver = KFACSolver(damping=0.0).fit(obj)
    k = task.param_slices()["scale"].start
    assert float(solver.diagonal_["scale"]["values"][0]) == pytest.approx(float(dense_ggn(task, X, y)[k, k]),
                                                                          rel=1e-10)


@pytest.mark.parametrize("options", [{"chunk": 0}, {"chunk": 2.5}, {"sample_cache_gb": -1.0}])
def test_nonsense_kfac_settings_are_named(options):
    with pytest.raises(wf.WherefromError, match=next(iter(options))):
        EKFACSolver(damping=0.1, **options)


def test_kfac_of_a_tied_weight_does_not_depend_on_the_square_root_of_the_output_hessians(monkeypatch):
    """The GGN is Σ_k s_k s_kᵀ for any roots L_i L_iᵀ = Λ_i; a tied weight's transposed member has its inputs from
    the output gradients (one per probe), so its input factor must use every probe, not the first."""
    import wherefrom.curvature.samples as samples_module
    from test_curvature_structured import TiedNet

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    X, y = torch.randint(0, 5, (13, 1), generator=g).double(), torch.randint(0, 5, (13,), generator=g)
    task = wf.Task(TiedNet().double(), weight_decay=0.1)

    def fit():
        obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=5), task.state(), curvature="ggn")
        return KFACSolver(damping=0.1).fit(obj).dense()

    plain = fit()
    roots = samples_module.output_hessian_roots

    def rotated(Lam):  # L Q with a random orthogonal Q: other roots of the same Λ_i
        L = roots(Lam)
        return L @ torch.linalg.qr(torch.randn(L.shape[2], L.shape[2], dtype=L.dtype, generator=g)).Q

    monkeypatch.setattr(samples_module, "output_hessian_roots", rotated)
    torch.testing.assert_close(fit(), plain, rtol=1e-10, atol=1e-12)
