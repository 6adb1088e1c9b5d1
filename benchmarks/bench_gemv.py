"""The small-M fused kernel alone: GPU time of kernels.gemv on the five Flux/Qwen-Image linear
shapes, uint4 in groups of 128 with a zero point (sdnq's published uint4 layout) without and with
an SVD branch of rank 32, at M = 1 and 16, against bf16 F.linear in the same process. Random codes
and scales (the kernel's speed does not depend on their values). Each call is captured in a CUDA
graph and replayed after a read of 256 MiB that evicts L2, median of 40 replays (bench_gpu.py's
timing); about 10 s, for A/B runs of GEMV builds (alternate the builds, several
processes each) where bench_gpu.py's full table would take minutes.

    python benchmarks/bench_gemv.py [--label new] [--out gemv.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu import SHAPES, Timer, graph_time_ms  # noqa: E402  (puts the repository on sys.path)

from comfy_sdnq import dtypes, kernels  # noqa: E402


def uint4_layer(N: int, K: int, gen: torch.Generator, dev) -> tuple:
    """random uint4 codes in groups of 128 with bf16 scales and zero points, and SVD factors of
    rank 32 stored as sdnq stores them (column-major): (view, raw, scale, zp, up, down)"""
    view = (N * K // 128, 128, 1)
    raw = torch.randint(0, 256, (N * K // 2,), dtype=torch.uint8, device=dev)
    scale = (torch.randn(view[0], 1, 1, generator=gen) * 0.002).to(torch.bfloat16).to(dev)
    zp = (torch.randn(view[0], 1, 1, generator=gen) * 0.01).to(torch.bfloat16).to(dev)
    up = (torch.randn(32, N, generator=gen) * 0.05).to(torch.bfloat16).to(dev).t()
    down = (torch.randn(K, 32, generator=gen) * 0.05).to(torch.bfloat16).to(dev).t()
    return view, raw, scale, zp, up, down


def cuda_kernels_or_say(prog: str) -> bool:
    """True where a CUDA device and comfy_sdnq._C_cuda are there; else says so on stderr"""
    if torch.cuda.is_available() and kernels.cuda_backend() == "cuda":
        return True
    print(f"{prog}: needs a CUDA device and comfy_sdnq._C_cuda", file=sys.stderr)
    return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="", help="a name for this build in the output")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if not cuda_kernels_or_say("bench_gemv"):
        return 2
    dev = "cuda"
    timer = Timer(reps=40, warmup=2)

    def us(fn) -> float:
        return graph_time_ms(fn, timer) * 1e3

    t = dtypes.get("uint4")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for N, K in SHAPES:
        view, raw, scale, zp, up, down = uint4_layer(N, K, gen, dev)
        w = torch.randn(N, K, dtype=torch.bfloat16, device=dev)
        for M in (1, 16):
            x = torch.randn(M, K, dtype=torch.bfloat16, device=dev)
            if kernels.gemv(t, raw, scale, zp, view, x, None, N) is None:
                print(f"bench_gemv: the kernel refused {N}x{K} M={M}", file=sys.stderr)
                return 1
            rows.append({"N": N, "K": K, "M": M, "bf16_us": us(lambda: torch.nn.functional.linear(x, w)),
                         "g128_us": us(lambda: kernels.gemv(t, raw, scale, zp, view, x, None, N)),
                         "svd32_us": us(lambda: kernels.gemv(t, raw, scale, zp, view, x, None, N, up, down))})
    for M in (1, 16):
        r = [x for x in rows if x["M"] == M]
        bf = sum(x["bf16_us"] for x in r)
        parts = [f"{args.label} M={M}: bf16 {bf:.1f} us"]
        for key, name in (("g128_us", "uint4 g128"), ("svd32_us", "uint4 g128 + svd32")):
            tot = sum(x[key] for x in r)
            parts.append(f"{name} {tot:.1f} us ({bf / tot:.2f}x)")
        print(", ".join(parts))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"label": args.label, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
