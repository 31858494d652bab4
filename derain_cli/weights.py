"""Weights: the manifest, safetensors save/load, and name -> file resolution.

Each shipped weight has one record in ``weights/manifest.json`` (in the spirit
of timm's pretrained configs): file, sha256, size, dtype, architecture and
config, license, training data and measured metrics, and the Hugging Face
repo/filename/revision it can be fetched from. A safetensors file also carries
its architecture and config in its metadata, so ``--weights FILE`` needs no
manifest.

Loading is strict: the sha256 is checked when known, and tensor names and
shapes must match the architecture exactly; the error names the first
mismatch. ``.pt``/``.pth`` checkpoints are read only through
``torch.load(weights_only=True)``, never by unpickling arbitrary objects.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from .fileio import atomic_write
from .hub import sha256_file
from .manifest import (  # re-exported: the manifest API predates its own module
    PICKLE_SUFFIXES,
    WeightRecord,
    bundled_dir,
    load_manifest,
    manifest_path,  # noqa: F401
    write_manifest,  # noqa: F401
)
from .models import build_architecture, config_to_dict, get_spec

if TYPE_CHECKING:  # PyTorch is imported where tensors are: the manifest and the checks
    import torch  # of names and files (derain models, download) answer without it
    from torch import nn

log = logging.getLogger(__name__)

FORMAT = "derain-weights-v1"

#: Suffixes that make an argument a file rather than a model name (those ``read_state``
#: reads, and ``.onnx``, which it refuses with advice rather than "unknown model").
FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".onnx")


class WeightsError(Exception):
    """A weights file that cannot be used: corrupt, wrong checksum or wrong shapes."""


def canonical_safetensors(blob: bytes) -> bytes:
    """``blob`` with its JSON header's keys sorted. Why: safetensors writes the header from
    a Rust HashMap, whose order changes from process to process, so the same weights gave
    another file and sha256 on every export; a recipe rerun could not show it reproduced a
    shipped file byte for byte. The tensor data and its offsets are untouched; the header
    stays padded with spaces to a multiple of 8 bytes, as safetensors writes it."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def save_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    name: str,
    arch: str,
    config: Any,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> WeightRecord:
    """Write a model's state as safetensors (atomically) and return its manifest record.

    Floating tensors are stored in ``dtype`` (None: fp16, which halves the download; the
    networks run in fp32 after loading). BatchNorm counters stay integers.
    """
    import torch
    from safetensors.torch import save as safetensors_bytes

    dtype = torch.float16 if dtype is None else dtype
    path = Path(path)
    cfg = config if isinstance(config, dict) else config_to_dict(config)
    tensors = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {"format": FORMAT, "name": name, "arch": arch, "config": json.dumps(cfg)}
    meta.update(metadata or {})
    blob = canonical_safetensors(safetensors_bytes(tensors, metadata=meta))
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob), durable=True)
    return WeightRecord(
        name=name, arch=arch, config=cfg, file=path.name, sha256=sha256_file(path),
        size=path.stat().st_size, dtype=str(dtype).removeprefix("torch."),
    )


def _recalibrates(config: object) -> bool:
    """Whether a training checkpoint's run config recalibrates BatchNorm at export."""
    try:
        return int(json.loads(config).get("bn_recalib") or 0) > 0  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError):
        return False


def inflation_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a ``.pt`` file (a zip, as torch.save writes it) must not be loaded, or None:
    entries that unpack to far more than the file holds. torch.save stores its entries
    as they are; a 1 MB file of deflated zeros took 1 GB on loading, 20 MB would take
    20 GB (an audit). Legacy (pre-zip) files have no entries to check: None."""
    import zipfile

    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as z:
            unpacked = sum(i.file_size for i in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return None  # not a zip: torch.load says what it is
    if unpacked > 4 * size + (1 << 20):
        return (f"its entries unpack to {unpacked / 1e6:.0f} MB from a {size / 1e6:.1f} MB "
                "file (torch.save stores them as they are): a damaged or hostile file")
    return None


def read_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or of a ``.pt``/``.pth`` read safely."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder; give the weights file in it "
                           "(derain train writes RUN/model.safetensors)")
    if path.suffix in PICKLE_SUFFIXES:
        import torch

        inflated = inflation_problem(path)
        if inflated is not None:
            raise WeightsError(f"{path}: {inflated}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a user error
            if "unsupported global" in str(e).lower():  # torch's long advice does not apply
                # here ("Unsupported global", or "unsupported GLOBAL ... is blocked": a
                # hostile pickle was "a damaged file", said an audit)
                why = ("it holds Python objects besides tensors, which derain does not "
                       "unpickle (for safety); save the state_dict alone")
            else:
                why = "not a PyTorch checkpoint (a damaged file, or another kind of file)"
            raise WeightsError(f"{path}: {why}") from None
        meta: dict[str, str] = {}
        if isinstance(obj, dict) and isinstance(obj.get("arch"), str) and isinstance(
                obj.get("model_config"), str):  # a derain training checkpoint knows its net
            meta = {"format": FORMAT, "name": str(obj.get("name") or obj["arch"]),
                    "arch": obj["arch"], "config": obj["model_config"]}
        # best.pt's "validated": the EMA network with the BN statistics validation scored
        ckpt = obj
        for key in ("validated", "ema", "model", "state_dict"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                if meta and key == "ema" and _recalibrates(ckpt.get("config")):
                    meta["unrecalibrated"] = "1"  # last.pt: BN statistics not yet refreshed
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsError(f"{path}: expected a dict of tensors")
        return obj, meta
    if path.suffix.lower() == ".onnx":
        raise WeightsError(f"{path}: an ONNX graph, not a weights file; pass the .safetensors "
                           "file it was exported from (derain runs ONNX itself: --backend onnx)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as e:
        kind = _image_kind(path)
        if kind:  # "header too large" said nothing to the user who passed a photo (audit)
            raise WeightsError(f"{path}: a {kind} image, not a weights file (--weights takes "
                               "a .safetensors file, as derain train writes)") from None
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


def _image_kind(path: Path) -> str | None:
    """The image format whose signature ``path`` starts with, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    for sig, kind in ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"),
                      (b"II*\0", "TIFF"), (b"MM\0*", "TIFF"), (b"BM", "BMP")):
        if head.startswith(sig):
            return kind
    return "WebP" if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else None


def check_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Raise a WeightsError naming the first missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    for k, v in expected.items():
        if k not in state:
            raise WeightsError(f"{source}: tensor {k!r} is missing (architecture mismatch?)")
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightsError(
                f"{source}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                f"the architecture expects {tuple(v.shape)}"
            )
    for k in state:
        if k not in expected:
            raise WeightsError(f"{source}: unexpected tensor {k!r} (architecture mismatch?)")


def load_into(
    model: nn.Module, path: str | os.PathLike[str], sha256: str | None = None
) -> nn.Module:
    """Load a weights file into ``model`` after checking checksum, names and shapes."""
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightsError(
                f"{path}: sha256 {actual[:12]}... does not match the manifest's {sha256[:12]}...; "
                "the file is corrupt or not the published one"
            )
    state, _ = read_state(path)
    check_state(model, state, str(path))
    return _load_state(model, state)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """``state`` (checked) into ``model``, each tensor in the model's own dtype."""
    ref = model.state_dict()
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()})
    return model


def build_fitting(arch: str, config: dict[str, Any], state: dict[str, torch.Tensor],
                  source: str, *, header: bool = True) -> nn.Module:
    """The architecture ``arch`` / ``config`` with ``state`` loaded, its shapes compared on
    the meta device first (nothing allocated). Why: where the config comes from a weights
    file's own metadata, a 220-byte file asking for width 2048 x 400 blocks made derain
    allocate until the machine ran out of memory (a security audit). The meta device
    allocates no tensors but does build every module: the sizes are bounded first
    (``_check_config_sizes``) where they come from the file's ``header`` (a registry
    config given with ``-m`` is derain's own: a review saw it blamed on the file)."""
    import torch

    if header:
        _check_config_sizes(config, state, source)
    try:
        with torch.device("meta"):
            skeleton = build_architecture(arch, config)
    except (TypeError, ValueError, LookupError, AttributeError, RuntimeError,
            ArithmeticError, MemoryError) as e:  # the file's header (a RuntimeError, a
        # ZeroDivisionError, an IndexError came out bare: an audit, a review)
        raise WeightsError(f"{source}: its derain header names no architecture derain can "
                           f"build ({arch}, {str(config)[:200]}): {e}") from None
    check_state(skeleton, state, source)
    return _load_state(build_architecture(arch, config), state)


#: Bounds on a network's config read from a file, before anything is built: any size (a
#: width, a channel count, a dilation), any list's length, a block count (the paper's
#: networks have 16) and a stage count (RDMC runs its recursion that many times)
_MAX_SIZE, _MAX_LIST, _MAX_BLOCKS, _MAX_STAGES = 65536, 64, 1024, 64


def _check_config_sizes(config: dict[str, Any], state: dict[str, torch.Tensor],
                        source: str) -> None:
    """``WeightsError`` for a config no real weights file of derain's holds: negative or
    huge sizes, long lists, more blocks than ``_MAX_BLOCKS`` or than the file has tensors
    holding values (each block holds some; empty ones cost a file nothing: a review).
    Why: a 1 KB file asking for 100000 blocks built modules on the meta device until it
    held 4 GB after two minutes (an audit)."""
    tensors = sum(1 for t in state.values() if t.numel())
    for key, value in config.items():
        values = list(value) if isinstance(value, list | tuple) else [value]
        if isinstance(value, list | tuple) and len(values) > _MAX_LIST:
            bad = f"{key} lists {len(values)} values"
        elif any(isinstance(v, int) and not isinstance(v, bool)
                 and not 0 <= v <= _MAX_SIZE for v in values):
            bad = f"{key}={str(value)[:60]}"
        elif key.endswith("blocks") and isinstance(value, int) and (
                value > min(tensors, _MAX_BLOCKS)):
            bad = f"{key}={value} in a file of {tensors} tensors"
        elif key == "stages" and isinstance(value, int) and value > _MAX_STAGES:
            bad = f"{key}={value}"
        else:
            continue
        raise WeightsError(f"{source}: its derain header asks for a network no derain weights "
                           f"file holds ({bad}): a damaged file, or not derain's")


def own_architecture(meta: dict[str, str], source: str) -> tuple[str, dict[str, Any]]:
    """(architecture, config dict) a derain-written file's metadata names. Why checked: a
    file whose header lacked "arch" or held a broken config said "error: KeyError: arch"
    or a JSON parser's words, without naming the file (an audit)."""
    arch, text = meta.get("arch"), meta.get("config")
    if not arch or text is None:
        raise WeightsError(f"{source}: its derain header is damaged (no "
                           f"{'architecture' if not arch else 'config'}); pass --model NAME "
                           "too, or use another file")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):  # deep nesting: "RecursionError" bare (an audit)
        config = None
    if not isinstance(config, dict):
        raise WeightsError(f"{source}: its derain header is damaged (the {arch} config is "
                           f"not a JSON object: {text[:60]!r}); pass --model NAME too, or "
                           "use another file")
    return arch, config


def names_a_file(spec: str | os.PathLike[str]) -> bool:
    """Whether an argument that takes a model name or a weights file (``derain grow
    SOURCE``, ``distill --teacher``, ``eval --model``) means a file: one that exists, a
    weights suffix (``FILE_SUFFIXES``) or a path separator, which no model name has.
    Why one rule: the commands decided it three ways, so ``run/model.ckpt`` or a
    suffix-less file worked in one and was an "unknown model" in another."""
    text = os.fspath(spec)
    path = Path(text)
    return (path.is_file() or path.suffix.lower() in FILE_SUFFIXES or "/" in text
            or os.sep in text)


def model_from_file(path: str | os.PathLike[str], model_name: str | None = None) -> nn.Module:
    """Build the architecture a weights file describes (or ``model_name``'s) and load it.

    The model name a derain-written file declares (a run's ``--name``, also in its ``.pt``
    checkpoints) is kept as the model's ``declared_name`` attribute, else None."""
    state, meta = read_state(path)
    own = meta.get("format") == FORMAT
    if meta.get("unrecalibrated"):
        log.warning("%s is a training checkpoint: its averaged weights before the run "
                    "recalibrates their BatchNorm statistics (at validation and export), "
                    "whose score can be far from the run's model.safetensors (written when "
                    "it ends) or best.pt, mostly below it", path)
    if model_name is None and own:
        model = build_fitting(*own_architecture(meta, str(path)), state, str(path))
    elif model_name is None:
        raise WeightsError(
            f"{path}: the file does not say which architecture it is for; pass --model NAME too"
        )
    else:
        spec = get_spec(model_name)
        model = build_architecture(spec.arch, spec.config)
        try:
            check_state(model, state, str(path))
        except WeightsError as e:
            if own:  # say what the file is, not only what is missing
                raise WeightsError(
                    f"{path}: the file holds {meta.get('arch')} weights "
                    f"({meta.get('config')}) that "
                    f"do not fit --model {model_name}; leave out --model to use the file's "
                    f"own architecture ({e})"
                ) from None
            raise
        _load_state(model, state)
    model.declared_name = meta.get("name") if own else None
    return model


def resolve(name: str, *, quiet: bool = False, force: bool = False) -> Path:
    """Local path of a manifest weight, its sha256 checked: bundled file, else the Hub
    cache, else a download (``force``: download again even if cached). Every caller gets
    a checked file (``derain finetune --model`` loaded a damaged bundled file without a
    word); ``derain download`` is this, name by name."""
    from . import hub

    records = load_manifest()
    if name not in records:
        raise WeightsError(
            f"no weights named {name!r} in the manifest; known: {', '.join(records) or 'none'}"
        )
    rec = records[name]
    bundled = bundled_dir() / rec.file
    if bundled.exists():
        actual = sha256_file(bundled)
        if actual != rec.sha256:
            raise WeightsError(
                f"{bundled}: sha256 {actual[:12]}... does not match the manifest's "
                f"{rec.sha256[:12]}...; the file ships with derain: reinstall derain (or "
                "restore weights/)"
            )
        return bundled
    source = rec.hub_source()
    if source is None:
        raise hub.WeightsUnavailable(
            f"weights {name!r} are not bundled and have no download source (repo_id, filename "
            f"and pinned revision) in the manifest; place the file by hand at {bundled} "
            f"(sha256 {rec.sha256})"
        )
    repo_id, filename, revision = source
    return hub.fetch(
        repo_id, filename, revision, rec.sha256, force=force,
        quiet=quiet, manual_path=bundled, name=name, published=_published(rec),
        size=rec.size or None,
    )


def _published(rec: WeightRecord) -> bool:
    """Whether the manifest says ``rec``'s Hub repository exists (absent: assume it does)."""
    return bool(rec.hub.get("published", True))


def load_pretrained(name: str, *, quiet: bool = False) -> nn.Module:
    """The registered model ``name`` with its published weights, checked and in eval mode.

    A name that is neither in the manifest nor registered raises the registry's
    ``UnknownModelError`` (a typo: the message lists the models), not the "no pretrained
    weights yet" advice, which only fits a registered model nobody has trained yet."""
    rec = load_manifest().get(name)
    if rec is None:
        get_spec(name)  # UnknownModelError for a name that is not a model at all
        raise WeightsError(untrained_message(name))
    path = resolve(name, quiet=quiet)
    model = build_architecture(rec.arch, rec.config)
    try:
        return load_into(model, path, rec.sha256).eval()
    except WeightsError as e:
        if path.parent == bundled_dir():
            fix = "the file ships with derain: reinstall derain (or restore weights/)"
        else:
            fix = f"delete it and run `derain download {name}`"
        raise WeightsError(f"{e}; {fix}") from None


def untrained_message(name: str, flag: str = "--weights") -> str:
    """What to tell a user who asks for a registered model that has no weights yet
    (``flag``: the option that takes a weights file in the asking command)."""
    return (f"{name!r} has no pretrained weights yet; train some (`derain train --model "
            f"{name} ...`; a GPU recipe: recipes/full-models-gpu.sh in derain's source "
            f"repository) and pass the result with {flag}, or pick a model that has "
            "weights (`derain models`)")
