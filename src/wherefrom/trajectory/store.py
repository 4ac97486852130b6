"""A recorded training run: per step the batch indices, the pre-step parameters ``θ_t``, the optimizer's
hyper-parameters per param group, the pre-step optimizer state the step derivative needs, and a gradient check.

Kept in memory, or in a chunked, compressed zarr group on disk (reopened with :meth:`Trajectory.load`)::

    <path>/                       zarr group, attrs = the metadata (format, optimizer, parameter names and shapes, ...)
        theta        [T, p]       θ_t before step t (only row 0 when the run was recorded with store_params=False)
        final_theta  [p]          θ_T after the last step
        exp_avg, exp_avg_sq [T, p]    (Adam/AdamW) optimizer state before step t
        indices      [Σ B_t]      training-set indices of every batch, concatenated
        offsets      [T + 1]      batch t is indices[offsets[t]:offsets[t+1]]
        hyper/<name> [T, G]       per-group hyper-parameters of step t (lr, momentum, betas, ...)
        grad_check   [T, 3]       ‖g_t‖ and two random sketches ⟨r_k, g_t⟩ of the gradient the optimizer stepped with
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from wherefrom.errors import WherefromError

TRAJECTORY_FORMAT = 1
_DTYPES = {"torch.float64": torch.float64, "torch.float32": torch.float32, "torch.float16": torch.float16,
           "torch.bfloat16": torch.bfloat16}


@dataclass
class TrajectoryStep:
    """One recorded optimizer step ``t``.

    Attributes:
        t: the step number. indices: ``[B_t]`` training-set indices of the batch.
        theta: ``[p]`` parameters before the step (``None`` when the run was recorded without them).
        hyper: per-group hyper-parameters, each ``[G]`` float64. state: recorded pre-step optimizer state, ``[p]``.
        grad_check: ``[3]`` ``(‖g‖, ⟨r_1, g⟩, ⟨r_2, g⟩)`` of the gradient the optimizer stepped with.
    """

    t: int
    indices: torch.Tensor
    theta: torch.Tensor | None
    hyper: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    grad_check: torch.Tensor


def import_zarr():
    """The ``zarr`` module (v3), or a clear error saying how to get it."""
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - zarr is a dependency on Python >= 3.11
        raise WherefromError("On-disk trajectories need zarr>=3 (Python >= 3.11): pip install 'zarr>=3', or "
                             "record in memory (path=None).") from exc
    return zarr


class MemoryBackend:
    """Steps kept in Python lists of tensors."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.final_theta: torch.Tensor | None = None

    def append(self, row: dict) -> None:
        self.rows.append(row)

    def read(self, t: int, with_theta: bool = True) -> dict:
        row = dict(self.rows[t])
        if not with_theta:
            row["theta"] = None
        return row

    def set_final(self, theta: torch.Tensor, meta: dict) -> None:
        self.final_theta = theta

    def __len__(self) -> int:
        return len(self.rows)


class ZarrBackend:
    """Steps appended to a zarr group (one chunk per step of ``θ_t``, zstd-compressed).

    Writes are buffered and flushed every ``flush_every`` steps (and whenever a step is read or ``θ_T`` is set);
    the small per-step arrays (offsets, hyper-parameters, gradient checks) are also kept in memory.
    """

    def __init__(self, path: str, meta: dict | None = None, mode: str = "r", flush_every: int = 32) -> None:
        zarr = import_zarr()
        self.path = os.fspath(path)
        self.flush_every = flush_every
        self._pending: list[dict] = []
        if mode == "w":
            self.group = zarr.open_group(self.path, mode="w")
            self.group.attrs.update(meta)
            self._create(meta)
        else:
            if not os.path.exists(self.path):
                raise WherefromError(f"No recorded trajectory at {self.path!r}.")
            self.group = zarr.open_group(self.path, mode=mode)
        g = self.group
        self._offsets = [int(v) for v in np.asarray(g["offsets"][:])]
        self._hyper = {name: list(np.asarray(g[f"hyper/{name}"][:])) for name in g.attrs["hyper_names"]}
        self._checks = list(np.asarray(g["grad_check"][:]))
        self._n_theta = int(g["theta"].shape[0])

    def _create(self, meta: dict) -> None:
        p = int(sum(int(np.prod(s)) for s in meta["param_shapes"]))
        dt = np.dtype(str(_DTYPES[meta["dtype"]]).replace("torch.", ""))
        chunk = (1, min(p, 1 << 22))
        g = self.group
        g.create_array("theta", shape=(0, p), chunks=chunk, dtype=dt)
        g.create_array("final_theta", shape=(p,), chunks=(min(p, 1 << 22),), dtype=dt)
        for name in meta["recorded_state"]:
            g.create_array(name, shape=(0, p), chunks=chunk, dtype=dt)
        g.create_array("indices", shape=(0,), chunks=(1 << 16,), dtype="int64")
        offsets = g.create_array("offsets", shape=(1,), chunks=(1 << 14,), dtype="int64")
        offsets[:] = np.zeros(1, dtype=np.int64)
        G = int(meta["n_groups"])
        for name in meta["hyper_names"]:
            g.create_array(f"hyper/{name}", shape=(0, G), chunks=(1024, G), dtype="float64")
        g.create_array("grad_check", shape=(0, 3), chunks=(1024, 3), dtype="float64")

    def append(self, row: dict) -> None:
        idx = row["indices"].cpu().numpy().astype(np.int64)
        self._offsets.append(self._offsets[-1] + len(idx))
        for name, value in row["hyper"].items():
            self._hyper[name].append(value.cpu().numpy().astype(np.float64))
        self._checks.append(row["grad_check"].cpu().numpy().astype(np.float64))
        self._pending.append({**row, "indices": idx})
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the buffered steps to the store."""
        if not self._pending:
            return
        g, rows = self.group, self._pending
        thetas = [r["theta"].cpu().numpy() for r in rows if r["theta"] is not None]
        if thetas:
            g["theta"].append(np.stack(thetas))
            self._n_theta += len(thetas)
        for name in g.attrs["recorded_state"]:
            g[name].append(np.stack([r["state"][name].cpu().numpy() for r in rows]))
        g["indices"].append(np.concatenate([r["indices"] for r in rows]))
        n = len(self._offsets) - 1
        g["offsets"].append(np.asarray(self._offsets[n - len(rows) + 1:], dtype=np.int64))
        for name in g.attrs["hyper_names"]:
            g[f"hyper/{name}"].append(np.stack(self._hyper[name][n - len(rows):]))
        g["grad_check"].append(np.stack(self._checks[n - len(rows):]))
        self._pending = []

    def read(self, t: int, with_theta: bool = True) -> dict:
        self.flush()
        g = self.group
        lo, hi = self._offsets[t], self._offsets[t + 1]
        theta = torch.from_numpy(np.asarray(g["theta"][t])) if with_theta and t < self._n_theta else None
        hyper = {name: torch.from_numpy(np.asarray(v[t])) for name, v in self._hyper.items()}
        state = {name: torch.from_numpy(np.asarray(g[name][t])) for name in g.attrs["recorded_state"]}
        return {"indices": torch.from_numpy(np.asarray(g["indices"][lo:hi])), "theta": theta, "hyper": hyper,
                "state": state, "grad_check": torch.from_numpy(np.asarray(self._checks[t]))}

    def set_final(self, theta: torch.Tensor, meta: dict) -> None:
        self.flush()
        self.group["final_theta"][:] = theta.cpu().numpy()
        self.group.attrs.update(meta)

    @property
    def final_theta(self) -> torch.Tensor | None:
        if not self.group.attrs.get("has_final", False):
            return None
        return torch.from_numpy(np.asarray(self.group["final_theta"][:]))

    def __len__(self) -> int:
        return len(self._offsets) - 1


class Trajectory:
    """A recorded training run (see the module docstring). Build one with
    :class:`~wherefrom.trajectory.TrajectoryRecorder`; reopen a saved one with :meth:`Trajectory.load`.

    The flat parameter vector ``θ`` holds the optimizer's parameters in the model's ``named_parameters()`` order,
    each flattened row-major — the order of ``wf.Task(model).flat_params`` when the task selects the same
    parameters.
    """

    def __init__(self, meta: dict, backend: MemoryBackend | ZarrBackend) -> None:
        self.meta = meta
        self._backend = backend

    # ------------------------------------------------------------------ metadata
    @property
    def optimizer(self) -> str:
        """``"sgd"``, ``"adam"`` or ``"adamw"``."""
        return self.meta["optimizer"]

    @property
    def param_names(self) -> list[str]:
        return list(self.meta["param_names"])

    @property
    def param_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.meta["param_shapes"]]

    @property
    def num_params(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.param_shapes))

    @property
    def n_groups(self) -> int:
        return int(self.meta["n_groups"])

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.meta["dtype"]]

    @property
    def stores_params(self) -> bool:
        """Whether ``θ_t`` was stored at every step (otherwise only ``θ_0`` and ``θ_T``)."""
        return bool(self.meta["store_params"])

    @property
    def path(self) -> str | None:
        return getattr(self._backend, "path", None)

    def group_index(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[p]`` param-group index of every coordinate of ``θ``."""
        sizes = [int(np.prod(s)) for s in self.param_shapes]
        per_param = torch.as_tensor(self.meta["group_of_param"], dtype=torch.long)
        return torch.repeat_interleave(per_param, torch.as_tensor(sizes)).to(device)

    def sketch_vectors(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The two fixed Rademacher vectors ``[2, p]`` of the recorded gradient sketches."""
        return sketch_vectors(self.num_params, int(self.meta["sketch_seed"])).to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ steps
    def __len__(self) -> int:
        return len(self._backend)

    def step(self, t: int, with_theta: bool = True) -> TrajectoryStep:
        """Step ``t`` (``0 ≤ t < len(self)``)."""
        if not 0 <= t < len(self):
            raise WherefromError(f"Step {t} is out of range: the trajectory has {len(self)} steps.")
        row = self._backend.read(t, with_theta and (self.stores_params or t == 0))
        return TrajectoryStep(t, row["indices"].long(), row["theta"], row["hyper"], row["state"], row["grad_check"])

    def steps(self, reverse: bool = False, with_theta: bool = True) -> Iterator[TrajectoryStep]:
        """Every step, oldest first (or newest first with ``reverse=True``)."""
        order = range(len(self) - 1, -1, -1) if reverse else range(len(self))
        for t in order:
            yield self.step(t, with_theta)

    @property
    def initial_theta(self) -> torch.Tensor:
        """``θ_0``, the parameters before the first recorded step."""
        return self.step(0).theta

    @property
    def final_theta(self) -> torch.Tensor:
        """``θ_T``, the parameters after the last recorded step."""
        theta = self._backend.final_theta
        if theta is None:
            raise WherefromError("The trajectory has no final parameters: take recorder.trajectory (or call "
                                 "recorder.close()) after the last optimizer step.")
        return theta

    def max_index(self) -> int:
        """The largest training-set index of any recorded batch."""
        backend = self._backend
        if isinstance(backend, ZarrBackend):
            backend.flush()
            return int(np.asarray(backend.group["indices"][:]).max())
        return max(int(row["indices"].max()) for row in backend.rows)

    def fingerprint(self) -> str:
        """A short hash of the metadata, the number of steps and ``θ_T`` (keys caches to this exact run)."""
        h = hashlib.sha256(json.dumps(self.meta, sort_keys=True, default=str).encode())
        h.update(str(len(self)).encode())
        h.update(self.final_theta.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Trajectory:
        """Write the trajectory to a zarr group at ``path`` and return it reopened from there."""
        meta = dict(self.meta)
        backend = ZarrBackend(os.fspath(path), {**meta, "has_final": False}, mode="w")
        for t in range(len(self)):
            backend.append(self._backend.read(t, self.stores_params or t == 0))
        meta["has_final"] = True
        backend.set_final(self.final_theta, meta)
        return Trajectory.load(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trajectory:
        """Reopen a trajectory recorded with ``TrajectoryRecorder(..., path=...)`` or saved with :meth:`save`."""
        backend = ZarrBackend(os.fspath(path), mode="r")
        meta = dict(backend.group.attrs)
        if meta.get("format") != TRAJECTORY_FORMAT:
            raise WherefromError(f"{os.fspath(path)!r} is not a wherefrom trajectory of format {TRAJECTORY_FORMAT} "
                                 f"(found format {meta.get('format')!r}).")
        return cls(meta, backend)

    def __repr__(self) -> str:
        where = f", path={self.path!r}" if self.path else ""
        return (f"Trajectory({self.optimizer}, steps={len(self)}, params={self.num_params}, "
                f"groups={self.n_groups}{where})")


def sketch_vectors(p: int, seed: int) -> torch.Tensor:
    """Two Rademacher vectors ``[2, p]`` (float64) drawn from a CPU generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (2, p), generator=gen).to(torch.float64).mul_(2).sub_(1)
