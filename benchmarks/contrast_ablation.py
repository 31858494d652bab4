"""Does each contrastive term help? Short CPU trainings with and without it, same seed and steps.

    python benchmarks/contrast_ablation.py [--steps 250] [--jobs 2] [--out runs/abl]

Runs of ``derain train`` (fp32, batch 8, 64 px crops, lr 5e-4, EMA 0.99, seed 0), each
on rain synthesized over ``../shared/data/clean-bsds`` with ``--contrast-features self`` (the
feature space that needs no outside weights) or ``none``:

* ``semi_self`` / ``semi_none``: semi-drdnet-lite, with ``--unlabeled real-rain`` (the dual
  sample-augmented contrastive regularisation, on synthetic pairs and on the unlabeled real
  photos) against the purely supervised loss (the unlabeled photos are then unused).
* ``semi_lab``: the dual contrastive terms on the synthetic pairs only (no unlabeled
  photos), which separates the labeled terms from the semi-supervised real-photo terms.
* ``semi_bg``: the background branches alone (``--contrast-terms bg,bg_u``: output vs clean
  backgrounds, on the synthetic pairs and on the real photos), fine-tuning's default terms.
* ``rdmc_self`` / ``rdmc_none``: rdmc-lite with and without its contrastive prior.

``--finetune``: instead, the semi-supervised stage on its own: ``derain finetune`` of the
bundled ``--model`` (semi-drdnet-lite unless given; ``--model rdmc-lite`` tests RDMC's
contrastive prior the same way) on the unlabeled real-rain photos (clean-bsds as unpaired
clean photos), ``--steps`` steps with the contrastive terms (``ft_self``) and without
(``ft_none``), and without them but with 20 % rain-free synthetic samples (``ft_none_cf``,
``--clean-fraction 0.2``), and with both (``ft_self_cf``); leave-one-out runs that keep every
Semi-DRDNet contrastive term but one (``ft_no_bg``, ``ft_no_rain``, ``ft_no_bg_u``,
``ft_no_rain_u``: ``--contrast-terms``), and the same from bg, bg_u and rain_u (fine-tuning's
default terms from 2026-12-01 to 2026-12-03, bg and bg_u since: ``ft_self`` runs those three
(before 2026-12-01, when the default was all four, it ran all four), ``ft_all`` all four;
``ft_nr_no_bg``, ``ft_nr_no_bg_u``, ``ft_nr_no_rain_u``, the last being today's default);
one term alone (``ft_only_bg``, ``ft_only_bg_u``: RDMC's leave-one-out, since its prior has
those two); and ``ft_none_bn`` / ``ft_self_bn``, which refresh the BatchNorm statistics
instead of keeping the base model's (``--batchnorm refresh``); all scored beside the
bundled starting weights (``base``).
Fine-tuning runs pass ``--consistency 0.1`` (the default when most tables in
docs/contrastive-terms.md were measured) unless ``--consistency`` says otherwise; give
``--consistency 1.0`` to ablate ``derain finetune``'s default since 2026-12-03.

Then every run's exported (EMA) weights are scored with ``derain eval`` (fp32 unless
``--precision`` says otherwise, so that every CPU gives the same figures) on rain100l,
heavy-small and sirr-val (never trained on; rain100l's first 20 pairs also picked nothing:
the final weights are scored, not the best checkpoint), and on the first ``--real`` real-rain
photos: a side-by-side grid (``OUT/real_grid.png``) and how much each model changes them
(mean absolute change of the Y channel, in 8-bit levels), and how well each leaves rain-free
photos alone (Y-PSNR against themselves on rain100l's first ``--real`` clean images). A run
whose ``model.safetensors`` already exists is not trained again, so an interrupted ablation
resumes. Exits 0 with a
message when ``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RUNS = [  # name, model, contrast features, with the unlabeled real photos, more flags
    ("semi_none", "semi-drdnet-lite", "none", True, []),
    ("semi_self", "semi-drdnet-lite", "self", True, []),
    ("semi_lab", "semi-drdnet-lite", "self", False, []),
    # the background branches only (fine-tuning's default terms since 2026-12-03)
    ("semi_bg", "semi-drdnet-lite", "self", True, ["--contrast-terms", "bg,bg_u"]),
    ("rdmc_none", "rdmc-lite", "none", False, []),
    ("rdmc_self", "rdmc-lite", "self", False, []),
]
FT_RUNS = [  # name, contrast features, share of rain-free synthetic samples, more flags
    ("ft_none", "none", 0.0, []),
    # Semi-DRDNet: the three terms fine-tuning ran by default from 2026-12-01 to 2026-12-03,
    # pinned (``SEMI_FT_SELF``); RDMC: its default, both of its terms
    ("ft_self", "self", 0.0, []),
    ("ft_none_cf", "none", 0.2, []),
    ("ft_self_cf", "self", 0.2, []),
    # leave-one-out: every Semi-DRDNet term but one
    ("ft_no_bg", "self", 0.0, ["--contrast-terms", "rain,bg_u,rain_u"]),
    ("ft_no_rain", "self", 0.0, ["--contrast-terms", "bg,bg_u,rain_u"]),
    ("ft_no_bg_u", "self", 0.0, ["--contrast-terms", "bg,rain,rain_u"]),
    ("ft_no_rain_u", "self", 0.0, ["--contrast-terms", "bg,rain,bg_u"]),
    # ... and without the labeled rain branch (fine-tuning's default since 2026-12-01)
    ("ft_all", "self", 0.0, ["--contrast-terms", "all"]),
    ("ft_nr_no_bg", "self", 0.0, ["--contrast-terms", "bg_u,rain_u"]),
    ("ft_nr_no_bg_u", "self", 0.0, ["--contrast-terms", "bg,rain_u"]),
    ("ft_nr_no_rain_u", "self", 0.0, ["--contrast-terms", "bg,bg_u"]),
    # one term alone (RDMC has two: its leave-one-out)
    ("ft_only_bg", "self", 0.0, ["--contrast-terms", "bg"]),
    ("ft_only_bg_u", "self", 0.0, ["--contrast-terms", "bg_u"]),
    # BatchNorm statistics refreshed instead of kept
    ("ft_none_bn", "none", 0.0, ["--batchnorm", "refresh"]),
    ("ft_self_bn", "self", 0.0, ["--batchnorm", "refresh"]),
]
EVAL_SETS = ("rain100l", "heavy-small", "sirr-val")
#: ``ft_self``'s terms for a Semi-DRDNet: fine-tuning's default from 2026-12-01 to 2026-12-03
#: (all four before, bg and bg_u since), pinned so the tables that name ft_self reproduce
SEMI_FT_SELF = ["--contrast-terms", "bg,bg_u,rain_u"]


def _names_rain_terms(flags: list[str]) -> bool:
    """Whether a run's flags ask for Semi-DRDNet's rain-layer terms (rain, rain_u, all)."""
    if "--contrast-terms" not in flags:
        return False
    terms = flags[flags.index("--contrast-terms") + 1].split(",")
    return bool({"rain", "rain_u", "all"} & set(terms))


def finetune_command(name: str, features: str, clean_fraction: float, flags: list[str],
                     steps: int, out: Path, model: str = "semi-drdnet-lite",
                     seed: int = 0, consistency: float = 0.1) -> list[str]:
    if name in ("ft_self", "ft_self_cf") and not model.startswith("rdmc"):
        flags = SEMI_FT_SELF + flags
    return [
        sys.executable, "-m", "derain_cli", "finetune", "--model", model,
        "--rainy", str(DATA / "real-rain"), "--clean", str(DATA / "clean-bsds"),
        "--out", str(out / name), "--steps", str(steps), "--seed", str(seed),
        "--contrast-features", features, "--clean-fraction", str(clean_fraction), "--quiet",
        # 0.1 unless --consistency says otherwise: the fine-tuning default when most of
        # docs/contrastive-terms.md was measured (1.0 since 2026-12-03); a flag of the
        # row's own comes later and wins
        "--consistency", str(consistency),
    ] + flags


def train_command(name: str, model: str, features: str, unlabeled: bool, flags: list[str],
                  steps: int, out: Path, seed: int = 0) -> list[str]:
    cmd = [
        sys.executable, "-m", "derain_cli", "train", "--model", model,
        "--synthetic", str(DATA / "clean-bsds"), "--preset", "mixed",
        "--val", str(DATA / "rain100l"), "--val-limit", "20", "--out", str(out / name),
        "--steps", str(steps), "--batch", "8", "--patch", "64", "--lr", "5e-4",
        "--warmup", "30", "--ema", "0.99", "--amp", "fp32", "--workers", "0",
        "--val-every", str(max(1, steps // 2)), "--ckpt-every", str(max(1, steps // 2)),
        "--seed", str(seed), "--contrast-features", features, "--quiet",
    ]
    if unlabeled:
        cmd[cmd.index("--preset"):cmd.index("--preset")] = [
            "--unlabeled", str(DATA / "real-rain")]
    return cmd + flags


def run_parallel(cmds: list[tuple[str, list[str]]], jobs: int, threads: int, out: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    waiting, running = list(cmds), []
    while waiting or running:
        while waiting and len(running) < jobs:
            name, cmd = waiting.pop(0)
            log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed when the run ends
            print(f"training {name}: {' '.join(cmd[2:])}", flush=True)
            running.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=log), log))
        time.sleep(5)
        for entry in list(running):
            name, proc, log = entry
            if proc.poll() is not None:
                log.close()
                running.remove(entry)
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed (exit {proc.returncode}); see "
                                     f"{out / (name + '.log')}")
                print(f"{name} done", flush=True)


def real_photos(weights: dict[str, Path], count: int, out: Path) -> dict[str, float]:
    """Mean |change| of Y on the first real-rain photos, and a grid to look at."""
    from derain_cli.enhancer import Derainer
    from derain_cli.metrics import rgb_to_y
    from derain_cli.pairs import list_images

    photos = list_images(DATA / "real-rain")[:count]
    models = {n: Derainer(weights=w, device="cpu", precision="fp32") for n, w in weights.items()}
    change = {n: [] for n in models}
    rows = []
    for p in photos:
        img = Image.open(p).convert("RGB")
        img.thumbnail((512, 512))
        rgb = np.asarray(img)
        cells = [rgb]
        for n, d in models.items():
            y = d.derain(rgb)
            change[n].append(float(np.abs(rgb_to_y(y) - rgb_to_y(rgb)).mean()))
            cells.append(y)
        rows.append(cells)
    cw = 256
    labels = ["rainy input", *models]
    heights = [round(r[0].shape[0] * cw / r[0].shape[1]) for r in rows]
    grid = Image.new("RGB", (cw * len(labels), 16 + sum(heights)), "white")
    draw = ImageDraw.Draw(grid)
    for i, label in enumerate(labels):
        draw.text((i * cw + 4, 2), label, fill="black")
    y0 = 16
    for r, h in zip(rows, heights, strict=True):
        for i, c in enumerate(r):
            grid.paste(Image.fromarray(c).resize((cw, h), Image.LANCZOS), (i * cw, y0))
        y0 += h
    grid.save(out / "real_grid.png")
    return {n: float(np.mean(v)) for n, v in change.items()}


def clean_passthrough(weights: dict[str, Path], count: int) -> dict[str, float]:
    """Y-PSNR of each model's output on rain-free photos against the photos themselves.

    A deraining model should leave a photo without rain alone; this shows how much it does
    not (the first ``count`` clean images of rain100l, which no run trains on).
    """
    from derain_cli.enhancer import Derainer
    from derain_cli.metrics import psnr_y
    from derain_cli.pairs import list_images

    photos = [np.asarray(Image.open(p).convert("RGB"))
              for p in list_images(DATA / "rain100l" / "clean")[:count]]
    scores = {}
    for n, w in weights.items():
        d = Derainer(weights=w, device="cpu", precision="fp32")
        scores[n] = float(np.mean([psnr_y(d.derain(c), c) for c in photos]))
    return scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once")
    ap.add_argument("--threads", type=int, default=1, help="threads per training")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "abl")
    ap.add_argument("--real", type=int, default=8, help="real-rain photos compared")
    ap.add_argument("--only", action="append", default=[], help="run names to include")
    ap.add_argument("--finetune", action="store_true",
                    help="ablate the semi-supervised fine-tuning stage instead")
    ap.add_argument("--model", default="semi-drdnet-lite",
                    help="with --finetune: the bundled model fine-tuned")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of every training (data, crops, rain, initial weights)")
    ap.add_argument("--consistency", type=float, default=0.1,
                    help="with --finetune: derain finetune's --consistency (0.1, the default "
                         "the older tables were measured with; the command's own default is "
                         "1.0 since 2026-12-03)")
    ap.add_argument("--precision", default="fp32",
                    help="engine precision the runs are scored in (fp32: the same figures on "
                         "every CPU; the tables before 2026-12-03 used auto)")
    args = ap.parse_args()
    if not all((DATA / d).is_dir() for d in ("clean-bsds", "real-rain", *EVAL_SETS)):
        print(f"benchmark skipped: {DATA} (clean-bsds/, real-rain/, evaluation sets) "
              "is not available")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.finetune:
        runs = [r for r in FT_RUNS if not args.only or r[0] in args.only]
        if args.model.startswith("rdmc"):  # its prior has bg and bg_u only: no rain terms
            runs = [r for r in runs if not _names_rain_terms(r[3])]
        cmds = {r[0]: finetune_command(*r, args.steps, args.out, args.model, args.seed,
                                       args.consistency)
                for r in runs}
    else:
        runs = [r for r in RUNS if not args.only or r[0] in args.only]
        cmds = {r[0]: train_command(*r, args.steps, args.out, args.seed) for r in runs}
    todo = [(n, c) for n, c in cmds.items() if not (args.out / n / "model.safetensors").exists()]
    run_parallel(todo, args.jobs, args.threads, args.out)

    from derain_cli.evaluate import evaluate

    weights = {r[0]: args.out / r[0] / "model.safetensors" for r in runs}
    if args.finetune:  # the starting point, scored the same way, as the reference row
        weights = {"base": ROOT / "weights" / f"{args.model}.safetensors", **weights}
        (args.out / "base").mkdir(exist_ok=True)
    table: dict[str, dict[str, object]] = {}
    for name, w in weights.items():
        entry = args.out / name / "manifest_entry.json"
        steps = json.loads(entry.read_text()).get("steps") if entry.exists() else 0
        table[name] = {"steps": steps}
        cached = args.out / name / "scores.json"  # evaluation is slow: kept per run
        scores = json.loads(cached.read_text()) if cached.exists() else {}
        for s in EVAL_SETS:
            if s not in scores:
                res = evaluate(str(w), DATA / s, device="cpu", precision=args.precision)
                scores[s] = (round(res.psnr_y, 2), round(res.ssim_y, 4))
                cached.write_text(json.dumps(scores) + "\n")
            table[name][s] = tuple(scores[s])
    for name, v in real_photos(weights, args.real, args.out).items():
        table[name]["real_change_y"] = round(v, 2)
    for name, v in clean_passthrough(weights, args.real).items():
        table[name]["clean_psnr_y"] = round(v, 2)
    (args.out / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")

    print(f"\n{'run':<13} {'steps':>5} " + " ".join(f"{s:>16}" for s in EVAL_SETS)
          + "  real |dY|  clean PSNR")
    for name, row in table.items():
        cells = " ".join(f"{row[s][0]:>7.2f} / {row[s][1]:.4f}" for s in EVAL_SETS)
        print(f"{name:<13} {row['steps']:>5} {cells}  {row['real_change_y']:>8.2f}"
              f"  {row['clean_psnr_y']:>10.2f}")
    print(f"\nY-channel PSNR / SSIM; real |dY|: mean absolute change of Y (8-bit levels) on "
          f"{args.real} real-rain photos; grid: {args.out / 'real_grid.png'}; clean PSNR: "
          f"Y-PSNR of the output on {args.real} rain-free photos (rain100l's clean images) "
          "against themselves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
