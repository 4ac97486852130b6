"""A LocalCluster of 2 worker processes gives the single-process featurisation, scores, top-k and self-influence
(to 1e-6), also when a worker is killed mid-run."""

import os
import signal
import threading
import time

import cloudpickle
import pytest
import torch

import scale_helpers
import wherefrom as wf
from scale_helpers import small_problem

cloudpickle.register_pickle_by_value(scale_helpers)  # workers need not import the tests folder


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("dask.distributed")
    c = wf.scale.local_client(n_workers=2, threads_per_worker=1, memory_limit="1GB")
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


MAKERS = {
    "logra": lambda task, ex: wf.LoGra(task, execution=ex),
    "trak": lambda task, ex: wf.TRAK(task, proj_dim=16, execution=ex),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_local_cluster_equals_one_process(client, tmp_path, name):
    task, train, test = small_problem(n=300)
    ex = wf.Execution(batch_size=20, block_size=40, store="zarr")
    one = MAKERS[name](task, ex.replace(cache_dir=str(tmp_path / "one"))).fit(train)
    two = wf.scale.fit(MAKERS[name](task, ex.replace(cache_dir=str(tmp_path / "two"))), train, client=client)
    torch.testing.assert_close(two._stores[0].read(0, 300), one._stores[0].read(0, 300), rtol=0, atol=1e-6)
    torch.testing.assert_close(two.score(test), one.score(test), rtol=0, atol=1e-6)
    ref, got = one.top_k(test, 5), wf.scale.top_k(two, test, 5, client=client)
    assert torch.equal(got.helpful_indices, ref.helpful_indices)
    assert torch.equal(got.harmful_indices, ref.harmful_indices)
    torch.testing.assert_close(got.helpful_values, ref.helpful_values, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.harmful_values, ref.harmful_values, rtol=0, atol=1e-6)
    torch.testing.assert_close(wf.scale.self_influence(two, client=client), one.self_influence(), rtol=0, atol=1e-6)


def test_killing_a_worker_mid_run_leaves_the_result_unchanged(client, tmp_path):
    task, train, test = small_problem(n=320, delay=0.003)
    ex = wf.Execution(batch_size=8, block_size=16, store="zarr")
    task_ref, train_ref, _ = small_problem(n=320)
    one = wf.LoGra(task_ref, execution=ex.replace(cache_dir=str(tmp_path / "one"))).fit(train_ref)
    pids = list(client.run(os.getpid).values())
    checksums = tmp_path / "two" / "train_features_0.zarr" / "checksums"
    killed = []

    def kill_one_worker():
        deadline = time.time() + 60
        while time.time() < deadline:
            if checksums.is_dir() and len(os.listdir(checksums)) >= 3:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(len(os.listdir(checksums)))
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    two = wf.scale.fit(wf.LoGra(task, execution=ex.replace(cache_dir=str(tmp_path / "two"))), train, client=client)
    killer.join()
    assert killed and killed[0] < two._stores[0].n_chunks, "the worker was not killed mid-run"
    torch.testing.assert_close(two._stores[0].read(0, 320), one._stores[0].read(0, 320), rtol=0, atol=1e-6)
    torch.testing.assert_close(two.score(test), one.score(test), rtol=0, atol=1e-6)
    client.wait_for_workers(2, timeout=60)


def test_exact_ties_are_ordered_as_in_one_process(client, tmp_path):
    """Every training example four times over (float16 rows): every score is tied, and the Dask merge, whatever
    order its tasks finish in, lists them as the single-process scan does (lower index first)."""
    task, base, test = small_problem(n=60)
    train = scale_helpers.SlowDataset(base.X.repeat(4, 1), base.y.repeat(4))
    ex = wf.Execution(batch_size=20, block_size=40, store="zarr", dtype=torch.float16)
    one = wf.LoGra(task, execution=ex.replace(cache_dir=str(tmp_path / "one"))).fit(train)
    two = wf.scale.fit(wf.LoGra(task, execution=ex.replace(cache_dir=str(tmp_path / "two"))), train, client=client)
    ref, got = one.top_k(test, 8), wf.scale.top_k(two, test, 8, client=client)
    v = ref.helpful_values
    assert (v[:, 1:] == v[:, :-1]).any(), "no exact ties: the test would prove nothing"
    for a, b in [(got.helpful_indices, ref.helpful_indices), (got.harmful_indices, ref.harmful_indices),
                 (got.helpful_values, ref.helpful_values), (got.harmful_values, ref.harmful_values)]:
        assert torch.equal(a, b)
    tied = ref.helpful_values[:, 1:] == ref.helpful_values[:, :-1]
    assert (ref.helpful_indices[:, 1:] > ref.helpful_indices[:, :-1])[tied].all()


def test_local_client_workers_start_with_the_malloc_thresholds(client):
    from wherefrom.scale.distributed import WORKER_MALLOC_ENV

    envs = client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC_ENV})
    assert list(envs.values()) == [WORKER_MALLOC_ENV] * 2


MALLOC_PROBE = """
import ctypes, torch
from wherefrom.scale.distributed import tune_malloc
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                                               "fordblks keepcost").split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
def mapped_by_new_tensor():
    before = libc.mallinfo2().hblkhd
    x = torch.empty(1 << 20)  # 4 MiB
    return libc.mallinfo2().hblkhd - before
for _ in range(3):
    mapped_by_new_tensor()
print(mapped_by_new_tensor(), tune_malloc(), mapped_by_new_tensor())
"""


def test_tune_malloc_makes_a_dask_worker_reuse_freed_blocks():
    """With Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` every 4 MiB tensor is a fresh mapping (page faults on every
    touch); after :func:`tune_malloc` it comes from the reused heap."""
    import ctypes
    import subprocess
    import sys

    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33")
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE], env=env, capture_output=True, text=True, timeout=120)
    before, tuned, after = out.stdout.split()
    assert int(before) >= 4 << 20 and tuned == "True" and int(after) == 0
