"""Where a model's PyTorch inference time goes: the top operators of one forward pass.

    python benchmarks/torch_profile.py [-m rdmc] [--side 320] [--precision bf16] [--rows 10]
                                      [--unfused] [--shapes]

The network as the torch runner runs it (``models.deploy.fold_for_inference``,
channels_last, the CPU fusions of ``models.cpu_fusion`` unless ``--unfused``, bf16 autocast
or fp32), random weights for a registered architecture unless it has published weights,
a ``--side`` x ``--side`` input, two warm-up passes, then one pass under ``torch.profiler``
(CPU). Why: "% of conv peak" in ``derain bench`` says how much time is
*not* convolution; this says which operators take it (for RDMC on the AMX CPU: the
upsamplings, the sums of split convolutions, ReLU, max-pooling, sigmoid). Freed memory is
kept as the torch runner keeps it (``derain_cli.cpu_memory``); ``DERAIN_MALLOC=system``
profiles glibc's own behaviour, where at 1024 px the elementwise steps pay for page faults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from derain_cli.bench import model_for_bench  # noqa: E402
from derain_cli.cpu_memory import keep_freed_memory  # noqa: E402
from derain_cli.models.cpu_fusion import fuse_for_cpu  # noqa: E402
from derain_cli.models.deploy import fold_for_inference  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="rdmc")
    ap.add_argument("--side", type=int, default=320)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--unfused", action="store_true",
                    help="without models.cpu_fusion's rewrites (what ran before 2026-12-07)")
    ap.add_argument("--shapes", action="store_true",
                    help="one row per operator and input shapes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory()
    net, weights = model_for_bench(args.model)
    net = fold_for_inference(net.eval(), max_prelu=False).eval()
    net = net.to(memory_format=torch.channels_last)
    if not args.unfused:
        net = fuse_for_cpu(net)
    x = torch.rand(1, 3, args.side, args.side).contiguous(memory_format=torch.channels_last)
    bf16 = args.precision == "bf16"
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        net(x)
        net(x)
        t0 = time.perf_counter()
        net(x)
        seconds = time.perf_counter() - t0
        with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
            net(x)
    from derain_cli.engine_choice import cpu_has_bf16

    emulated = bf16 and not cpu_has_bf16()  # (reference kernels, 8x slower: it passed for
    # a bf16 profile on AVX2 CPUs: an audit)
    print(f"{args.model} ({weights}), {args.side}x{args.side}, {args.precision}"
          + (" EMULATED (this CPU has no bf16 instructions: PyTorch's reference kernels)"
             if emulated else "") + (", unfused" if args.unfused else ", CPU fusions") + ", "
          f"{torch.get_num_threads()} threads, freed memory "
          f"{'kept' if kept else 'as the C library does'}: {seconds:.3f} s a pass")
    print(prof.key_averages(group_by_input_shape=args.shapes).table(
        sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
