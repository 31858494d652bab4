"""Write a soup's manifest entry from its members' runs, for recipes/bundle.py.

    python recipes/soup_entry.py SOUP_DIR RUN_DIR... [--training-data TEXT] [--set KEY=VALUE]

SOUP_DIR holds the average (``model.safetensors``, written by
``benchmarks/average_weights.py``, whose header lists every member with its share and
sha256); each RUN_DIR is a ``derain train`` / ``distill`` run that is one of those members
(its ``manifest_entry.json`` names its file's sha256). The soup's ``manifest_entry.json``
takes the first run's record (network, license, dtype, training data) and then says what
the soup is, not what that run was: ``steps`` and ``wall_time_s`` are the sums over the
runs (the training the stage added), ``hardware`` theirs; ``soup`` lists every member
(share, sha256, and for a run its folder name, steps, wall time and validation score);
the run's own ``metrics`` (its validation, a distillation's held-out figures) and
``before_distillation`` are left out, for they are not the soup's (recipes/eval-bundle.sh
adds the soup's evaluation, and its own score on the pairs training validates on as
``metrics.val``). Before 2026-12-05 the recipes copied one run's entry whole,
so the manifest gave a soup that run's validation score and step count (an audit).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from safetensors import safe_open

from derain_cli.fileio import atomic_write_text, sha256_file

#: a run's fields that describe that run alone, never a soup
RUN_ONLY = ("metrics", "before_distillation", "init_weights", "continued_from")


def parser() -> argparse.ArgumentParser:
    """The command line (tests/test_recipes.py parses the recipes' calls with it)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("soup", type=Path)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--training-data", default="", help="the soup's training data, in words")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another field of the entry (a string), e.g. teacher=...")
    return ap


def soup_entry(soup: Path, runs: list[Path], training_data: str = "",
               extra: dict[str, str] | None = None) -> dict[str, Any]:
    """The manifest entry of the soup in ``soup`` whose run members are ``runs``."""
    weights = soup / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        listed = (f.metadata() or {}).get("averaged_from")
    if not listed:
        raise SystemExit(f"{weights}: not written by benchmarks/average_weights.py "
                         "(its header lists no members)")
    members = json.loads(listed)
    entries: dict[str, tuple[Path, dict[str, Any]]] = {}
    for run in dict.fromkeys(r.resolve() for r in runs):  # a run named twice is one run
        entry = json.loads((run / "manifest_entry.json").read_text())
        if entry["sha256"] in entries:  # the soup's list cannot tell them apart
            raise SystemExit(f"{entries[entry['sha256']][0]} and {run} hold the same "
                             "weights: give one of them")
        if entry["sha256"] not in {m["sha256"] for m in members}:
            raise SystemExit(f"{run}: its model is not a member of {weights}")
        entries[entry["sha256"]] = (run, entry)
    # every run given is a member (checked above): the first in the soup's order leads
    first = next(entries[m["sha256"]][1] for m in members if m["sha256"] in entries)
    out = {k: v for k, v in first.items() if k not in RUN_ONLY}
    listing = []
    for m in members:  # a member averaged in twice is listed twice, its run counted once
        item: dict[str, Any] = {"share": m["share"], "sha256": m["sha256"]}
        if m["sha256"] in entries:
            run, entry = entries[m["sha256"]]
            item |= {"run": run.name, "steps": entry.get("steps"),
                     "wall_time_s": entry.get("wall_time_s")}
            val = entry.get("metrics", {}).get("val")
            if val:
                item["val"] = {k: val[k] for k in ("set", "psnr", "ssim", "count") if k in val}
        else:
            item["training"] = m.get("metadata", {}).get("training", "not a run given here")
        listing.append(item)
    runs_in = [entry for _, entry in entries.values()]
    hardware: list[str] = []
    for entry in runs_in:
        if entry.get("hardware") and entry["hardware"] not in hardware:
            hardware.append(entry["hardware"])
    out |= {"file": weights.name, "sha256": sha256_file(weights),
            "size": weights.stat().st_size, "metrics": {},
            "steps": sum(int(e.get("steps") or 0) for e in runs_in),
            "wall_time_s": round(sum(float(e.get("wall_time_s") or 0) for e in runs_in), 1),
            "hardware": "; ".join(hardware), "soup": listing}
    if training_data:
        out["training_data"] = training_data
    out |= extra or {}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: give KEY=VALUE")
        extra[key] = value
    entry = soup_entry(args.soup, args.runs, args.training_data, extra)
    atomic_write_text(args.soup / "manifest_entry.json", json.dumps(entry, indent=2) + "\n")
    runs = len({m["run"] for m in entry["soup"] if "run" in m})
    print(f"wrote {args.soup / 'manifest_entry.json'}: {len(entry['soup'])} members, "
          f"{entry['steps']} steps of training in {runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
