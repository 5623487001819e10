"""Which device a training process uses: under torchrun, ``cuda`` is this process's own GPU."""

import pytest
import torch

from graft.training import distributed as D


@pytest.mark.parametrize(("device", "local_rank", "cuda", "want"), [
    (None, 3, True, "cuda:3"),
    (None, 3, False, "cpu"),
    ("cuda", 3, True, "cuda:3"),  # under torchrun, every rank of a node on its own GPU (not all on GPU 0)
    ("cuda", 0, True, "cuda:0"),
    ("cuda:1", 3, True, "cuda:1"),  # an explicit index is kept
    ("cpu", 3, True, "cpu"),
])
def test_device_resolution_follows_local_rank(device, local_rank, cuda, want):
    assert D.resolve_device(device, local_rank, cuda) == torch.device(want)


def test_cuda_without_a_gpu_fails_with_the_setting_named():
    with pytest.raises(ValueError, match="train.device is 'cuda' but no CUDA device"):
        D.resolve_device("cuda", 0, cuda_available=False)
