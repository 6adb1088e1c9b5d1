#!/usr/bin/env python
"""Every CUDA kernel of comfy_sdnq once, on small odd shapes, for compute-sanitizer:

    compute-sanitizer --tool memcheck  --error-exitcode 1 python tests/cuda_sanitizer.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python tests/cuda_sanitizer.py

torch's caching allocator is switched off (PYTORCH_NO_CUDA_MEMORY_CACHING=1, set below before
torch is imported), so every tensor is its own cudaMalloc and memcheck sees an access one
element past any of them. Shapes are chosen so each kernel runs its edge cases: partial
units and blocks, tails, partial tiles, K tails, rows/columns outside the last tile. Each
result is also compared with the C core or dense math (loosely: this script is about memory
errors and races; tests/test_cuda.py checks the numbers). Exit status 1 on a mismatch.
"""
import os
import sys

os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from comfy_sdnq import dtypes, kernels, ops  # noqa: E402

DEV = "cuda"
BF16, F32 = torch.bfloat16, torch.float32
failures = []


def check(name, ok):
    print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
    if not ok:
        failures.append(name)


def codes_for(t, n, gen):
    words = t.storage_numel(n) if t.is_packed else n
    size = torch.empty((), dtype=t.storage_dtype).element_size()
    raw = torch.randint(0, 256, (words * size,), dtype=torch.uint8, generator=gen).view(t.storage_dtype)
    if t.name == "float8_e4m3fn":  # no NaN codes: the GEMV/W8A8 checks compare numbers
        b = raw.view(torch.uint8)
        raw = torch.where((b & 0x7F) == 0x7F, torch.zeros_like(b), b).view(t.storage_dtype)
    return raw


def side(t, view, gen, codebook=False):
    o, _, i = view
    scale = (torch.randn((o, t.levels if codebook else 1, i), generator=gen) * 0.05).to(BF16)
    zp = (torch.randn((o, 1, i), generator=gen) * 0.1).to(BF16) if t.is_unsigned and not codebook else None
    return scale, zp


def same(a, b):
    a, b = a.float().cpu(), b.float().cpu()
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def main():
    if not torch.cuda.is_available() or kernels.cuda_backend() != "cuda":
        print("cuda_sanitizer: needs a CUDA device and comfy_sdnq._C_cuda", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)

    # dequantize: flat kernel + tail (int8, 15 codes), flat per-element path (uint4 groups of 6, conv
    # inner 3), 1/3/5-bit units, general kernel (uint11, codebook, transposed output, unaligned codes)
    cases = [("int8", (3, 5, 1), False, False), ("uint4", (6, 6, 1), False, False), ("int5", (3, 8, 3), False, False),
             ("uint1", (5, 8, 1), False, False), ("int3", (7, 8, 1), False, False),
             ("float8_e4m3fn", (2, 9, 1), False, False), ("uint11", (3, 16, 1), False, False),
             ("uint4", (5, 6, 2), True, False), ("int8", (1, 7, 5), False, True), ("float16", (3, 3, 1), False, False)]
    for name, view, codebook, transposed in cases:
        t = dtypes.get(name)
        n = view[0] * view[1] * view[2]
        raw = codes_for(t, n, gen)
        scale, zp = side(t, view, gen, codebook)
        shape = (view[2], view[1]) if transposed else (n,)
        want = kernels.dequantize(t, raw, scale, zp, view, shape, BF16, transposed=transposed, codebook=codebook,
                                  impl="fast")
        got = kernels.dequantize(t, raw.to(DEV), scale.to(DEV), None if zp is None else zp.to(DEV), view, shape, BF16,
                                 transposed=transposed, codebook=codebook, impl="fast")
        check(f"dequantize {name} {view}{' codebook' if codebook else ''}{' transposed' if transposed else ''}",
              same(got, want))
    t = dtypes.get("uint4")
    buf = codes_for(t, 64 + 2, gen)
    scale, zp = side(t, (8, 8, 1), gen)
    raw_dev = buf.to(DEV)[1:33]  # one byte in: unaligned, general kernel
    got = kernels.dequantize(t, raw_dev, scale.to(DEV), zp.to(DEV), (8, 8, 1), (64,), BF16, impl="fast")
    want = kernels.dequantize(t, buf[1:33], scale, zp, (8, 8, 1), (64,), BF16, impl="fast")
    check("dequantize uint4 unaligned", same(got, want))

    # SVD add (partial row and column tiles, rank not a multiple of the chunk) and Hadamard
    w = torch.randn(19, 70, generator=gen).to(BF16)
    up, down = torch.randn(19, 3, generator=gen).to(BF16), torch.randn(70, 3, generator=gen).to(BF16).t()
    want = kernels.svd_add_(w.clone(), up, down, impl="fast")
    got = kernels.svd_add_(w.to(DEV), up.to(DEV), down.to(DEV), impl="fast")
    check("svd_add 19x70 rank 3", bool(((got.float().cpu() - want.float()).abs() <= 0.02).all()))
    for h, h4 in ((64, True), (32, False), (4096, True)):
        w = torch.randn(3, max(128, h), generator=gen).to(BF16)
        want = kernels.hadamard_(w.clone(), h, h4, impl="fast")
        got = kernels.hadamard_(w.to(DEV), h, h4, impl="fast")
        check(f"hadamard h={h}", bool(((got.float().cpu() - want.float()).abs() <= 0.05).all()))

    # GEMV: N not a multiple of the 16-row block, K not a multiple of the 128-code chunk, M odd
    for name, group in (("uint4", 32), ("int8", 96), ("int5", 32), ("float8_e4m3fn", 96)):
        t = dtypes.get(name)
        n_out, k_in, M = 21, 96, 3
        view = (n_out * k_in // group, group, 1)
        raw = codes_for(t, n_out * k_in, gen).to(DEV)
        scale, zp = side(t, view, gen)
        scale, zp = scale.to(DEV), None if zp is None else zp.to(DEV)
        x = torch.randn(M, k_in, generator=gen).to(BF16).to(DEV)
        bias = torch.randn(n_out, generator=gen).to(BF16).to(DEV)
        y = kernels.gemv(t, raw, scale, zp, view, x, bias, n_out)
        w = kernels.dequantize(t, raw, scale, zp, view, (n_out, k_in), BF16, impl="fast")
        ref = x.float() @ w.float().t() + bias.float()
        check(f"gemv {name} M={M} N={n_out} K={k_in}",
              y is not None and bool(((y.float() - ref).abs() <= 0.02 * ref.abs().amax()).all()))

    # GEMV with the SVD branch: the low-rank blocks (shared-memory reduction, two ranks steps, k
    # ranges over several blocks) for each way of reading down, one and two token tiles
    t = dtypes.get("uint4")
    n_out, k_in, rank = 40, 2048, 18
    view = (n_out * k_in // 128, 128, 1)
    raw = codes_for(t, n_out * k_in, gen).to(DEV)
    scale, zp = (v.to(DEV) for v in side(t, view, gen))
    w = kernels.dequantize(t, raw, scale, zp, view, (n_out, k_in), BF16, impl="fast").float()
    up = (torch.randn(n_out, rank, generator=gen) * 0.1).to(BF16).to(DEV)
    for form, down in (("k pairs", torch.randn(rank, k_in, generator=gen)),
                       ("rank pairs", torch.randn(k_in, rank, generator=gen).t()),
                       ("elements", torch.randn(rank, 2 * k_in, generator=gen)[:, ::2])):
        down = (down * 0.1).to(BF16).to(DEV)
        for M in (1, 11):
            x = torch.randn(M, k_in, generator=gen).to(BF16).to(DEV)
            y = kernels.gemv(t, raw, scale, zp, view, x, None, n_out, up, down)
            ref = x.float() @ w.t() + (x.float() @ down.float().t()) @ up.float().t()
            check(f"gemv svd rank {rank} {form} M={M}",
                  y is not None and bool(((y.float() - ref).abs() <= 0.02 * ref.abs().amax()).all()))

    # W8A8 pieces: row quantization (int8, fp8), cuBLASLt int8 + epilogue, fp8 fused and fp32 + epilogue
    # (rows of 37: the scalar kernel; 1024: one warp per row; 3072, 4104, 20000 and 24576: 2, 3, 14
    # and 16 warps)
    for kind in ("int8", "fp8"):
        for rows, cols in ((5, 37), (3, 1024), (5, 3072), (3, 4104), (2, 20000), (2, 24576)):
            x = torch.randn(rows, cols, generator=gen).to(BF16).to(DEV)
            q, s = kernels.quantize_rows(x, kind)
            back = q.float() * s[:, None]
            check(f"quantize_rows {kind} {rows}x{cols}",
                  bool(((back - x.float()).abs() <= 0.07 * x.float().abs().amax(1, keepdim=True)).all()))
    # the epilogue's vector kernel: 130 8-column units (two blocks along N), 7 rows (a partial row step)
    acc = torch.randint(-1000, 1000, (7, 1040), generator=gen, dtype=torch.int32).to(DEV)
    sa, sb = torch.rand(7, generator=gen).to(DEV), torch.rand(1040, generator=gen).to(DEV)
    bias = torch.randn(1040, generator=gen).to(BF16).to(DEV)
    y = kernels.scale_epilogue(acc, sa, sb, bias, BF16)
    want = (acc.float() * sa[:, None] * sb[None, :] + bias.float()).to(BF16)
    check("scale_epilogue 7x1040", bool(torch.equal(y, want)))
    # the fused int8 GEMM (sm_90): partial tiles in M, N and K < 128 (77x200x48), a K tail (300x136x1040),
    # the big tile with partial tiles (2000x2056), the small one looping over three tiles per block
    i8_ok = kernels.i8_gemm_available(torch.device(DEV))
    if torch.cuda.get_device_capability()[0] == 9:  # it must run on Hopper; elsewhere it is refused
        check("i8_gemm available on compute capability 9.0", i8_ok)
    if i8_ok:
        for M, N, K in ((77, 200, 48), (300, 136, 1040), (2000, 2056, 32), (3000, 2048, 64)):
            a8 = torch.randint(-128, 128, (M, K), generator=gen, dtype=torch.int8).to(DEV)
            b8 = torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8).to(DEV)
            sa, sb = torch.rand(M, generator=gen).to(DEV), torch.rand(N, generator=gen).to(DEV)
            bias = torch.randn(N, generator=gen).to(BF16).to(DEV)
            y = kernels.i8_gemm(a8, b8, sa, sb, bias, BF16)
            want = kernels.scale_epilogue(kernels.lt_matmul(a8, b8, False, torch.int32), sa, sb, bias, BF16)
            check(f"i8_gemm {M}x{N}x{K}", y is not None and bool(torch.equal(y, want)))
    # the one-pass int8 re-quantization (the grouped kernel's int8 form) against its two steps, with
    # quantize_rows' scales and with the scales it derives (never below them)
    t = dtypes.get("uint4")
    for rows, cols in ((72, 200), (130, 264)):
        view = (rows * cols // 8, 8, 1)
        raw = codes_for(t, rows * cols, gen).to(DEV)
        scale, zp = side(t, view, gen)
        scale, zp = scale.to(DEV), zp.to(DEV)
        w = kernels.dequantize(t, raw, scale, zp, view, (rows, cols), BF16)
        q, s = kernels.quantize_rows(w, "int8")
        one = kernels.dequantize_q8(t, raw, scale, zp, view, (rows, cols), BF16, s)
        check(f"dequantize_q8 {rows}x{cols}", one is not None and bool(torch.equal(one[0], q)))
        one = kernels.dequantize_q8(t, raw, scale, zp, view, (rows, cols), BF16)
        check(f"dequantize_q8 {rows}x{cols} derived scales", one is not None and bool((one[1] >= s).all()))
    for name, path in (("int8", "w8a8_int8"), ("float8_e4m3fn", "w8a8_fp8"), ("uint4", "w4a8")):
        t = dtypes.get(name)
        n_out, k_in, M = 24, 64, 20
        view = (n_out * k_in // 32, 32, 1) if name == "uint4" else (n_out, k_in, 1)
        raw = codes_for(t, n_out * k_in, gen).to(DEV)
        scale, zp = side(t, view, gen)
        if name != "uint4":
            scale = torch.full_like(scale, 0.001)
        scale, zp = scale.to(DEV), None if zp is None else zp.to(DEV)
        x = torch.randn(M, k_in, generator=gen).to(BF16).to(DEV)
        y, ran = ops.linear_cuda(x, raw, scale, zp, None, None, None, t.id, view, (n_out, k_in), 0, 0, path=path)
        w = kernels.dequantize(t, raw, scale, zp, view, (n_out, k_in), F32, impl="fast")
        ref = x.float() @ w.t()
        err = ((y.float() - ref).norm() / ref.norm()).item()
        check(f"{path} {name} M={M} (ran {ran}, rel err {err:.4f})", ran == path and err < 0.1)
    torch.cuda.synchronize()
    print(f"cuda_sanitizer: {len(failures)} failure(s)" + (": " + ", ".join(failures) if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
