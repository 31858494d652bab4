"""Small helpers shared by several test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def smooth_photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An HxWx3 uint8 'photo' of smooth random colour: compresses well, has no flat areas."""
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    img = (img - img.min()) / (img.max() - img.min() + 1e-6)
    return (img * 255).astype(np.uint8)


def oversized_weights(path, state) -> None:
    """A weights file holding ``state`` whose metadata asks for a far larger Semi-DRDNet
    (width 64, 20 + 20 blocks): what a loader must refuse before building it."""
    import json

    from safetensors.torch import save_file

    from derain_cli.weights import FORMAT

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={
        "format": FORMAT, "name": "x", "arch": "semi-drdnet",
        "config": json.dumps({"width": 64, "rain_blocks": 20, "detail_blocks": 20})})


def record_build_devices(monkeypatch, module) -> list[str]:
    """The default device of every ``module.build_architecture`` call from now on ('meta'
    for a shape check that allocates nothing)."""
    import torch

    seen: list[str] = []
    real = module.build_architecture

    def recording(arch, config):
        seen.append(torch.get_default_device().type)
        return real(arch, config)

    monkeypatch.setattr(module, "build_architecture", recording)
    return seen


def interrupted_at_call(real, n: int):
    """``real`` as it is, but a Ctrl-C (KeyboardInterrupt) at its ``n``-th call: where a
    test stops a run part way (``.calls`` counts the calls)."""
    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        if wrapper.calls == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    wrapper.calls = 0
    return wrapper


def tricky_paths(root: Path) -> list[Path]:
    """Files, links to files and folders, a loop, a link to nowhere, missing folders, `..`
    and relative spellings: what a folder run's planning meets."""
    (root / "real" / "sub").mkdir(parents=True)
    (root / "real" / "a.png").write_bytes(b"x")
    (root / "real" / "sub" / "b.png").write_bytes(b"x")
    (root / "flink").symlink_to(root / "real")  # a linked folder
    (root / "real" / "alink.png").symlink_to("a.png")  # a linked file
    (root / "real" / "gone.png").symlink_to("nowhere.png")
    (root / "loop").symlink_to("loop")
    names = ["real/a.png", "real/alink.png", "real/gone.png", "real/sub/b.png",
             "flink/a.png", "flink/sub/b.png", "flink/alink.png", "real/sub/../a.png",
             "flink/sub/../a.png", "loop/x.png", "loop", "missing/deeper/c.png",
             "flink/missing/c.png", "real/Sub/B.png", "real/caf\u00e9.png",
             "real/cafe\u0301.png", "real/new.png", "real", "real/sub/..", "flink/..",
             "missing/../flink", "real/a.png/../../flink/a.png"]
    return [root / n for n in names] + [Path(n) for n in names]
