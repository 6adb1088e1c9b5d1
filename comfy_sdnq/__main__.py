"""Command line: python -m comfy_sdnq <command> (also installed as `comfy-sdnq`).

    demo      quantize an embedded small model, save it, reload it, verify it against the source
    info      the build: backend, OpenMP, types
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch


def _demo_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small transformer block with Flux's layer proportions (hidden 512), random weights."""
    g = torch.Generator().manual_seed(seed)
    d = 512

    def w(*shape):
        return (torch.randn(*shape, generator=g) / math.sqrt(shape[-1])).to(torch.bfloat16)

    return {
        "img_attn.qkv.weight": w(3 * d, d), "img_attn.qkv.bias": w(3 * d),
        "img_attn.proj.weight": w(d, d), "img_attn.proj.bias": w(d),
        "img_mlp.0.weight": w(4 * d, d), "img_mlp.0.bias": w(4 * d),
        "img_mlp.2.weight": w(d, 4 * d), "img_mlp.2.bias": w(d),
        "img_norm.weight": torch.ones(d, dtype=torch.bfloat16),
    }


def demo(args) -> int:
    import comfy_sdnq
    from comfy_sdnq import kernels, layout

    cfg = {"weights_dtype": args.dtype, "use_svd": args.svd_rank > 0, "svd_rank": max(args.svd_rank, 1),
           "group_size": args.group_size}
    src = _demo_weights()
    print(f"comfy_sdnq {comfy_sdnq.__version__}, backend {kernels.backend()}, torch {torch.__version__}")
    print(f"quantizing {len(src)} tensors to {args.dtype}" + (f" + SVD r{args.svd_rank}" if args.svd_rank else ""))
    t0 = time.perf_counter()
    sd = {k: (comfy_sdnq.quantize(v, args.dtype, group_size=args.group_size, use_svd=args.svd_rank > 0,
                                  svd_rank=max(args.svd_rank, 1)) if v.dim() == 2 else v) for k, v in src.items()}
    t_quant = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or os.path.join(tmp, "demo-sdnq.safetensors")
        comfy_sdnq.save(sd, path, cfg)
        size = os.path.getsize(path)
        t0 = time.perf_counter()
        back = comfy_sdnq.load(path)
        t_load = time.perf_counter() - t0
        worst = 0.0
        print(f"{'tensor':24s} {'shape':>12s} {'type':>8s} {'bytes':>10s} {'bf16':>10s} {'rel. error':>10s}")
        for k, v in src.items():
            t = back[k]
            if layout.is_sdnq(t):
                if not torch.equal(t.dequantize(), sd[k].dequantize()):
                    print(f"{k}: reloaded weights differ from the quantized ones", file=sys.stderr)
                    return 1
                err = float((t.dequantize().float() - v.float()).norm() / v.float().norm())
                worst = max(worst, err)
                print(f"{k:24s} {str(tuple(v.shape)):>12s} {args.dtype:>8s} {layout.compressed_nbytes(t):>10d} "
                      f"{v.numel() * 2:>10d} {err:>10.4f}")
            elif not torch.equal(t, v):
                print(f"{k}: plain tensor changed on the way", file=sys.stderr)
                return 1
        x = torch.randn(16, 512, dtype=torch.bfloat16)
        y_ref = torch.nn.functional.linear(x, src["img_attn.qkv.weight"])
        y = torch.nn.functional.linear(x, back["img_attn.qkv.weight"])
        out_err = float((y.float() - y_ref.float()).norm() / y_ref.float().norm())
    dense = sum(v.numel() * 2 for v in src.values())
    print(f"file {size} bytes vs {dense} bytes bf16 ({size / dense:.3f}x); quantize {t_quant:.2f} s, "
          f"load {t_load * 1e3:.1f} ms")
    print(f"worst weight error {worst:.4f}, qkv output error {out_err:.4f}")
    limit = {2: 0.5, 3: 0.3, 4: 0.15, 5: 0.08, 6: 0.04}.get(comfy_sdnq.dtypes.get(args.dtype).bits, 0.02)
    ok = worst <= limit
    print("verify:", "OK" if ok else f"FAILED (error above {limit})")
    return 0 if ok else 1


def info(args) -> int:
    import comfy_sdnq
    from comfy_sdnq import dtypes, kernels

    print(f"comfy_sdnq {comfy_sdnq.__version__}")
    print(f"backend: {kernels.backend()}")
    if kernels.backend() == "c":
        from comfy_sdnq import _C

        print(f"C API {_C.API_VERSION}, OpenMP {'on' if _C.OPENMP else 'off'}, threads {torch.get_num_threads()}")
    print(f"types: {len(dtypes.TYPES)} (+{len(dtypes.ALIASES)} aliases)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m comfy_sdnq", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="quantize, save, reload and verify an embedded small model")
    p.add_argument("--dtype", default="uint4", help="SDNQ weights dtype (default uint4)")
    p.add_argument("--svd-rank", type=int, default=32, help="SVD rank, 0 for none (default 32)")
    p.add_argument("--group-size", type=int, default=0, help="group size, 0 auto (default)")
    p.add_argument("--out", help="keep the SDNQ file at this path")
    p.set_defaults(fn=demo)
    p = sub.add_parser("info", help="show the build")
    p.set_defaults(fn=info)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
