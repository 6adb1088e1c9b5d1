"""Where the time of one small-M call goes: the GPU start and end of each kernel a kernels.gemv
call launches (the GEMV, the SVD branch's low-rank kernel, the finishing kernel), from CUPTI via
torch.profiler, relative to the call's first kernel. Eager calls (not graph replays), each after
a read of 256 MiB that evicts L2; medians over 15 calls. uint4 in groups of 128 with a zero point,
without and with an SVD branch of rank 32 (sdnq's column-major factors), on three of the Flux
shapes at M = 1 and 16. About 20 s on the GPU machine.

    python benchmarks/gemv_timeline.py [--out timeline.jsonl]

Each output line: N, K, M, svd, then per kernel [median start, median end] in us, and the call's
median span (first start to last end).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemv import cuda_kernels_or_say, uint4_layer  # noqa: E402  (puts the repository on sys.path)

from comfy_sdnq import dtypes, kernels  # noqa: E402

SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072)]  # (N, K)
CALLS = 15


def kernel_name(name: str) -> str:
    """gemv_kernel, gemv_lowrank_kernel, gemv_finish_kernel, ... from a demangled signature"""
    base = name.split("<")[0].split("(")[0]
    return base.split("::")[-1].split()[-1]


def timeline(fn, flush) -> dict:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            flush.sum()
            fn()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    calls = []
    for e in events:  # a call: the sdnq kernels after one eviction read (an at::native reduction)
        if "at::native" in e.name:
            calls.append([])
        elif "sdnq" in e.name and calls:
            calls[-1].append(e)
    rows, spans = {}, []
    for c in calls:
        if not c:
            continue
        t0 = min(e.time_range.start for e in c)
        spans.append(max(e.time_range.end for e in c) - t0)
        for e in c:
            rows.setdefault(kernel_name(e.name), []).append((e.time_range.start - t0, e.time_range.end - t0))
    return {"span_us": round(statistics.median(spans), 2),
            "kernels": {k: [round(statistics.median(s for s, _ in v), 2), round(statistics.median(t for _, t in v), 2)]
                        for k, v in rows.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the lines here as well")
    args = ap.parse_args(argv)
    if not cuda_kernels_or_say("gemv_timeline"):
        return 2
    dev = "cuda"
    t = dtypes.get("uint4")
    gen = torch.Generator().manual_seed(0)
    flush = torch.ones(256 << 20, dtype=torch.uint8, device=dev)
    lines = []
    for N, K in SHAPES:
        view, raw, scale, zp, up, down = uint4_layer(N, K, gen, dev)
        for M in (1, 16):
            x = torch.randn(M, K, dtype=torch.bfloat16, device=dev)
            for svd in (False, True):
                extra = (up, down) if svd else ()
                row = {"N": N, "K": K, "M": M, "svd": svd,
                       **timeline(lambda: kernels.gemv(t, raw, scale, zp, view, x, None, N, *extra), flush)}
                print(json.dumps(row), flush=True)
                lines.append(json.dumps(row))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
