"""Command line: python -m comfy_sdnq <command> (installed as `comfy-sdnq` too).

    demo      build a small Flux-architecture model, convert it to SDNQ, load it (through
              ComfyUI's stock loader when ComfyUI is importable, else standalone), sample a
              few steps; prints bytes vs bf16, per-layer error, step time, offload statistics
    convert   quantize a dense model (diffusers folder, pipeline, or .safetensors) to SDNQ
    inspect   per-layer type, group size, SVD rank and bytes of an SDNQ model, totals vs bf16
    verify    reload a converted model and compare it with its source (exit status 1 on failure)
    bench     the benchmark suite for this machine (benchmarks/ of a source checkout)
    info      the build: backend, OpenMP, CUDA, types
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


# ---------------------------------------------------------------------------
# inspect


def _group(p) -> str:
    if p.scale.numel() == 1 and not p.codebook:
        return "tensor"
    return ("codebook/" if p.codebook else "") + str(p.view[1])


def layer_rows(sd: dict) -> tuple[list[dict], int, int]:
    """per-layer rows of an SDNQ state dict, and the bytes and bf16 bytes of all other tensors"""
    from . import dtypes, layout

    rows, other, other_bf16 = [], 0, 0
    for key, t in sd.items():
        if layout.is_sdnq(t):
            p = t.params
            rows.append({"key": key, "shape": list(p.orig_shape), "type": p.weight_type.name, "group": _group(p),
                         "svd": 0 if p.svd_up is None else min(p.svd_up.shape), "bytes": layout.compressed_nbytes(t),
                         "bf16_bytes": math.prod(p.orig_shape) * 2,
                         "scale_type": dtypes.get(p.scale_type).name if p.scale_type else ""})
        else:
            other += t.nbytes
            other_bf16 += t.numel() * 2 if t.is_floating_point() else t.nbytes
    return rows, other, other_bf16


def _components(path: str) -> list[tuple[str, str]]:
    """(name, path) of the SDNQ parts of a model path: a pipeline's quantized components, or itself"""
    from . import files

    if os.path.isfile(os.path.join(path, "model_index.json")):
        out = []
        for name in sorted(os.listdir(path)):
            p = os.path.join(path, name)
            if os.path.isdir(p) and (os.path.isfile(os.path.join(p, "quantization_config.json")) or
                                     "quantization_config" in (files._read_json(os.path.join(p, "config.json"))
                                                              if os.path.isfile(os.path.join(p, "config.json"))
                                                              else {})):
                out.append((name, p))
        return out
    return [("", path)]


def cmd_inspect(args) -> int:
    import comfy_sdnq

    total = total_bf16 = 0
    report = []
    for name, path in _components(args.path):
        sd = comfy_sdnq.load(path)
        rows, other, other_bf16 = layer_rows(sd)
        qc = comfy_sdnq.load_config(path)
        q = sum(r["bytes"] for r in rows)
        q16 = sum(r["bf16_bytes"] for r in rows)
        total += q + other
        total_bf16 += q16 + other_bf16
        report.append({"component": name, "path": path, "config": qc.raw, "layers": rows,
                       "quantized_bytes": q, "quantized_bf16_bytes": q16, "other_bytes": other,
                       "other_bf16_bytes": other_bf16})
        if args.json:
            continue
        title = f"{name}: " if name else ""
        print(f"{title}{path}  (sdnq_version {qc.raw.get('sdnq_version', '?')}, weights_dtype "
              f"{qc.weights_dtype.name})")
        if not args.summary:
            print(f"  {'layer':<56} {'shape':>14} {'type':>16} {'group':>9} {'svd':>4} {'bytes':>12} {'vs bf16':>8}")
            for r in rows:
                print(f"  {r['key'][-56:]:<56} {'x'.join(map(str, r['shape'])):>14} {r['type']:>16} "
                      f"{r['group']:>9} {r['svd']:>4} {r['bytes']:>12,} {r['bytes'] / r['bf16_bytes']:>8.3f}")
        types = {}
        for r in rows:
            types[r["type"]] = types.get(r["type"], 0) + 1
        print(f"  {len(rows)} quantized layers ({', '.join(f'{n} {t}' for t, n in sorted(types.items()))}): "
              f"{_mb(q)} vs {_mb(q16)} bf16 ({q / max(q16, 1):.3f}x); other tensors {_mb(other)}")
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print(f"total {_mb(total)} vs {_mb(total_bf16)} as bf16 ({total / max(total_bf16, 1):.3f}x)")
    return 0


# ---------------------------------------------------------------------------
# convert


def _config_from_args(args) -> dict:
    cfg = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            cfg = json.load(f)
    for k in ("weights_dtype", "group_size", "svd_rank", "dynamic_loss_threshold", "scale_dtype",
              "quantized_matmul_dtype"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = v
    if args.svd_rank:
        cfg["use_svd"] = True
    for flag, key in (("dynamic", "use_dynamic_quantization"), ("hadamard", "use_hadamard"),
                      ("codebook", "use_codebook"), ("quantized_matmul", "use_quantized_matmul"),
                      ("quant_conv", "quant_conv"), ("quant_embedding", "quant_embedding")):
        if getattr(args, flag):
            cfg[key] = True
    if args.no_default_skips:
        cfg["add_skip_keys"] = False
    if args.skip:
        cfg["modules_to_not_convert"] = list(cfg.get("modules_to_not_convert") or []) + args.skip
    for spec in args.override or []:
        dtype, _, names = spec.partition("=")
        if not names:
            raise SystemExit(f"--override {spec!r}: expected DTYPE=module[,module...]")
        cfg.setdefault("modules_dtype_dict", {}).setdefault(dtype, []).extend(n for n in names.split(",") if n)
    cfg.setdefault("weights_dtype", "int8")
    return cfg


def cmd_convert(args) -> int:
    from . import converter
    from .errors import SdnqError

    cfg = _config_from_args(args)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: None}[args.torch_dtype]
    last = [0.0]

    def progress(done, total, key):
        import time

        now = time.perf_counter()
        if now - last[0] > 0.5 or done == total:
            last[0] = now
            print(f"\r  {done}/{total} tensors  {key[-60:]:<60}", end="", file=sys.stderr, flush=True)

    try:
        report = converter.convert(args.src, args.dst, cfg, device=args.device, torch_dtype=dtype,
                                   components=args.components, overwrite=args.overwrite,
                                   max_shard_size=int(args.max_shard_gb * 2**30), progress=progress)
    except SdnqError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    worst = max(report.quantized, key=lambda r: r.error)
    print(f"{args.dst}: {len(report.quantized)} layers quantized, {len(report.layers) - len(report.quantized)} "
          f"left dense, on {report.device} in {report.seconds:.1f} s")
    print(f"  {_mb(report.nbytes)} vs {_mb(report.dense_nbytes)} as bf16 ({report.nbytes / report.dense_nbytes:.3f}x);"
          f" worst layer error {worst.error:.4f} ({worst.key}, {worst.dtype})")
    return 0


# ---------------------------------------------------------------------------
# verify


def default_bound(type_name: str) -> float:
    """the relative weight error a layer of this type should stay within: 4 steps of its
    precision (ints: the value bits; floats: mantissa bits + 1), at most 0.9"""
    from . import dtypes

    t = dtypes.get(type_name)
    p = t.bits - (0 if t.is_unsigned else 1) if t.is_integer else t.mantissa + 1
    return min(0.9, 4.0 * 2.0 ** -p)


def _dense_source(path: str):
    """key -> tensor reader of a dense model folder / file"""
    from .converter import _weights
    from .safetensors_io import SafetensorsFile

    if os.path.isdir(path):
        files, _ = _weights(path)
        shards = [SafetensorsFile(os.path.join(path, f)) for f in files]
    else:
        shards = [SafetensorsFile(path)]
    return {k: st for st in shards for k in st.keys()}


def verify(src: str, converted: str, max_error: float | None = None, out=print) -> bool:
    import comfy_sdnq
    from . import layout

    pairs = []
    if os.path.isfile(os.path.join(converted, "model_index.json")):
        for name, path in _components(converted):
            pairs.append((os.path.join(src, name), path))
    else:
        pairs.append((src, converted))
    ok = True
    worst = (0.0, "", "")
    n = 0
    for s, c in pairs:
        dense = _dense_source(s)
        sd = comfy_sdnq.load(c)
        missing = sorted(set(dense) - set(sd))
        extra = sorted(set(sd) - set(dense))
        if missing or extra:
            out(f"FAIL {c}: keys differ from {s}: missing {missing[:5]}, unexpected {extra[:5]}")
            ok = False
        for k in sorted(set(dense) & set(sd)):
            ref = dense[k].get(k)
            t = sd[k]
            if layout.is_sdnq(t):
                n += 1
                w = t.dequantize().float()
                err = float((w - ref.float()).norm() / ref.float().norm().clamp(min=1e-30))
                bound = max_error if max_error is not None else default_bound(t.params.weight_type.name)
                if not math.isfinite(err) or err > bound:
                    out(f"FAIL {k}: relative error {err:.4f} above {bound:.4f} ({t.params.weight_type.name})")
                    ok = False
                if err > worst[0]:
                    worst = (err, k, t.params.weight_type.name)
            elif t.dtype != ref.dtype or t.shape != ref.shape or not torch.equal(t, ref):
                out(f"FAIL {k}: unquantized tensor differs from the source")
                ok = False
    out(f"{'OK' if ok else 'FAILED'}: {n} quantized layers checked, worst relative error {worst[0]:.4f} "
        f"({worst[1]}, {worst[2]}); bound {'%.4f' % max_error if max_error is not None else 'per type: 4 steps of its precision'}")
    return ok


def cmd_verify(args) -> int:
    from .errors import SdnqError

    try:
        return 0 if verify(args.src, args.converted, args.max_error) else 1
    except SdnqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------
# bench, info


def cmd_bench(args, rest) -> int:
    script = "bench_gpu.py" if torch.cuda.is_available() and not args.cpu else "bench_cpu.py"
    path = os.path.join(ROOT, "benchmarks", script)
    if not os.path.isfile(path):
        print(f"error: {path} not found: the benchmarks ship with the source checkout, not the wheel",
              file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, path] + rest)


def cmd_info(args) -> int:
    import comfy_sdnq
    from . import dtypes, kernels

    print(f"comfy_sdnq {comfy_sdnq.__version__}, torch {torch.__version__}")
    print(f"backend: {kernels.backend()}")
    if kernels.backend() == "c":
        from . import _C

        print(f"C API {_C.API_VERSION}, OpenMP {'on' if _C.OPENMP else 'off'}, threads {torch.get_num_threads()}")
    print(f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}")
    print(f"types: {len(dtypes.TYPES)} (+{len(dtypes.ALIASES)} aliases)")
    return 0


def cmd_demo(args) -> int:
    from . import demo

    return demo.run(args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m comfy_sdnq", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo", help="the main job on an embedded default model")
    p.add_argument("--dtype", default="uint4", help="SDNQ weights dtype (default uint4)")
    p.add_argument("--svd-rank", type=int, default=32, help="SVD rank, 0 for none (default 32)")
    p.add_argument("--steps", type=int, default=4, help="sampling steps (default 4)")
    p.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    p.add_argument("--offload", choices=["none", "model", "layer"], default="none",
                   help="standalone offload mode (default none)")
    p.add_argument("--standalone", action="store_true", help="skip ComfyUI even when it is importable")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--keep", help="keep the converted model in this folder")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("convert", help="quantize a dense model to SDNQ")
    p.add_argument("src", help="diffusers pipeline / component folder, or a .safetensors file")
    p.add_argument("dst", help="output folder, or a .safetensors file (single-file SDNQ)")
    p.add_argument("--dtype", dest="weights_dtype", help="weights dtype (default int8, sdnq's)")
    p.add_argument("--group-size", type=int, dest="group_size", help="group size: 0 auto, -1 row-wise, -2 tensor")
    p.add_argument("--svd-rank", type=int, dest="svd_rank", help="add an SVD low-rank branch of this rank")
    p.add_argument("--dynamic", action="store_true", help="per-layer dtype by error threshold (sdnq's dynamic mode)")
    p.add_argument("--threshold", type=float, dest="dynamic_loss_threshold",
                   help="dynamic mode's relative-MSE threshold (default 10^-(bits/2))")
    p.add_argument("--hadamard", action="store_true", help="Hadamard rotation (use_hadamard)")
    p.add_argument("--codebook", action="store_true", help="Lloyd-Max codebook (use_codebook)")
    p.add_argument("--scale-dtype", dest="scale_dtype", help="double-quantize scales to this type")
    p.add_argument("--quantized-matmul", action="store_true", help="store for quantized matmul")
    p.add_argument("--quantized-matmul-dtype", dest="quantized_matmul_dtype")
    p.add_argument("--quant-conv", action="store_true", help="quantize convolutions too")
    p.add_argument("--quant-embedding", action="store_true", help="quantize embeddings too")
    p.add_argument("--skip", action="append", metavar="MODULE", help="keep this module dense (repeatable)")
    p.add_argument("--no-default-skips", action="store_true", help="do not add sdnq's per-model skip list")
    p.add_argument("--override", action="append", metavar="DTYPE=MODULES",
                   help="per-layer dtype, e.g. int8=proj_out.weight,norm_out.linear.weight (repeatable)")
    p.add_argument("--config", help="a JSON file of sdnq quantization options (flags override it)")
    p.add_argument("--components", nargs="+", help="pipeline components to quantize (default: all but the VAE)")
    p.add_argument("--device", help="quantize on this device (default: cuda when available)")
    p.add_argument("--torch-dtype", choices=["bf16", "fp16", "fp32"], help="compute dtype (default: the weights')")
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="folder output shard size (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(fn=cmd_convert)

    p = sub.add_parser("inspect", help="per-layer report of an SDNQ model")
    p.add_argument("path")
    p.add_argument("--summary", action="store_true", help="totals only")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("verify", help="compare a converted model with its source")
    p.add_argument("src", help="the dense source (folder, pipeline or file)")
    p.add_argument("converted", help="the SDNQ model")
    p.add_argument("--max-error", type=float, help="relative weight error bound (default: per type)")
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("bench", help="run the benchmark suite for this machine (extra arguments pass through)")
    p.add_argument("--cpu", action="store_true", help="the CPU suite even when CUDA is available")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("info", help="show the build")
    p.set_defaults(fn=cmd_info)

    args, rest = ap.parse_known_args(argv)
    if args.cmd == "bench":
        return args.fn(args, rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        # Ctrl-C: the converter and the writers have already removed their temporary files
        print("\ninterrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
