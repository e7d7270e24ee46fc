"""Shared test set-up.

PyTorch's OpenMP worker threads spin while idle by default, which on a small shared CPU slows the
many tiny operations of these tests down many times over; let them sleep (this must happen before
torch is imported, which is why it is here).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small tensor tests (restored afterwards)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
