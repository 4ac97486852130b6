"""The zarr feature store: crash-safe resume (SIGKILL), corrupted chunks, refusal of another model/projection."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import wherefrom as wf
from scale_helpers import small_problem, store_files
from wherefrom.scale import StoreMismatchError, ZarrFeatureStore

HELPER = os.path.join(os.path.dirname(__file__), "scale_helpers.py")
SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src")


def _run(cache: str, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(SRC), "WHEREFROM_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, HELPER, cache, str(delay)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_sigkill_at_a_random_chunk_then_resume_is_byte_identical(tmp_path):
    ref, crash = tmp_path / "ref", str(tmp_path / "crash")
    victim = _run(crash, 0.004)  # 16 rows x 4 ms per chunk: 20 chunks take >1 s
    store_dir = os.path.join(crash, "train_features_0.zarr")
    checksums = os.path.join(store_dir, "checksums")
    target = random.Random(time.time_ns()).randint(1, 15)
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        # count finished checksums only: a '.tmp' is a checksum still being written (the chunk is not done)
        if os.path.isdir(checksums) and sum(not f.endswith(".tmp") for f in os.listdir(checksums)) >= target:
            break
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = len([f for f in os.listdir(checksums) if not f.endswith(".tmp")])
    assert 0 < done < ZarrFeatureStore(store_dir).n_chunks  # it was really interrupted
    task, train, _ = small_problem()
    _fit(task, train, crash, batch_size=8)  # resume here (same threads and batches as the killed run)
    _fit(task, train, ref, batch_size=8)  # uninterrupted
    a = store_files(os.path.join(ref, "train_features_0.zarr"))
    b = {k: v for k, v in store_files(store_dir).items() if not k.endswith(".tmp")}
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


def _fit(task, train, cache, batch_size=8, **kw):
    ex = wf.Execution(batch_size=batch_size, block_size=16, store="zarr", cache_dir=str(cache))
    return wf.LoGra(task, execution=ex, **kw).fit(train)


@pytest.mark.parametrize("damage", ["truncate", "garble", "delete", "no-checksum"])
def test_corrupted_chunk_is_detected_and_rebuilt(tmp_path, damage):
    task, train, test = small_problem(n=100)
    att = _fit(task, train, tmp_path)
    store = att._stores[0]
    before = store_files(store.path)
    chunk = os.path.join(store.path, "c", "3", "0")
    if damage == "truncate":
        with open(chunk, "r+b") as fh:
            fh.truncate(os.path.getsize(chunk) // 2)
    elif damage == "garble":
        with open(chunk, "r+b") as fh:
            data = bytearray(fh.read())
            data[len(data) // 2] ^= 0xFF
            fh.seek(0)
            fh.write(bytes(data))
    elif damage == "delete":
        os.remove(chunk)
    else:
        os.remove(os.path.join(store.path, "checksums", "3"))
    assert ZarrFeatureStore(store.path).missing_chunks() == [3]
    again = _fit(task, train, tmp_path)
    assert store_files(store.path) == before
    assert torch.equal(again.score(test), att.score(test))


def test_store_for_another_model_or_projection_is_refused(tmp_path):
    task, train, _ = small_problem(n=64)
    _fit(task, train, tmp_path)
    other, _, _ = small_problem(n=64, seed=1)  # same architecture, other weights
    with pytest.raises(StoreMismatchError, match="checkpoint"):
        _fit(other, train, tmp_path)
    with pytest.raises(StoreMismatchError, match="source"):
        _fit(task, train, tmp_path, rank=2)  # another projection
    with pytest.raises(StoreMismatchError, match="dtype"):
        wf.LoGra(task, execution=wf.Execution(batch_size=8, block_size=16, store="zarr", cache_dir=str(tmp_path),
                                             dtype=torch.float16)).fit(train)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_stores_round_trip(tmp_path, dtype):
    task, train, test = small_problem(n=40)
    ex = wf.Execution(batch_size=8, store="zarr", cache_dir=str(tmp_path), dtype=dtype)
    att = wf.GradDot(task, execution=ex).fit(train)
    mem = wf.GradDot(task, execution=wf.Execution(batch_size=8, dtype=dtype)).fit(train)
    assert att._stores[0].read(0, 40).dtype == dtype
    assert torch.equal(att._stores[0].read(0, 40), mem._stores[0].matrix)
    att.save(tmp_path / "saved")
    assert torch.equal(wf.load(tmp_path / "saved", task).score(test), att.score(test))


def test_zarr_store_needs_cache_dir():
    task, train, _ = small_problem(n=16)
    with pytest.raises(wf.WherefromError, match="cache_dir"):
        wf.GradDot(task, execution=wf.Execution(store="zarr")).fit(train)
