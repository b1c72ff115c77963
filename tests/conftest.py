"""Shared fixtures."""

import os

import pytest
import torch


@pytest.fixture
def float64():
    """Run a test with float64 as torch's default dtype, restoring the previous one after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(autouse=True)
def sokit_environment_unchanged():
    """No test may leave a SOKIT_* variable changed: nbval's notebook kernels inherit the
    environment, and a leaked SOKIT_PROFILE=full would make them train at thesis scale."""
    before = {k: v for k, v in os.environ.items() if k.startswith("SOKIT_")}
    yield
    after = {k: v for k, v in os.environ.items() if k.startswith("SOKIT_")}
    assert after == before, f"the test changed the environment: {before} -> {after}"


@pytest.fixture
def one_thread():
    """One CPU thread for tests of tiny models: OpenMP synchronisation dominates them on a
    shared CPU (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
