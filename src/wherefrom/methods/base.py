"""The attributor protocol: ``fit`` / ``score`` / ``self_influence`` / ``top_k``, ``save`` and ``wf.load``.

Every attributor: ``fit(train) -> self``; ``score(test) -> Tensor[n_train, n_test]``; ``self_influence() ->
Tensor[n_train]``; ``top_k(test, k)`` streams; ``save(path)`` writes its fitted state (see
:mod:`wherefrom.persist`). ``scores[i, j]`` is the predicted improvement of test target ``j`` caused by training
example ``i``: **positive = helpful**. See ``docs/conventions.md``.

Subclasses register themselves by class name (:data:`wherefrom.registry.ATTRIBUTORS`) and record their constructor
arguments (:mod:`wherefrom.configurable`), which is what a saved config holds. The gradient methods are all one
class, :class:`~wherefrom.methods.composed.ComposedAttributor`, and its presets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from wherefrom.configurable import Configurable
from wherefrom.data.loaders import DataLike
from wherefrom.errors import WherefromError
from wherefrom.registry import register_attributor
from wherefrom.store import StreamingTopK, TopK


class Attributor(Configurable):
    """Base protocol. Subclasses implement :meth:`fit`, :meth:`iter_score_blocks` and :meth:`self_influence`, and
    :meth:`_fitted_state` / :meth:`_restore_fitted` for saving."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_attributor(cls)

    def fit(self, train: DataLike) -> Attributor:  # pragma: no cover - interface
        raise NotImplementedError

    def iter_score_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:  # pragma: no cover
        """Yield ``(start, scores[start:start+B, :])`` row blocks of the ``[n_train, n_test]`` score matrix."""
        raise NotImplementedError

    def self_influence(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def score(self, test: DataLike) -> torch.Tensor:
        """The dense ``[n_train, n_test]`` score matrix (positive = helpful)."""
        blocks = [b for _, b in self.iter_score_blocks(test)]
        return torch.cat(blocks, dim=0)

    def top_k(self, test: DataLike, k: int = 10) -> TopK:
        """The ``k`` most helpful and harmful training examples of every test point, without the full matrix."""
        top = StreamingTopK(k)
        for start, block in self.iter_score_blocks(test):
            top.update(start, block)
        return top.result()

    # ------------------------------------------------------------------ saved state
    def save(self, path: str | os.PathLike) -> str:
        """Write the fitted attributor to the directory ``path`` (``config.json`` + safetensors); reload it with
        ``wf.load(path, task)``. Returns the path."""
        from wherefrom.persist import save_attributor

        return save_attributor(self, path)

    def _fitted_state(self, directory: str) -> dict[str, Any]:
        """The fitted state as tensors and JSON-able values (large files may be written to ``directory``)."""
        raise WherefromError(f"{type(self).__name__} cannot be saved.")

    def _restore_fitted(self, state: dict[str, Any], *, directory: str, train: Any = None) -> None:
        """Inverse of :meth:`_fitted_state` on a freshly constructed attributor."""
        raise WherefromError(f"{type(self).__name__} cannot be loaded.")
