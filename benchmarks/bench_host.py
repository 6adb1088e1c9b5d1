"""Host time of one linear call on an SDNQ weight, by entry point, against bf16.

A diffusion step runs hundreds of linear layers; where their kernels are short (small M) or the
model is large, the Python and dispatch time of each call decides whether the GPU waits for the
host. This times one call through each way a model reaches comfy_sdnq's linear op, with the GPU
held busy so that launches never wait (host time only), plus the call's GPU time (CUDA events):

    bf16            F.linear(x, w, b) on the dense bf16 weight (the reference)
    F.linear        F.linear(x, qt, b): a stock nn.Linear holding the QuantizedTensor
                    (aten.linear decomposes into aten.t + addmm, two __torch_dispatch__ calls)
    functional      layout.functional_linear(x, qt, b): comfy_sdnq's ComfyUI layers (SDNQOps)
    linear_cuda     ops.linear_cuda(...) on the op's arguments: the op's own work

    python benchmarks/bench_host.py [--configs int8,uint4+svd32] [--tokens 1,4608] [--json out.json]
    python benchmarks/bench_host.py --device cpu --shape 64x64    # smoke run (CPU: times include compute)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import comfy_sdnq  # noqa: E402
from comfy_sdnq import layout, ops  # noqa: E402

CONFIGS = {"int8": ("int8", {}), "float8_e4m3fn": ("float8_e4m3fn", {}),
           "uint4+svd32": ("uint4", dict(use_svd=True, svd_rank=32))}


def host_us(fn, dev: torch.device, n: int, runs_: int = 9) -> float:
    """median over runs_ runs of the mean host time of one of n calls (Python, dispatch,
    launches), the GPU held busy meanwhile (bench_gpu.py's small-M table uses it too)"""
    fn()
    runs = []
    for _ in range(runs_):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda._sleep(int(3e8))  # ~0.15 s of GPU time queued first: the launches never wait for it
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return statistics.median(runs)


def gpu_us(fn, dev: torch.device, n: int = 20) -> float | None:
    if dev.type != "cuda":
        return None
    fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(dev)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize(dev)
    return a.elapsed_time(b) / n * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="3072x3072", help="N x K of the weight")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--tokens", default="1,4608")
    ap.add_argument("--calls", type=int, default=50, help="calls per host-time run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_host: no CUDA device (use --device cpu for a smoke run)")
    N, K = (int(v) for v in args.shape.lower().split("x"))
    gen = torch.Generator(device=dev).manual_seed(0)
    w = (torch.randn(N, K, generator=gen, device=dev) * 0.02).to(torch.bfloat16)
    b = (torch.randn(N, generator=gen, device=dev) * 0.02).to(torch.bfloat16)
    rows = []
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"bench_host on {name}; torch {torch.__version__}; weight {N}x{K}", flush=True)
    print("| dtype | M | entry | host us | over bf16, us | GPU us |\n|---|---|---|---|---|---|")
    with torch.no_grad():
        for label in args.configs.split(","):
            wdtype, opts = CONFIGS[label]
            qt = comfy_sdnq.quantize(w, wdtype, torch_dtype=torch.bfloat16, **opts)
            p = qt.params
            scale, zp = layout.side_tensors(p)
            for M in (int(m) for m in args.tokens.split(",")):
                x = torch.randn(M, K, generator=gen, device=dev).to(torch.bfloat16)
                entries = {"bf16": lambda: F.linear(x, w, b), "F.linear": lambda: F.linear(x, qt, b)}
                if hasattr(layout, "functional_linear"):  # (older builds, for before/after runs, lack it)
                    entries["functional"] = lambda: layout.functional_linear(x, qt, b)
                if dev.type == "cuda":
                    entries["linear_cuda"] = lambda: ops.linear_cuda(x, qt._qdata, scale, zp, p.svd_up, p.svd_down,
                                                                     b, p.wtype, p.view, p.weight_shape, p.flags,
                                                                     p.hadamard)
                base = None
                for entry, fn in entries.items():
                    h = host_us(fn, dev, args.calls)
                    base = h if base is None else base
                    g = gpu_us(fn, dev)
                    rows.append(dict(dtype=label, M=M, entry=entry, host_us=h, gpu_us=g))
                    print(f"| {label} | {M} | {entry} | {h:.1f} | {h - base:+.1f} | "
                          f"{'' if g is None else f'{g:.1f}'} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, shape=[N, K], rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
