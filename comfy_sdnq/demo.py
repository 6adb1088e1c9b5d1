"""The main job on an embedded default: `python -m comfy_sdnq demo`.

Builds a small model of a real architecture (diffusers' FluxTransformer2DModel with
FLUX.1's layer shapes, 1 double + 1 single block, random weights; conditioning is fed
directly, no tokenizer or text encoder), converts it to SDNQ with the converter, loads it
through ComfyUI's stock "Load Diffusion Model" node when ComfyUI is importable (else
standalone, with the chosen offload mode), samples a few flow-matching Euler steps next to
the dense model, and prints bytes vs bf16, per-layer error, step time and offload
statistics. Exit status 0 when the SDNQ model's output is within the expected error of the
dense model's.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import torch

FLUX_SHAPE = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False)
TEXT_TOKENS = 16


def _mb(n):
    return f"{n / 2**20:,.1f} MiB"


def build_dense(folder: str, seed: int = 0):
    """the demo model, random weights (std 0.02), saved as a diffusers folder"""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    m = FluxTransformer2DModel(**FLUX_SHAPE)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)
    m = m.to(torch.bfloat16).eval()
    m.save_pretrained(folder)
    return m


def _inputs(size: int, seed: int = 42):
    g = torch.Generator().manual_seed(seed)
    tokens = (size // 16) ** 2
    return {"noise": torch.randn(1, tokens, 64, generator=g), "ctx": torch.randn(1, TEXT_TOKENS, 4096, generator=g) * .5,
            "pooled": torch.randn(1, 768, generator=g)}


def _euler_diffusers(model, inp, steps, size, device):
    """flow-matching Euler on a diffusers Flux transformer; returns (latent, seconds per step)"""
    side = size // 16
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    img_ids = img_ids.reshape(-1, 3).to(device)
    txt_ids = torch.zeros(TEXT_TOKENS, 3, device=device)
    x = inp["noise"].to(device, torch.bfloat16)
    ctx, pooled = inp["ctx"].to(device, torch.bfloat16), inp["pooled"].to(device, torch.bfloat16)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    times = []
    with torch.no_grad():
        for i in range(steps):
            t0 = time.perf_counter()
            v = model(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled,
                      timestep=sigmas[i:i + 1].to(device, torch.bfloat16), img_ids=img_ids, txt_ids=txt_ids,
                      return_dict=False)[0]
            x = x + (sigmas[i + 1] - sigmas[i]).item() * v
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return x.float().cpu(), _step_time(times)


def _step_time(times):
    """median of the steps after the first (which includes loading / warm-up), or the only one"""
    rest = sorted(times[1:]) or times
    return rest[len(rest) // 2]


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _comfyui_available() -> bool:
    path = os.environ.get("COMFYUI_PATH", "/opt/comfyui")
    if os.path.isfile(os.path.join(path, "comfy", "model_patcher.py")) and path not in sys.path:
        sys.path.insert(0, path)
    try:
        import comfy  # noqa: F401
    except ImportError:
        return False
    return True


def _run_comfyui(tmp, dense_file, sdnq_file, inp, args, device):
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args as cargs

    cargs.cpu = device.type == "cpu"
    import comfy.model_management
    import comfy.sample
    import folder_paths
    import nodes

    from .comfyui import check_version, hooks

    check_version()
    hooks.install()
    folder_paths.add_model_folder_path("diffusion_models", os.path.dirname(sdnq_file), is_default=True)
    side = args.size // 8
    latent = torch.zeros(1, 16, side, side)
    cond = [[inp["ctx"], {"pooled_output": inp["pooled"]}]]
    noise = comfy.sample.prepare_noise(latent, 0)
    out = {}
    for label, name in (("dense bf16", os.path.basename(dense_file)), ("SDNQ", os.path.basename(sdnq_file))):
        patcher = nodes.UNETLoader().load_unet(name, "default")[0]
        times = []
        result = None
        for _ in range(2):  # the first run loads the weights to the device
            t0 = time.perf_counter()
            result = comfy.sample.sample(patcher, noise, args.steps, 1.0, "euler", "simple", cond, cond, latent,
                                         denoise=1.0, seed=0, disable_pbar=True)
            times.append(time.perf_counter() - t0)
        loaded = [m for m in comfy.model_management.current_loaded_models if m.model is patcher]
        stats = {"model bytes (ComfyUI's count)": patcher.model_size(),
                 "loaded to device": patcher.loaded_size(),
                 "partially loaded (lowvram)": bool(loaded and getattr(patcher.model, "model_lowvram", False)),
                 "patcher": type(patcher).__name__}
        out[label] = (result, times[1] / args.steps, times[0], stats)
        del patcher
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
    return out


def _run_standalone(dense, folder, inp, args, device):
    from . import offload, standalone

    out = {}
    dense = dense.to(device)
    t0 = time.perf_counter()
    res, step = _euler_diffusers(dense, inp, args.steps, args.size, device)
    out["dense bf16"] = (res, step, time.perf_counter() - t0, {"resident": True})
    dense.to("cpu")
    model = standalone.load_model(folder, device=device, offload=args.offload)
    t0 = time.perf_counter()
    res, step = _euler_diffusers(model, inp, args.steps, args.size, device)
    st = offload.stats(model)
    out["SDNQ"] = (res, step, time.perf_counter() - t0, {"offload": args.offload, **(st.as_dict() if st else {})})
    return out


def run(args) -> int:
    import comfy_sdnq
    from . import converter, dtypes, kernels

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_comfy = not args.standalone and _comfyui_available()
    print(f"comfy_sdnq {comfy_sdnq.__version__}: backend {kernels.backend()}, torch {torch.__version__}, device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; loading through "
          f"{'ComfyUI (stock Load Diffusion Model node)' if use_comfy else 'the standalone runtime'}")
    cfg = {"weights_dtype": args.dtype, "use_svd": args.svd_rank > 0, "svd_rank": max(args.svd_rank, 1)}
    tmp_ctx = tempfile.TemporaryDirectory(prefix="comfy-sdnq-demo-")
    tmp = args.keep or tmp_ctx.name
    os.makedirs(tmp, exist_ok=True)
    try:
        print(f"building FluxTransformer2DModel (FLUX.1 layer shapes, 1 double + 1 single block), random weights")
        dense = build_dense(os.path.join(tmp, "dense"))
        target = os.path.join(tmp, "diffusion_models", "demo-sdnq.safetensors") if use_comfy else \
            os.path.join(tmp, "demo-sdnq")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        report = converter.convert(os.path.join(tmp, "dense"), target, cfg, device=device, overwrite=True)
        print(f"converted on {report.device} in {report.seconds:.1f} s "
              f"({args.dtype}{f' + SVD rank {args.svd_rank}' if args.svd_rank else ''}):")
        print(f"  {'layer':<48} {'type':>8} {'group':>6} {'svd':>4} {'bytes':>12} {'bf16':>12} {'error':>7}")
        for r in report.layers:
            print(f"  {r.key[-48:]:<48} {r.dtype:>8} {r.group_size if r.dtype != 'dense' else '':>6} "
                  f"{r.svd_rank or '':>4} {r.nbytes:>12,} {r.dense_nbytes:>12,} "
                  f"{(f'{r.error:.4f}' if r.dtype != 'dense' else r.reason[:7]):>7}")
        q = report.quantized
        print(f"  quantized layers: {_mb(sum(r.nbytes for r in q))} vs {_mb(sum(r.dense_nbytes for r in q))} bf16 "
              f"({sum(r.nbytes for r in q) / sum(r.dense_nbytes for r in q):.3f}x); whole model "
              f"{_mb(report.nbytes)} vs {_mb(report.dense_nbytes)} ({report.nbytes / report.dense_nbytes:.3f}x)")
        inp = _inputs(args.size)
        if use_comfy:
            dense_file = os.path.join(tmp, "diffusion_models", "demo-dense.safetensors")
            import safetensors.torch

            safetensors.torch.save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, dense_file)
            results = _run_comfyui(tmp, dense_file, target, inp, args, device)
        else:
            results = _run_standalone(dense, target, inp, args, device)
    finally:
        if not args.keep:
            tmp_ctx.cleanup()
    ref = results["dense bf16"][0]
    print(f"sampled {args.steps} Euler steps at {args.size}x{args.size}:")
    for label, (res, step, first, stats) in results.items():
        print(f"  {label:<10} {step * 1e3:9.1f} ms/step (first run {first:.2f} s)  " +
              ", ".join(f"{k} {_mb(v) if isinstance(v, int) and 'bytes' in k else v}" for k, v in stats.items()
                        if not isinstance(v, float) or v))
    err = _rel(results["SDNQ"][0], ref)
    worst = max(r.error for r in q)
    bits = dtypes.get(args.dtype).bits
    limit = {2: 0.8, 3: 0.6, 4: 0.4, 5: 0.25, 6: 0.15}.get(bits, 0.1)
    print(f"output vs dense: relative error {err:.4f} (worst layer weight error {worst:.4f}); "
          f"{'OK' if err <= limit else 'FAILED'} (bound {limit} for {bits}-bit weights)")
    return 0 if err <= limit else 1
