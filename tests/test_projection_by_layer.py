"""A dense random projection of layer-captured gradients, applied layer by layer, equals projecting [B, p] rows."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import wherefrom as wf
from wherefrom.errors import WherefromError
from wherefrom.sources import ProjectedGradients


def _explicit_rows(model, X, y):
    """``[n, p]`` per-example loss gradients by torch.func, in the flat parameter order."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(ps, x, t):
        logits = functional_call(model, ps, (x.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, t.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, X, y)
    return torch.cat([g[k].reshape(len(X), -1) for k in params], 1)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "sparse"])
def test_layer_by_layer_projection_equals_projection_of_full_rows(kind, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.LayerNorm(32), nn.Linear(32, 3)).double()
    X, y = torch.randn(9, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (9,))
    task = wf.Task(model)
    # block_size 7: row blocks of P straddle the parameters' boundaries (p = 20 + 64 + 99 = 183)
    proj = wf.projection.RandomProjection(11, kind, seed=5, block_size=7, nnz=3 if kind == "sparse" else 1)
    src = ProjectedGradients(proj).setup(task)
    assert src.use_layers
    monkeypatch.setattr(src.base.layers, "flat", lambda *a, **k: pytest.fail("[B, p] rows were assembled"))
    feats = src.batch_features(task.state(), (X, y), task.loss_fn)
    expected = _explicit_rows(model, X, y) @ proj.matrix(task.num_params)
    torch.testing.assert_close(feats, expected, rtol=1e-12, atol=1e-13)


def test_project_rows_checks_the_range():
    proj = wf.projection.RandomProjection(4, seed=0)
    with pytest.raises(WherefromError, match="outside"):
        proj.project_rows(torch.ones(2, 5), 3, 6)
