"""torch_runner's GPU memory arithmetic, checked on any machine with stand-in figures."""

from __future__ import annotations

import pytest
import torch

from derain_cli import torch_runner


@pytest.mark.parametrize(("fraction", "expected"), [
    (None, 30 + (12 - 8)),   # driver's free + PyTorch's cached unused blocks
    (1.0, 30 + (12 - 8)),
    (0.25, 25 - 8),          # a quarter of 100, less what PyTorch holds in use
    (0.05, 0),               # past its share already
])
def test_gpu_free_bytes_counts_cached_blocks_and_the_memory_fraction(monkeypatch, fraction,
                                                                     expected):
    """mem_get_info alone counted PyTorch's cached free blocks as used (later tiles shrank
    in a long-lived process) and ignored set_per_process_memory_fraction (review)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (30, 100))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 12)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 8)
    if fraction is None:
        monkeypatch.delattr(torch.cuda, "get_per_process_memory_fraction", raising=False)
    else:
        monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction",
                            lambda device=None: fraction, raising=False)
    assert torch_runner.gpu_free_bytes(torch.device("cuda", 0)) == expected


def test_one_gpu_named_for_every_torchrun_process_is_refused():
    """--device cuda:1 under torchrun put every rank on one GPU, and NCCL failed at its
    first collective after the model had loaded (review)."""
    from derain_cli.errors import OptionError

    with pytest.raises(OptionError, match="puts all 2 processes on this machine on one GPU"):
        torch_runner.check_one_gpu_each("cuda:1", 2, 2)
    # one GPU for two processes (or one each through CUDA_VISIBLE_DEVICES): gloo, it runs
    for fine in (("cuda", 2, 2), ("cuda:1", 1, 2), ("auto", 4, 4), ("cpu", 2, 0),
                 ("cuda:0", 2, 1)):
        torch_runner.check_one_gpu_each(*fine)
