"""Small real models shipped for feature attribution: an SST-2 LSTM and an MNIST CNN (float16 safetensors).

``load_sst_lstm()`` — ``embed (16583 × 64) → nn.LSTM(64, 128, batch_first) → Linear(128, 2)`` on the last hidden
state, trained by ``scripts/train_sst_lstm.py`` on the shipped SST-2 training phrases. ``load_mnist_cnn()`` —
``conv 5×5 (8) → ReLU → max-pool → conv 5×5 (16) → ReLU → max-pool → Linear(256, 64) → ReLU → Linear(64, 10)`` on
normalised 28 × 28 images, trained by ``scripts/train_mnist_cnn.py`` on the shipped 5000-image MNIST subset. Both
return logits and load in eval mode; ``models.json`` records checksums, training commands and test accuracies.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from wherefrom.errors import WherefromError


class SSTLSTM(nn.Module):
    """Binary sentiment LSTM: token ids ``[B, T]`` (no padding) -> logits ``[B, 2]`` (1 = positive)."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden_dim: int = 128, n_classes: int = 2,
                 pad_id: int = 1, embed_dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.fc = nn.Linear(hidden_dim, n_classes)
        self.embed_dropout = embed_dropout

    def forward(self, ids: Tensor) -> Tensor:
        _, (h, _) = self.lstm(self.embed(ids))
        return self.fc(h[-1])

    def forward_padded(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Logits of right-padded sequences of different ``lengths`` (training and fast evaluation)."""
        e = F.dropout(self.embed(ids), self.embed_dropout, self.training)
        packed = pack_padded_sequence(e, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.fc(h[-1])


class MNISTCNN(nn.Module):
    """Small CNN: normalised images ``[B, 1, 28, 28]`` -> logits ``[B, 10]`` (functional ReLU / pooling)."""

    def __init__(self, dropout: float = 0.25):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5)
        self.conv2 = nn.Conv2d(8, 16, 5)
        self.fc1 = nn.Linear(256, 64)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.fc1(torch.flatten(h, 1)))
        return self.fc2(self.drop(h))


MODELS: dict[str, type[nn.Module]] = {"sst2-lstm": SSTLSTM, "mnist-cnn": MNISTCNN}


def _datafile(name: str) -> Any:
    return resources.files("wherefrom") / "_datafiles" / name


def model_manifest() -> dict[str, Any]:
    """What ``models.json`` records about each shipped model (file, sha256, config, accuracy, command)."""
    return json.loads(_datafile("models.json").read_text())


def save_model(model: nn.Module, name: str, path: str, info: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s weights as float16 safetensors to ``path``; return the manifest entry (for the scripts)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={"model": name})
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    return {"file": path.replace("\\", "/").rsplit("/", 1)[-1], "sha256": digest, **info}


def load_model(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a shipped model (``"sst2-lstm"`` or ``"mnist-cnn"``) in eval mode, checking its sha256."""
    from safetensors.torch import load

    manifest = model_manifest()
    if name not in manifest:
        raise WherefromError(f"No shipped model {name!r}; choose one of {sorted(manifest)}.")
    entry = manifest[name]
    raw = _datafile(entry["file"]).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != entry["sha256"]:
        raise WherefromError(f"The shipped weights of {name} are corrupt (sha256 {digest} != {entry['sha256']}); "
                             f"retrain them with {entry.get('command', 'the training script')}.")
    model = MODELS[name](**entry.get("config", {}))
    model.load_state_dict({k: v.to(dtype) for k, v in load(raw).items()})
    return model.to(dtype).eval()


def load_sst_lstm(dtype: torch.dtype = torch.float32) -> SSTLSTM:
    """The shipped SST-2 LSTM (eval mode). Use with :func:`wherefrom.data.sst.load_sst2` (same vocabulary)."""
    return load_model("sst2-lstm", dtype)  # type: ignore[return-value]


def load_mnist_cnn(dtype: torch.dtype = torch.float32) -> MNISTCNN:
    """The shipped MNIST CNN (eval mode); inputs normalised as ``wherefrom.data.mnist_datasets(flatten=False)``."""
    return load_model("mnist-cnn", dtype)  # type: ignore[return-value]


def pad_batch(sequences: list[Tensor] | list[Any], pad_id: int = 1) -> tuple[Tensor, Tensor]:
    """Right-pad token sequences to ``[B, T_max]``; returns the ids and the lengths."""
    seqs = [torch.as_tensor(s, dtype=torch.long) for s in sequences]
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, lengths


def sst_accuracy(model: SSTLSTM, split: str = "test", batch_size: int = 256) -> float:
    """Accuracy of ``model`` on the sentences of a shipped SST-2 split (``"dev"`` or ``"test"``)."""
    from wherefrom.data.sst import load_sst2

    data = load_sst2()
    sentences, labels = data.sentences(split), torch.as_tensor(data.labels(split))
    correct = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            ids, lengths = pad_batch(sentences[i:i + batch_size])
            correct += int((model.forward_padded(ids, lengths).argmax(-1) == labels[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / len(sentences)
