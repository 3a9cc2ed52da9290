import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tests run thousands of tiny ops; intra-op threads only add sync overhead (≈2× slower on 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
