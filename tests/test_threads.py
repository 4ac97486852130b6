"""Thread policy: arithmetic, precedence, and a real spawned pool that stays within the cores."""

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest
import torch

from wherefrom.bench.groundtruth import _worker_init
from wherefrom.errors import WherefromError
from wherefrom.threads import available_cores, worker_threads


@pytest.mark.parametrize("cores,processes,expected", [(8, 2, 4), (8, 3, 2), (2, 2, 1), (2, 5, 1), (16, 4, 4)])
def test_default_shares_the_cores(cores, processes, expected):
    got = worker_threads(processes, cores=cores, requested=cores, env={})
    assert got == expected
    assert got * processes <= cores or got == 1


def test_lower_explicit_request_is_kept_and_single_process_untouched():
    assert worker_threads(2, cores=16, requested=3, env={}) == 3
    assert worker_threads(1, cores=4, requested=7, env={}) == 7


def test_precedence_env_over_omp_over_default():
    assert worker_threads(4, cores=16, requested=16, env={"OMP_NUM_THREADS": "3"}) == 3
    env = {"OMP_NUM_THREADS": "3", "WHEREFROM_THREADS": "5"}
    assert worker_threads(4, cores=16, requested=16, env=env) == 5


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_bad_env_value_names_the_variable(bad):
    with pytest.raises(WherefromError, match="WHEREFROM_THREADS"):
        worker_threads(2, cores=4, env={"WHEREFROM_THREADS": bad})
    with pytest.raises(WherefromError, match="processes"):
        worker_threads(0, cores=4, env={})


def _report_threads(_: int) -> tuple[int, int]:
    return os.getpid(), torch.get_num_threads()


def test_spawned_pool_workers_do_not_oversubscribe(monkeypatch):
    monkeypatch.delenv("WHEREFROM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    processes = 2
    threads = worker_threads(processes)
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        reports = dict(pool.map(_report_threads, range(8)))
    assert all(t == threads for t in reports.values())
    assert processes * threads <= max(available_cores(), processes)
    assert processes * threads <= max(os.cpu_count() or 1, processes)
