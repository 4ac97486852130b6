import os

os.environ.setdefault("WHEREFROM_PROGRESS", "0")

import pytest
import torch

import wherefrom as wf

wf.set_progress(False)
torch.set_num_threads(1)  # tests are small: avoid thread-sync overhead on a shared 2-core machine


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
