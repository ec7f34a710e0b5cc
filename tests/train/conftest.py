"""Loop tests run tiny models: one torch thread is as fast here, and immune to the ~10x slow-down of oneDNN's
OpenMP barriers when other processes compete for the 2 cores (see video3d_fast/train/demo.py)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
