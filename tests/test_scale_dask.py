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
