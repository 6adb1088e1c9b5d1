#!/usr/bin/env python
"""GPU benchmark of comfy_sdnq's CUDA paths against bf16 cuBLAS and the sdnq package, in one process.

    python benchmarks/bench_gpu.py --quick --out results/     # < 3 minutes on an H100
    python benchmarks/bench_gpu.py --out results/             # every shape, M and dtype (~5-8 min)
    python benchmarks/bench_gpu.py --sdnq-compiled ...        # + sdnq with torch.compile/Triton (subprocess)

For each weight dtype (int8, uint8, float8_e4m3fn, uint4+SVD r32 g128, int4, int5, float5_e2m2fn,
float4_e2m1fn) and each Flux / Qwen-Image linear shape (N, K) in (3072,3072), (9216,3072), (12288,3072),
(3072,12288), (3072,15360), a bf16 weight randn*0.02 is quantized by sdnq (sdnq_quantize_layer on an
nn.Linear, its defaults; 8-bit types row-wise, as sdnq stores them for its quantized matmul) or, without
sdnq, by comfy_sdnq's C core with sdnq's automatic group size. comfy_sdnq runs the very same tensors.
Then, for M tokens in 1, 16, 256, 1024, 4608, 16384 (x [M, K] bf16, bias on), the median time of:

  bf16            F.linear(x, W_bf16) (cuBLAS) - the baseline of every ratio
  torch_eager     sdnq's forward with torch.compile off (its eager dequantize + F.linear; comfy_sdnq's
                  torch reference path when sdnq is missing): the path existing node packs take
  sdnq_compiled   (--sdnq-compiled, 2 shapes, subprocess) sdnq's forward compiled, weight-only and with
                  its quantized matmul (Triton int8/fp8 mm); the best of the two is reported
  dequant         comfy_sdnq: CUDA dequantize into a scratch weight + cuBLAS (+ SVD as two small GEMMs)
  gemv            comfy_sdnq: fused small-M kernel (M <= 16)
  w8a8_int8       comfy_sdnq: int8 activations x int8 weights, the fused int8 GEMM (sm_90) or cuBLASLt + epilogue
                  (int8 weights, and uint8 re-quantized)
  w8a8_fp8        comfy_sdnq: the same in fp8 e4m3 (fp8 weights, and int8 re-quantized)
  w8a8_fp8_fast   comfy_sdnq: w8a8_fp8 with cuBLASLt's fast fp8 accumulation (fp8 weights)
  w4a8            comfy_sdnq: 4-bit weights re-quantized per row to int8 on the fly, then as w8a8_int8
  lt_int8/lt_fp8  bare cuBLASLt GEMM on random int8 / fp8 operands: the ceiling of the W8A8 paths
  lt_int8_epilogue, i8_gemm_fused  the int8 GEMM with scales and bias into bf16 on the same operands:
                  cuBLASLt's int32 product through scale_epilogue, and the fused kernel (sm_90)

Timing: CUDA events around each call, after a write of 256 MB that evicts L2, warm-up calls first,
median of the repetitions. For M <= 16 also (small M is where the host can be the bottleneck):
`host_us`, the Python + launch time of one call, measured while the GPU is held busy by
torch.cuda._sleep (so the host never waits), and `graph_ms`, the same call captured in a CUDA
graph and replayed (GPU time only, no host overhead). And `--profile` (on with --quick): the
CUDA kernels of every path at the largest M of the last shape, from torch.profiler (per-kernel
microseconds per call: where the time goes). Ratios are t_bf16 / t_path (> 1: faster than bf16), summed over shapes
like the performance anchors, and per shape in the JSON. Also: dequantization bandwidth
(compressed bytes read + bf16 bytes written per second, and % of a measured device-to-device copy), the
W8A8 paths' elementwise kernels (row quantization of x, the int32 epilogue) with theirs,
bytes per weight (codes + scales + zero points + SVD factors), the path each comfy_sdnq call ran,
and rel_err = ||y - y_bf16|| / ||y_bf16|| of every path at M <= 1024.

Writes bench.json, bench.md and bench.png (when matplotlib is importable) into --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time

if "--_compiled-worker" not in sys.argv:
    os.environ["SDNQ_USE_TORCH_COMPILE"] = "0"  # sdnq reads it at import: eager here, compiled in the worker
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
logging.getLogger("sdnq").setLevel(logging.ERROR)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_host import host_us  # noqa: E402
from comfy_sdnq import dtypes, kernels, ops  # noqa: E402

try:
    import sdnq
    from sdnq import SDNQConfig, sdnq_quantize_layer
except Exception as _exc:  # noqa: BLE001 - sdnq is optional here
    sdnq = None
    SDNQ_ERROR = f"{type(_exc).__name__}: {_exc}"
else:
    SDNQ_ERROR = None

DEV = "cuda"
BF16 = torch.bfloat16
SHAPES = [(3072, 3072), (9216, 3072), (12288, 3072), (3072, 12288), (3072, 15360)]  # (N, K)
TOKENS = [1, 16, 256, 1024, 4608, 16384]
# label -> (weights_dtype, sdnq options)
CONFIGS = {
    "int8": ("int8", dict(group_size=-1)),
    "uint8": ("uint8", dict(group_size=-1)),
    "float8_e4m3fn": ("float8_e4m3fn", dict(group_size=-1)),
    "uint4+svd32": ("uint4", dict(use_svd=True, svd_rank=32)),
    "uint4-g128": ("uint4", dict(group_size=128)),  # uint4+svd32's layout without the SVD branch
    "int4": ("int4", {}),
    "int5": ("int5", {}),
    "float5_e2m2fn": ("float5_e2m2fn", {}),
    "float4_e2m1fn": ("float4_e2m1fn", {}),
}
QUICK = dict(shapes=[(3072, 3072), (3072, 12288)], tokens=[1, 16, 1024, 4608],
             configs=["int8", "float8_e4m3fn", "uint4+svd32", "int5"])
# comfy_sdnq W8A8-style paths per dtype (M > 16)
W8A8_PATHS = {"int8": ["w8a8_int8", "w8a8_fp8"], "uint8": ["w8a8_int8"], "float8_e4m3fn": ["w8a8_fp8", "w8a8_fp8_fast"],
              "uint4+svd32": ["w4a8"], "uint4-g128": ["w4a8"], "int4": ["w4a8"]}
COMPILED_SHAPES = [(3072, 3072), (3072, 12288)]
COMPILED_CONFIGS = ["int8", "float8_e4m3fn", "uint4+svd32"]


# ---------------------------------------------------------------------------
# timing


class Timer:
    def __init__(self, reps: int, warmup: int):
        self.reps, self.warmup = reps, warmup
        self.flush_buf = torch.ones(256 << 20, dtype=torch.uint8, device=DEV)

    def __call__(self, fn) -> float:
        """median ms of fn() over self.reps calls, L2 evicted before each by reading 256 MiB (a write
        would leave the L2 full of dirty lines, whose write-back the timed call would pay for)"""
        for _ in range(self.warmup):
            fn()
        events = []
        for _ in range(self.reps):
            self.flush_buf.sum()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            events.append((a, b))
        torch.cuda.synchronize()
        return statistics.median(a.elapsed_time(b) for a, b in events)


def copy_bandwidth(timer: Timer) -> float:
    """device-to-device copy of 1 GiB, GB/s counting bytes read + written"""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEV).fill_(1)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * (1 << 30) / (ms * 1e-3) / 1e9


def fill_bandwidth(timer: Timer) -> float:
    """writing 1 GiB (fill_), GB/s: the ceiling of a kernel that mostly writes"""
    dst = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    ms = timer(lambda: dst.fill_(1))
    return (1 << 30) / (ms * 1e-3) / 1e9


def host_time_us(fn, n: int = 30) -> float:
    """host time of one fn() call (Python, dispatch, launches), the GPU held busy meanwhile"""
    return host_us(fn, torch.device(DEV), n, runs_=1)


def graph_time_ms(fn, timer) -> float:
    """fn captured in a CUDA graph, timed by replay: its GPU time without host overhead"""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    ms = timer(g.replay)
    del g
    return ms


def kernel_breakdown(fn, calls: int = 3) -> dict:
    """CUDA kernels of fn() from torch.profiler: {kernel name: microseconds per call}"""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        dt = getattr(ev, "device_time_total", None)
        if dt is None:
            dt = getattr(ev, "cuda_time_total", 0)
        if dt and ev.key and not ev.key.startswith(("cudaLaunch", "cudaMemcpy", "cudaStream", "Activity")):
            out[ev.key[:90]] = round(dt / calls, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------
# layers


def auto_group(bits: int, svd: bool) -> int:
    """sdnq's automatic group size for a Linear weight (quantizer.py, group_size == 0)"""
    return 2 ** (2 + bits + (1 if svd else 0))


class Layer:
    """one quantized weight: the op arguments for comfy_sdnq and, with sdnq, sdnq's own layer"""

    def __init__(self, label: str, shape, seed: int = 0):
        self.label = label
        wdtype, opts = CONFIGS[label]
        self.t = dtypes.get(wdtype)
        N, K = self.shape = shape
        g = torch.Generator(device=DEV).manual_seed(seed)
        self.w = (torch.randn(N, K, generator=g, device=DEV) * 0.02).to(BF16)
        self.bias = (torch.randn(N, generator=g, device=DEV) * 0.02).to(BF16)
        self.sdnq_layer = None
        if sdnq is not None:
            lin = torch.nn.Linear(K, N, bias=True, device=DEV, dtype=BF16)
            with torch.no_grad():
                lin.weight.copy_(self.w)
                lin.bias.copy_(self.bias)
            torch.manual_seed(seed)
            layer = sdnq_quantize_layer(lin, SDNQConfig(weights_dtype=wdtype, torch_dtype=BF16, **opts))[0]
            self.sdnq_layer = layer
            p = dict(layer.named_parameters())
            p.update(dict(layer.named_buffers()))
            tens = {k: p.get(k) for k in ("weight", "scale", "zero_point", "svd_up", "svd_down")}
            tens = {k: (v.data if v is not None else None) for k, v in tens.items()}
        else:
            tens = self._quantize_c_core(opts)
        scale = tens["scale"]
        G = scale.numel() // N if scale.numel() > 1 else 0
        self.view = (N * G, K // G, 1) if G else (1, N * K, 1)
        shape3 = (self.view[0], 1, 1) if G else (1, 1, 1)
        self.codes = tens["weight"]
        self.scale = scale.reshape(shape3)
        self.zp = None if tens["zero_point"] is None else tens["zero_point"].reshape(shape3)
        self.up, self.down = tens["svd_up"], tens["svd_down"]
        self.nbytes = sum(v.numel() * v.element_size() for v in tens.values() if v is not None)

    def _quantize_c_core(self, opts):
        """sdnq's format without sdnq: SVD residual (svd_lowrank), C-core quantization, packing"""
        N, K = self.shape
        w = self.w.float()
        up = down = None
        if opts.get("use_svd"):
            U, S, V = torch.svd_lowrank(w, q=opts.get("svd_rank", 32), niter=8)
            up, down = (U * S).to(BF16), V.t().contiguous().to(BF16)
            w = w - up.float() @ down.float()
        gs = opts.get("group_size", 0) or auto_group(self.t.bits, bool(up is not None))
        gs = K if gs < 0 or gs >= K else gs
        view = (N * (K // gs), gs, 1)
        codes, scale, zp = kernels.quantize(self.t, w.cpu(), view, False, torch.float32)
        if self.t.is_packed:
            packed = kernels.pack(self.t, codes.reshape(-1))
        elif self.t.family == "FLOAT":  # native float codes are their storage bits
            packed = codes.to(torch.uint8).view(self.t.storage_dtype)
        else:
            packed = codes.to(self.t.storage_dtype)
        return {"weight": packed.reshape(-1).to(DEV), "scale": scale.to(DEV), "svd_up": up, "svd_down": down,
                "zero_point": None if zp is None else zp.to(DEV)}

    def comfy(self, x, path=None):
        """comfy_sdnq's linear on x: (y, the path that ran)"""
        return ops.linear_cuda(x, self.codes, self.scale, self.zp, self.up, self.down, self.bias, self.t.id,
                               self.view, self.shape, 0, 0, path=path)

    def comfy_dequantize(self):
        return kernels.dequantize(self.t, self.codes, self.scale, self.zp, self.view, self.shape, BF16)

    def eager(self, x):
        """the torch-eager dequantize baseline: sdnq's forward uncompiled, else comfy_sdnq's torch reference"""
        if self.sdnq_layer is not None:
            return self.sdnq_layer(x)
        w = ops.dequantize_impl(self.codes, self.scale, self.zp, self.up, self.down, self.t.id, self.view, self.shape,
                                0, 0, BF16, impl="torch")
        return F.linear(x, w, self.bias)


def rel_err(y, ref) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


# ---------------------------------------------------------------------------
# the measurements


def bench_linear(args, timer, results):
    shapes, tokens, configs = args.shapes, args.tokens, args.configs
    bf16 = {}
    for N, K in shapes:
        w = (torch.randn(N, K, device=DEV) * 0.02).to(BF16)
        b = torch.zeros(N, device=DEV, dtype=BF16)
        for M in tokens:
            x = torch.randn(M, K, device=DEV).to(BF16)
            bf16[(N, K, M)] = timer(lambda: F.linear(x, w, b))
            # bare cuBLASLt GEMM ceilings (random operands), M > 16
            if M <= 16:
                results["small_m"].append(dict(path="bf16", N=N, K=K, M=M, host_us=host_time_us(lambda: F.linear(x, w, b)),
                                               graph_ms=graph_time_ms(lambda: F.linear(x, w, b), timer),
                                               event_ms=bf16[(N, K, M)]))
            if M > 16 and kernels.cuda_ready(x):
                sa = torch.rand(M, device=DEV) * 0.01
                sb = torch.rand(N, device=DEV) * 0.01
                for kind, qd, od, extra in (("lt_int8", torch.int8, torch.int32, {}),
                                            ("lt_fp8", torch.float8_e4m3fn, BF16, {}),
                                            ("lt_fp8_scaled_bias", torch.float8_e4m3fn, BF16,
                                             dict(a_scale=sa, b_scale=sb, bias=b)),
                                            ("lt_fp8_fast_accum", torch.float8_e4m3fn, BF16,
                                             dict(a_scale=sa, b_scale=sb, bias=b, fast_accum=True))):
                    a8 = torch.randint(-100, 100, (M, K), device=DEV, dtype=torch.int8)
                    b8 = torch.randint(-100, 100, (N, K), device=DEV, dtype=torch.int8)
                    if qd != torch.int8:
                        a8, b8 = (a8.float() / 50).to(qd), (b8.float() / 50).to(qd)
                    ok = kernels.lt_matmul(a8, b8, False, od, **extra) is not None
                    ms = timer(lambda: kernels.lt_matmul(a8, b8, False, od, **extra)) if ok else float("nan")
                    results["ceilings"].append(dict(path=kind, N=N, K=K, M=M, ms=ms, vs_bf16=bf16[(N, K, M)] / ms))
                # the int8 GEMM with its scales and bias into bf16: cuBLASLt's int32 product through
                # scale_epilogue (w8a8_int8 where i8_gemm does not run) and the fused kernel (sm_90)
                a8 = torch.randint(-100, 100, (M, K), device=DEV, dtype=torch.int8)
                b8 = torch.randint(-100, 100, (N, K), device=DEV, dtype=torch.int8)
                gemms = [("lt_int8_epilogue",
                          lambda: kernels.scale_epilogue(kernels.lt_matmul(a8, b8, False, torch.int32), sa, sb, b, BF16))]
                if kernels.i8_gemm(a8, b8, sa, sb, b, BF16) is not None:
                    gemms.append(("i8_gemm_fused", lambda: kernels.i8_gemm(a8, b8, sa, sb, b, BF16)))
                for kind, fn in gemms:
                    ms = timer(fn)
                    results["ceilings"].append(dict(path=kind, N=N, K=K, M=M, ms=ms, vs_bf16=bf16[(N, K, M)] / ms))
                w8a8_kernels(timer, results, x, N, sa, b)
        torch.cuda.empty_cache()
    results["bf16"] = [dict(N=N, K=K, M=M, ms=ms, tflops=2 * M * N * K / (ms * 1e-3) / 1e12)
                       for (N, K, M), ms in bf16.items()]

    for label in configs:
        for N, K in shapes:
            t0 = time.time()
            L = Layer(label, (N, K))
            info = dict(dtype=label, N=N, K=K, bytes_per_weight=L.nbytes / (N * K), view=list(L.view),
                        quantize_s=round(time.time() - t0, 1))
            results["layers"].append(info)
            # dequantization bandwidth (CUDA flat kernel into a fresh bf16 weight)
            ms = timer(L.comfy_dequantize)
            codes_bytes = L.nbytes - sum(v.numel() * v.element_size() for v in (L.up, L.down) if v is not None)
            moved = codes_bytes + N * K * 2
            src = torch.empty(moved // 2, dtype=torch.uint8, device=DEV)
            dst = torch.empty_like(src)
            copy_ms = timer(lambda: dst.copy_(src))  # the same bytes moved by a device-to-device copy
            del src, dst
            out = torch.empty(N * K, dtype=BF16, device=DEV)
            fill_ms = timer(lambda: out.fill_(1))  # writing the bf16 weight alone
            del out
            bw = dict(dtype=label, N=N, K=K, ms=ms, GBps=moved / (ms * 1e-3) / 1e9,
                      pct_copy=100 * moved / (ms * 1e-3) / 1e9 / results["copy_GBps"], pct_same_copy=100 * copy_ms / ms,
                      fill_ms=fill_ms)
            if L.up is not None:  # the fused dequantize + SVD kernel (the dequant path's weight)
                bw["svd_ms"] = timer(lambda: kernels.dequantize(L.t, L.codes, L.scale, L.zp, L.view, L.shape, BF16,
                                                                svd=(L.up, L.down)))
            results["dequant_bw"].append(bw)
            for M in tokens:
                x = torch.randn(M, K, device=DEV).to(BF16)
                ref = F.linear(x, L.w, L.bias) if M <= 1024 else None
                row = dict(dtype=label, N=N, K=K, M=M, bf16_ms=bf16[(N, K, M)])
                measure(row, "torch_eager", lambda: (L.eager(x), None), timer, ref)
                paths = ["dequant"] + (["gemv"] if M <= kernels.GEMV_MAX_M else W8A8_PATHS.get(label, []))
                for path in paths:
                    measure(row, path, lambda p=path: L.comfy(x, p), timer, ref)
                    if M <= kernels.GEMV_MAX_M and path + "_ms" in row:
                        try:
                            with torch.no_grad():
                                results["small_m"].append(dict(
                                    path=f"{label} {path}", N=N, K=K, M=M, event_ms=row[path + "_ms"],
                                    host_us=host_time_us(lambda p=path: L.comfy(x, p)),
                                    graph_ms=graph_time_ms(lambda p=path: L.comfy(x, p), timer)))
                        except Exception as exc:  # noqa: BLE001
                            print(f"  small-M extra timing failed for {label} {path}: {exc}", flush=True)
                if args.profile and M == max(tokens) and (N, K) == shapes[-1]:
                    for path in ["bf16"] + paths:
                        fn = (lambda: F.linear(x, L.w, L.bias)) if path == "bf16" else (lambda p=path: L.comfy(x, p))
                        try:
                            with torch.no_grad():
                                results["profile"].append(dict(dtype=label, path=path, N=N, K=K, M=M,
                                                               kernels_us=kernel_breakdown(fn)))
                        except Exception as exc:  # noqa: BLE001
                            print(f"  profile failed for {label} {path}: {exc}", flush=True)
                results["linear"].append(row)
                print(fmt_row(row), flush=True)
            torch.cuda.empty_cache()


def w8a8_kernels(timer, results, x, N, a_scale, bias):
    """the W8A8 paths' elementwise kernels on x [M, K]: row quantization (int8, fp8; reads x, writes
    the codes and M scales) and the int32 epilogue into bf16 [M, N] (reads int32, writes bf16), with
    their bandwidth against the 1 GiB copy"""
    M, K = x.shape
    acc = torch.randint(-50000, 50000, (M, N), device=DEV, dtype=torch.int32)
    b_scale = (torch.rand(N, device=DEV) * 0.01).to(BF16)
    row = dict(N=N, K=K, M=M)
    for kind in ("int8", "fp8"):
        ms = timer(lambda k=kind: kernels.quantize_rows(x, k))
        row[f"quantize_{kind}_ms"] = ms
        row[f"quantize_{kind}_pct_copy"] = 100 * M * (3 * K + 4) / (ms * 1e-3) / 1e9 / results["copy_GBps"]
    ms = timer(lambda: kernels.scale_epilogue(acc, a_scale, b_scale, bias, BF16))
    row["epilogue_ms"] = ms
    row["epilogue_pct_copy"] = 100 * M * N * 6 / (ms * 1e-3) / 1e9 / results["copy_GBps"]
    results["w8a8_bw"].append(row)


def measure(row, name, fn, timer, ref):
    """fn() -> (y, the path that ran or None): its median time, error vs ref and path into row"""
    try:
        with torch.no_grad():
            y, ran = fn()
            row[name + "_ms"] = timer(fn)
        if ref is not None:
            row[name + "_err"] = rel_err(y, ref)
        if ran is not None:
            row[name + "_ran"] = ran
    except Exception as exc:  # noqa: BLE001 - a failing path is recorded, the run goes on
        row[name + "_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        print(f"  {row['dtype']} {row['N']}x{row['K']} M={row['M']} {name}: {row[name + '_error']}", flush=True)


def fmt_row(row) -> str:
    parts = [f"{row['dtype']:>14} {row['N']:>5}x{row['K']:<5} M={row['M']:<5} bf16 {row['bf16_ms']:.3f} ms"]
    for k, v in row.items():
        if k.endswith("_ms") and k != "bf16_ms":
            name = k[:-3]
            ran = row.get(name + "_ran")
            tag = f"[{ran}]" if ran and ran != name else ""
            parts.append(f"{name}{tag} {row['bf16_ms'] / v:.2f}x")
    return "  ".join(parts)


# ---------------------------------------------------------------------------
# sdnq compiled: a subprocess, since sdnq reads SDNQ_USE_TORCH_COMPILE at import


def compiled_worker(args):
    out = []
    for label in args.configs:
        if label not in COMPILED_CONFIGS:
            continue
        wdtype, opts = CONFIGS[label]
        for N, K in [s for s in COMPILED_SHAPES if s in args.shapes] or args.shapes[:2]:
            for qmm in (False, True):
                lin = torch.nn.Linear(K, N, bias=True, device=DEV, dtype=BF16)
                t0 = time.time()
                try:
                    q = sdnq_quantize_layer(lin, SDNQConfig(weights_dtype=wdtype, torch_dtype=BF16,
                                                            use_quantized_matmul=qmm, **opts))[0]
                    timer = Timer(args.reps, args.warmup)
                    for M in args.tokens:
                        x = torch.randn(M, K, device=DEV).to(BF16)
                        with torch.no_grad():
                            q(x)
                            ms = timer(lambda: q(x))
                        out.append(dict(dtype=label, N=N, K=K, M=M, qmm=qmm, ms=ms,
                                        first_s=round(time.time() - t0, 1)))
                except Exception as exc:  # noqa: BLE001
                    out.append(dict(dtype=label, N=N, K=K, qmm=qmm, error=f"{type(exc).__name__}: {str(exc)[:200]}"))
    print("COMPILED_JSON " + json.dumps(out), flush=True)


def run_compiled(args, results):
    env = dict(os.environ)
    env.pop("SDNQ_USE_TORCH_COMPILE", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--_compiled-worker", "--reps", str(args.reps), "--warmup",
           str(args.warmup), "--configs", ",".join(args.configs), "--tokens", ",".join(map(str, args.tokens)),
           "--shapes", ",".join(f"{n}x{k}" for n, k in args.shapes)]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("COMPILED_JSON ")]
    rows = json.loads(lines[-1][len("COMPILED_JSON "):]) if lines else []
    results["sdnq_compiled"] = dict(rows=rows, wall_s=round(time.time() - t0, 1),
                                    stderr_tail=proc.stderr[-2000:] if proc.returncode else "")
    best = {}
    for r in rows:
        if "ms" in r:
            key = (r["dtype"], r["N"], r["K"], r["M"])
            best[key] = min(best.get(key, float("inf")), r["ms"])
    for row in results["linear"]:
        key = (row["dtype"], row["N"], row["K"], row["M"])
        if key in best:
            row["sdnq_compiled_ms"] = best[key]


# ---------------------------------------------------------------------------
# reports


def summarize(results):
    """ratio t_bf16 / t_path summed over the shapes that ran every path of the row, per dtype, path, M"""
    summary = {}
    for row in results["linear"]:
        for k, v in row.items():
            if k.endswith("_ms") and k != "bf16_ms":
                key = (row["dtype"], k[:-3], row["M"])
                s = summary.setdefault(key, [0.0, 0.0, 0, set()])
                s[0] += row["bf16_ms"]
                s[1] += v
                s[2] += 1
                if row.get(k[:-3] + "_ran"):
                    s[3].add(row[k[:-3] + "_ran"])
    return {f"{d}|{p}|{m}": dict(dtype=d, path=p, M=m, ratio=b / t, shapes=n, ran=sorted(r))
            for (d, p, m), (b, t, n, r) in summary.items()}


def markdown(results, summary) -> str:
    tokens = sorted({r["M"] for r in results["linear"]})
    lines = [f"# comfy_sdnq GPU benchmark: {results['device']}", "",
             f"torch {results['torch']}, sdnq {results['sdnq']}, {results['date']}; `{results['command']}`", "",
             f"device-to-device copy: {results['copy_GBps']:.0f} GB/s (read + write); writing alone (fill): "
             f"{results['fill_GBps']:.0f} GB/s", "",
             "## speed vs bf16 cuBLAS (t_bf16 / t_path, summed over shapes; > 1 is faster)", "",
             "| dtype | bytes/weight | path | " + " | ".join(f"M={m}" for m in tokens) + " |",
             "|---|---|---|" + "---|" * len(tokens)]
    bpw = {}
    for lay in results["layers"]:
        bpw.setdefault(lay["dtype"], lay["bytes_per_weight"])
    for d in dict.fromkeys(r["dtype"] for r in results["linear"]):
        paths = dict.fromkeys(s["path"] for s in summary.values() if s["dtype"] == d)
        for p in paths:
            cells = []
            for m in tokens:
                s = summary.get(f"{d}|{p}|{m}")
                cells.append("" if s is None else f"{s['ratio']:.2f}" + ("*" if s["ran"] and s["ran"] != [p] else ""))
            lines.append(f"| {d} | {bpw.get(d, 0):.3f} | {p} | " + " | ".join(cells) + " |")
    lines += ["", "`*`: the path fell back for some shape (see `_ran` in bench.json).", "",
              "## dequantization bandwidth (CUDA kernel, bf16 out)", "",
              "bytes read + written against a 1 GiB device-to-device copy and against a copy moving the same bytes; "
              "`write only`: the time to write the bf16 weight alone (fill_), what no dequantization can beat; "
              "the last column times the fused dequantize + SVD kernel of the SVD layouts.", "",
              "| dtype | N x K | us | GB/s | % of copy | % of same-size copy | write only, us | with SVD, us |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["dequant_bw"]:
        svd = f"{r['svd_ms'] * 1e3:.1f}" if "svd_ms" in r else ""
        lines.append(f"| {r['dtype']} | {r['N']}x{r['K']} | {r['ms'] * 1e3:.1f} | {r['GBps']:.0f} | {r['pct_copy']:.0f}% | "
                     f"{r['pct_same_copy']:.0f}% | {r['fill_ms'] * 1e3:.1f} | {svd} |")
    if results["ceilings"]:
        lines += ["", "## GEMM alone (random operands) vs bf16", "",
                  "bare cuBLASLt (lt_*), the int8 GEMM with scales and bias into bf16 through cuBLASLt's int32 "
                  "product and scale_epilogue (lt_int8_epilogue) and in one kernel (i8_gemm_fused, sm_90)", "",
                  "| path | N x K | M | ratio |",
                  "|---|---|---|---|"]
        for r in results["ceilings"]:
            lines.append(f"| {r['path']} | {r['N']}x{r['K']} | {r['M']} | {r['vs_bf16']:.2f} |")
    if results.get("w8a8_bw"):
        lines += ["", "## W8A8 elementwise kernels", "",
                  "row quantization of x [M, K] (reads 2, writes 1 byte per value) and the int32 epilogue into bf16 "
                  "[M, N] (reads 4, writes 2): microseconds and % of the 1 GiB copy's bandwidth", "",
                  "| N x K | M | quantize int8 us | % | quantize fp8 us | % | epilogue us | % |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["w8a8_bw"]:
            lines.append(f"| {r['N']}x{r['K']} | {r['M']} | {r['quantize_int8_ms'] * 1e3:.1f} | "
                         f"{r['quantize_int8_pct_copy']:.0f}% | {r['quantize_fp8_ms'] * 1e3:.1f} | "
                         f"{r['quantize_fp8_pct_copy']:.0f}% | {r['epilogue_ms'] * 1e3:.1f} | "
                         f"{r['epilogue_pct_copy']:.0f}% |")
    if results.get("small_m"):
        lines += ["", "## small M: where the time goes", "",
                  "event = CUDA events around the call (as above, host overhead included where the GPU waits for "
                  "the host); graph = the call replayed from a CUDA graph (GPU time only); host = Python + launch "
                  "time of one call with the GPU held busy.", "",
                  "| path | N x K | M | event us | graph us | host us |", "|---|---|---|---|---|---|"]
        for r in results["small_m"]:
            lines.append(f"| {r['path']} | {r['N']}x{r['K']} | {r['M']} | {r['event_ms'] * 1e3:.1f} | "
                         f"{r['graph_ms'] * 1e3:.1f} | {r['host_us']:.1f} |")
    if results.get("profile"):
        lines += ["", "## CUDA kernels per call at the largest M (torch.profiler, us)", ""]
        for r in results["profile"]:
            ks = ", ".join(f"{k} {v:.1f}" for k, v in list(r["kernels_us"].items())[:8])
            lines.append(f"- {r['dtype']} {r['path']} {r['N']}x{r['K']} M={r['M']}: "
                         f"total {sum(r['kernels_us'].values()):.1f}: {ks}")
    errs = [r for r in results["linear"] if any(k.endswith("_err") for k in r)]
    if errs:
        lines += ["", "## rel_err vs y_bf16 (M <= 1024, first shape of each dtype)", ""]
        seen = set()
        for r in errs:
            first = (results["linear"][0]["N"], results["linear"][0]["K"])
            if (r["dtype"], r["M"]) in seen or (r["N"], r["K"]) != first:
                continue
            seen.add((r["dtype"], r["M"]))
            e = ", ".join(f"{k[:-4]} {v:.4f}" for k, v in r.items() if k.endswith("_err"))
            lines.append(f"- {r['dtype']} M={r['M']}: {e}")
    return "\n".join(lines) + "\n"


def plot(summary, path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    dts = list(dict.fromkeys(s["dtype"] for s in summary.values()))
    cols = min(4, len(dts))
    rows = math.ceil(len(dts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, d in zip(axes.flat, dts):
        for p in dict.fromkeys(s["path"] for s in summary.values() if s["dtype"] == d):
            pts = sorted((s["M"], s["ratio"]) for s in summary.values() if s["dtype"] == d and s["path"] == p)
            ax.plot([m for m, _ in pts], [r for _, r in pts], marker="o", label=p)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_title(d)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("t_bf16 / t")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(dts):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def ncu_targets():
    """one call of each hot kernel between cudaProfilerStart/Stop, for `ncu --profile-from-start off`
    (gpu_run.sh's ncu step): the GEMV (M=1, 16; SVD epilogue), the flat and the fused-SVD
    dequantization, row quantization and the int8 epilogue, on the 3072x12288 shape, and the
    uint4+svd32 GEMV at M=1 on 12288x3072"""
    N, K, M = 3072, 12288, 4608
    layers = {label: Layer(label, (N, K)) for label in ("uint4+svd32", "int8", "int5")}
    x1 = torch.randn(1, K, device=DEV).to(BF16)
    x16 = torch.randn(16, K, device=DEV).to(BF16)
    xm = torch.randn(M, K, device=DEV).to(BF16)
    acc = torch.randint(-1000, 1000, (M, N), device=DEV, dtype=torch.int32)
    sb = torch.rand(N, device=DEV)
    u = layers["uint4+svd32"]
    calls = [lambda lay=lay, x=x: lay.comfy(x, "gemv") for lay in layers.values() for x in (x1, x16)]
    wide = Layer("uint4+svd32", (K, N))  # 12288x3072: blocks whose items span several row groups
    calls.append(lambda: wide.comfy(x1[:, :N].contiguous(), "gemv"))
    calls += [layers[lab].comfy_dequantize for lab in layers]
    calls += [lambda: kernels.dequantize(u.t, u.codes, u.scale, u.zp, u.view, u.shape, BF16, svd=(u.up, u.down)),
              lambda: kernels.quantize_rows(xm, "int8"), lambda: kernels.quantize_rows(xm, "fp8"),
              lambda: kernels.scale_epilogue(acc, sb[:1].expand(M).contiguous(), sb, u.bias, BF16)]
    with torch.no_grad():
        for fn in calls:  # warm-up: lazy module loading, allocator
            fn()
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for fn in calls:
            fn()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    print(f"ncu_targets: {len(calls)} calls profiled")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 shapes, 4 M values, 4 dtypes, no compiled sdnq (< 3 min)")
    ap.add_argument("--out", default=os.environ.get("OUT") and os.path.join(os.environ["OUT"], "bench"),
                    help="results folder (default $OUT/bench, else benchmarks/results/gpu-<date>)")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("--sdnq-compiled", action="store_true", help="time sdnq compiled (torch.compile + Triton)")
    ap.add_argument("--shapes", default=None, help="NxK,... (default: the five Flux/Qwen shapes)")
    ap.add_argument("--tokens", default=None, help="M values, comma-separated")
    ap.add_argument("--configs", default=None, help=f"dtypes, comma-separated, of {','.join(CONFIGS)}")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--ncu-targets", action="store_true", help="one call of each hot kernel for ncu (gpu_run.sh)")
    ap.add_argument("--profile", action="store_true", help="kernel breakdown at the largest M (on with --quick)")
    ap.add_argument("--_compiled-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")] if a.shapes else (
        QUICK["shapes"] if a.quick else SHAPES)
    a.tokens = [int(v) for v in a.tokens.split(",")] if a.tokens else (QUICK["tokens"] if a.quick else TOKENS)
    a.configs = a.configs.split(",") if a.configs else (QUICK["configs"] if a.quick else list(CONFIGS))
    a.reps = a.reps or (8 if a.quick else 15)
    a.profile = a.profile or a.quick
    return a


def main():
    args = parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device", file=sys.stderr)
        return 2
    if args._compiled_worker:
        compiled_worker(args)
        return 0
    if args.ncu_targets:
        ncu_targets()
        return 0
    if args.quick:
        args.sdnq_compiled = False
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    out = args.out or os.path.join(ROOT, "benchmarks", "results", "gpu-" + stamp)
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    timer = Timer(args.reps, args.warmup)
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   sdnq=getattr(sdnq, "__version__", None) if sdnq is not None else f"missing ({SDNQ_ERROR})",
                   comfy_sdnq_cuda=kernels.cuda_backend(), date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
                   command="python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
                   reps=args.reps, warmup=args.warmup, sms=torch.cuda.get_device_properties(0).multi_processor_count,
                   linear=[], layers=[], dequant_bw=[], ceilings=[], w8a8_bw=[], small_m=[], profile=[])
    print(f"bench_gpu: {results['device']}, torch {results['torch']}, sdnq {results['sdnq']}, "
          f"comfy_sdnq CUDA backend: {results['comfy_sdnq_cuda']}", flush=True)
    results["copy_GBps"] = copy_bandwidth(timer)
    results["fill_GBps"] = fill_bandwidth(timer)
    print(f"device-to-device copy: {results['copy_GBps']:.0f} GB/s, write only (fill): "
          f"{results['fill_GBps']:.0f} GB/s", flush=True)
    bench_linear(args, timer, results)
    if args.sdnq_compiled and sdnq is not None:
        run_compiled(args, results)
    summary = summarize(results)
    results["summary"] = list(summary.values())
    results["wall_s"] = round(time.time() - t_start, 1)
    md = markdown(results, summary)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(md)
    for path in filter(None, (os.path.join(out, "bench.json"), args.json)):
        with open(path, "w") as f:
            json.dump(results, f, indent=1, default=str)
    plotted = plot(summary, os.path.join(out, "bench.png"))
    print("\n" + md)
    print(f"bench_gpu: {results['wall_s']} s; wrote {out}/bench.json, bench.md" + (", bench.png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
