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


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """The reduced demo (`graft demo --quick`, seed 0), run once per session: ``(out_dir, report_doc)``.

    Several modules read its outputs (dataset, held-out set, checkpoints, export), and it takes
    ~100 s on 2 cores, so every user shares this one run. Tests must not modify its files.
    """
    from graft.demo.run import run_demo

    out = tmp_path_factory.mktemp("quick_demo")
    doc = run_demo(out, quick=True, seed=0)
    return out, doc
