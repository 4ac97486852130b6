"""Layer-wise captures reproduce the exact per-example gradients of torch.func."""

import torch
from torch import nn

import wherefrom as wf
from wherefrom.gradients import collect_gradients
from wherefrom.layers import capture_layers, flat_from_layers, kronecker_layers, uncovered_params


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _check(model, X, y, params=None):
    task = wf.Task(model, params=params)
    state = task.state()
    ref = collect_gradients(task, wf.data.as_loader((X, y), batch_size=len(X)), state)
    with task.attribution_mode():
        ios = capture_layers(task, state, task.prepare_batch((X, y)))
    assert not uncovered_params(task, kronecker_layers(task))
    got = flat_from_layers(task, ios)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


def test_mlp_captures_equal_vmap_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    _check(model, torch.randn(7, 6, dtype=torch.float64), torch.randint(0, 3, (7,)))


def test_conv_captures_equal_vmap_gradients():
    torch.manual_seed(0)
    model = ConvNet().double()
    _check(model, torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (5,)))


def test_sequence_linear_sums_over_positions():
    torch.manual_seed(0)

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 3)
            self.head = nn.Linear(3, 2, bias=False)

        def forward(self, x):  # x: [B, T, 4]
            return self.head(torch.relu(self.proj(x)).mean(1))

    _check(Seq().double(), torch.randn(6, 5, 4, dtype=torch.float64), torch.randint(0, 2, (6,)))


def test_last_layer_selection_captures_only_that_layer():
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    task = wf.Task(model, params=["2"])
    assert list(kronecker_layers(task)) == ["2"]
    _check(model, torch.randn(7, 6, dtype=torch.float64), torch.randint(0, 3, (7,)), params=["2"])


def test_embedding_captures_equal_vmap_gradients():
    torch.manual_seed(0)

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 3, padding_idx=0)
            self.head = nn.Linear(3, 2)

        def forward(self, x):  # x: [B, T] token ids
            return self.head(torch.tanh(self.emb(x)).mean(1))

    model = Emb().double()
    X = torch.randint(0, 7, (6, 4))
    X[0, 1] = 0  # a padding position: its gradient is zero
    _check(model, X, torch.randint(0, 2, (6,)))
