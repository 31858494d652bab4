"""Network architectures and the name -> (architecture, configuration) registry.

Architectures are kept apart from everything that runs them (tiling, I/O,
training), so one class serves inference, training, export and tests alike.

The registry and the configs import no PyTorch: ``derain models``, ``derain download`` and
the option checks answer without it (two seconds or more on a laptop). The networks
(``SemiDRDNet``, ``RDMC``, ``ARCHITECTURES``) load on first use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .configs import CONFIGS, RDMCConfig, SemiDRDNetConfig

if TYPE_CHECKING:
    from torch import nn

    from . import deploy, rdmc, semi_drdnet  # noqa: F401
    from .rdmc import RDMC
    from .semi_drdnet import SemiDRDNet

    #: architecture id -> (network class, its config dataclass)
    ARCHITECTURES: dict[str, tuple[type[nn.Module], type]]


def _architectures() -> dict[str, tuple[type[nn.Module], type]]:
    """``ARCHITECTURES``, made once (it imports PyTorch) and kept: one dict, so an entry a
    caller adds is the one ``build_architecture`` finds."""
    table = globals().get("ARCHITECTURES")
    if table is None:
        from .rdmc import RDMC
        from .semi_drdnet import SemiDRDNet

        table = {"semi-drdnet": (SemiDRDNet, SemiDRDNetConfig), "rdmc": (RDMC, RDMCConfig)}
        globals()["ARCHITECTURES"] = table
    return table


def __getattr__(name: str) -> Any:
    """``ARCHITECTURES``, the network classes and the network modules, imported (with
    PyTorch) when first asked."""
    if name == "ARCHITECTURES":
        return _architectures()
    if name in ("SemiDRDNet", "RDMC"):
        return {cls.__name__: cls for cls, _ in _architectures().values()}[name]
    if name in ("semi_drdnet", "rdmc", "deploy"):  # (attributes of the package before)
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names, lazy ones too, so a notebook's tab completion offers
    ``SemiDRDNet`` (and not this module's own imports: ``Any``, ``dataclass``)."""
    return sorted({*__all__, "configs", "deploy", "rdmc", "semi_drdnet",
                   *(n for n in globals() if n.startswith("__"))})


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: a name users type, its architecture and sizes. ``params``,
    the network's parameter count, is recorded so that listing models builds none
    (tests/models/test_registry.py holds it to the built network's)."""

    name: str
    arch: str
    config: Any
    summary: str
    params: int | None = None

    def config_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "semi-drdnet",
            "semi-drdnet",
            SemiDRDNetConfig(),
            "Semi-DRDNet, paper size (64 wide, 16 rain + 16 detail blocks)",
            params=5_221_766,
        ),
        ModelSpec(
            "semi-drdnet-lite",
            "semi-drdnet",
            SemiDRDNetConfig(width=32, rain_blocks=6, detail_blocks=6),
            "Semi-DRDNet for CPUs (32 wide, 6 + 6 blocks, ~10x fewer FLOPs)",
            params=506_054,
        ),
        ModelSpec(
            "semi-drdnet-fast",
            "semi-drdnet",
            SemiDRDNetConfig(width=32, rain_blocks=6, detail_blocks=2),
            "semi-drdnet-lite distilled to 2 detail blocks (derain distill), half the FLOPs",
            params=258_630,
        ),
        ModelSpec(
            "semi-drdnet-tiny",
            "semi-drdnet",
            SemiDRDNetConfig(width=32, rain_blocks=3, detail_blocks=1),
            "semi-drdnet-lite distilled to 3 rain + 1 detail blocks (derain distill)",
            params=140_422,
        ),
        ModelSpec(
            "rdmc",
            "rdmc",
            RDMCConfig(),
            "RDMC, paper size (3 branches 32..256 channels, 3 recursions)",
            params=16_083_939,
        ),
        ModelSpec(
            "rdmc-lite",
            "rdmc",
            RDMCConfig(channels=(12, 24, 48, 96, 96), stages=2),
            "RDMC for CPUs (12..96 channels, 2 recursions, ~10x fewer FLOPs)",
            params=2_268_279,
        ),
    ]
}


class UnknownModelError(KeyError, ValueError):
    """A model name that is not in the registry (a ``ValueError`` too: a bad argument).
    Further arguments are names the caller takes besides the registry's (eval's identity)."""

    def __str__(self) -> str:
        from ..weights import names_a_file  # (it imports this module)

        name = str(self.args[0])  # `-m run/model.safetensors` said only "unknown" (audit)
        hint = f"; to use the weights file, pass --weights {name}" if names_a_file(
            name) else ""
        names = [*MODELS, *map(str, self.args[1:])]
        return f"unknown model {name!r}; choose one of: {', '.join(names)}{hint}"


#: ``DERAIN_CPU_FUSION=off`` turns off ``cpu_fusion``'s rewrites (read here, without PyTorch,
#: because the engine choice keys its measurements by it)
CPU_FUSION_ENV = "DERAIN_CPU_FUSION"


def cpu_fusion_enabled() -> bool:
    """False where ``DERAIN_CPU_FUSION`` says off (or 0, no, false)."""
    import os

    value = os.environ.get(CPU_FUSION_ENV, "on").strip().lower()
    return value not in ("off", "0", "no", "false")


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(name) from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-friendly form of a config dataclass (tuples become lists)."""
    items = dataclasses.asdict(config).items()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in items}


def config_from_dict(arch: str, values: dict[str, Any]) -> Any:
    """Rebuild an architecture's config from its JSON form."""
    cfg_cls = _config_class(arch)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"unknown {arch} config field(s): {', '.join(sorted(unknown))}")
    return cfg_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _config_class(arch: str) -> type:
    """``arch``'s config dataclass: derain's own without PyTorch, or one a caller added to
    ``ARCHITECTURES``."""
    added = globals().get("ARCHITECTURES") or {}
    if arch in added:
        return added[arch][1]
    try:
        return CONFIGS[arch]
    except KeyError:
        raise ValueError(
            f"unknown architecture {arch!r}; known: {', '.join({**CONFIGS, **added})}"
        ) from None


def build_architecture(arch: str, config: Any = None) -> nn.Module:
    """Instantiate an architecture from a config object or its dict form."""
    cfg_cls = _config_class(arch)
    cls = _architectures()[arch][0]
    if isinstance(config, dict):
        config = config_from_dict(arch, config)
    return cls(config if config is not None else cfg_cls())


def build_model(name: str) -> nn.Module:
    """Build a registered model by name (randomly initialised; see ``derain_cli.weights``)."""
    spec = get_spec(name)
    return build_architecture(spec.arch, spec.config)


__all__ = [
    "ARCHITECTURES",
    "MODELS",
    "RDMC",
    "ModelSpec",
    "RDMCConfig",
    "SemiDRDNet",
    "SemiDRDNetConfig",
    "UnknownModelError",
    "build_architecture",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "get_spec",
]
