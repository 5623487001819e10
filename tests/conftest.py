"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture()
def one_torch_thread():
    """Run a test with one torch intra-op thread.

    On a busy 2-core machine torch's default 2 intra-op threads spin against each other (up to 100x
    slower). Modules that train or run models in-process opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
