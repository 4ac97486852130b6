"""Spec files written by the report tests: a tiny tabular classifier, a token classifier, broken specs."""

from __future__ import annotations

import pathlib
import textwrap

TABULAR = '''
import torch
from torch import nn
from wherefrom.report import Spec


def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 6, generator=g, dtype=torch.float64)
    y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    return X[:40], y[:40], X[40:], y[40:]


def model():
    torch.manual_seed(0)
    m = nn.Linear(6, 3).double()
    Xtr, ytr, _, _ = data()
    opt = torch.optim.LBFGS(m.parameters(), max_iter=100, line_search_fn="strong_wolfe")
    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(Xtr), ytr) + 0.05 * sum((p ** 2).sum() for p in m.parameters())
        loss.backward()
        return loss
    opt.step(closure)
    return m.eval()


def spec():
    Xtr, ytr, Xte, yte = data()
    return Spec(model=model(), train=(Xtr, ytr), test=(Xte, yte), weight_decay=0.1, name=NAME,
                class_names=CLASS_NAMES, feature_names=["a", "b", "c", "d", "e", "f"])


NAME = "tabular <i>toy</i>"
CLASS_NAMES = ["low", "mid", "<script>window.__wf_xss = 1</script>"]


def as_dict():
    s = spec()
    return {"model": s.model, "train": s.train, "test": s.test}


def as_tuple():
    s = spec()
    return (s.model, s.train, s.test)


def raises():
    return helper_that_fails()


def helper_that_fails():
    raise RuntimeError("checkpoint model.pt is missing")


def wrong_type():
    return 42


def wrong_model():
    s = spec()
    return {"model": "not a model", "train": s.train, "test": s.test}


def with_kwargs(name="default"):
    s = spec()
    s.name = name
    return s
'''

TOKENS = '''
import torch
from torch import nn
from wherefrom.report import Spec

VOCAB = ["<pad>", "good", "bad", "film", "plot", "<b>bold</b>", "very", "not"]


class BagOfEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(len(VOCAB), 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def spec():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, len(VOCAB), (30, 5), generator=g)
    y = (ids == 1).any(1).long()
    torch.manual_seed(0)
    return Spec(model=BagOfEmbeddings().eval(), train=(ids[:24], y[:24]), test=(ids[24:], y[24:]),
                vocabulary=VOCAB, class_names=["negative", "positive"])
'''

BROKEN_IMPORT = '''
import torch
raise ImportError("no module named my_private_dataset")
'''


def write(folder: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path
