import os

os.environ.setdefault("WHEREFROM_PROGRESS", "0")

import pytest
import torch

import wherefrom as wf

wf.set_progress(False)
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
