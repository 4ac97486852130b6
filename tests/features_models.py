"""Small random float64 models that together use every built-in CD rule (shared by the feature tests)."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from wherefrom.features.parts import Parts


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + x)


class EveryRuleCNN(nn.Module):
    """Conv / BatchNorm / pooling (max, avg, adaptive, functional) / residual / activations / shape ops."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.block = ResidualBlock(4)
        self.avg = nn.AvgPool2d(1)
        self.adapt = nn.AdaptiveAvgPool2d(2)
        self.conv1d = nn.Conv1d(4, 3, 2)
        self.bn1d = nn.BatchNorm1d(3)
        self.drop = nn.Dropout(0.5)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16 + 9, 12)
        self.leaky = nn.LeakyReLU(0.2)
        self.tanh = nn.Tanh()
        self.sigmoid = nn.Sigmoid()
        self.out = nn.Linear(12, 5)
        self.register_buffer("shift", torch.linspace(-1.0, 1.0, 12))

    def forward(self, x):
        h = self.pool(torch.relu(self.bn(self.conv(x))))              # [N, 4, 4, 4]
        h = self.block(h)
        h = F.max_pool2d(self.avg(h), kernel_size=1)
        a = self.flat(self.adapt(h))                                   # [N, 16]
        seq = h.view(h.size(0), 4, -1)                                 # [N, 4, 16]
        s = F.adaptive_avg_pool1d(self.bn1d(self.conv1d(seq)), 3)      # [N, 3, 3]
        s = torch.flatten(s.permute(0, 2, 1).contiguous(), 1)          # [N, 9]
        z = torch.cat([a, s], dim=1)
        z = self.drop(z)
        z = self.leaky(self.fc(z)) * 0.5 + self.shift
        z = self.tanh(z) - F.leaky_relu(z, 0.1) / 3.0
        z = self.sigmoid(z) + torch.sigmoid(z[:, :1]) - 0.25
        return self.out(z)


class EveryRuleLSTM(nn.Module):
    """Embedding -> multi-layer LSTM (batch_first or not, optionally bidirectional) -> Linear, using h_n too."""

    def __init__(self, batch_first: bool, bidirectional: bool = False, layers: int = 2, vocab: int = 30):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(vocab, 6)
        self.lstm = nn.LSTM(6, 5, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional)
        width = 10 if bidirectional else 5
        self.fc = nn.Linear(width, 3)

    def forward(self, ids):
        e = self.embed(ids)
        if not self.batch_first:
            e = e.transpose(0, 1)
        out, (h, c) = self.lstm(e)
        last = out[:, -1] if self.batch_first else out[-1]
        return self.fc(last) + torch.tanh(c[-1]).sum(-1, keepdim=True) * 0.1 + h[0][:, :3]


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters; eval mode."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def forward_values(model: nn.Module, graph: fx.Graph, x: torch.Tensor) -> dict[str, object]:
    """Every node's value in a plain forward pass, recorded by torch.fx's own Interpreter."""
    values: dict[str, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            values[n.name] = v
            return v

    Recorder(fx.GraphModule(model, graph)).run(x)
    return values


def worst_completeness_error(recorded: dict, forward: dict) -> tuple[float, int]:
    """Largest ``|rel + irrel − forward|`` over every decomposed node (recursing into tuples), and the count."""
    worst, count = 0.0, 0

    def visit(dec, ref):
        nonlocal worst, count
        if isinstance(dec, Parts):
            count += 1
            worst = max(worst, float((dec.full - ref).abs().max().detach()))
        elif isinstance(dec, (tuple, list)):
            for d, r in zip(dec, ref):
                visit(d, r)

    for name, dec in recorded.items():
        visit(dec, forward[name])
    return worst, count
