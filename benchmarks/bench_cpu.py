#!/usr/bin/env python
"""CPU benchmark of comfy_sdnq: SDNQ dequantization throughput and the SDNQ linear op.

    python benchmarks/bench_cpu.py              # full run (a few minutes), writes benchmarks/results/cpu-<date>.json
    python benchmarks/bench_cpu.py --quick      # smoke run (< 60 s), for tests / CI
    python benchmarks/bench_cpu.py --markdown   # also print the markdown tables (docs/benchmarks.md)

Benchmark 1 dequantizes a Flux-like Linear weight (bf16 out) with every implementation:
C scalar reference ("ref"), C fast path ("fast"), comfy_sdnq's pure-torch reference
("torch"), sdnq 0.2.8 eager and (in a subprocess, for a few dtypes) sdnq compiled with
inductor. Throughput counts compressed input bytes (codes + scales + zero points + SVD
factors) plus the dense bf16 output bytes. Benchmark 2 times the linear op on
x [M, 3072] bf16. Before any timing, the outputs are checked: C fast == C ref bit for
bit, == sdnq eager bit for bit (SVD layers: within 2**-7 relative); a failed check is
printed loudly and recorded in the JSON (exit status 1).

See benchmarks/README.md for the columns.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# Large temporaries: glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh
# mmaps, so whether a dequantizer's 38 MB fp32 intermediate costs ~9000 page faults per call depends
# on the heap's history, not on the dequantizer. The benchmark therefore re-executes itself with glibc
# tunables that keep freed memory in the heap: every implementation is timed with a warm allocator
# (steady state). --cold-alloc keeps the default allocator (see README).
_WARM_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
if (__name__ == "__main__" and "--cold-alloc" not in sys.argv and "COMFY_SDNQ_BENCH_ALLOC" not in os.environ
        and sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
    _env = dict(os.environ, COMFY_SDNQ_BENCH_ALLOC="warm")
    _env["GLIBC_TUNABLES"] = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), _WARM_TUNABLES)))
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], _env)

# sdnq reads this at import time: eager here, compiled in a subprocess (--_compiled-worker)
if "--_compiled-worker" not in sys.argv:
    os.environ["SDNQ_USE_TORCH_COMPILE"] = "0"
os.environ.setdefault("SDNQ_USE_TRITON_MM", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import logging

logging.getLogger("sdnq").setLevel(logging.ERROR)  # "OpenVINO MM kernels are not available" on import

import torch
import torch.nn.functional as F

from comfy_sdnq import kernels, layout, ops

# the function itself: once the submodule is imported, the name comfy_sdnq.quantize is the module
from comfy_sdnq.quantizer import quantize as cq_quantize
from comfy_sdnq.quantizer import sdnq_tensors

try:
    import sdnq
    from sdnq.quantizer import sdnq_quantize_layer_weight
except ImportError as exc:  # pragma: no cover - the oracle is a test dependency
    sdnq = None
    _SDNQ_ERROR = exc

SVD_TOL = 2.0 ** -7          # dequantization with SVD vs sdnq eager, per element
LINEAR_SVD_TOL = 2.0 ** -6   # linear with SVD vs F.linear on the dense weight, relative to max|y|
SEED = 0

# (label, weights_dtype, use_svd); group_size 0 = sdnq's automatic choice
CONFIGS = [
    ("int8", "int8", False),
    ("uint8", "uint8", False),
    ("float8_e4m3fn", "float8_e4m3fn", False),
    ("uint4+svd32", "uint4", True),
    ("uint4", "uint4", False),
    ("int4", "int4", False),
    ("int5", "int5", False),
    ("int6", "int6", False),
    ("float5_e2m2fn", "float5_e2m2fn", False),
    ("float4_e2m1fn", "float4_e2m1fn", False),
    ("uint2", "uint2", False),
]
QUICK_CONFIGS = ("int8", "float8_e4m3fn", "uint4+svd32", "int5")
LINEAR_CONFIGS = ("int8", "uint4+svd32", "float8_e4m3fn")
COMPILED_CONFIGS = ("int8", "int5", "uint4+svd32")
IMPLS = ("ref", "fast", "torch", "sdnq")

ERRORS: list[str] = []


def loud(msg: str, what: str = "CHECK FAILED"):
    if what == "CHECK FAILED":
        ERRORS.append(msg)
    bar = "!" * 78
    print(f"\n{bar}\n!!! {what}: {msg}\n{bar}\n", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# timing


def bench(fn, what: str, *, min_reps=5, max_reps=50, budget_s=1.0, warmup=2) -> dict:
    """median wall time of fn() in ms (time.perf_counter) after warm-up calls, with the CPU load other
    processes put on the machine meanwhile; a contended measurement is retried after waiting for the
    machine to go idle (--wait-idle), else flagged"""
    for attempt in range(4):
        for _ in range(warmup):
            fn()
        samples = []
        f0 = minor_faults()
        c0 = cpu_sample()
        t0 = time.perf_counter()
        t_end = t0 + budget_s
        while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() < t_end):
            t1 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t1) * 1e3)
        load = foreign_cores(c0, cpu_sample(), time.perf_counter() - t0)
        faults = minor_faults() - f0
        if load is None or load <= BUSY_CORES or WAIT_IDLE_S <= 0 or attempt == 3:
            break
        wait_idle()
    if load is not None and load > BUSY_CORES:
        CONTENDED.append(f"{what} ({load:.1f} cores)")
    return {"ms": statistics.median(samples), "min_ms": min(samples), "reps": len(samples),
            "page_faults_per_call": round(faults / len(samples)),
            "foreign_load": None if load is None else round(load, 3)}


def with_gbps(r: dict, nbytes: int) -> dict:
    r = dict(r)
    r["bytes"] = nbytes
    r["gbps"] = nbytes / (r["ms"] * 1e-3) / 1e9
    return r


# ---------------------------------------------------------------------------
# machine


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    flags, info = "", {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "flags") and key not in info:
                    info[key] = val.strip()
        cpu = info.get("model name", cpu)
        if "cpu family" in info:  # VMs often report a bare "AMD EPYC": the family/model tell the generation
            cpu += f" (family {info['cpu family']}, model {info.get('model', '?')})"
        flags = info.get("flags", "")
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f} " in f" {flags} "]
    l3 = None
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("L3 cache"):
                l3 = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    git = None
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "comfy_sdnq", "csrc", "include"],
                               check=False, capture_output=True, text=True, timeout=10).stdout.strip()
        git = head + (" (+ uncommitted changes in comfy_sdnq/csrc)" if dirty else "") if head else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "git": git, "simd": simd, "l3_cache": l3,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "sdnq": getattr(sdnq, "__version__", None) if sdnq is not None else None,
        "python": platform.python_version(), "comfy_sdnq_backend": kernels.backend(),
        "allocator": ("warm (GLIBC_TUNABLES " + _WARM_TUNABLES + ")"
                      if os.environ.get("COMFY_SDNQ_BENCH_ALLOC") == "warm" else "default"),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
    }


WAIT_IDLE_S = 0.0   # --wait-idle
WAITED_S = [0.0]    # time spent waiting for an idle machine
BUSY_CORES = 0.25   # CPU cores other processes may use during a measurement before it counts as contended
CONTENDED: list[str] = []


def minor_faults() -> int:
    """minor page faults of this process so far (0 where unknown)"""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return 0


def cpu_sample():
    """(busy ticks of the machine incl. steal, ticks of this process) from /proc; None elsewhere"""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        return sum(v) - v[3] - v[4], int(st[11]) + int(st[12])  # minus idle, iowait; utime + stime
    except (OSError, ValueError, IndexError):
        return None


def foreign_cores(a, b, wall_s: float) -> float | None:
    """CPU cores used by other processes (and the hypervisor's steal) between samples a and b"""
    if a is None or b is None or wall_s <= 0:
        return None
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / os.sysconf("SC_CLK_TCK") / wall_s)


def foreign_load(window_s=0.5) -> float | None:
    a = cpu_sample()
    time.sleep(window_s)
    return foreign_cores(a, cpu_sample(), window_s)


def wait_idle() -> float | None:
    """wait up to --wait-idle seconds for the other processes to leave the CPU; the last load seen"""
    t0 = time.perf_counter()
    t_end = t0 + WAIT_IDLE_S
    load = foreign_load(0.5)
    while load is not None and load > BUSY_CORES and time.perf_counter() < t_end:
        time.sleep(1.0)
        load = foreign_load(0.5)
    WAITED_S[0] += time.perf_counter() - t0
    return load


# ---------------------------------------------------------------------------
# layers: sdnq quantizes; comfy_sdnq gets the very same tensors


def make_weight(shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED)
    return (torch.randn(shape, generator=g, dtype=torch.float32) * 0.02).to(torch.bfloat16)


class Layer:
    """one quantized weight: sdnq's dequantizer + tensors, and the comfy_sdnq QuantizedTensor over them"""

    def __init__(self, label, wdtype, use_svd, weight):
        self.label, self.wdtype, self.use_svd = label, wdtype, use_svd
        self.shape = tuple(weight.shape)
        self.name = f"{label} {self.shape[0]}x{self.shape[1]}"
        torch.manual_seed(SEED)  # svd_lowrank draws random numbers
        self.dq, tens = sdnq_quantize_layer_weight(weight.clone(), "Linear", weights_dtype=wdtype, use_svd=use_svd,
                                                   svd_rank=32)
        self.tensors = {k: v for k, v in tens.items() if v is not None}
        torch.manual_seed(SEED)
        qt = cq_quantize(weight, wdtype, use_svd=use_svd, svd_rank=32)
        ours = sdnq_tensors(qt)
        # does comfy_sdnq's quantizer write the same tensors? (information only)
        self.quantizer_match = (set(ours) == set(self.tensors) and all(
            ours[k].dtype == self.tensors[k].dtype and ours[k].shape == self.tensors[k].shape
            and torch.equal(bits(ours[k]), bits(self.tensors[k])) for k in ours))
        for k, v in ours.items():
            if k not in self.tensors or v.dtype != self.tensors[k].dtype or v.shape != self.tensors[k].shape:
                raise RuntimeError(f"{label}: comfy_sdnq and sdnq disagree on tensor {k!r}: "
                                   f"{tuple(v.shape)} {v.dtype} vs {self.tensors.get(k)}")
        t = self.tensors
        self.qdata = t["weight"]
        self.params = dataclasses.replace(qt.params, **{k: v for k, v in t.items() if k != "weight"})
        self.qt = layout.make(self.qdata, self.params)
        self.group_size = self.dq.group_size
        self.compressed_bytes = self.params.nbytes(self.qdata)
        self.svd_bytes = sum(t[k].nbytes for k in ("svd_up", "svd_down") if k in t)
        self.out_bytes = weight.numel() * weight.element_size()
        self.pristine = {k: v.clone() for k, v in t.items()}

    # comfy_sdnq paths -------------------------------------------------------
    def comfy(self, impl, svd=True):
        """layout.dequantize with an explicit implementation (torch.ops.sdnq.dequantize runs impl=None = fast)"""
        p = self.params
        scale, zp = layout.side_tensors(p)
        up, down = (p.svd_up, p.svd_down) if svd else (None, None)
        return ops.dequantize_impl(self.qdata, scale, zp, up, down, p.wtype, p.view, p.weight_shape, p.flags,
                                   p.hadamard, torch.bfloat16, impl=impl)

    def comfy_svd_add(self, impl, w):
        p = self.params
        up, down = (p.svd_up.t(), p.svd_down.t()) if p.svd_transposed else (p.svd_up, p.svd_down)
        return kernels.svd_add_(w.view(w.shape[0], -1), up, down, impl=impl)

    # sdnq paths -------------------------------------------------------------
    def sdnq(self, svd=True, clone=False, compiled=False):
        t = self.tensors
        if not svd:
            t = {k: v for k, v in t.items() if k not in ("svd_up", "svd_down")}
        if clone:
            t = {k: v.clone() for k, v in t.items()}
        return self.dq(**t, skip_compile=not compiled, skip_quantized_matmul=self.dq.use_quantized_matmul)

    def sdnq_svd_add(self, w):
        """sdnq's SVD step: result.to(svd dtype).addmm_(svd_up, svd_down)"""
        return w.addmm_(self.tensors["svd_up"], self.tensors["svd_down"])

    def inputs_unchanged(self) -> bool:
        return all(torch.equal(bits(self.tensors[k]), bits(v)) for k, v in self.pristine.items())


def bits(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """bitwise comparison; for differing tensors the largest |a-b| relative to max|b|"""
    if a.shape != b.shape or a.dtype != b.dtype:
        return {"equal": False, "why": f"{tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"}
    ne = int((bits(a) != bits(b)).sum())
    if ne == 0:
        return {"equal": True, "differ": 0}
    d = (a.float() - b.float()).abs()
    ref = b.float().abs()
    return {"equal": False, "differ": ne, "frac": ne / a.numel(), "max_abs": float(d.max()),
            "max_rel_to_max": float(d.max() / ref.max().clamp(min=1e-30)),
            "max_rel_elem": float((d / ref.clamp(min=float(ref.max()) * 2 ** -8)).max())}


def check_layer(L: Layer) -> dict:
    """correctness before timing; loud errors on failure"""
    name = L.name
    n_errors = len(ERRORS)
    fast, ref, tref = L.comfy("fast"), L.comfy("ref"), L.comfy("torch")
    op = L.qt.dequantize()
    oracle = L.sdnq(clone=True)
    res = {"fast_vs_ref": compare(fast, ref), "torch_vs_ref": compare(tref, ref), "op_vs_fast": compare(op, fast),
           "fast_vs_sdnq": compare(fast, oracle), "quantizer_match": L.quantizer_match}
    for k in ("fast_vs_ref", "torch_vs_ref", "op_vs_fast"):
        if not res[k]["equal"]:
            loud(f"{name}: {k} not bit-exact: {res[k]}")
    c = res["fast_vs_sdnq"]
    if L.use_svd:
        if not c["equal"] and not (c.get("max_rel_elem", 1.0) <= SVD_TOL):
            loud(f"{name}: C fast vs sdnq eager beyond 2**-7 relative: {c}")
        # the elementwise stage alone must be bit-exact
        c2 = compare(L.comfy("fast", svd=False), L.sdnq(svd=False, clone=True))
        res["fast_vs_sdnq_no_svd"] = c2
        if not c2["equal"]:
            loud(f"{name}: elementwise stage (no SVD) C fast vs sdnq eager not bit-exact: {c2}")
    elif not c["equal"]:
        loud(f"{name}: C fast vs sdnq eager not bit-exact: {c}")
    res["ok"] = len(ERRORS) == n_errors
    return res


# ---------------------------------------------------------------------------
# benchmark 1: dequantization


def memcpy_baseline(shape, budget) -> dict:
    x = torch.randn(shape, dtype=torch.float32).to(torch.bfloat16)
    dst = torch.empty_like(x)
    nbytes = 2 * x.nbytes  # read + write
    return {"shape": list(shape), "nbytes_tensor": x.nbytes,
            "clone": with_gbps(bench(x.clone, "memcpy clone", budget_s=budget), nbytes),
            "copy_prealloc": with_gbps(bench(lambda: dst.copy_(x), "memcpy copy_", budget_s=budget), nbytes)}


def bench_layer(L: Layer, impls, budget) -> dict:
    nbytes = L.compressed_bytes + L.out_bytes
    fns = {"ref": lambda: L.comfy("ref"), "fast": lambda: L.comfy("fast"), "torch": lambda: L.comfy("torch"),
           "sdnq": lambda: L.sdnq()}
    out = {}
    for impl in impls:
        # the scalar reference is slow; fewer repetitions keep the run short
        kw = {"min_reps": 3, "warmup": 1} if impl == "ref" else {}
        out[impl] = with_gbps(bench(fns[impl], f"{L.name} {impl}", budget_s=budget, **kw), nbytes)
    if not L.inputs_unchanged():
        loud(f"{L.name}: sdnq's dequantizer modified its input tensors during timing; timings are suspect")
    return out


def bench_svd_split(L: Layer, impls, budget) -> dict:
    """uint4+SVD: elementwise stage alone and the SVD correction alone (w += up @ down, bf16)"""
    ew_bytes = L.compressed_bytes - L.svd_bytes + L.out_bytes
    svd_bytes = L.svd_bytes + 2 * L.out_bytes  # read and write w
    ew_fns = {"ref": lambda: L.comfy("ref", svd=False), "fast": lambda: L.comfy("fast", svd=False),
              "torch": lambda: L.comfy("torch", svd=False), "sdnq": lambda: L.sdnq(svd=False)}
    scratch = L.comfy("fast", svd=False)
    svd_fns = {"ref": lambda: L.comfy_svd_add("ref", scratch), "fast": lambda: L.comfy_svd_add("fast", scratch),
               "torch": lambda: L.comfy_svd_add("torch", scratch), "sdnq": lambda: L.sdnq_svd_add(scratch)}
    out = {"elementwise": {}, "svd_add": {}}
    for impl in impls:
        kw = {"min_reps": 3, "warmup": 1} if impl == "ref" else {}
        out["elementwise"][impl] = with_gbps(bench(ew_fns[impl], f"{L.name} elementwise {impl}", budget_s=budget,
                                                   **kw), ew_bytes)
        out["svd_add"][impl] = with_gbps(bench(svd_fns[impl], f"{L.name} svd_add {impl}", budget_s=budget, **kw),
                                         svd_bytes)
    return out


# ---------------------------------------------------------------------------
# sdnq compiled (inductor), in a subprocess: SDNQ_USE_TORCH_COMPILE is read at sdnq import


def compiled_worker(args):
    """runs in the subprocess; prints one JSON line"""
    res = {}
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        d = cache_dir()
        res["_inductor_cache"] = {"dir": d, "warm": os.path.isdir(d) and bool(os.listdir(d))}
    except Exception as exc:  # noqa: BLE001 - information only
        res["_inductor_cache"] = {"error": repr(exc)}
    for shape in args.shapes:
        for label, wdtype, use_svd in CONFIGS:
            if label not in args.compiled_configs:
                continue
            L = Layer(label, wdtype, use_svd, make_weight(shape))
            eager = L.sdnq(clone=True)
            t0 = time.perf_counter()
            first = L.sdnq(compiled=True)
            compile_s = time.perf_counter() - t0
            r = with_gbps(bench(lambda L=L: L.sdnq(compiled=True), f"{L.name} sdnq compiled", budget_s=args.budget),
                          L.compressed_bytes + L.out_bytes)
            r["compile_s"] = compile_s
            r["vs_eager"] = compare(first, eager)
            r["vs_fast"] = compare(L.comfy("fast"), first)
            res[f"{shape[0]}x{shape[1]}/{label}"] = r
    res["_contended"] = CONTENDED
    res["_waited_s"] = WAITED_S[0]
    print("@@RESULT@@" + json.dumps(res), flush=True)


def run_compiled(args) -> dict:
    env = dict(os.environ)
    env.pop("SDNQ_USE_TORCH_COMPILE", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--_compiled-worker", "--budget", str(args.budget),
           "--wait-idle", str(args.wait_idle), *(["--cold-alloc"] if args.cold_alloc else []),
           "--compiled-configs", ",".join(args.compiled_configs),
           "--shapes", ",".join(f"{a}x{b}" for a, b in args.shapes)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=args.compiled_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.compiled_timeout} s"}
    for line in p.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            out = json.loads(line[len("@@RESULT@@"):])
            out["_wall_s"] = time.perf_counter() - t0
            return out
    return {"error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-5:]}"}


# ---------------------------------------------------------------------------
# benchmark 2: linear


def bench_linear(L: Layer, ms_list, budget) -> list:
    dense = L.qt.dequantize()
    rows = []
    g = torch.Generator().manual_seed(SEED + 1)
    for m in ms_list:
        x = torch.randn(m, L.shape[1], generator=g).to(torch.bfloat16)
        c = compare(F.linear(x, L.qt), F.linear(x, dense))
        # without SVD the op is dequantize + F.linear (same bits); with SVD it runs the low-rank branch on
        # the activations, (x down^T) up^T, and adds two bf16 outputs: up to ~2 bf16 ulps of max|y| apart
        if not c["equal"] and not (L.use_svd and c.get("max_rel_to_max", 1.0) <= LINEAR_SVD_TOL):
            loud(f"linear {L.name} M={m}: F.linear on the QuantizedTensor vs F.linear on the dequantized weight: {c}")
        fns = {
            "sdnq_op": lambda x=x: F.linear(x, L.qt),                        # torch.ops.sdnq.linear
            "dense": lambda x=x: F.linear(x, dense),                         # ceiling: weight already dense
            "deq_linear": lambda x=x: F.linear(x, L.qt.dequantize()),        # torch.ops.sdnq.dequantize + F.linear
            "sdnq_eager": lambda x=x: F.linear(x, L.sdnq()),                 # sdnq's own dequant + F.linear
        }
        r = {"config": L.label, "shape": list(L.shape), "M": m, "op_vs_dense": c}
        for k, fn in fns.items():
            r[k] = bench(fn, f"linear {L.label} M={m} {k}", budget_s=budget)
        rows.append(r)
    return rows


# ---------------------------------------------------------------------------
# output


def _cell(r):
    return "—" if r is None else f"{r['gbps']:.2f} GB/s · {r['ms']:.2f} ms"


def md_tables(res: dict) -> str:
    m = res["machine"]
    head = (f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}; L3 {m['l3_cache']}), "
            f"torch {m['torch']} ({m['torch_threads']} threads), sdnq {m['sdnq']}, Python {m['python']}, "
            f"{m['date']}, comfy_sdnq {m['git']}. Allocator: {m['allocator']}.")
    lines = [head, "", f"Command: `{m['command']}`", ""]
    lines.append("**Memory bandwidth ceiling** (bf16 tensor of the output's size; bytes = read + write):")
    lines.append("")
    lines.append("| shape | MB | `clone()` (alloc + copy) | `copy_()` into a preallocated tensor |")
    lines.append("|---|---:|---:|---:|")
    for mc in res["memcpy"]:
        lines.append(f"| {mc['shape'][0]}x{mc['shape'][1]} | {mc['nbytes_tensor'] / 1e6:.1f} | "
                     f"{_cell(mc['clone'])} | {_cell(mc['copy_prealloc'])} |")
    lines.append("")
    comp = res.get("compiled") or {}
    for shape_key in dict.fromkeys(r["shape_key"] for r in res["dequant"]):
        lines.append(f"**Dequantization, {shape_key} bf16 weight** (GB/s = (compressed bytes + bf16 output bytes) "
                     f"/ median time; ms = median):")
        lines.append("")
        lines.append("| dtype | group | compressed MB | C ref | C fast | torch ref | sdnq eager | sdnq compiled "
                     "| C fast speed-up over sdnq eager |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in res["dequant"]:
            if r["shape_key"] != shape_key:
                continue
            t = r["timing"]
            c = comp.get(f"{shape_key}/{r['config']}")
            sp = t["sdnq"]["ms"] / t["fast"]["ms"]
            lines.append(f"| {r['config']} | {r['group_size']} | {r['compressed_bytes'] / 1e6:.2f} | "
                         f"{_cell(t.get('ref'))} | **{_cell(t['fast'])}** | {_cell(t.get('torch'))} | "
                         f"{_cell(t['sdnq'])} | {_cell(c) if c and 'ms' in c else '—'} | {sp:.1f}x |")
            if "svd_split" in r:
                for stage, name in (("elementwise", "↳ elementwise only"), ("svd_add", "↳ SVD add only")):
                    s = r["svd_split"][stage]
                    lines.append(f"| {name} | | | {_cell(s.get('ref'))} | {_cell(s['fast'])} | "
                                 f"{_cell(s.get('torch'))} | {_cell(s['sdnq'])} | | "
                                 f"{s['sdnq']['ms'] / s['fast']['ms']:.1f}x |")
        lines.append("")
    if res.get("linear"):
        lines.append("**Linear** `y = F.linear(x, W)`, x [M, 3072] bf16, median ms:")
        lines.append("")
        lines.append("| dtype | M | dense bf16 W (ceiling) | `F.linear` on SDNQ tensor (torch.ops.sdnq.linear) "
                     "| dequantize + `F.linear` | sdnq eager dequant + `F.linear` | op overhead vs dense |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for r in res["linear"]:
            lines.append(f"| {r['config']} | {r['M']} | {r['dense']['ms']:.2f} | **{r['sdnq_op']['ms']:.2f}** | "
                         f"{r['deq_linear']['ms']:.2f} | {r['sdnq_eager']['ms']:.2f} | "
                         f"+{r['sdnq_op']['ms'] - r['dense']['ms']:.2f} ms |")
        lines.append("")
    return "\n".join(lines)


def _txt(r):
    return "-" if r is None else f"{r['gbps']:.2f} ({r['ms']:.2f})"


def text_report(res: dict) -> str:
    m = res["machine"]
    out = [f"machine : {m['cpu']} | {m['cores']} cores | {' '.join(m['simd'])} | L3 {m['l3_cache']}",
           (f"software: torch {m['torch']} ({m['torch_threads']} threads) | sdnq {m['sdnq']} | "
            f"Python {m['python']} | comfy_sdnq backend {m['comfy_sdnq_backend']}"),
           f"date    : {m['date']} | comfy_sdnq {m['git']} | allocator {m['allocator']}", ""]
    for mc in res["memcpy"]:
        out.append(f"memcpy {mc['shape'][0]}x{mc['shape'][1]} bf16 ({mc['nbytes_tensor'] / 1e6:.1f} MB): "
                   f"clone {mc['clone']['gbps']:.2f} GB/s ({mc['clone']['ms']:.2f} ms), "
                   f"copy_ prealloc {mc['copy_prealloc']['gbps']:.2f} GB/s ({mc['copy_prealloc']['ms']:.2f} ms)")
    out.append("")
    comp = res.get("compiled") or {}
    hdr = f"{'dtype':<22}{'MB':>7} " + "".join(f"{h:>20}" for h in ("C ref", "C fast", "torch ref", "sdnq eager",
                                                                       "sdnq compiled")) + "  checks"
    for shape_key in dict.fromkeys(r["shape_key"] for r in res["dequant"]):
        out.append(f"Dequantization {shape_key} -> bf16   [GB/s (median ms)]")
        out.append(hdr)

        def cells(t):
            return "".join(f"{_txt(t.get(k)):>20}" for k in ("ref", "fast", "torch", "sdnq", "compiled"))
        for r in res["dequant"]:
            if r["shape_key"] != shape_key:
                continue
            t = dict(r["timing"])
            c = comp.get(f"{shape_key}/{r['config']}")
            if c and "ms" in c:
                t["compiled"] = c
            ch = r["checks"]
            flag = "ok" if ch["ok"] else "FAIL"
            if not ch["fast_vs_sdnq"]["equal"]:
                flag += f" (vs sdnq: {ch['fast_vs_sdnq']['differ']} differ, max rel " \
                        f"{ch['fast_vs_sdnq'].get('max_rel_elem', 0):.2g})"
            out.append(f"{r['config']:<22}{r['compressed_bytes'] / 1e6:>7.2f} " + cells(t) + "  " + flag)
            if "svd_split" in r:
                out.append(f"{'  elementwise only':<22}{'':>7} " + cells(r["svd_split"]["elementwise"]))
                out.append(f"{'  SVD add only':<22}{'':>7} " + cells(r["svd_split"]["svd_add"]))
        out.append("")
    if "error" in comp:
        out.append(f"sdnq compiled: {comp['error']}")
    if res.get("inductor_cache"):
        out.append(f"inductor cache before the compiled run: {res['inductor_cache']}")
    for k, c in comp.items():
        if isinstance(c, dict) and "compile_s" in c:
            out.append(f"sdnq compiled {k}: first call (compile) {c['compile_s']:.1f} s; bit-exact vs eager: "
                       f"{c['vs_eager']['equal']}; C fast vs compiled bit-exact: {c['vs_fast']['equal']}")
    out.append("")
    if res.get("linear"):
        out.append("Linear x[M,3072] bf16 @ W.T  [median ms]")
        out.append(f"{'dtype':<16}{'M':>5}{'dense W':>10}{'sdnq op':>10}{'deq+lin':>10}{'sdnq eager':>12}")
        for r in res["linear"]:
            out.append(f"{r['config']:<16}{r['M']:>5}{r['dense']['ms']:>10.2f}{r['sdnq_op']['ms']:>10.2f}"
                       f"{r['deq_linear']['ms']:>10.2f}{r['sdnq_eager']['ms']:>12.2f}")
    return "\n".join(out)


# ---------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (< 60 s): 4 dtypes, short timings, no compile")
    ap.add_argument("--json", metavar="PATH", help="write results here (default benchmarks/results/cpu-<date>.json, "
                                                   "with --quick cpu-<date>-quick.json)")
    ap.add_argument("--no-json", action="store_true", help="do not write a JSON file")
    ap.add_argument("--markdown", action="store_true", help="print the markdown tables")
    ap.add_argument("--shapes", default=None, help="comma-separated OUTxIN (default 3072x3072,3072x12288; "
                                                   "quick: 3072x3072)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timing per measurement (default 1.0)")
    ap.add_argument("--no-compiled", action="store_true", help="skip the sdnq compiled (inductor) column")
    ap.add_argument("--compiled-configs", default=",".join(COMPILED_CONFIGS))
    ap.add_argument("--compiled-timeout", type=float, default=240.0)
    ap.add_argument("--configs", default=None,
                    help="comma-separated subset of: " + ",".join(c[0] for c in CONFIGS) + " (default: all)")
    ap.add_argument("--no-linear", action="store_true")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each measurement wait up to S seconds for other processes to leave the CPU "
                         "(a shared machine); timings taken under load are flagged either way")
    ap.add_argument("--cold-alloc", action="store_true",
                    help="keep glibc's default allocator (large temporaries page-fault on every call) instead of "
                         "re-executing with a warm heap")
    ap.add_argument("--_compiled-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    shapes = a.shapes or ("3072x3072" if a.quick else "3072x3072,3072x12288")
    a.shapes = [tuple(int(v) for v in s.split("x")) for s in shapes.split(",")]
    a.budget = a.budget if a.budget is not None else (0.25 if a.quick else 1.0)
    a.compiled_configs = [c for c in a.compiled_configs.split(",") if c]
    return a


def main(argv=None) -> int:
    global WAIT_IDLE_S
    args = parse_args(argv)
    WAIT_IDLE_S = args.wait_idle
    if sdnq is None:
        print(f"bench_cpu: the sdnq package is required ({_SDNQ_ERROR})", file=sys.stderr)
        return 2
    if args._compiled_worker:
        compiled_worker(args)
        return 0
    t_start = time.perf_counter()
    torch.set_grad_enabled(False)
    res = {"machine": machine_info(), "settings": {"quick": args.quick, "budget_s": args.budget,
                                                   "configs": args.configs,
                                                   "shapes": [list(s) for s in args.shapes]},
           "memcpy": [], "dequant": [], "linear": []}
    if kernels.backend() != "c":
        loud("the comfy_sdnq C extension is not built: 'ref'/'fast' columns cannot run")
        return 1
    m = res["machine"]
    res["machine"]["foreign_load_start"] = wait_idle() if WAIT_IDLE_S > 0 else foreign_load()
    print(f"comfy_sdnq CPU benchmark | {m['cpu']} | {m['cores']} cores | torch {m['torch']} "
          f"({m['torch_threads']} threads) | sdnq {m['sdnq']} | {m['date']}", flush=True)

    wanted = args.configs.split(",") if args.configs else (QUICK_CONFIGS if args.quick else [c[0] for c in CONFIGS])
    unknown = set(wanted) - {c[0] for c in CONFIGS}
    if unknown:
        print(f"bench_cpu: unknown config(s) {sorted(unknown)}", file=sys.stderr)
        return 2
    configs = [c for c in CONFIGS if c[0] in wanted]
    # the compiled subprocess runs first so that it does not compete with the timings here
    compiled = {}
    if not args.quick and not args.no_compiled and args.compiled_configs:
        print(f"sdnq compiled (inductor) for {', '.join(args.compiled_configs)} in a subprocess ...", flush=True)
        compiled = run_compiled(args)
        CONTENDED.extend(compiled.pop("_contended", []))
        WAITED_S[0] += compiled.pop("_waited_s", 0.0)
        res["inductor_cache"] = compiled.pop("_inductor_cache", None)
    res["compiled"] = compiled

    for shape in args.shapes:
        shape_key = f"{shape[0]}x{shape[1]}"
        res["memcpy"].append(memcpy_baseline(shape, args.budget))
        weight = make_weight(shape)
        big = shape[0] * shape[1] > 3072 * 3072
        for label, wdtype, use_svd in configs:
            t0 = time.perf_counter()
            L = Layer(label, wdtype, use_svd, weight)
            checks = check_layer(L)
            # the slow references only on the first shape: they do not inform the bandwidth picture
            impls = ("fast", "sdnq") if big else IMPLS
            row = {"shape_key": shape_key, "shape": list(shape), "config": label, "weights_dtype": wdtype,
                   "use_svd": use_svd, "group_size": L.group_size, "compressed_bytes": L.compressed_bytes,
                   "svd_bytes": L.svd_bytes, "out_bytes": L.out_bytes, "checks": checks,
                   "timing": bench_layer(L, impls, args.budget)}
            if use_svd:
                row["svd_split"] = bench_svd_split(L, impls, args.budget)
            res["dequant"].append(row)
            t = row["timing"]
            print(f"  {shape_key} {label:<16} fast {t['fast']['gbps']:6.2f} GB/s ({t['fast']['ms']:7.2f} ms)  "
                  f"sdnq eager {t['sdnq']['gbps']:6.2f} GB/s ({t['sdnq']['ms']:7.2f} ms)  "
                  f"[{time.perf_counter() - t0:.1f} s]", flush=True)
            if not args.no_linear and not big and label in LINEAR_CONFIGS:
                res["linear"] += bench_linear(L, (1, 16) if args.quick else (1, 16, 256), args.budget)
            del L

    if CONTENDED:  # a warning, not a failure: the exit status reports correctness only
        loud(f"other processes kept CPU cores busy while timing: {', '.join(CONTENDED)}; these timings on this "
             f"{os.cpu_count()}-core machine are unreliable - rerun on an idle machine (or with --wait-idle 300)",
             "TIMINGS UNRELIABLE")
    res["contended"] = CONTENDED
    res["waited_idle_s"] = WAITED_S[0]
    res["errors"] = ERRORS
    res["runtime_s"] = time.perf_counter() - t_start
    print()
    print(text_report(res))
    if args.markdown:
        print()
        print(md_tables(res))
    if not args.no_json:
        name = f"cpu-{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}.json"
        path = args.json or os.path.join(ROOT, "benchmarks", "results", name)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(res, f, indent=1)
        print(f"\nJSON: {path}")
    print(f"runtime: {res['runtime_s']:.1f} s (of which {res['waited_idle_s']:.1f} s waiting for an idle machine)")
    if ERRORS:
        print(f"\n{len(ERRORS)} CHECK(S) FAILED:\n  " + "\n  ".join(ERRORS), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
