"""Spread of one GGN product's time over repeats on a busy machine: torch's default threads vs the thread policy.

Per mode, ``--processes`` worker subprocesses start at once (as a process pool would) next to one busy process
(a matrix-product loop with torch's default threads). Every worker builds the same small MLP and times
``--repeats`` times the Gauss–Newton product ``Jᵀ H_out J V`` for ``--vectors`` vectors over ``--n`` examples
(forward-mode ``J V`` and reverse-mode ``Jᵀ``, both ``vmap``-ed over the vectors). Mode ``default`` leaves torch's
threads alone; mode ``policy`` sets ``wherefrom.threads.worker_threads(processes)``.
Prints min / median / max seconds per mode::

    nice -n 10 env PYTHONPATH=src python benchmarks/threads_spread.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch


def ggn_product_seconds(n: int, vectors: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` products ``G V = Jᵀ H_out J V`` (softmax cross-entropy output curvature), after one
    warm-up."""
    from torch.func import functional_call, jvp, vjp, vmap

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10))
    names = [k for k, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    x = torch.randn(n, 64)
    vs = tuple(torch.randn(vectors, *p.shape) for p in params)

    def logits(*ps):
        return functional_call(model, dict(zip(names, ps)), (x,))

    def product():
        out, pull = vjp(logits, *params)
        jv = vmap(lambda *v: jvp(logits, params, v)[1])(*vs)  # (vectors, n, 10)
        prob = out.softmax(-1)
        hjv = prob * jv - prob * (prob * jv).sum(-1, keepdim=True)  # (diag p − p pᵀ) J v
        return vmap(pull)(hjv)

    product()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        product()
        seconds.append(time.perf_counter() - t0)
    return seconds


def _busy() -> None:
    a = torch.randn(512, 512)
    while True:
        a = (a @ a).tanh()


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--vectors", type=int, default=100)
    ap.add_argument("--child", choices=["default", "policy", "busy"])
    a = ap.parse_args()
    if a.child == "busy":
        _busy()
    if a.child is not None:
        if a.child == "policy":
            from wherefrom.threads import apply_worker_threads, worker_threads

            apply_worker_threads(worker_threads(a.processes))
        print(torch.get_num_threads(), *ggn_product_seconds(a.n, a.vectors, a.repeats), flush=True)
        return
    busy = _spawn(["--child", "busy"])
    try:
        for mode in ("default", "policy"):
            times, threads = [], set()
            kids = [_spawn(["--child", mode, "--processes", str(a.processes), "--n", str(a.n),
                            "--vectors", str(a.vectors), "--repeats", str(a.repeats)]) for _ in range(a.processes)]
            for kid in kids:
                t, *s = kid.communicate()[0].split()
                threads.add(int(t))
                times += [float(x) for x in s]
            print(f"{mode:8s} threads/process={sorted(threads)} processes={a.processes} runs={len(times)}  "
                  f"min {min(times):.3f} s  median {statistics.median(times):.3f} s  max {max(times):.3f} s")
    finally:
        busy.kill()
        busy.wait()


if __name__ == "__main__":
    main()
