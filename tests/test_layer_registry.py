"""The layer-type registry: captures of every layer type equal single-example autograd; a new layer type takes a few
lines; layers that cannot be captured fall back to vmap."""

import warnings

import pytest
import torch
from torch import nn

import wherefrom as wf
from layer_models import all_layers_problem, bare_linear_problem, loop_grads
from wherefrom.layers import LayerCaptureError, LayerSet, LinearLayer
from wherefrom.sources import FullGradients, KroneckerProjectedGradients, feature_blocks


def _features(source, task, data, fn=None):
    source.setup(task)
    return torch.cat([b for _, b in feature_blocks(source, wf.data.as_loader(data, batch_size=5), task.state(),
                                                   fn=fn)])


@pytest.mark.parametrize("problem", [all_layers_problem, bare_linear_problem])
def test_captures_of_every_layer_type_equal_single_example_gradients(problem):
    model, train, test = problem()
    task = wf.Task(model)
    layers = LayerSet(task)
    assert layers.complete and not layers.fallback  # Embedding, Conv1d, Conv2d, LayerNorm, Linear ± bias
    for data, fn in ((train, None), (test, wf.targets.margin)):
        got = _features(FullGradients("layers"), task, data, fn)
        torch.testing.assert_close(got, loop_grads(task, *data, fn), rtol=1e-10, atol=1e-12)
    assert FullGradients().setup(task).use_layers  # "auto" takes the captures


def test_full_rank_logra_features_are_the_gradients_rearranged():
    """Ranks above every factor size make every projection the identity: the features are the gradient entries."""
    model, train, _ = all_layers_problem()
    task = wf.Task(model)
    feats = _features(KroneckerProjectedGradients(rank=64), task, train)
    G = loop_grads(task, *train)
    assert feats.shape == G.shape
    # same entries, permuted within each layer (bias as the last column of each row)
    torch.testing.assert_close(feats.sort(dim=1).values, G.sort(dim=1).values, rtol=1e-10, atol=1e-12)
    M = KroneckerProjectedGradients(rank=64).setup(task).matrix()
    torch.testing.assert_close(G @ M, feats, rtol=1e-10, atol=1e-12)  # the map is a permutation here
    torch.testing.assert_close(M @ M.T, torch.eye(task.num_params, dtype=torch.float64))


class TransposedLinear(nn.Module):
    """``y = x W + b`` with ``W`` stored ``[d_in, d_out]`` (like GPT-2's Conv1D)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) / d_in ** 0.5)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def test_a_new_layer_type_takes_a_few_lines():
    torch.manual_seed(0)
    model = nn.Sequential(TransposedLinear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    task = wf.Task(model)
    assert LayerSet(task).fallback == ["0.weight", "0.bias"]  # unknown module: vmap and a diagonal curvature

    @wf.register_layer_type(TransposedLinear)
    class TransposedLinearLayer(LinearLayer):
        transposed = True

        def dims(self):
            d_in, d_out = self.module.weight.shape
            return d_in, d_out

    layers = LayerSet(task)
    assert layers.complete and isinstance(layers.layers["0"], TransposedLinearLayer)
    torch.testing.assert_close(_features(FullGradients("layers"), task, (X, y)), loop_grads(task, X, y),
                               rtol=1e-10, atol=1e-12)
    # K-FAC now factors it (no fallback warning, a Kronecker block) and LoGra projects it by its factors
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        kfac = wf.InfluenceFunction(task, solver="kfac", damping="auto").fit((X, y))
    assert [s.name for s in kfac.solver.specs_] == ["0", "2"] and not kfac.solver.diagonal_
    assert set(wf.LoGra(task, rank=2).factors()) == {"0", "2"}


class Tied(nn.Module):
    """One Linear layer applied twice (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.tanh(self.lin(x)))


def test_layers_that_cannot_be_captured_fall_back_to_vmap():
    torch.manual_seed(0)
    model = Tied().double()
    X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    task = wf.Task(model)
    auto = FullGradients()
    torch.testing.assert_close(_features(auto, task, (X, y)), loop_grads(task, X, y), rtol=1e-10, atol=1e-12)
    assert not auto.use_layers  # switched to vmap at the first batch
    with pytest.raises(LayerCaptureError, match="more than once"):
        _features(FullGradients("layers"), task, (X, y))


class Conv1D(nn.Module):
    """A stand-in with the class path and forward of ``transformers.pytorch_utils.Conv1D`` (GPT-2)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = (*x.size()[:-1], self.nf)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


Conv1D.__module__ = "transformers.pytorch_utils"


def test_gpt2_conv1d_is_registered_by_name():
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(6, 4), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)).double()
    X, y = torch.randn(7, 3, 4, dtype=torch.float64), torch.randint(0, 3, (7,))  # a sequence of 3 positions
    task = wf.Task(model)
    layers = LayerSet(task)
    assert layers.complete and type(layers.layers["0"]).__name__ == "GPT2Conv1DLayer"
    torch.testing.assert_close(_features(FullGradients("layers"), task, (X, y)), loop_grads(task, X, y),
                               rtol=1e-10, atol=1e-12)
