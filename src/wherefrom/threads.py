"""Thread policy for work spread over several processes.

Each torch process runs its own intra-op thread pool. ``P`` worker processes that each keep torch's default
(one thread per core) put ``P × cores`` threads on ``cores`` cores; on a busy machine the same product then
swings 10–20× in time. The policy gives each worker

    threads = max(1, cores // processes)

so that ``processes × threads ≤ cores`` (with ``processes ≥ cores`` this is one intra-op thread, also inside the
per-example ``vmap`` blocks). Precedence, first match wins:

1. ``WHEREFROM_THREADS`` (a positive integer) — used as given;
2. ``OMP_NUM_THREADS`` (a positive integer) — the user's explicit choice, used as given;
3. ``min(requested, cores // processes)`` where ``requested`` is the parent's ``torch.get_num_threads()``: a user
   who lowered it with ``torch.set_num_threads`` keeps the lower value; the default never oversubscribes.

A single process (``processes == 1``) with neither variable set keeps ``requested`` untouched.
"""

from __future__ import annotations

import os

import torch

from wherefrom.errors import WherefromError

ENV_VAR = "WHEREFROM_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _positive_env(name: str, env: dict[str, str]) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise WherefromError(f"{name}={raw!r} is not a positive integer; set it to the number of intra-op threads "
                             "per process (e.g. 1) or unset it.")
    return value


def worker_threads(processes: int, *, cores: int | None = None, requested: int | None = None,
                   env: dict[str, str] | None = None) -> int:
    """Intra-op threads for each of ``processes`` worker processes (see the module docstring for the policy).

    Args:
        processes: how many processes run at the same time (≥ 1).
        cores: cores to share (default :func:`available_cores`).
        requested: the caller's thread count (default ``torch.get_num_threads()`` of this process).
        env: environment to read (default ``os.environ``).
    """
    if not isinstance(processes, int) or processes < 1:
        raise WherefromError(f"processes must be a positive integer, got {processes!r}.")
    env = os.environ if env is None else env
    for name in (ENV_VAR, "OMP_NUM_THREADS"):
        value = _positive_env(name, env)
        if value is not None:
            return value
    requested = torch.get_num_threads() if requested is None else requested
    if processes == 1:
        return max(1, requested)
    cores = available_cores() if cores is None else cores
    return max(1, min(requested, cores // processes))


def apply_worker_threads(threads: int) -> int:
    """Set this process's intra-op threads to ``threads`` (for a pool's worker initialiser); returns it."""
    torch.set_num_threads(threads)
    return torch.get_num_threads()
