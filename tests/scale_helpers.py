"""Small deterministic models, data and file comparisons for the scale tests (also run as a subprocess script)."""

from __future__ import annotations

import os
import sys
import time

import torch
from torch.utils.data import Dataset


class SlowDataset(Dataset):
    """``(x_i, y_i)`` of fixed tensors, sleeping ``delay`` seconds per item (so runs can be interrupted mid-way)."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, delay: float = 0.0) -> None:
        self.X, self.y, self.delay = X, y, delay

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int):
        if self.delay:
            time.sleep(self.delay)
        return self.X[i], self.y[i]


def small_problem(n: int = 320, d_in: int = 10, seed: int = 0, delay: float = 0.0):
    """A seeded 2-layer MLP task, a training set of ``n`` and a test set of 9."""
    import wherefrom as wf

    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(d_in, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    X = torch.randn(n, d_in, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    Xt = torch.randn(9, d_in, generator=g)
    yt = torch.randint(0, 3, (9,), generator=g)
    return wf.Task(model), SlowDataset(X, y, delay), (Xt, yt)


def store_files(path: str) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file of a store folder."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = fh.read()
    return out


def main(argv: list[str]) -> None:
    """``python scale_helpers.py CACHE_DIR DELAY``: fit LoGra into a zarr store under CACHE_DIR;
    ``python scale_helpers.py memory N CACHE_DIR``: print :func:`memory_probe` as JSON."""
    import json

    import wherefrom as wf

    torch.set_num_threads(1)
    wf.set_progress(False)
    if argv[0] == "memory":
        print(json.dumps(memory_probe(int(argv[1]), argv[2])))
        return
    if argv[0] == "planner":
        print(json.dumps(planner_probe(int(argv[1]), argv[2])))
        return
    task, train, _ = small_problem(delay=float(argv[1]))
    ex = wf.Execution(batch_size=8, block_size=16, store="zarr", cache_dir=argv[0])
    wf.LoGra(task, execution=ex).fit(train)
    print("done")



def peak_rss_during(fn) -> tuple[int, object]:
    """``(peak resident memory above the level before the call, in bytes; fn's result)``, sampled every 1 ms."""
    import threading

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page

    base, peak, stop = rss(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        out = fn()
    finally:
        stop.set()
        thread.join()
    return max(peak[0], rss()) - base, out


def memory_probe(n: int, cache: str) -> dict[str, int]:
    """Fit Grad-Dot on ``n`` examples into a zarr store, then measure the peak memory of FAISS top-k, streaming
    top-k and self-influence (each above the level before it)."""
    import gc

    import wherefrom as wf

    torch.manual_seed(0)
    model = torch.nn.Linear(48, 4)
    X, y = torch.randn(n, 48), torch.randint(0, 4, (n,))
    test = (torch.randn(20, 48), torch.randint(0, 4, (20,)))
    ex = wf.Execution(batch_size=1024, store="zarr", cache_dir=cache)
    att = wf.GradDot(wf.Task(model), execution=ex).fit((X, y))
    out = {}
    for name, fn in [("faiss", lambda: wf.scale.top_k(att, test, 10)),
                     ("stream", lambda: att.top_k(test, 10)),
                     ("self_influence", att.self_influence)]:
        gc.collect()
        fn()  # warm (imports, allocator pools)
        gc.collect()
        out[name], _ = peak_rss_during(fn)
    return out


def planner_probe(n: int, cache: str, width: int = 256, classes: int = 32, batch_size: int = 256,
                  n_test: int = 100, k: int = 10) -> dict:
    """Featurise ``n`` examples with Grad-Dot (full gradients of a ``Linear(width, classes)``) into a zarr store;
    return the measured peak memory above the level before the fit, the store's bytes on disk, and what
    :func:`wherefrom.scale.plan` predicts for both (its ``featurise`` stage, baseline excluded); then the same
    for the FAISS top-k, the streaming top-k and self-influence of ``n_test`` queries (``stages``), each measured
    once, in this order, above the level before it."""
    import gc

    import faiss  # noqa: F401  (imported before any measurement)

    import wherefrom as wf

    torch.manual_seed(0)
    task = wf.Task(torch.nn.Linear(width, classes))
    X, y = torch.randn(n, width), torch.randint(0, classes, (n,))
    test = (torch.randn(n_test, width), torch.randint(0, classes, (n_test,)))
    ex = wf.Execution(batch_size=batch_size, store="zarr", cache_dir=os.path.join(cache, "measured"))
    warm = wf.Execution(batch_size=batch_size, store="zarr", cache_dir=os.path.join(cache, "warm"))
    small = wf.GradDot(task, execution=warm).fit((X[:batch_size], y[:batch_size]))  # imports, allocator pools
    wf.scale.top_k(small, test, k)
    att = wf.GradDot(task, execution=ex)
    plan = wf.scale.plan(att, n_train=n, n_test=n_test, k=k)
    predicted = plan.stage("featurise")
    gc.collect()
    memory, _ = peak_rss_during(lambda: att.fit((X, y)))
    disk = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(ex.cache_dir) for f in files)
    stages = {}
    for name, fn in [("top-k (faiss)", lambda: wf.scale.top_k(att, test, k)),
                     ("top-k (stream)", lambda: att.top_k(test, k)),
                     ("self-influence", att.self_influence)]:
        gc.collect()
        measured, _ = peak_rss_during(fn)
        stages[name] = {"predicted": plan.stage(name).memory, "measured": measured}
    return {"n": n, "dim": task.num_params, "predicted_memory": predicted.memory, "measured_memory": memory,
            "predicted_disk": predicted.disk, "measured_disk": disk, "stages": stages}


if __name__ == "__main__":
    main(sys.argv[1:])
