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
