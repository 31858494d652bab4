"""The GPU path, on a real GPU: precisions against the CPU, tiles (several per pass), real
out-of-memory, folders, training steps.

Skipped without CUDA (CI has none). ``DERAIN_TEST_DEVICE=cpu`` runs the same checks on the
CPU in bf16 (where it has bf16 instructions), to try the tests themselves on a machine
without a GPU; the out-of-memory test needs CUDA and stays skipped then.
``recipes/gpu-session.sh`` runs this file first on a lent GPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import smooth_photo
from PIL import Image

from derain_cli import tiling
from derain_cli.batch import BatchOptions, collect_inputs, resolve_io_workers, run_batch
from derain_cli.bench import psnr
from derain_cli.enhancer import Derainer, TorchRunner, default_overlap
from derain_cli.models import MODELS, build_model
from derain_cli.torch_runner import cpu_supports_bf16
from derain_cli.weights import load_manifest, load_pretrained


def _device() -> str:
    forced = os.environ.get("DERAIN_TEST_DEVICE")
    if forced:
        return forced
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (set DERAIN_TEST_DEVICE=cpu to try these on the CPU)")
    return "cuda"


@pytest.fixture(scope="module")
def device() -> str:
    return _device()


def _precisions(device: str) -> list[str]:
    if device.startswith("cuda"):
        return ["fp32", "fp16", "bf16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    return ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]


def _rainy(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = smooth_photo(rng, h, w).astype(np.float32) / 255
    streaks = (rng.random((h, w)) > 0.995).astype(np.float32)
    for _ in range(10):
        streaks = np.maximum(streaks, np.roll(streaks, 1, axis=0))
    return np.clip(img + 0.4 * streaks[..., None], 0, 1).astype(np.float32)


def _net(name: str) -> torch.nn.Module:
    if name in load_manifest():
        return load_pretrained(name)
    torch.manual_seed(0)
    return build_model(name).eval()


@pytest.mark.parametrize("name", ["semi-drdnet-tiny", "semi-drdnet-lite", "rdmc-lite"])
def test_device_precisions_agree_with_the_cpu(device, name):
    """Every precision the device offers, against the exact CPU fp32 network (TF32
    convolutions count as fp32 on CUDA, hence 45 dB there)."""
    img = _rainy(256, 320)
    ref = Derainer(model=name, device="cpu", precision="fp32", backend="torch",
                   tile=0).derain_array(img)
    for precision in _precisions(device):
        d = Derainer(model=name, device=device, precision=precision, backend="torch", tile=0)
        out = d.derain_array(img)
        floor = 45 if precision == "fp32" else 38
        assert psnr(out, ref) >= floor, (name, precision, psnr(out, ref))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tiled_matches_untiled_on_the_device(device, name):
    """Issue 3's criterion on the device: 1024 px, 256 px tiles (RDMC: its 512 px
    minimum), the product's overlap, >= 45 dB against one untiled pass."""
    net = _net(name)
    precision = "fp16" if device.startswith("cuda") else "fp32"
    runner = TorchRunner(net, torch.device(device), precision)
    img = _rainy(1024, 1024).transpose(2, 0, 1).copy()
    full = np.clip(tiling.run_tiled(img, runner, 0, 0), 0, 1)
    tile = max(256, getattr(net, "min_tile", 0))
    tiled = np.clip(tiling.run_tiled(img, runner, tile, default_overlap(net)), 0, 1)
    assert psnr(tiled, full) >= 45


def test_reduced_precisions_in_batches_of_tiles_agree_with_the_cpu(device):
    """bf16 and fp16 were checked against the CPU on whole images only, and tiles in fp16
    one a pass (a review): here several 256 px tiles a pass of 8-bit samples, in every
    precision the device offers, against the CPU's fp32 whole-image result."""
    img = (_rainy(768, 1024) * 255).round().astype(np.uint8)
    ref = Derainer(model="semi-drdnet-tiny", device="cpu", precision="fp32", backend="torch",
                   tile=0).derain_array(img)
    for precision in _precisions(device):
        d = Derainer(model="semi-drdnet-tiny", device=device, precision=precision,
                     backend="torch", tile=256, tile_batch=4)
        got = psnr(d.derain_array(img), ref)
        assert got >= (45 if precision == "fp32" else 36), (precision, got)


def test_several_tiles_per_pass_on_the_device(device):
    """Stacked tiles, queued without waiting (pinned host memory, asynchronous copies on
    CUDA), give what one tile at a time gives; on a GPU the automatic batch holds several
    256 px tiles of the default model."""
    img = _rainy(1024, 1024)
    kw = dict(model="semi-drdnet-tiny", device=device, precision="fp32", backend="torch",
              tile=256)
    one = Derainer(**kw, tile_batch=1).derain_array(img)
    auto = Derainer(**kw)
    if device.startswith("cuda"):
        assert auto.tile_batch > 1
        handle = auto.runner.submit(np.zeros((2, 3, 64, 64), np.float32), None)
        assert handle[0].is_pinned()  # the result comes back into pinned memory
        assert auto.runner.collect(handle).shape == (2, 3, 64, 64)
    many = auto if auto.tile_batch > 1 else Derainer(**kw, tile_batch=4)
    assert psnr(many.derain_array(img), one) >= 50


def test_8bit_photos_go_up_as_samples_with_the_float_paths_result(device):
    """A decoded (read-only) 8-bit photo goes to the device as uint8 samples, scaled there:
    whole (``forward``) and in batches of tiles (``submit``: pinned, asynchronous), without
    a warning, and with what the host's float32 scaling gives."""
    import warnings

    img = (_rainy(512, 640) * 255).round().astype(np.uint8)
    img.flags.writeable = False  # as np.asarray of a PIL image comes
    for tile, batch in ((0, 1), (256, 3)):
        d = Derainer(model="semi-drdnet-tiny", device=device, precision="fp32",
                     backend="torch", tile=tile, tile_batch=batch)
        sent: list[tuple[str, int]] = []
        d.runner._in = _noting_dtypes(d.runner._in, sent)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            samples = d.derain_array(img)
        tiles = {t.replace("torch.", "") for t, c in sent if c != 1}  # not the (1, 1) masks
        assert tiles == {"uint8"}, sent
        d.runner.takes_samples = False
        assert psnr(samples, d.derain_array(img)) >= 60, (tile, batch)


def test_ensemble_on_the_device_is_the_mean_of_the_mirrored_passes(device):
    """``--ensemble``'s mirrored copies are strided views: on the device (8-bit samples,
    several tiles per pass, queued without waiting) the mean of the passes is what each
    copy derained alone, put back and averaged, gives."""
    from derain_cli import ensemble

    img = (_rainy(384, 520, seed=5) * 255).round().astype(np.uint8)
    kw = dict(model="semi-drdnet-tiny", device=device, precision="fp32", backend="torch",
              tile=256, tile_batch=3)
    one = Derainer(**kw)
    want = np.mean([ensemble.undo(one.derain_array(np.ascontiguousarray(ensemble.view(img, k))),
                                  k) for k in range(4)], axis=0)
    got = Derainer(**kw, ensemble=4).derain_array(img)
    assert psnr(got, want) >= 60
    assert psnr(got, one.derain_array(img)) < psnr(got, want)  # not one pass


def test_rain_angle_on_the_device_derains_the_turned_canvas(device):
    """``--rain-angle``: on the device (8-bit photo, several tiles per pass), the result is
    the photo minus the rain found on the turned canvas, turned back: what the same turn
    around a plain float run gives."""
    from derain_cli import slant

    img = (_rainy(300, 410, seed=6) * 255).round().astype(np.uint8)
    kw = dict(model="semi-drdnet-tiny", device=device, precision="fp32", backend="torch",
              tile=256, tile_batch=3)
    turn = slant.Turn.make(300, 410, -50)
    canvas = turn.forward(img)
    rain = slant.Turn.rain(canvas, Derainer(**kw).derain_array(canvas))
    want = turn.take_off(img, turn.back(rain))
    got = Derainer(**kw, rain_angle=-50).derain_array(img)
    assert psnr(got, want) >= 60


def _noting_dtypes(fn, sent: list[tuple[str, int]]):
    """``fn`` noting the dtype and second axis of each array or tensor it gets in ``sent``."""
    def noted(x):
        sent.append((str(x.dtype), x.shape[1]))
        return fn(x)
    return noted


def _random_weights(name: str, folder: Path) -> Path:
    """A paper-size model has no published weights yet: a random one, saved as a file."""
    from derain_cli.weights import save_weights

    torch.manual_seed(0)
    net = build_model(name)
    path = folder / f"{name}-random.safetensors"
    save_weights(net, path, name=f"{name}-random", arch=MODELS[name].arch, config=net.cfg)
    return path


def test_real_out_of_memory_halves_the_tile(device, caplog, tmp_path: Path):
    """A GPU capped to 1.5 GB: an untiled 2048 px paper-size Semi-DRDNet does not fit, the
    enhancer halves the tile until it does, and the photo comes out whole."""
    if not device.startswith("cuda"):
        pytest.skip("needs a CUDA device to run out of memory for real")
    weights = _random_weights("semi-drdnet", tmp_path)
    dev = torch.device(device)
    if dev.index is None:  # set_per_process_memory_fraction wants an index
        dev = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(dev).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.5e9 / total, dev)
    try:
        img = _rainy(2048, 2048)
        with caplog.at_level(logging.WARNING):
            d = Derainer(weights=weights, device=device, precision="fp16", tile=4096)
            out = d.derain_array(img)
        assert "out of memory" in caplog.text and d.tile < 2048
        assert out.shape == img.shape and np.isfinite(out).all()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        torch.cuda.empty_cache()


def test_folder_on_the_device(device, tmp_path: Path):
    """A folder job on the device: I/O threads on a GPU, every photo written, results
    close to the CPU's."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.fromarray((_rainy(300, 400, seed=i) * 255).round().astype(np.uint8)).save(
            src / f"p{i}.png")
    items = collect_inputs([str(src)])
    d = Derainer(model="semi-drdnet-tiny", device=device, backend="torch")
    if device.startswith("cuda"):
        assert resolve_io_workers(BatchOptions(), d) == 2
    s = run_batch(items, d, BatchOptions(output=tmp_path / "dev"))
    cpu = Derainer(model="semi-drdnet-tiny", device="cpu", precision="fp32", backend="torch")
    s_cpu = run_batch(items, cpu, BatchOptions(output=tmp_path / "cpu", io_workers=0))
    assert s.processed == s_cpu.processed == 4
    for i in range(4):
        a = np.asarray(Image.open(tmp_path / "dev" / f"p{i}.png"), np.float32) / 255
        b = np.asarray(Image.open(tmp_path / "cpu" / f"p{i}.png"), np.float32) / 255
        assert psnr(a, b) >= 38


def test_training_steps_on_the_device(device, tmp_path: Path):
    """A few steps of ``derain train`` with autocast on the device, contrastive terms on:
    the loss is finite and the exported weights load and run."""
    from derain_cli import train as T
    from derain_cli.weights import model_from_file

    rng = np.random.default_rng(0)
    clean = tmp_path / "clean"
    clean.mkdir()
    for i in range(6):
        Image.fromarray(smooth_photo(rng, 96, 96)).save(clean / f"c{i}.png")
    cfg = T.TrainConfig(
        model="semi-drdnet-lite", synthetic=[str(clean)], unlabeled=[str(clean)],
        out=str(tmp_path / "run"), steps=6, batch=4, patch=64, workers=0, quiet=True,
        ckpt_every=3, log_every=1, warmup=2, lr=1e-4, contrast_features="self",
        device=device, amp="auto",
    )
    T.train(cfg)
    log = [line for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
           if '"kind": "train"' in line]
    assert log and all("NaN" not in line and "Infinity" not in line for line in log)
    net = model_from_file(tmp_path / "run" / "model.safetensors")
    with torch.inference_mode():
        y = net(torch.rand(1, 3, 64, 64))
    assert torch.isfinite(y[0] if isinstance(y, tuple) else y).all()
