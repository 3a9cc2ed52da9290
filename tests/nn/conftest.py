import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_thread(single_thread):
    """Every module here runs thousands of tiny ops: one intra-op thread (tests/conftest.py's single_thread)."""
    yield
