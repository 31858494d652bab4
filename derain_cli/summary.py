"""What a batch did: each input's result and the totals, as ``--json`` prints them.

Apart from ``batch`` and free of numpy and torch, so that a run stopped while those load
(its first second) can still print its ``--json`` summary (``cli._pay_json_owed``): an
import cut short by a Ctrl-C cannot be tried again in the same process."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["processed", "skipped", "failed"]


@dataclass
class FileResult:
    """What happened to one input."""

    input: str
    output: str | None
    status: Status
    reason: str | None = None
    megapixels: float = 0.0
    seconds: float = 0.0
    rank: int = 0
    #: the degrees the photo was turned by for its slanted rain (``--rain-angle``; with
    #: ``auto``, the angle chosen for it); None when it was not derained
    rain_angle: float | None = None


@dataclass
class Summary:
    """Totals of a batch (over all ranks when distributed)."""

    processed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    megapixels: float = 0.0
    seconds: float = 0.0
    world_size: int = 1
    files: list[FileResult] = field(default_factory=list)
    #: the batch was stopped (Ctrl-C) before every file was done; these are the files done
    interrupted: bool = False
    #: how the images were derained (``engine_record``); None when nothing was
    engine: dict[str, Any] | None = None
    #: why the command stopped before or outside the photos' work (weights that cannot be
    #: had, a device or model refused), as said on stderr; None when it did not
    error: str | None = None
    #: the warnings the run said on stderr (rank 0's), one line each: photos a folder scan
    #: left out, a first frame only, a format the suffix did not match; --json carried none,
    #: and -q hides them (an audit)
    warnings: list[str] = field(default_factory=list)

    @property
    def megapixels_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, r: FileResult) -> None:
        self.files.append(r)
        if r.status == "processed":
            self.processed += 1
            self.megapixels += r.megapixels
        elif r.status == "skipped":
            self.skipped += 1
        else:
            self.failed.append((r.input, r.reason or "failed"))

    @classmethod
    def merge(cls, parts: Sequence[Summary]) -> Summary:
        """Combine per-rank summaries: counts add up, wall time is the slowest rank's."""
        out = cls(world_size=max(1, len(parts)))
        for p in parts:
            for r in p.files:
                out.add(r)
        out.seconds = max((p.seconds for p in parts), default=0.0)
        out.interrupted = any(p.interrupted for p in parts)
        out.warnings = [w for p in parts for w in p.warnings]
        engines = [p.engine for p in parts]
        out.engine = next((e for e in engines if e), None)
        if len(parts) > 1 and any(engines):  # what each rank ran, in rank order
            out.engine = {**(out.engine or {}), "ranks": engines}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "skipped": self.skipped,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "megapixels": round(self.megapixels, 4),
            "seconds": round(self.seconds, 3),
            "megapixels_per_s": round(self.megapixels_per_s, 4),
            "world_size": self.world_size,
            "interrupted": self.interrupted,
            "engine": self.engine,
            "error": self.error,
            "warnings": list(self.warnings),
            # a failed file's output was never written: null, not the path it would have had
            "files": [{**asdict(r), "output": None if r.status == "failed" else r.output,
                       # rounded as the totals are (5.118999979458749e-06 s: an audit)
                       "megapixels": round(r.megapixels, 4), "seconds": round(r.seconds, 3)}
                      for r in self.files],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)
