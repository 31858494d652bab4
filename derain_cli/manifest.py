"""The weights manifest, without PyTorch: records, where the bundled files live.

Split from :mod:`derain_cli.weights` (which re-exports what callers use) so that the
torch-free start of the default CPU path (``derain_cli.fast_path``) can read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .fileio import atomic_write_text

#: Weights files read as PyTorch pickles (``torch.load``); any other name is safetensors
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt")


def bundled_dir() -> Path:
    """The folder holding the bundled weights and ``manifest.json``.

    Installed, that is the package ``derain_cli.weights_dir`` (pyproject maps it to
    ``weights/``); a source checkout used through ``PYTHONPATH`` without installing
    (the lent GPU machine, recipes/gpu-session.sh) has no such package, only the folder.
    A source checkout's own ``weights/`` comes first: with another checkout installed in
    editable mode, a clone or worktree run through ``PYTHONPATH`` scored, and its
    recipes/bundle.py overwrote, the installed checkout's weights (an audit).
    """
    own = source_weights(Path(__file__))
    if own is not None:
        return own
    try:
        return Path(str(resources.files("derain_cli.weights_dir")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "weights"


def source_weights(module_file: Path) -> Path | None:
    """The ``weights/`` folder of the source checkout ``module_file`` (a module of the
    package) lies in, or None outside one (an installed wheel: no pyproject.toml there)."""
    root = module_file.resolve().parent.parent
    folder = root / "weights"
    if (root / "pyproject.toml").is_file() and (folder / "manifest.json").is_file():
        return folder
    return None


@dataclass
class WeightRecord:
    """One manifest entry; unknown keys are kept in ``extra`` so nothing is lost."""

    name: str
    arch: str
    config: dict[str, Any]
    file: str
    sha256: str
    size: int
    dtype: str
    license: str = "MIT"
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    hub: dict[str, str] = field(default_factory=dict)
    status: str = "release"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeightRecord:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known})

    def hub_source(self) -> tuple[str, str, str] | None:
        """(repo_id, filename, revision) to download from, or None when the manifest entry
        lacks any of them (a download needs the pinned revision too)."""
        h = self.hub or {}
        repo_id, filename, revision = h.get("repo_id"), h.get("filename"), h.get("revision")
        if not all(isinstance(v, str) and v for v in (repo_id, filename, revision)):
            return None
        return str(repo_id), str(filename), str(revision)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        d.update(self.extra)
        return d


def manifest_path() -> Path:
    return bundled_dir() / "manifest.json"


def load_manifest(path: Path | None = None) -> dict[str, WeightRecord]:
    """Weight name -> record, from the bundled manifest (or ``path``); none there: {}."""
    path = path or manifest_path()

    def refused(why: str) -> Exception:  # the file named (a JSONDecodeError said only "line 2
        from .weights import WeightsError  # column 1"; a folder of that name, or no
        # permission, was a traceback: audits)
        return WeightsError(f"{path}: the weights manifest {why}; reinstall derain (or "
                            "restore weights/)")

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise refused(f"is damaged ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise refused(f"cannot be read ({e.strerror or e})") from None
    try:
        return {d["name"]: WeightRecord.from_dict(d) for d in data.get("weights", [])}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise refused(f"is damaged ({type(e).__name__}: {e})") from None


def write_manifest(records: dict[str, WeightRecord], path: Path | None = None) -> None:
    path = path or manifest_path()
    body = {"version": 1, "weights": [r.to_dict() for r in records.values()]}
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")
