"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hubserver import FakeHub


@pytest.fixture
def hub_server() -> Iterator[FakeHub]:
    """A fake Hugging Face Hub on 127.0.0.1 (see tests/hubserver.py); stopped at teardown.

    ``hub_server.url`` is the endpoint, ``hub_server.add(repo_id, revision, filename, data)``
    publishes a file, ``hub_server.requests`` logs what the client asked for.
    """
    with FakeHub() as hub:
        yield hub


@pytest.fixture(scope="session", autouse=True)
def _session_onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The default backend exports ONNX graphs on CPUs: keep them out of the user's cache."""
    path = tmp_path_factory.mktemp("derain-cache-session")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERAIN_CACHE", str(path))
        # The tests of the int8 CPU path must take it on any CPU, without timing it against
        # bf16 first (derain_cli.engine_choice; tests/test_engine_choice.py unsets this).
        mp.setenv("DERAIN_CPU_ENGINE", "int8")
        # Likewise fp32 on a CPU takes ONNX Runtime without timing it against PyTorch
        # (engine_choice.fp32_backend; its tests unset this).
        mp.setenv("DERAIN_CPU_FP32", "onnx")
        yield path


@pytest.fixture(autouse=True)
def _threads_restored() -> Iterator[None]:
    """Each test leaves PyTorch's thread count as it found it: ``Derainer(threads=1)`` sets it
    for the whole process (documented), and one test's benchmark call with ``--threads 1``
    ran every later test module on one of the two cores (test_tiling's 1024 px checks took
    twice as long, the suite 6:40 instead of 5:05)."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test: tiny inputs gain nothing from more, and on a busy
    machine spinning OpenMP threads make them 10x slower. Use with ``usefixtures``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def private_onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh ``DERAIN_CACHE`` for one test module (exported graphs never leak between
    modules or into the user's cache)."""
    path = tmp_path_factory.mktemp("derain-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERAIN_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight, tiny Semi-DRDNet saved as safetensors: fast inference without any
    trained or downloaded weights (pass it with ``--weights``)."""
    import torch

    from derain_cli.models import SemiDRDNet, SemiDRDNetConfig
    from derain_cli.weights import save_weights

    torch.manual_seed(0)
    m = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1, se_reduction=4))
    path = tmp_path_factory.mktemp("tiny-weights") / "tiny.safetensors"
    save_weights(m, path, name="tiny", arch="semi-drdnet", config=m.cfg)
    return path


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_xdist_worker() -> None:
    """Under ``pytest -n N`` (README's test command: two processes) each worker runs
    PyTorch on one thread: two workers of two threads each on a 2-core machine spin
    OpenMP threads against each other (see ``one_thread``). Subprocesses a test starts
    keep derain's own default."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
