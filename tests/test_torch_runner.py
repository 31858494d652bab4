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


def test_device_names_are_taken_in_any_case_and_with_spaces(monkeypatch):
    """`Derainer(device="CUDA")` or " cpu" from a config file were refused as unknown
    devices in Python while the CLI took them (a mutation audit)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert torch_runner.resolve_device("CPU") == torch.device("cpu")
    assert torch_runner.resolve_device(" cpu ") == torch.device("cpu")
    assert torch_runner.resolve_device("CUDA") == torch.device("cuda")
    assert torch_runner.resolve_device(" Cuda:0") == torch.device("cuda", 0)
    assert torch_runner.resolve_device(" Auto ") == torch.device("cuda")


def test_a_cuda_index_past_the_last_gpu_is_refused_up_front(monkeypatch):
    """With 2 GPUs, --device cuda:2 must be refused when the options are checked, saying
    how many there are, not fail later inside PyTorch (a mutation audit)."""
    from derain_cli.errors import OptionError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert torch_runner.resolve_device("cuda:1") == torch.device("cuda", 1)
    for name in ("cuda:2", "cuda:3"):
        with pytest.raises(OptionError, match="only 2 CUDA device"):
            torch_runner.resolve_device(name)


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_a_cpu_follows_its_bf16_instructions(monkeypatch, bf16, expected):
    """A CPU with bf16 instructions ran fp32 under --precision auto, 1.8x slower
    (a mutation audit); one without them must stay on fp32."""
    monkeypatch.setattr(torch_runner, "cpu_supports_bf16", lambda: bf16)
    assert torch_runner.resolve_precision("auto", torch.device("cpu")) == expected


class _GpuRunner:
    """Stands in for a TorchRunner on a GPU: what _auto_tile asks of it."""

    device = torch.device("cuda", 0)

    def __init__(self, per_px: float) -> None:
        self.per_px = per_px

    def bytes_per_pixel(self) -> float:
        return self.per_px


@pytest.mark.parametrize(("free_mib", "expected"), [
    (2 * 1000, 1024),   # half of it holds a 1024 px tile at 1000 bytes a pixel
    (2 * 250, 512),
    (1, 64),            # never below the smallest tile
    (10**6, 4096),      # nor above 4096 px
])
def test_auto_tile_uses_half_the_free_gpu_memory(monkeypatch, free_mib, expected):
    """The automatic GPU tile is sized to half the free memory, leaving room for cuDNN's
    workspaces and the blending; sized to all of it, the first tile would claim every
    free byte (a mutation audit found nothing checked the half)."""
    monkeypatch.setattr(torch_runner, "gpu_free_bytes", lambda device: free_mib * 2**20)
    assert torch_runner._auto_tile(_GpuRunner(1000.0)) == expected


def _cpu_runner(monkeypatch, model: torch.nn.Module) -> torch_runner.TorchRunner:
    # not process-wide malloc settings for the rest of the test run (cpu_memory's tests)
    monkeypatch.setattr(torch_runner, "keep_freed_memory", lambda: False)
    return torch_runner.TorchRunner(model, torch.device("cpu"), "fp32")


def test_8_bit_tiles_are_scaled_exactly_as_on_the_host(monkeypatch):
    """8-bit samples scaled on the device must equal the tiler's host arithmetic
    (x * float32(1/255)) bit for bit: dividing by 255 differs in the last bit for about
    half of the 256 values, so the same photo gave different output on the two paths
    (a mutation audit)."""
    import numpy as np

    runner = _cpu_runner(monkeypatch, torch.nn.Conv2d(3, 3, 1))
    samples = np.arange(256 * 3, dtype=np.uint16).astype(np.uint8).reshape(1, 16, 16, 3)
    got = runner._in(samples).numpy()
    host = samples.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
    assert got.dtype == np.float32 and got.shape == (1, 3, 16, 16)
    assert np.array_equal(got, host)


class _OutOfMemory(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_gpu_cache_is_emptied_before_the_tile_shrinks(monkeypatch):
    """A tile that ran out of GPU memory must hand PyTorch's cached blocks back before the
    tiler retries with a smaller tile (a mutation audit found nothing checked it).
    Checked on any machine: the runner is told its device is a GPU."""
    import numpy as np

    from derain_cli import tiling

    runner = _cpu_runner(monkeypatch, _OutOfMemory())
    runner.device = torch.device("cuda", 0)
    monkeypatch.setattr(runner, "_in", lambda x: torch.from_numpy(x))
    monkeypatch.setattr(runner, "_autocast", lambda: torch.autocast("cpu", enabled=False))
    emptied: list[int] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    with pytest.raises(tiling.TileOutOfMemory, match="out of memory"):
        runner.forward(np.zeros((1, 3, 8, 8), np.float32), None)
    assert emptied == [1]


def test_a_damaged_int8_graph_asked_for_by_name_says_to_reinstall():
    """--precision int8 with an altered bundled graph is the installation's fault: a
    WeightsError (exit 1) saying reinstalling restores it, not a usage error (exit 2);
    where a model has no int8 graph at all it stays a usage error (a mutation audit)."""
    from derain_cli.errors import OptionError
    from derain_cli.manifest import WeightRecord, load_manifest
    from derain_cli.weights import WeightsError

    rec = load_manifest()["semi-drdnet-fast"]
    altered = WeightRecord.from_dict(rec.to_dict())
    altered.extra["int8"] = dict(rec.extra["int8"], sha256="0" * 64)
    cpu = torch.device("cpu")
    with pytest.raises(WeightsError, match="reinstalling derain restores it"):
        torch_runner._int8_graph(altered, None, cpu, "int8", "auto")
    none = load_manifest()["rdmc-lite"]
    with pytest.raises(OptionError, match="has no int8 graph; use --precision auto or fp32"):
        torch_runner._int8_graph(none, None, cpu, "int8", "auto")
