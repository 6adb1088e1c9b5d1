#!/usr/bin/env python
"""Offloading benchmark: one denoising step of a Flux.1-dev-sized transformer, every way
comfy_sdnq can run it, and the old fallback.

    python benchmarks/bench_offload.py --out results/offload-h100.json          # the GPU run
    python benchmarks/bench_offload.py --device cpu --blocks 1 --tiny           # smoke run (seconds)

The model is FluxTransformer2DModel with the Flux.1-dev config (19 double + 38 single
blocks, hidden 3072), random weights. It is built on the meta device and filled layer
by layer: every Linear of the blocks is drawn on the GPU and quantized straight to SDNQ
(comfy_sdnq.quantize, uint4 + SVD rank 32 unless told otherwise), then kept on the host,
so no 24 GB bf16 copy is ever needed for it. The rest stays bf16. One step = one
transformer forward at 1024x1024 (4096 image tokens, 512 text tokens), batch 1, bf16.

Rows (all in one process, in this order):
  sdnq none      comfy_sdnq, the compressed model resident on the GPU
  sdnq model     offload "model": moved in on the first call (timed apart), then resident
  sdnq layer     offload "layer": blocks streamed compressed, under the VRAM cap
  bf16 resident  the same weights dequantized to bf16, resident (24 GB)
  bf16 accelerate  the bf16 model under accelerate.cpu_offload, under the VRAM cap
  sdnq accelerate  the SDNQ model under accelerate.cpu_offload (accelerate's hooks moving the
                   compressed weights per module), under the VRAM cap
The VRAM cap (torch.cuda.set_per_process_memory_fraction) is below the compressed size
(default: half of it); the unconstrained rows run without it. Outputs of every row are
compared with "sdnq none" (model/layer: identical; bf16: the dequantization differs only
by rounding order). Targets: layer <= 1.25x our resident step, accelerate >= 10x layer.

Prints a markdown table (with the GPU name) and writes everything as JSON to --out.
diffusers is required, accelerate only for its row (skipped with a note when missing).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

import comfy_sdnq  # noqa: E402
from comfy_sdnq import kernels, layout, offload  # noqa: E402

DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
           num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
           axes_dims_rope=(16, 56, 56))
TINY = dict(patch_size=1, in_channels=16, attention_head_dim=32, num_attention_heads=4, joint_attention_dim=64,
            pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 12, 12))
GiB = 1024**3


def need(module: str, why: str):
    try:
        return __import__(module)
    except ImportError as exc:
        sys.exit(f"bench_offload: {module} is required {why} ({exc}); install it (offline: pip install the "
                 f"carried wheel) and run again")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------
# the model


def contiguous(qt):
    """as loaded from a file: every tensor contiguous (quantize() leaves svd_down a transposed view)"""
    p = qt.params
    return layout.make(qt._qdata.contiguous(),
                       dataclasses.replace(p, **{f: getattr(p, f).contiguous() for f in p._tensor_fields()}))


def build_sdnq(cfg: dict, args, device) -> torch.nn.Module:
    """the transformer on the host: block Linears SDNQ (quantized on `device`), the rest bf16"""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**cfg)
    qdev = device if args.quantize_on == "device" else torch.device("cpu")
    blocks = {id(m) for _, b in offload.find_blocks(model) for m in b.modules()}
    g = torch.Generator(device=qdev).manual_seed(0)
    t0, n = time.perf_counter(), 0
    for name, m in model.named_modules():
        for pname, p in list(m._parameters.items()):
            if p is None:
                continue
            if isinstance(m, torch.nn.Linear) and pname == "weight" and id(m) in blocks:
                w = torch.randn(p.shape, generator=g, device=qdev, dtype=torch.float32).mul_(args.std)
                qt = comfy_sdnq.quantize(w.to(torch.bfloat16), args.weights_dtype, use_svd=args.svd_rank > 0,
                                         svd_rank=max(args.svd_rank, 1), torch_dtype=torch.bfloat16)
                m._parameters[pname] = offload.as_param(contiguous(offload.move(qt, "cpu")))
                n += 1
            else:
                t = torch.randn(p.shape, generator=g, device=qdev, dtype=torch.float32).mul_(args.std)
                m._parameters[pname] = torch.nn.Parameter(t.to(torch.bfloat16).cpu(), requires_grad=False)
    sync(qdev)
    print(f"built: {n} SDNQ layers ({args.weights_dtype}, svd rank {args.svd_rank}) in "
          f"{time.perf_counter() - t0:.1f} s on {qdev}", flush=True)
    return model.eval().requires_grad_(False)


def dense_copy(cfg: dict, model, device) -> torch.nn.Module:
    """the same weights, dequantized to bf16, on device"""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        dense = FluxTransformer2DModel(**cfg)
    src = dict(model.named_parameters())
    for name, m in dense.named_modules():
        for pname, p in list(m._parameters.items()):
            if p is None:
                continue
            t = src[f"{name}.{pname}" if name else pname]
            t = offload.move(t, device)
            if comfy_sdnq.is_sdnq(t):
                t = t.dequantize()
            m._parameters[pname] = torch.nn.Parameter(t.to(torch.bfloat16), requires_grad=False)
    return dense.eval()


def inputs(cfg: dict, img: int, txt: int, device):
    g = torch.Generator().manual_seed(1)
    side = int(math.isqrt(img))
    ids = torch.zeros(img, 3)
    ids[:, 1], ids[:, 2] = torch.arange(img) // side, torch.arange(img) % side
    x = dict(hidden_states=torch.randn(1, img, cfg["in_channels"], generator=g),
             encoder_hidden_states=torch.randn(1, txt, cfg["joint_attention_dim"], generator=g),
             pooled_projections=torch.randn(1, cfg["pooled_projection_dim"], generator=g),
             timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]), img_ids=ids, txt_ids=torch.zeros(txt, 3))
    return {k: v.to(device=device, dtype=torch.bfloat16 if v.dim() == 3 or k == "pooled_projections" else v.dtype)
            for k, v in x.items()}


# ---------------------------------------------------------------------------
# timing


def measure(name, model, x, args, device, stats=None, steps=None):
    """time steps: the first call apart, then warm-up, then `steps` timed calls"""
    steps = steps or args.steps
    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if stats is not None:
        stats.reset()
    times = []
    with torch.no_grad():
        sync(device)
        t = time.perf_counter()
        out = model(**x).sample
        sync(device)
        first = time.perf_counter() - t
        for _ in range(args.warmup):
            model(**x)
        sync(device)
        moved0 = stats.as_dict() if stats is not None else None
        host = []  # time to enqueue each step's work (the call's return, before the sync)
        for _ in range(steps):
            t = time.perf_counter()
            model(**x)
            host.append(time.perf_counter() - t)
            sync(device)
            times.append(time.perf_counter() - t)
    row = {"first_call_s": first, "step_s": statistics.median(times), "steps_s": times, "host_steps_s": host,
           "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
    if stats is not None:
        after = stats.as_dict()
        row["offload"] = after
        row["h2d_bytes_per_step"] = (after["bytes_moved"] - moved0["bytes_moved"]) / steps
        row["copy_wait_s_per_step"] = (after["wait_s"] - moved0["wait_s"]) / steps
        row["throttle_s_per_step"] = (after["throttle_s"] - moved0["throttle_s"]) / steps
    print(f"  {name}: step {row['step_s'] * 1e3:.1f} ms (first call {first * 1e3:.1f} ms; host enqueue "
          f"{statistics.median(host) * 1e3:.1f} ms); steps "
          + " ".join(f"{a * 1e3:.0f}/{b * 1e3:.0f}" for a, b in zip(times, host)) + " ms (step/host)", flush=True)
    return row, out.float().cpu()


def cap(device, nbytes):
    """limit this process's GPU memory to nbytes (None: lift the limit)"""
    if device.type != "cuda":
        return
    free(device)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(1.0 if nbytes is None else min(1.0, nbytes / total), device)


def size(n) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB // 8 else f"{n / 1024**2:.1f} MiB"


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke runs)")
    ap.add_argument("--blocks", type=int, default=19, help="double blocks (single blocks: twice as many); dev: 19")
    ap.add_argument("--tiny", action="store_true", help="hidden 128, 64 image + 16 text tokens (smoke runs)")
    ap.add_argument("--image-tokens", type=int, default=None, help="default 4096 (1024x1024); tiny: 64")
    ap.add_argument("--text-tokens", type=int, default=None, help="default 512; tiny: 16")
    ap.add_argument("--weights-dtype", default="uint4")
    ap.add_argument("--svd-rank", type=int, default=32, help="0: no SVD")
    ap.add_argument("--std", type=float, default=0.02, help="std of the random weights")
    ap.add_argument("--quantize-on", choices=("device", "cpu"), default="device")
    ap.add_argument("--vram-cap-gb", type=float, default=None,
                    help="memory cap for the layer and accelerate rows (default: half the compressed size)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--accelerate-steps", type=int, default=2)
    ap.add_argument("--prefetch", type=int, default=1, help="blocks copied ahead in layer mode")
    ap.add_argument("--modes", default="none,model,layer,bf16,accelerate,sdnq-accelerate")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("bench_offload: no CUDA device (use --device cpu for a smoke run)")
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    need("diffusers", "for FluxTransformer2DModel")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    cfg = dict(TINY if args.tiny else DEV, num_layers=args.blocks, num_single_layers=2 * args.blocks)
    img = args.image_tokens or (64 if args.tiny else 4096)
    txt = args.text_tokens or (16 if args.tiny else 512)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    env = {"device": str(device), "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
           "comfy_sdnq": comfy_sdnq.__version__, "cpu_backend": kernels.backend(),
           "cuda_backend": kernels.cuda_backend() if hasattr(kernels, "cuda_backend") else "torch",
           "python": platform.python_version(), "host": platform.node()}
    print(f"bench_offload on {gpu} ({device}); torch {torch.__version__}; comfy_sdnq kernels: CPU "
          f"{env['cpu_backend']}, CUDA {env['cuda_backend']}", flush=True)
    if device.type == "cuda" and env["cuda_backend"] != "cuda":
        print("WARNING: comfy_sdnq's CUDA extension is not built: SDNQ rows run the pure-torch reference on the "
              "GPU (absolute times not representative)", flush=True)
    print(f"model: FluxTransformer2DModel {cfg['num_layers']}+{cfg['num_single_layers']} blocks, hidden "
          f"{cfg['num_attention_heads'] * cfg['attention_head_dim']}; {img} image + {txt} text tokens", flush=True)

    model = build_sdnq(cfg, args, device)
    compressed = offload.weight_bytes(model.modules())
    cap_bytes = int(args.vram_cap_gb * GiB) if args.vram_cap_gb else compressed // 2
    x = inputs(cfg, img, txt, device)
    results, errors, outputs = {}, {}, {}

    def row(key, fn):
        try:
            results[key], outputs[key] = fn()
        except Exception as exc:  # noqa: BLE001 - a failed row is reported, the others still run
            kind = "OOM" if isinstance(exc, torch.cuda.OutOfMemoryError) else type(exc).__name__
            errors[key] = f"{kind}: {exc}"
            print(f"  {key}: FAILED {errors[key][:300]}", flush=True)
            traceback.print_exc()
        finally:
            cap(device, None)
            free(device)

    if "none" in modes:
        def run_none():
            st = offload.apply(model, "none", device)
            try:
                return measure("sdnq none", model, x, args, device, st)
            finally:
                offload.move_module(model, "cpu")
                offload.remove(model)
        row("sdnq none", run_none)
    if "model" in modes:
        def run_model():
            st = offload.apply(model, "model", device)
            try:
                return measure("sdnq model", model, x, args, device, st)
            finally:
                offload.remove(model)
        row("sdnq model", run_model)
    if "layer" in modes:
        def run_layer():
            st = offload.apply(model, "layer", device, prefetch=args.prefetch)
            cap(device, cap_bytes)
            try:
                return measure("sdnq layer", model, x, args, device, st)
            finally:
                offload.remove(model)
        row("sdnq layer", run_layer)
    if "bf16" in modes:
        row("bf16 resident", lambda: measure("bf16 resident", dense_copy(cfg, model, device), x, args, device))

    if "accelerate" in modes:
        try:
            import accelerate
        except ImportError as exc:
            errors["bf16 accelerate cpu_offload"] = f"skipped: accelerate not installed ({exc})"
            print(f"  bf16 accelerate cpu_offload: {errors['bf16 accelerate cpu_offload']}", flush=True)
        else:
            def run_accelerate():
                dense = dense_copy(cfg, model, device)  # dequantized on the GPU, then to the host
                offload.move_module(dense, "cpu")
                free(device)
                accelerate.cpu_offload(dense, execution_device=device)
                cap(device, cap_bytes)
                return measure("bf16 accelerate cpu_offload", dense, x, args, device, steps=args.accelerate_steps)
            row("bf16 accelerate cpu_offload", run_accelerate)
    if "sdnq-accelerate" in modes:  # accelerate's hooks on our compressed model (last: it rewires the model)
        try:
            import accelerate
        except ImportError as exc:
            errors["sdnq accelerate cpu_offload"] = f"skipped: accelerate not installed ({exc})"
        else:
            def run_sdnq_accelerate():
                offload.move_module(model, "cpu")
                free(device)
                accelerate.cpu_offload(model, execution_device=device)
                cap(device, cap_bytes)
                return measure("sdnq accelerate cpu_offload", model, x, args, device, steps=args.accelerate_steps)
            row("sdnq accelerate cpu_offload", run_sdnq_accelerate)

    report(args, env, cfg, img, txt, compressed, cap_bytes, results, errors, outputs)
    return 1 if errors and not all(e.startswith("skipped") for e in errors.values()) else 0


def report(args, env, cfg, img, txt, compressed, cap_bytes, results, errors, outputs):
    base = results.get("sdnq none", {}).get("step_s")
    ref = outputs.get("sdnq none")
    capped = {"sdnq layer", "bf16 accelerate cpu_offload", "sdnq accelerate cpu_offload"}
    lines = [f"### Offloading: Flux.1-dev-sized transformer ({cfg['num_layers']}+{cfg['num_single_layers']} blocks), "
             f"{img} image + {txt} text tokens, one step",
             "",
             f"GPU: **{env['gpu']}** · torch {env['torch']} (CUDA {env['cuda']}) · comfy_sdnq CUDA kernels: "
             f"{env['cuda_backend']} · weights {args.weights_dtype}"
             f"{f' + SVD r{args.svd_rank}' if args.svd_rank else ''}, compressed {size(compressed)} · "
             f"VRAM cap for the capped rows {size(cap_bytes)}",
             "",
             "| run | VRAM cap | step (ms) | × sdnq none | first call (ms) | peak VRAM (GiB) | H2D / step (GiB) "
             "| copy wait / step (ms) | rel. diff vs sdnq none |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in ("sdnq none", "sdnq model", "sdnq layer", "bf16 resident", "bf16 accelerate cpu_offload",
                "sdnq accelerate cpu_offload"):
        if key in errors:
            lines.append(f"| {key} | | {errors[key][:80]} | | | | | | |")
            continue
        r = results.get(key)
        if r is None:
            continue
        diff = rel(outputs[key], ref) if ref is not None and key in outputs else None
        r["rel_diff_vs_none"] = diff
        fmt = (lambda v, f: "" if v is None else f.format(v))
        lines.append(
            f"| {key} | {size(cap_bytes) if key in capped and env['device'] != 'cpu' else '-'} "
            f"| {r['step_s'] * 1e3:.1f} | {fmt(r['step_s'] / base if base else None, '{:.2f}')} "
            f"| {r['first_call_s'] * 1e3:.1f} | {fmt(r['peak_bytes'] / GiB if r['peak_bytes'] else None, '{:.2f}')} "
            f"| {fmt(r.get('h2d_bytes_per_step', 0) / GiB if 'h2d_bytes_per_step' in r else None, '{:.2f}')} "
            f"| {fmt(r['copy_wait_s_per_step'] * 1e3 if 'copy_wait_s_per_step' in r else None, '{:.1f}')} "
            f"| {fmt(diff, '{:.1e}')} |")
    targets = {}
    layer, acc = results.get("sdnq layer"), results.get("bf16 accelerate cpu_offload")
    if layer and base:
        targets["layer_vs_resident"] = {"value": layer["step_s"] / base, "target": "<= 1.25",
                                        "pass": layer["step_s"] / base <= 1.25}
    if layer and acc:
        targets["accelerate_vs_layer"] = {"value": acc["step_s"] / layer["step_s"], "target": ">= 10",
                                          "pass": acc["step_s"] / layer["step_s"] >= 10}
    lines.append("")
    for k, t in targets.items():
        lines.append(f"- {k.replace('_', ' ')}: **{t['value']:.2f}** (target {t['target']}): "
                     f"{'PASS' if t['pass'] else 'FAIL'}")
    if env["device"] == "cpu":
        lines.append("- CPU smoke run: nothing is offloaded and the timings say nothing about the GPU targets")
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"env": env, "args": vars(args), "model_config": cfg, "image_tokens": img, "text_tokens": txt,
                       "compressed_bytes": compressed, "vram_cap_bytes": cap_bytes, "results": results,
                       "errors": errors, "targets": targets, "markdown": text,
                       "date": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=2, default=str)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
