"""Dask ``LocalCluster`` (2 worker processes) against one process on the same featurisation, top-k and self-influence.

    nice -n 10 python benchmarks/scale_dask.py                  # n = 100,000 augmented MNIST, LoGra rank 8
    nice -n 10 python benchmarks/scale_dask.py --n 20000 --workers 2

The same attributor (LoGra on the MLP of :mod:`wherefrom.scale.workload`, zarr store of float16 rows in chunks of
``--chunk`` rows) is fitted and queried twice, each time from an empty store folder:

- **one process**: ``wf.scale.fit(att, train)``, ``wf.scale.top_k(att, test, k, backend="streaming")`` (the
  per-chunk scan the Dask tasks do), ``wf.scale.self_influence(att)``;
- **Dask**: the same calls with ``client=`` a new ``LocalCluster`` of ``--workers`` processes with one thread each
  (``wf.scale.local_client``: workers keep reusing freed memory, see :mod:`wherefrom.scale.distributed`);
- **Dask, Dask's malloc setting** (unless ``--skip-before``): the same on a plain ``LocalCluster``, whose nanny
  starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, with the tasks' own malloc tuning switched off — how the
  Dask path ran before the fix.

Reported: wall time per stage and the speed-up, the cluster's start-up and shut-down, the number of tasks, the
size of what is shipped to the workers (the pickled chunk featuriser and attributor), and from Dask's task stream
the time the workers spent computing, deserialising and transferring against the wall time — so the overhead is
``workers × wall − compute``; the CPU seconds and minor page faults of the worker processes. It also checks that
the runs agree (stores to 1e-6, identical top-k). Writes
``scale_dask.json`` next to this script. Every process uses one torch thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import resource
import shutil
import time
from typing import Any

import torch

import wherefrom as wf
from wherefrom.scale import workload
from wherefrom.scale.distributed import WORKER_MALLOC_ENV
from wherefrom.scale.featurize import ChunkFeaturizer

HERE = os.path.dirname(os.path.abspath(__file__))


def task_times(stream: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per action (compute, transfer, deserialize, disk) summed over the tasks of a Dask task stream."""
    out: dict[str, float] = {"tasks": float(len(stream))}
    for task in stream:
        for s in task.get("startstops", ()):
            action = s["action"] if isinstance(s, dict) else s[0]
            start, stop = (s["start"], s["stop"]) if isinstance(s, dict) else (s[1], s[2])
            out[action] = out.get(action, 0.0) + (stop - start)
    return out


def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process, and of its finished (waited-for) child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def warm_worker() -> None:
    """What a worker does once: import the libraries the tasks use (timed as part of the start-up)."""
    import faiss  # noqa: F401
    import zarr  # noqa: F401

    import wherefrom  # noqa: F401

    torch.set_num_threads(1)


def keep_dask_malloc() -> None:
    """In a worker: leave malloc as the nanny's environment set it (the tasks' tuning is switched off)."""
    from wherefrom.scale import distributed

    distributed._malloc_tuned = False


def own_usage() -> tuple[float, int, float]:
    """CPU seconds and minor page faults of the calling process so far, and the CPU seconds of its threads that run
    Dask tasks (``Dask-Default-Threads``, from ``/proc``; Linux) — run in each worker by ``client.run``."""
    import threading

    u = resource.getrusage(resource.RUSAGE_SELF)
    tasks = 0.0
    for t in threading.enumerate():
        if "Dask-Default-Threads" in t.name and t.native_id is not None:
            try:
                with open(f"/proc/self/task/{t.native_id}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                tasks += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
            except OSError:
                pass
    return u.ru_utime + u.ru_stime, u.ru_minflt, tasks


def children_usage() -> tuple[float, int]:
    """CPU seconds and minor page faults of this process's finished (waited-for) children: the worker processes."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime, kids.ru_minflt


def make(task: wf.Task, cache: str, args: argparse.Namespace) -> Any:
    shutil.rmtree(cache, ignore_errors=True)
    ex = wf.Execution(batch_size=args.batch_size, block_size=args.chunk, store="zarr", cache_dir=cache,
                      dtype=torch.float16)
    return wf.LoGra(task, rank=args.rank, execution=ex)


def timed(fn, *a: Any, **kw: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def dask_run(args: argparse.Namespace, task: wf.Task, loader: Any, test: Any, label: str,
             dask_malloc: bool) -> tuple[dict[str, Any], Any, Any, Any]:
    """Fit, top-k and self-influence on a new cluster; timings, task streams, CPU and page faults of the workers."""
    from dask.distributed import Client, LocalCluster, get_task_stream

    own0, kids0 = cpu_seconds()[0], children_usage()
    # a nanny copies its start-up environment into this process too: drop what an earlier cluster left behind
    for name in WORKER_MALLOC_ENV:
        os.environ.pop(name, None)
    if dask_malloc:
        def start() -> Any:
            return Client(LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                       memory_limit=args.memory_limit, dashboard_address=None))
    else:
        def start() -> Any:
            return wf.scale.local_client(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit)
    client, startup = timed(start)
    _, warm = timed(client.run, warm_worker)
    if dask_malloc:
        client.run(keep_dask_malloc)
    usage = {}

    def workers_usage() -> list[float]:
        per = client.run(own_usage).values()
        return [sum(u[0] for u in per), sum(u[1] for u in per), sum(u[2] for u in per)]

    try:
        two = make(task, os.path.join(args.out, label), args)
        u0 = workers_usage()
        with get_task_stream(client) as fit_stream:
            _, fit2 = timed(wf.scale.fit, two, loader, client=client)
        u1 = workers_usage()
        with get_task_stream(client) as top_stream:
            top2, topk2 = timed(wf.scale.top_k, two, test, args.k, client=client)
        u2 = workers_usage()
        with get_task_stream(client) as si_stream:
            si2, self2 = timed(wf.scale.self_influence, two, client=client)
        u3 = workers_usage()
        for stage, a, b in (("fit", u0, u1), ("top_k", u1, u2), ("self_influence", u2, u3)):
            usage[stage] = {"cpu_s workers": b[0] - a[0], "minor_page_faults workers": b[1] - a[1],
                            "cpu_s task threads": b[2] - a[2]}
        streams = {"fit": fit_stream.data, "top_k": top_stream.data, "self_influence": si_stream.data}
    finally:
        (_, shutdown) = timed(lambda: (client.close(), client.cluster.close()))
    kids1 = children_usage()
    walls = {"fit": fit2, "top_k": topk2, "self_influence": self2}
    out: dict[str, Any] = {"startup_s": startup, "worker_imports_s": warm, "shutdown_s": shutdown, "fit_s": fit2,
                           "top_k_s": topk2, "self_influence_s": self2,
                           "cpu_s client process (with the scheduler)": cpu_seconds()[0] - own0,
                           "cpu_s workers": kids1[0] - kids0[0], "minor_page_faults workers": kids1[1] - kids0[1]}
    out["per_stage_workers"] = usage
    for stage, stream in streams.items():
        times = task_times(stream)
        out[f"{stage}_tasks"] = times
        out[f"{stage}_overhead_s"] = args.workers * walls[stage] - times.get("compute", 0.0)
    out["end_to_end_s"] = sum(walls.values()) + startup + warm + shutdown
    return out, two, top2, si2


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    wf.set_progress(False)
    train, test = workload.datasets(args.n, args.n_test)
    model = workload.train_mlp(train, examples=min(args.n, 65_536))
    task = wf.Task(model)
    loader = train.loader(args.batch_size)
    report: dict[str, Any] = {"n": args.n, "n_test": args.n_test, "k": args.k, "workers": args.workers,
                              "chunk_rows": args.chunk, "load_avg_start": os.getloadavg()}

    cpu0 = cpu_seconds()
    flt0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    one = make(task, os.path.join(args.out, "one"), args)
    u = [own_usage()]
    _, fit1 = timed(wf.scale.fit, one, loader)
    u.append(own_usage())
    top1, topk1 = timed(wf.scale.top_k, one, test, args.k, backend="streaming")
    u.append(own_usage())
    si1, self1 = timed(wf.scale.self_influence, one)
    u.append(own_usage())
    _, faiss1 = timed(wf.scale.top_k, one, test, args.k)
    cpu1 = cpu_seconds()
    report["one_process"] = {"fit_s": fit1, "top_k_s": topk1, "self_influence_s": self1, "faiss_top_k_s": faiss1,
                             "cpu_s (fit, top-k, self-influence, FAISS top-k)": cpu1[0] - cpu0[0],
                             "minor_page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt0,
                             "per_stage": {stage: {"cpu_s": u[i + 1][0] - u[i][0],
                                                   "minor_page_faults": u[i + 1][1] - u[i][1]}
                                           for i, stage in enumerate(("fit", "top_k", "self_influence"))}}
    print(f"one process: fit {fit1:.1f} s, top-k {topk1:.1f} s (FAISS {faiss1:.1f} s), self-influence {self1:.1f} s",
          flush=True)
    runs = [("dask", False)] + ([] if args.skip_before else [("dask_with_dask_malloc", True)])
    base = {"fit": fit1, "top_k": topk1, "self_influence": self1}
    for label, dask_malloc in runs:
        r, two, top2, si2 = dask_run(args, task, loader, test, label, dask_malloc)
        r["speed_up"] = {s: base[s] / r[f"{s}_s"] for s in base}
        r["speed_up_end_to_end"] = sum(base.values()) / r["end_to_end_s"]
        a, b = one._stores[0], two._stores[0]
        diff = max((a.read(s, min(s + args.chunk, a.n)).float() - b.read(s, min(s + args.chunk, b.n)).float())
                   .abs().max().item() for s in range(0, a.n, args.chunk))
        r["agreement"] = {
            "store_max_abs_diff": diff,
            "top_k_indices_equal": bool(torch.equal(top1.helpful_indices, top2.helpful_indices)
                                        and torch.equal(top1.harmful_indices, top2.harmful_indices)),
            "top_k_values_equal": bool(torch.equal(top1.helpful_values, top2.helpful_values)
                                       and torch.equal(top1.harmful_values, top2.harmful_values)),
            "self_influence_max_rel_diff": ((si1 - si2).abs().max() / si1.abs().max()).item(),
        }
        report[label] = r
        print(f"{label}: fit {r['fit_s']:.1f} s, top-k {r['top_k_s']:.1f} s, self-influence "
              f"{r['self_influence_s']:.1f} s", flush=True)
    featurizer = ChunkFeaturizer(one.source, one._states[0], 0, one.train_function, train, args.batch_size,
                                 loader.collate_fn, torch.float16)
    light = copy.copy(one)
    light._train_loader, light.spaces_ = None, []
    report["shipped_bytes"] = {"chunk featuriser": len(pickle.dumps(featurizer)),
                               "attributor for scoring": len(pickle.dumps(light))}
    report["load_avg_end"] = os.getloadavg()
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--memory-limit", default="2GB")
    ap.add_argument("--skip-before", action="store_true",
                    help="skip the run with Dask's own malloc setting (MALLOC_TRIM_THRESHOLD_=65536, no tuning)")
    ap.add_argument("--out", default=os.path.join(HERE, "scale_dask_out"))
    ap.add_argument("--json", default=os.path.join(HERE, "scale_dask.json"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    r = run(args)
    for label in ("dask", "dask_with_dask_malloc"):
        if label not in r:
            continue
        d = r[label]
        print(f"{label} ({args.workers} workers): start-up {d['startup_s']:.1f} s + imports "
              f"{d['worker_imports_s']:.1f} s, shut-down {d['shutdown_s']:.1f} s; speed-up: "
              + ", ".join(f"{k} {v:.2f}x" for k, v in d["speed_up"].items())
              + f"; end to end {d['speed_up_end_to_end']:.2f}x")
        for stage in ("fit", "top_k", "self_influence"):
            t = d[f"{stage}_tasks"]
            print(f"  {stage}: {int(t['tasks'])} tasks, compute {t.get('compute', 0):.1f} s, transfer "
                  f"{t.get('transfer', 0):.2f} s, deserialize {t.get('deserialize', 0):.2f} s, "
                  f"overhead (workers x wall - compute) {d[f'{stage}_overhead_s']:.1f} s")
        print(f"  per stage, workers: {d['per_stage_workers']}")
        print(f"  CPU seconds: workers {d['cpu_s workers']:.1f} ({d['minor_page_faults workers']} minor page "
              f"faults), client process {d['cpu_s client process (with the scheduler)']:.1f}; agreement "
              f"{d['agreement']}")
    o = r["one_process"]
    print(f"one process per stage: {o['per_stage']}")
    print(f"one process CPU seconds {o['cpu_s (fit, top-k, self-influence, FAISS top-k)']:.1f} "
          f"({o['minor_page_faults']} minor page faults; includes the FAISS top-k {o['faiss_top_k_s']:.1f} s wall)")
    print(f"shipped: {r['shipped_bytes']}; load {r['load_avg_start']} -> {r['load_avg_end']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=1)
    return r


if __name__ == "__main__":  # the guard matters: Dask's worker processes import this file
    main()
