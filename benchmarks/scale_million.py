"""The million-example workload: featurise 1,000,000 augmented MNIST images, store them, answer top-10 queries.

    nice -n 10 python benchmarks/scale_million.py                       # n = 1,000,000, LoGra and TRAK-1
    nice -n 10 python benchmarks/scale_million.py --n 20000 --out /tmp/million --methods logra
    nice -n 10 python benchmarks/scale_million.py --methods trak-1-kron --json /tmp/trak_kron.json

Methods: ``logra`` (rank ``--rank``), ``trak-1`` (dense ``--projection`` to ``--proj-dim``), ``trak-1-kron`` (TRAK
with ``projection="kronecker"``: ``--proj-dim`` shared over the layers as Kronecker factors).

Stages, each timed on its own (wall seconds):

- ``train``: the MLP ``784 → 64 → 10`` of :mod:`wherefrom.scale.workload`, one pass of Adam over the first
  262,144 examples (``--train-examples``) at batch 1024 (cached in ``--out``: a second run loads it);
- ``data``: one pass that only generates the ``n`` images through the featurisation's loader (batches of
  ``--batch-size``);
- ``floor``: one plain training-style pass over the same batches: forward, mean cross-entropy, backward;
- per method: ``featurise`` (the zarr feature store, chunk by chunk, as ``wf.Execution(store="zarr")`` builds
  it), ``fit rest`` (its preconditioner and row weights), ``top-k`` (FAISS exact search, top-10 helpful and
  top-10 harmful for the 1,000 test queries).

It reports examples per second of each featurisation against the floor (``ratio = floor time / featurise time``,
both with the on-the-fly data generation, and ``compute ratio`` with the data pass subtracted from both), the disk
size of each store, the process's peak resident memory after each stage (``ru_maxrss`` of the process and its
children) and the load average of the machine, and writes ``scale_million.json`` next to this script (or
``--json``). One thread (``--threads``): on a shared machine two contending threads made small kernels far slower.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import sys
import time
from typing import Any

import faiss  # imported here, outside the timed stages
import torch
import zarr  # noqa: F401
from torch import nn

import wherefrom as wf
from wherefrom.scale import workload

HERE = os.path.dirname(os.path.abspath(__file__))


def reuse_freed_memory(threshold: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed blocks up to ``threshold`` bytes for reuse instead of returning them to the
    system (``mallopt(M_MMAP_THRESHOLD)`` and ``M_TRIM_THRESHOLD``). Full per-example gradients (``[B, p]``, 200 MB
    at ``B = 1024``) are otherwise fresh ``mmap`` pages on every batch, and the page faults took 2-4x the
    featurisation's own time. Returns False where it does not apply (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold)) and bool(libc.mallopt(-1, 2 * threshold))  # M_MMAP_ / M_TRIM_
    except (OSError, AttributeError):
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory of this process and of its (waited-for) children, bytes (``ru_maxrss`` is KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return 1024 * max(own, children)


class Clock:
    """Wall time, peak memory and load average per named stage."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn, *args: Any, **kwargs: Any) -> Any:
        load = os.getloadavg()[0]
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        wall = time.perf_counter() - t
        self.stages[name] = {"wall_s": wall, "peak_rss_bytes": peak_rss_bytes(),
                             "load_avg_1min": round((load + os.getloadavg()[0]) / 2, 2)}
        print(f"  {name:28s} {wall:8.1f} s   peak RSS {peak_rss_bytes() / 1e9:.2f} GB   "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        return out


def load_or_train(out: str, train: Any, examples: int | None) -> nn.Module:
    examples = len(train) if examples is None else min(examples, len(train))
    path = os.path.join(out, f"mlp_{examples}.pt")
    model = workload.mnist_mlp()
    if os.path.exists(path):
        model.load_state_dict(torch.load(path))
        return model.eval()
    model = workload.train_mlp(train, examples=examples)
    torch.save(model.state_dict(), path)
    return model


def data_pass(loader) -> int:
    rows = 0
    for x, _ in loader:
        rows += len(x)
    return rows


def floor_pass(model: nn.Module, loader) -> None:
    """Forward, mean cross-entropy and backward per batch: one plain training step without the update."""
    for x, y in loader:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()


def brute_force_check(att, test, top, k: int) -> dict[str, float]:
    """Top-k by brute force in float64 over the same stored rows (small n only): the fraction of the FAISS indices
    found there, and the largest value error relative to the largest score."""
    from wherefrom.scale.faiss_search import query_side, training_blocks

    Y = query_side(att, test).double()
    S = torch.cat([x.double() @ Y.T for _, x in training_blocks(att)])  # [n, m]
    hi_v, hi_i = S.topk(k, dim=0)
    lo_v, lo_i = (-S).topk(k, dim=0)
    agree = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(hi_i.T, top.helpful_indices)]
    agree += [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(lo_i.T, top.harmful_indices)]
    err = max((hi_v.T - top.helpful_values.double()).abs().max().item(),
              (-lo_v.T - top.harmful_values.double()).abs().max().item())
    return {"index_agreement": sum(agree) / (2 * k * Y.shape[0]), "relative_value_error": err / S.abs().max().item()}


def make_method(name: str, task: wf.Task, ex: wf.Execution, args: argparse.Namespace):
    if name == "logra":
        return wf.LoGra(task, rank=args.rank, execution=ex)
    if name == "trak-1":
        return wf.TRAK(task, proj_dim=args.proj_dim, projection=args.projection, execution=ex)
    if name == "trak-1-kron":
        return wf.TRAK(task, proj_dim=args.proj_dim, projection="kronecker", execution=ex)
    raise SystemExit(f"unknown method {name!r}: choose from logra, trak-1, trak-1-kron")


def run_method(name: str, task: wf.Task, train, test, args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    cache = os.path.join(args.out, f"{name}_n{args.n}")
    if not args.keep_stores:
        shutil.rmtree(cache, ignore_errors=True)  # featurise from scratch (a kept store is found and reused)
    ex = wf.Execution(batch_size=args.batch_size, block_size=args.chunk, store="zarr", cache_dir=cache,
                      dtype=getattr(torch, args.dtype))
    att = make_method(name, task, ex, args)
    planned = wf.scale.plan(att, n_train=args.n, n_test=args.n_test, k=args.k)
    build = att._build_store
    spent = {"featurise": 0.0}

    def timed_build(c, loader):  # the store's build, timed apart from the preconditioner and row weights
        t = time.perf_counter()
        store = build(c, loader)
        spent["featurise"] += time.perf_counter() - t
        return store

    att._build_store = timed_build
    clock.run(f"{name}: fit", att.fit, train.loader(args.batch_size))
    fit = clock.stages.pop(f"{name}: fit")
    clock.stages[f"{name}: featurise"] = {**fit, "wall_s": spent["featurise"]}
    clock.stages[f"{name}: fit rest"] = {**fit, "wall_s": fit["wall_s"] - spent["featurise"]}
    print(f"    (featurise {spent['featurise']:.1f} s, preconditioner and row weights "
          f"{fit['wall_s'] - spent['featurise']:.1f} s)", flush=True)
    top = clock.run(f"{name}: top-k", wf.scale.top_k, att, test, args.k)
    store = att._stores[0]
    check = {"check": brute_force_check(att, test, top, args.k)} if args.check else {}
    plan = {s.name: {"memory": planned.baseline + s.memory, "disk": s.disk} for s in planned.stages}
    return {**check, "plan": plan, "dim": store.dim, "chunk_rows": store.chunk_rows, "dtype": store.dtype_name,
            "disk_bytes": store.nbytes_on_disk(), "store": store.path,
            "top_k_shapes": [list(top.helpful_indices.shape), list(top.harmful_indices.shape)],
            "first_query": {"helpful": top.helpful_indices[0].tolist(), "harmful": top.harmful_indices[0].tolist()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--out", default=os.path.join(HERE, "scale_million_out"), help="stores and the cached model")
    ap.add_argument("--methods", default="logra,trak-1")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=16384, help="rows per zarr chunk")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--rank", type=int, default=8, help="LoGra rank (k_l = rank² per layer)")
    ap.add_argument("--proj-dim", type=int, default=64, help="TRAK projection dimension")
    ap.add_argument("--projection", default="rademacher", help="TRAK projection kind")
    ap.add_argument("--train-examples", type=int, default=262_144, help="one pass over the first ... examples")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--allocator", default="reuse", choices=["reuse", "default"],
                    help="reuse: keep freed memory for reuse (glibc mallopt); default: leave malloc as it is")
    ap.add_argument("--keep-stores", action="store_true", help="reuse the stores of an earlier run (resume)")
    ap.add_argument("--check", action="store_true", help="compare the top-k with the streaming top-k (small n)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", default=os.path.join(HERE, "scale_million.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    tuned = reuse_freed_memory() if args.allocator == "reuse" else False
    wf.set_progress(args.progress)
    os.makedirs(args.out, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    clock = Clock()
    start = time.perf_counter()
    train, test = workload.datasets(args.n, args.n_test)
    print(f"n = {args.n:,}, {args.n_test} queries, batch {args.batch_size}, chunk {args.chunk}, {args.dtype}, "
          f"threads {args.threads}, allocator tuned {tuned}, {os.cpu_count()} CPUs, load {os.getloadavg()}", flush=True)
    model = clock.run("train (or load) MLP", load_or_train, args.out, train, args.train_examples)
    acc = workload.accuracy(model, test)
    task = wf.Task(model)
    loader = train.loader(args.batch_size)
    train.noise_bank(), test.noise_bank()  # made once from the seeds, outside the timed passes
    floor_pass(model, [next(iter(loader))])  # warm-up
    clock.run("data only", data_pass, loader)
    clock.run("floor: forward + backward", floor_pass, model, loader)
    results = {m: run_method(m, task, train, test, args, clock) for m in methods}
    total = time.perf_counter() - start

    data_s = clock.stages["data only"]["wall_s"]
    floor_s = clock.stages["floor: forward + backward"]["wall_s"]
    for m, r in results.items():
        feat = clock.stages[f"{m}: featurise"]["wall_s"]
        r["examples_per_s"] = args.n / feat
        r["ratio_to_floor"] = floor_s / feat
        r["compute_ratio_to_floor"] = (floor_s - data_s) / max(feat - data_s, 1e-9)
    report = {
        "n": args.n, "n_test": args.n_test, "k": args.k, "args": vars(args), "test_accuracy": acc,
        "parameters": task.num_params, "total_wall_s": total, "stages": clock.stages,
        "floor_examples_per_s": args.n / floor_s, "data_examples_per_s": args.n / data_s, "methods": results,
        "peak_rss_bytes": peak_rss_bytes(), "cpus": os.cpu_count(), "load_avg_end": os.getloadavg(),
        "torch": torch.__version__, "python": sys.version.split()[0],
    }
    print(f"\nend to end {total:.1f} s, peak RSS {report['peak_rss_bytes'] / 1e9:.2f} GB, test accuracy {acc:.3f}, "
          f"floor {report['floor_examples_per_s']:,.0f} ex/s (data alone {report['data_examples_per_s']:,.0f} ex/s)")
    for m, r in results.items():
        print(f"  {m:11s} d = {r['dim']:4d}  {r['examples_per_s']:9,.0f} ex/s  ratio {r['ratio_to_floor']:.2f} "
              f"(compute only {r['compute_ratio_to_floor']:.2f})  disk {r['disk_bytes'] / 1e6:,.1f} MB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return report


if __name__ == "__main__":
    main()
