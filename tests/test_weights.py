"""Weights format: save/load round trip, checksum and shape errors, safe .pt loading."""

import json
import os

import numpy as np
import pytest
import torch

from derain_cli import weights
from derain_cli.models import SemiDRDNet, SemiDRDNetConfig, build_model, get_spec
from derain_cli.weights import WeightRecord, WeightsError


def _tiny():
    torch.manual_seed(1)
    return SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=2, detail_blocks=1, se_reduction=4))


def test_roundtrip_exact_through_manifest(tmp_path):
    net = _tiny()
    rec = weights.save_weights(net, tmp_path / "t.safetensors", name="tiny", arch="semi-drdnet",
                               config=net.cfg, dtype=torch.float32)
    records = {rec.name: rec}
    weights.write_manifest(records, tmp_path / "manifest.json")
    back = weights.load_manifest(tmp_path / "manifest.json")["tiny"]
    assert back.sha256 == weights.sha256_file(tmp_path / "t.safetensors")
    assert back.size == (tmp_path / "t.safetensors").stat().st_size
    fresh = weights.load_into(SemiDRDNet(net.cfg), tmp_path / back.file, back.sha256)
    for (k, a), b in zip(net.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # The file alone says which architecture it is.
    again = weights.model_from_file(tmp_path / "t.safetensors")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), net.eval()(x))


def test_fp16_storage_halves_size(tmp_path):
    net = build_model("semi-drdnet-lite")
    r32 = weights.save_weights(net, tmp_path / "a.safetensors", name="a", arch="semi-drdnet",
                               config=get_spec("semi-drdnet-lite").config, dtype=torch.float32)
    r16 = weights.save_weights(net, tmp_path / "b.safetensors", name="b", arch="semi-drdnet",
                               config=get_spec("semi-drdnet-lite").config)
    assert r16.dtype == "float16" and r16.size < 0.6 * r32.size


def _saved_then_damaged(p):
    """Save a tiny network's weights to ``p`` and flip one byte: the record's sha256 no
    longer matches the file."""
    net = _tiny()
    rec = weights.save_weights(net, p, name="t", arch="semi-drdnet", config=net.cfg)
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    return rec


def test_corrupted_file_is_refused(tmp_path):
    p = tmp_path / "t.safetensors"
    rec = _saved_then_damaged(p)
    with pytest.raises(WeightsError, match="sha256"):
        weights.load_into(_tiny(), p, rec.sha256)
    p.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        weights.load_into(_tiny(), p)
    from PIL import Image  # a photo passed as weights said "header too large" (audit)

    for fmt, kind in (("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WebP")):
        Image.new("RGB", (8, 8)).save(p, format=fmt)
        with pytest.raises(WeightsError, match=f"a {kind} image, not a weights file"):
            weights.read_state(p)


def test_shape_mismatch_names_first_tensor(tmp_path):
    net = _tiny()
    p = tmp_path / "t.safetensors"
    weights.save_weights(net, p, name="t", arch="semi-drdnet", config=net.cfg)
    wider = SemiDRDNet(SemiDRDNetConfig(width=16, rain_blocks=2, detail_blocks=1, se_reduction=4))
    with pytest.raises(WeightsError, match=r"rain_net\.head\.0\.weight.*shape \(8, 3, 3, 3\)"):
        weights.load_into(wider, p)
    deeper = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=3, detail_blocks=1, se_reduction=4))
    with pytest.raises(WeightsError, match=r"rain_net\.blocks\.2\..* is missing"):
        weights.load_into(deeper, p)


def test_a_file_that_does_not_fit_the_named_model_says_what_it_holds(tmp_path):
    net = _tiny()
    p = tmp_path / "t.safetensors"
    weights.save_weights(net, p, name="t", arch="semi-drdnet", config=net.cfg)
    with pytest.raises(WeightsError, match=r"holds semi-drdnet weights .*fit --model rdmc-lite"
                                           r".*leave out --model"):
        weights.model_from_file(p, "rdmc-lite")
    weights.model_from_file(p)  # its own architecture still loads


def test_pt_files_load_only_plain_tensors(tmp_path):
    net = _tiny()
    good = tmp_path / "good.pt"
    torch.save({"model": net.state_dict(), "step": 3}, good)
    weights.load_into(_tiny(), good)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "bad.pt"
    torch.save({"model": Evil()}, bad)
    with pytest.raises(WeightsError, match="Python objects besides tensors") as info:
        weights.load_into(_tiny(), bad)
    assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)

    class Hostile:  # a blocked module's global: torch words it "unsupported GLOBAL ...",
        def __reduce__(self):  # and it was "a damaged file" (an audit)
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": Hostile()}, bad)
    with pytest.raises(WeightsError, match="Python objects besides tensors"):
        weights.load_into(_tiny(), bad)
    assert not (tmp_path / "pwned").exists()
    png = tmp_path / "photo.pt"  # a photo renamed .pt
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        weights.load_into(_tiny(), png)


def test_a_file_whose_config_does_not_fit_its_tensors_allocates_nothing(tmp_path,
                                                                       monkeypatch):
    """Security audit: the architecture a file's metadata asks for was built (allocated)
    before its tensors were compared, so a 220-byte file asking for width 2048 x 400 blocks
    took the machine's memory. Now the shapes are compared on the meta device first."""
    from helpers import oversized_weights, record_build_devices

    net = _tiny()
    p = tmp_path / "evil.safetensors"
    oversized_weights(p, net.state_dict())
    built_on = record_build_devices(monkeypatch, weights)
    with pytest.raises(WeightsError, match="shape|missing|unexpected"):
        weights.model_from_file(p)
    assert built_on == ["meta"]
    good = tmp_path / "good.safetensors"
    weights.save_weights(net, good, name="t", arch="semi-drdnet", config=net.cfg)
    assert isinstance(weights.model_from_file(good), SemiDRDNet)
    assert built_on == ["meta", "meta", "cpu"]


@pytest.mark.parametrize(("change", "said"), [
    ({"arch": None}, "damaged (no architecture)"),
    ({"config": None}, "damaged (no config)"),
    ({"config": "[1, 2]"}, "config is not a JSON object: '[1, 2]'"),
    ({"config": "{not json"}, "config is not a JSON object"),
    ({"arch": "unet"}, "names no architecture derain can build (unet"),
    ({"config": '{"width": "wide"}'}, "names no architecture derain can build"),
    # hostile headers (an audit): 100000 blocks built modules on the meta device to 4 GB;
    # width 1e9 and negative sizes came out as bare RuntimeErrors; deep nesting as a
    # RecursionError
    ({"config": '{"width": 8, "rain_blocks": 50000, "detail_blocks": 1}'},
     "asks for a network no derain weights file holds (rain_blocks=50000 in a file of"),
    ({"config": '{"width": 1000000000}'}, "(width=1000000000)"),
    ({"config": '{"width": -5}'}, "(width=-5)"),
    ({"config": '{"dilations": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, '
                '18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, '
                '37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, '
                '56, 57, 58, 59, 60, 61, 62, 63, 64, 65]}'}, "(dilations lists 65 values)"),
    ({"config": "[" * 100000}, "config is not a JSON object"),
    # more blocks than the file has tensors, far below the absolute cap (a mutation audit)
    ({"config": '{"width": 8, "rain_blocks": 500, "detail_blocks": 1}'},
     "(rain_blocks=500 in a file of"),
    ({"config": '{"width": 8, "rain_blocks": 1, "detail_blocks": 1, "se_reduction": 0}'},
     "names no architecture derain can build"),  # a ZeroDivisionError, bare (a review)
])
def test_a_damaged_derain_header_names_the_file(tmp_path, change, said):
    """A file whose derain header lacked "arch" said "error: KeyError: arch"; a config of
    '[1,2]' an AttributeError, a broken one the JSON parser's words, exit 2 (an audit)."""
    from safetensors.torch import save_file

    net = _tiny()
    good = tmp_path / "good.safetensors"
    weights.save_weights(net, good, name="t", arch="semi-drdnet", config=net.cfg)
    state, meta = weights.read_state(good)
    meta = {k: v for k, v in {**meta, **change}.items() if v is not None}
    bad = tmp_path / "bad.safetensors"
    save_file(state, bad, metadata=meta)
    with pytest.raises(WeightsError, match="bad.safetensors: its derain header") as info:
        weights.model_from_file(bad)
    assert said in str(info.value)


def test_empty_tensors_buy_no_blocks_and_a_registry_config_is_not_the_files(tmp_path):
    """20000 empty tensors (1 MB) let a header ask for 20000 blocks, built for half a
    minute (a review); a config that -m gave (derain's own) was blamed on the file."""
    from safetensors.torch import save_file

    state = {f"t{i}": torch.zeros(0) for i in range(2000)}
    meta = {"format": weights.FORMAT, "name": "x", "arch": "semi-drdnet",
            "config": '{"width": 8, "rain_blocks": 2000, "detail_blocks": 1}'}
    save_file(state, tmp_path / "empty.safetensors", metadata=meta)
    with pytest.raises(WeightsError, match=r"rain_blocks=2000 in a file of 0 tensors"):
        weights.model_from_file(tmp_path / "empty.safetensors")
    small = {"a": torch.zeros(3)}
    with pytest.raises(WeightsError) as info:
        weights.build_fitting("semi-drdnet", {}, small, "other.pt", header=False)
    assert "derain header" not in str(info.value)


@pytest.mark.parametrize("text", ['{"version": 1,\n', '{"weights": [{"file": "x"}]}',
                                  '{"weights": 3}', "[]"])
def test_a_damaged_manifest_names_itself(tmp_path, text):
    """A truncated manifest.json said "error: JSONDecodeError: Expecting value: line 2
    column 1" without naming the file (an audit)."""
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(WeightsError, match=r"manifest.json: the weights manifest is damaged "
                                           r"\(.*\); reinstall derain"):
        weights.load_manifest(path)


def test_manifest_edges(tmp_path, monkeypatch):
    """What a mutation audit found unpinned: no manifest means no bundled weights (not a
    traceback); an empty repo, file or revision is no download source; the manifest is
    written atomically (a run killed mid-write left a truncated one, and every bundled
    model then failed as "damaged")."""
    import errno
    from pathlib import Path

    from derain_cli import manifest

    assert manifest.load_manifest(tmp_path / "none.json") == {}
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(WeightsError, match=r"folder\.json: the weights manifest cannot be "
                                           r"read \(Is a directory\); reinstall derain"):
        manifest.load_manifest(tmp_path / "folder.json")
    (tmp_path / "folder.json").rmdir()
    rec = WeightRecord(name="t", arch="semi-drdnet", config={}, file="t.safetensors",
                       sha256="0" * 64, size=1, dtype="float16",
                       hub={"repo_id": "a/b", "filename": "t.safetensors", "revision": "c"})
    assert rec.hub_source() == ("a/b", "t.safetensors", "c")
    for key in ("repo_id", "filename", "revision"):
        rec.hub = {"repo_id": "a/b", "filename": "t.safetensors", "revision": "c", key: ""}
        assert rec.hub_source() is None, key
    path = tmp_path / "manifest.json"
    manifest.write_manifest({"t": rec}, path)
    before = path.read_bytes()
    real = Path.write_text

    def half_then_full_disk(self, data, *a, **k):
        real(self, data[: len(data) // 2], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    rec.size = 2
    with pytest.raises(OSError):
        manifest.write_manifest({"t": rec}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [
        "manifest.json"]


def test_file_without_metadata_needs_model_name(tmp_path):
    from safetensors.torch import save_file

    net = build_model("semi-drdnet-lite")
    p = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, p)
    with pytest.raises(WeightsError, match="--model"):
        weights.model_from_file(p)
    assert isinstance(weights.model_from_file(p, "semi-drdnet-lite"), SemiDRDNet)


def test_bundled_manifest_is_consistent():
    """Every bundled entry's file exists with the recorded sha256 and size and loads."""
    records = weights.load_manifest()
    for rec in records.values():
        path = weights.bundled_dir() / rec.file
        if not path.exists():
            assert rec.hub, f"{rec.name}: neither bundled nor downloadable"
            continue
        assert weights.sha256_file(path) == rec.sha256
        assert path.stat().st_size == rec.size
        for key in ("license", "training_data", "metrics", "hub", "dtype"):
            assert getattr(rec, key) not in (None, ""), (rec.name, key)
        net = weights.load_pretrained(rec.name)
        assert sum(p.numel() for p in net.parameters()) > 0


def test_unknown_manifest_keys_survive(tmp_path):
    rec = WeightRecord.from_dict({"name": "x", "arch": "rdmc", "config": {}, "file": "x",
                                  "sha256": "0" * 64, "size": 1, "dtype": "float16",
                                  "recipe": "recipes/x.toml"})
    assert rec.to_dict()["recipe"] == "recipes/x.toml"
    weights.write_manifest({"x": rec}, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text())["weights"][0]["recipe"] == "recipes/x.toml"


def test_a_damaged_bundled_file_asks_for_a_reinstall(tmp_path, monkeypatch):
    p = tmp_path / "t.safetensors"
    rec = _saved_then_damaged(p)
    monkeypatch.setattr(weights, "load_manifest", lambda path=None: {"t": rec})
    monkeypatch.setattr(weights, "bundled_dir", lambda: tmp_path)
    with pytest.raises(WeightsError, match=r"sha256.*ships with derain: reinstall derain"):
        weights.load_pretrained("t")
    # resolve() itself checks, for the callers that load the path themselves (finetune)
    with pytest.raises(WeightsError, match=r"sha256.*ships with derain: reinstall derain"):
        weights.resolve("t")
    with pytest.raises(WeightsError, match=r"'rdmc' has no pretrained weights yet.*derain "
                                           r"train --model rdmc"):
        weights.load_pretrained("rdmc")
    # a pip install has no recipes/ folder: the message says where the recipe lives
    assert "recipes/full-models-gpu.sh in derain's source repository" in " ".join(
        weights.untrained_message("rdmc").split())


def test_load_pretrained_unknown_name_is_an_unknown_model():
    """Only a registered model gets the "no pretrained weights yet" advice."""
    from derain_cli.models import UnknownModelError

    with pytest.raises(UnknownModelError, match=r"unknown model 'nosuch'; choose one of: "):
        weights.load_pretrained("nosuch")


def test_a_manifest_entry_without_a_pinned_revision_has_no_download_source(tmp_path,
                                                                          monkeypatch):
    """resolve() raised KeyError: 'revision' while `derain models` called the entry remote
    (audit). A download needs repo, file and pinned revision; all three now agree on it."""
    from derain_cli.hub import WeightsUnavailable

    rec = WeightRecord(name="t", arch="semi-drdnet", config={}, file="t.safetensors",
                       sha256="0" * 64, size=1, dtype="float16",
                       hub={"repo_id": "derain/t", "filename": "t.safetensors"})
    assert rec.hub_source() is None
    monkeypatch.setattr(weights, "load_manifest", lambda path=None: {"t": rec})
    monkeypatch.setattr(weights, "bundled_dir", lambda: tmp_path)
    with pytest.raises(WeightsUnavailable, match="no download source .*pinned revision"):
        weights.resolve("t")
    rec.hub["revision"] = "main"
    assert rec.hub_source() == ("derain/t", "t.safetensors", "main")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_saved_weights_get_normal_permissions(tmp_path) -> None:
    # written through mkstemp (atomic), they were 0600: a trained model only its owner
    # could read, on a shared machine or a mounted results folder
    net = build_model("semi-drdnet-tiny")
    old = os.umask(0o022)
    try:
        weights.save_weights(net, tmp_path / "m.safetensors", name="semi-drdnet-tiny",
                             arch="semi-drdnet", config=get_spec("semi-drdnet-tiny").config)
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644


def test_names_a_file_one_rule_for_name_or_file(tmp_path, monkeypatch) -> None:
    """grow, distill and eval take a model name or a weights file; each decided which in
    its own way (a .ckpt or a suffix-less file was a file to one, an unknown model to
    another)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").write_bytes(b"x")  # an existing file, no suffix
    (tmp_path / "semi-drdnet-tiny").mkdir()  # a folder that happens to share a model's name
    assert weights.names_a_file("my-model")
    assert not weights.names_a_file("semi-drdnet-tiny")
    assert not weights.names_a_file("semi-drdnet-fast")
    for spec in ("run.ckpt", "run.PT", "x.safetensors", "m.pth", "g.onnx", "runs/missing"):
        assert weights.names_a_file(spec), spec
    assert weights.names_a_file(tmp_path / "my-model")


def test_source_checkout_without_install_finds_the_bundled_weights(tmp_path):
    """recipes/gpu-session.sh runs the checkout through PYTHONPATH on a bare GPU machine,
    where the installed package ``derain_cli.weights_dir`` does not exist: the manifest
    must still be read from ``weights/`` (``-S``: no site-packages, no editable install)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(weights.__file__).resolve().parent.parent
    if not (repo / "weights" / "manifest.json").exists():
        pytest.skip("derain_cli is an installed copy here, not a source checkout")
    code = ("from derain_cli.manifest import bundled_dir, load_manifest; "
            "print(bundled_dir()); print(' '.join(sorted(load_manifest())))")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert Path(out[0]) == repo / "weights"
    bundled = json.loads((repo / "weights" / "manifest.json").read_text())["weights"]
    assert out[1].split() == sorted(w["name"] for w in bundled)


def test_a_source_checkout_uses_its_own_bundled_weights(tmp_path):
    """An audit: with one checkout installed in editable mode, a clone run through
    PYTHONPATH read (and recipes/bundle.py overwrote) the installed checkout's weights/."""
    from pathlib import Path

    from derain_cli.manifest import bundled_dir, source_weights

    clone = tmp_path / "clone"
    (clone / "derain_cli").mkdir(parents=True)
    (clone / "weights").mkdir()
    module = clone / "derain_cli" / "manifest.py"
    assert source_weights(module) is None  # no pyproject.toml: not a checkout
    (clone / "weights" / "manifest.json").write_text("{}")  # an installed package beside an
    assert source_weights(module) is None  # unrelated site-packages/weights/ (a mutation audit)
    (clone / "weights" / "manifest.json").unlink()
    (clone / "pyproject.toml").write_text("")
    assert source_weights(module) is None  # no manifest.json: no bundled weights there
    (clone / "weights" / "manifest.json").write_text("{}")
    assert source_weights(module) == clone / "weights"
    # this checkout's own
    here = Path(weights.__file__).resolve().parents[1]
    assert bundled_dir() == here / "weights"
    # and a copy run through PYTHONPATH beside the installed one (the case that went wrong)
    import shutil
    import subprocess
    import sys

    shutil.copytree(here / "derain_cli", clone / "derain_cli", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [sys.executable, "-c", "import derain_cli.manifest as m; print(m.bundled_dir())"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(clone)})
    assert out.stdout.strip() == str(clone / "weights"), out.stderr


def test_the_same_weights_make_the_same_file_in_every_process(tmp_path):
    """safetensors orders its header as a Rust HashMap does, differently in each process:
    one model exported twice gave two sha256s, and no recipe rerun could match a shipped
    file byte for byte."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from derain_cli import weights\n"
        "from derain_cli.models import SemiDRDNet, SemiDRDNetConfig\n"
        "torch.manual_seed(1)\n"
        "net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=2, detail_blocks=1,"
        " se_reduction=4))\n"
        "weights.save_weights(net, sys.argv[1], name='t', arch='semi-drdnet', config=net.cfg,"
        " metadata={'steps': '7', 'training': 'a test', 'b': '1', 'a': '2'})\n"
    )
    files = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for f in files:
        subprocess.run([sys.executable, "-c", script, str(f)], check=True)
    blobs = {f.read_bytes() for f in files}
    assert len(blobs) == 1
    blob = blobs.pop()
    n = int.from_bytes(blob[:8], "little")
    assert n % 8 == 0 and json.loads(blob[8:8 + n])["__metadata__"]["steps"] == "7"
    net = _tiny()
    back = weights.load_into(SemiDRDNet(net.cfg), files[0])
    for (k, a), b in zip(net.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a.half().float() if a.is_floating_point() else a, b), k


def test_a_pt_file_that_unpacks_far_beyond_its_size_is_refused(tmp_path) -> None:
    """torch.save stores its zip entries as they are; deflated ones unpacked on loading, a
    1 MB file to 1 GB (an audit): refused before loading, as --weights and as --resume."""
    import zipfile

    from derain_cli.train import TrainError, load_checkpoint

    torch.save({"w": torch.zeros(2**20)}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(
            tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert (tmp_path / "bomb.pt").stat().st_size < 100_000  # 4 MB of zeros, deflated
    with pytest.raises(WeightsError, match=r"bomb.pt: its entries unpack to 4 MB from a 0.0 MB"):
        weights.read_state(tmp_path / "bomb.pt")
    with pytest.raises(TrainError, match="its entries unpack to"):
        load_checkpoint(tmp_path / "bomb.pt")
    assert weights.read_state(tmp_path / "plain.pt")[0]["w"].shape == (2**20,)  # as saved


def test_a_tensor_the_network_lacks_is_named(tmp_path):
    """A file with one tensor more than its network said so, not a bare KeyError (a
    mutation audit: no test had an extra tensor)."""
    from safetensors.torch import save_file

    net = _tiny()
    good = tmp_path / "good.safetensors"
    weights.save_weights(net, good, name="t", arch="semi-drdnet", config=net.cfg)
    state, meta = weights.read_state(good)
    save_file({**state, "extra.weight": torch.zeros(3)}, tmp_path / "more.safetensors",
              metadata=meta)
    with pytest.raises(WeightsError, match="unexpected tensor 'extra.weight'"):
        weights.model_from_file(tmp_path / "more.safetensors")


def test_batchnorm_counters_stay_whole_numbers_in_fp16_files(tmp_path):
    """Only floating tensors are stored in fp16: a counter of 70000 batches would be inf
    there (a mutation audit)."""
    net = _tiny()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.num_batches_tracked.fill_(70001)
    path = tmp_path / "w.safetensors"
    weights.save_weights(net, path, name="t", arch="semi-drdnet", config=net.cfg)
    state, _ = weights.read_state(path)
    counters = [v for k, v in state.items() if k.endswith("num_batches_tracked")]
    assert counters and all(v.dtype == torch.int64 and int(v) == 70001 for v in counters)
    assert any(v.dtype == torch.float16 for v in state.values())


def test_a_pt_file_is_refused_past_four_times_its_size_unpacked(tmp_path):
    """The bound is 4x the file (and 1 MB): one unpacking to 10x is refused (a mutation
    audit: the only test's file unpacked to a thousand times, so 40x passed as well)."""
    import zipfile

    rng = np.random.default_rng(0)
    chunk = np.zeros(1 << 16, np.uint8)
    data = b"".join(bytes(np.concatenate([rng.integers(0, 256, 6000, np.uint8), chunk[6000:]]))
                    for _ in range(128))  # 8 MB, a tenth of it noise
    path = tmp_path / "ten.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data/0", data)
    ratio = len(data) / os.path.getsize(path)
    assert 6 < ratio < 30, ratio
    assert "unpack to 8 MB" in (weights.inflation_problem(path) or "")
    with zipfile.ZipFile(tmp_path / "plain.pt", "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data/0", data)
    assert weights.inflation_problem(tmp_path / "plain.pt") is None


def _remote_record(tmp_path, monkeypatch, **hub_fields) -> WeightRecord:
    """A manifest of one record that is not bundled (its file absent from the bundle)."""
    import hashlib

    rec = WeightRecord(name="x", arch="semi-drdnet", config={}, file="x.safetensors",
                       sha256=hashlib.sha256(b"w").hexdigest(), size=1, dtype="float16",
                       hub={"repo_id": "derain-test/x", "filename": "x.safetensors",
                            "revision": "0" * 40, **hub_fields})
    monkeypatch.setattr(weights, "load_manifest", lambda path=None: {"x": rec})
    monkeypatch.setattr(weights, "bundled_dir", lambda: tmp_path)
    return rec


def test_an_unpublished_record_says_reinstall_and_a_published_one_does_not(tmp_path,
                                                                           monkeypatch):
    """Every shipped record is "published": false: a bundled file gone missing must say to
    reinstall derain, not to download when online (which cannot work); a record without the
    key is published (a mutation audit: either default survived)."""
    import huggingface_hub.constants as hf_constants

    from derain_cli.hub import WeightsUnavailable

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    _remote_record(tmp_path, monkeypatch, published=False)
    with pytest.raises(WeightsUnavailable) as info:
        weights.resolve("x", quiet=True)
    assert "not published on the Hub yet" in str(info.value)
    assert "reinstall derain" in str(info.value)
    _remote_record(tmp_path, monkeypatch)
    with pytest.raises(WeightsUnavailable) as info:
        weights.resolve("x", quiet=True)
    assert "not published" not in str(info.value) and "reinstall" not in str(info.value)
