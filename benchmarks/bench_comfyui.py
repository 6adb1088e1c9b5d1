#!/usr/bin/env python
"""Shared VRAM budget inside ComfyUI: an SDNQ FLUX.1-dev-sized model loaded, streamed and
offloaded by ComfyUI's own model management, both patcher modes, under a VRAM cap set with
ComfyUI's own flags, with a second model loaded beside it.

    python benchmarks/bench_comfyui.py --quick --out q.json       # GPU: 8+16 blocks, 3 steps, ~3-4.5 min (H100)
    python benchmarks/bench_comfyui.py --out full.json            # GPU: 19+38 blocks, 6 steps, ~6.5-9 min
    python benchmarks/bench_comfyui.py --tiny --device cpu        # CPU smoke run, ~1-1.5 min

Models (built once, in a subprocess, into a models folder; random weights, std --std):
  main     ComfyUI's Flux layout (double_blocks / single_blocks, hidden 3072, 24 heads;
           FLUX.1-dev: 19 double + 38 single blocks, --blocks N gives N + 2N). Every Linear
           weight of the blocks is drawn on the GPU and quantized there with
           comfy_sdnq.quantize (uint4 + SVD rank 32 by default), one layer at a time, so no
           24 GB bf16 copy is ever held: the SDNQ state dict (~6.7 GB) is written with
           comfy_sdnq.save as a single-file SDNQ model; the same weights dequantized
           (qt.dequantize(), bf16) stream into a dense safetensors file (the bf16 rows)
           layer by layer. Embedders, norms, biases and the final layer are bf16 in both.
  second   a dense bf16 (or --second sdnq) Flux-layout model with --second-blocks blocks
           (default 2 double + 4 single, ~2.5 GiB: text-encoder sized; quick 1 + 2), loaded
           beside the main one so that the budget is shared.

Configurations (each in its own Python process: ComfyUI parses its flags at import):
  sdnq-resident-legacy   --disable-dynamic-vram                       (legacy ModelPatcher, no cap)
  sdnq-resident-dynamic  (ComfyUI's default: Dynamic VRAM via comfy-aimdo, no cap)
  sdnq-capped-legacy     --disable-dynamic-vram --reserve-vram R      (lowvram partial loading)
  sdnq-capped-dynamic    --reserve-vram R                             (aimdo VBAR, headroom R)
  bf16-resident-legacy   --disable-dynamic-vram                       (the dense file)
  bf16-resident-dynamic  (defaults)
  bf16-capped-legacy     --disable-dynamic-vram --reserve-vram R
  bf16-capped-dynamic    --reserve-vram R
R = total VRAM - cap (GiB). ComfyUI's legacy budget subtracts R from the free VRAM it hands
to models (EXTRA_RESERVED_VRAM); with Dynamic VRAM, main.py passes R to comfy-aimdo as
simple_vram_headroom (VRAM it keeps free, evicting VBAR pages). The cap defaults to
half the main model's compressed size + 1.5 GiB (CUDA context, activations), at most 90 %
of it, so the model never fits. A dynamic row whose process does not get Dynamic VRAM
(comfy-aimdo missing or not initialising, torch < 2.8, WSL, no Nvidia GPU) is reported as
not run, with the reason.

Each worker does what a ComfyUI prompt does: the second model loads through the stock
"Load Diffusion Model" node (nodes.UNETLoader) and samples one step (load_models_gpu keeps
it loaded); the main model loads through the same node (comfy_sdnq's loader hooks make it
SDNQ-aware, as the installed node pack does), samples a warm-up run, then the timed run
(comfy.sample.sample, euler/simple, cfg 1, 1024x1024 = latent 1x16x128x128, conditioning fed
directly: context [1,512,4096], pooled [1,768], guidance 3.5; --steps timed steps, 6 by
default); then the second model samples again beside it; then
comfy.model_management.unload_all_models() + soft_empty_cache(). After
every sampling "node" the worker runs execution.py's per-node cleanup (aimdo cast buffers,
watermarks). Recorded: the time of every model call (CUDA-synchronized, through ComfyUI's
model_function_wrapper), model_size() and loaded_size() of both models at every step, the
layers whose weights moved host->GPU per step (counted by wrapping comfy.ops.cast_bias_weight
and comfy.ops.cast_modules_with_vbar: legacy lowvram casts of off-GPU weights; dynamic
VBAR misses, either faulted into a VBAR page or streamed through the aimdo cast buffer),
the legacy lowvram state (model_lowvram, lowvram modules), the VBAR's resident pages, peak
VRAM (torch's allocator peak, and the device's used memory polled every 20 ms and at every
step), and after unload: torch allocated/reserved, the device's used memory vs the start,
comfy-aimdo's VRAM usage, ComfyUI's pinned host memory (TOTAL_PINNED_MEMORY, the legacy
PINNED_MEMORY table, the dynamic patcher's pinned/host-buffer bytes). The sampled latents
are compared with the resident runs' (SDNQ rows with sdnq-resident-legacy, bf16 rows with
bf16-resident-legacy; relative error, and whether bit-equal).

--device cpu (with --tiny: hidden 512 = 4 heads x 128, which ComfyUI's Flux detection
accepts from img_in's shape; 1+2 blocks, 128x128 px) runs ComfyUI with --cpu: Dynamic VRAM
rows are not run (no GPU), and since ComfyUI never partially loads onto a CPU device, the
capped rows emulate the cap by handing LoadedModel.model_load the cap as the main model's
lowvram budget (same ModelPatcher.load lowvram path, weights cast per layer; nothing moves).

Evidence per row (the "evidence" column / JSON): capped rows: loaded_lt_model (loaded_size()
< model_size() at every timed step), streaming (layers moved host->GPU at every timed step),
weights_within_cap (main + second model loaded_size() <= cap, GPU only); resident rows:
fully_loaded; all rows: outputs_agree (relative error <= 1e-3 against the reference; expected
bit-equal), finite, no_oom, nothing_left (after unload: no pinned host memory, no loaded
bytes, torch allocations <= 256 MiB, device memory <= 1 GiB above the start, aimdo VRAM <= its
128 MiB pool).

Prints markdown tables (GPU name, torch, ComfyUI version/commit) and writes JSON to --out.
--profile adds each worker's cProfile of the timed steps (functions by own time, and the callers
of the first 15) to the JSON; --torch-profile adds torch.profiler's table of the timed steps (torch
ops and CUDA runtime calls by own host time, with their CUDA time): what the host spends per
launch and allocation. Both slow the timed steps down; compare step times without them.
--repeat N runs every row in N processes, round-robin over the rows: a host-bound row's step time
varies from process to process by more than the differences worth measuring (the Dynamic VRAM
SDNQ row: 0.090-0.127 s over four processes of one machine), so compare medians of several.
Exit status 1 when a configuration that ran failed, timed out, or missed its evidence.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1024**3
MiB = 1024**2

# name: (model file, patcher mode, capped)
CONFIGS = {
    "sdnq-resident-legacy": ("sdnq", "legacy", False),
    "sdnq-resident-dynamic": ("sdnq", "dynamic", False),
    "sdnq-capped-legacy": ("sdnq", "legacy", True),
    "sdnq-capped-dynamic": ("sdnq", "dynamic", True),
    "bf16-resident-legacy": ("bf16", "legacy", False),
    "bf16-resident-dynamic": ("bf16", "dynamic", False),
    "bf16-capped-legacy": ("bf16", "legacy", True),
    "bf16-capped-dynamic": ("bf16", "dynamic", True),
}
REFERENCE = {"sdnq": ("sdnq-resident-legacy", "sdnq-resident-dynamic"),
             "bf16": ("bf16-resident-legacy", "bf16-resident-dynamic", "bf16-capped-legacy", "bf16-capped-dynamic")}
AGREE_RTOL = 1e-3          # a row "agrees" with its reference within this relative error (expected: bit-equal)
LEFT_TORCH_BYTES = 256 * MiB   # torch allocations allowed after unload (cuBLAS workspaces)
LEFT_DEVICE_BYTES = 1 * GiB    # device memory above the start allowed after unload (kernel images, handles)
# comfy-aimdo keeps its allocator pool once every model is unloaded: 97 MiB on an H200 with the stock
# ModelPatcherDynamic and a bf16 model exactly as with ours (the device memory in use after unload is the
# same as in the legacy rows, where aimdo is off); model weights left behind would show as far more
LEFT_AIMDO_BYTES = 128 * MiB


def comfyui_path() -> str:
    return os.environ.get("COMFYUI_PATH", "/opt/comfyui")


def comfyui_version() -> tuple[str, str]:
    path = comfyui_path()
    version = commit = "unknown"
    try:
        text = open(os.path.join(path, "comfyui_version.py")).read()
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
        version = m.group(1) if m else version
    except OSError:
        pass
    probe = os.path.join(path, ".comfyui_commit")
    if os.path.isfile(probe):
        commit = open(probe).read().strip() or commit
    elif os.path.isdir(os.path.join(path, ".git")):
        try:
            commit = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10).stdout.strip() or commit
        except (OSError, subprocess.SubprocessError):
            pass
    return version, commit


def gib(n) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def size(n) -> str:
    if n is None:
        return "-"
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB // 4 else f"{n / MiB:.1f} MiB"


# ===========================================================================
# child processes: probe, build, worker (entered through hidden flags)


def _child_env() -> dict:
    env = dict(os.environ)
    parts = [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != ROOT]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _setup_comfy_cpu_import():
    """ComfyUI importable without touching the GPU (parsing off, --cpu): for the key layout"""
    path = comfyui_path()
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True


def child_probe(spec: dict) -> dict:
    import importlib.metadata

    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "host": platform.node(), "cpu": platform.processor() or platform.machine()}
    for pkg in ("comfy-kitchen", "comfy-aimdo", "safetensors"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    import comfy_sdnq
    from comfy_sdnq import kernels

    info["comfy_sdnq"] = comfy_sdnq.__version__
    info["comfy_sdnq_cpu_backend"] = kernels.backend()
    info["comfy_sdnq_cuda_backend"] = kernels.cuda_backend()
    if spec["device"] == "cuda":
        if not torch.cuda.is_available():
            info["error"] = "no CUDA device visible to torch (use --device cpu for a smoke run)"
            return info
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        info.update(gpu=props.name, total_vram=total, free_vram=free, capability=f"{props.major}.{props.minor}",
                    device_count=torch.cuda.device_count())
    else:
        info.update(gpu=None, total_vram=None)
    return info


def _contiguous(qt):
    """every tensor of an SDNQ QuantizedTensor contiguous, as when loaded from a file"""
    import dataclasses

    from comfy_sdnq import layout

    p = qt.params
    return layout.make(qt._qdata.contiguous(),
                       dataclasses.replace(p, **{f: getattr(p, f).contiguous() for f in p._tensor_fields()}))


def flux_unet_config(hidden: int, double: int, single: int) -> dict:
    return {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
            "context_in_dim": 4096, "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": hidden // 128,
            "depth": double, "depth_single_blocks": single, "axes_dim": [16, 56, 56], "theta": 10000,
            "qkv_bias": True, "patch_size": 2, "txt_ids_dims": []}


def flux_layout(hidden: int, double: int, single: int) -> list[tuple[str, tuple]]:
    """(key, shape) of ComfyUI's Flux model, built on the meta device. The RMSNorm scales
    keep the model's '.weight' names (ComfyUI reads both; FLUX.1 checkpoints say '.scale',
    which an SDNQ file cannot: '<module>.scale' is an SDNQ side tensor there)"""
    import torch

    import comfy.model_detection

    mc = comfy.model_detection.model_config_from_unet_config(flux_unet_config(hidden, double, single))
    if mc is None:
        raise RuntimeError("ComfyUI does not know the Flux config")
    with torch.device("meta"):
        model = mc.get_model({}, "")
    return [(k, tuple(v.shape)) for k, v in model.diffusion_model.state_dict().items()]


def _quantize_here(key: str, shape: tuple) -> bool:
    return key.startswith(("double_blocks.", "single_blocks.")) and key.endswith(".weight") and len(shape) == 2


def child_build(spec: dict) -> dict:
    """write the model files of spec["models"]; returns their sizes"""
    import torch

    _setup_comfy_cpu_import()
    import comfy_sdnq
    from comfy_sdnq import layout, offload
    from comfy_sdnq.stream_writer import StreamWriter

    device = torch.device(spec["device"])
    q = spec["quant"]
    qcfg = {"weights_dtype": q["weights_dtype"], "use_svd": q["svd_rank"] > 0, "svd_rank": max(q["svd_rank"], 1)}
    out = {}
    for m in spec["models"]:
        t0 = time.perf_counter()
        keys = flux_layout(m["hidden"], m["double"], m["single"])
        g = torch.Generator(device=device).manual_seed(m["seed"])
        sdnq_sd = {} if m.get("sdnq_path") else None
        dense = StreamWriter(m["dense_path"], reserve=1 << 20) if m.get("dense_path") else None
        params = nq = sdnq_bytes = dense_bytes = 0
        try:
            for key, shape in keys:
                n = 1
                for s in shape:
                    n *= s
                params += n
                if key.endswith("_norm.weight"):
                    t = 1 + 0.02 * torch.randn(shape, generator=g, device=device)
                else:
                    t = spec["std"] * torch.randn(shape, generator=g, device=device)
                t = t.to(torch.bfloat16)
                if _quantize_here(key, shape):
                    qt = comfy_sdnq.quantize(t, q["weights_dtype"], use_svd=q["svd_rank"] > 0,
                                             svd_rank=max(q["svd_rank"], 1), torch_dtype=torch.bfloat16)
                    nq += 1
                    if dense is not None:
                        d = qt.dequantize().to(torch.bfloat16)
                        dense.add(key, d)
                        dense_bytes += d.numel() * 2
                        del d
                    if sdnq_sd is not None:
                        host = _contiguous(offload.move(qt, "cpu"))
                        sdnq_sd[key] = host
                        sdnq_bytes += layout.compressed_nbytes(host)
                    del qt
                else:
                    host = t.cpu()
                    if dense is not None:
                        dense.add(key, host)
                        dense_bytes += host.numel() * 2
                    if sdnq_sd is not None:
                        sdnq_sd[key] = host
                        sdnq_bytes += host.numel() * 2
                del t
            if dense is not None:
                dense.close({"bench_comfyui": "dense bf16 of the SDNQ weights (dequantized)"})
        except BaseException:
            if dense is not None:
                dense.abort()
            raise
        if sdnq_sd is not None:
            comfy_sdnq.save(sdnq_sd, m["sdnq_path"], qcfg)
            del sdnq_sd
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[m["name"]] = {"params": params, "quantized_layers": nq, "hidden": m["hidden"], "double": m["double"],
                          "single": m["single"], "sdnq_bytes": sdnq_bytes if m.get("sdnq_path") else None,
                          "bf16_bytes": dense_bytes if m.get("dense_path") else None,
                          "sdnq_file_bytes": os.path.getsize(m["sdnq_path"]) if m.get("sdnq_path") else None,
                          "dense_file_bytes": os.path.getsize(m["dense_path"]) if m.get("dense_path") else None,
                          "seconds": time.perf_counter() - t0}
        print(f"built {m['name']}: {m['double']}+{m['single']} blocks, {params / 1e9:.2f} B params, {nq} SDNQ layers"
              f" in {out[m['name']]['seconds']:.1f} s", flush=True)
    return out


# ---------------------------------------------------------------------------
# the worker: one configuration in a fresh process


class _Stats:
    """counters of the wrapped comfy.ops casting functions"""

    FIELDS = ("casts", "offdevice_layers", "offdevice_bytes", "lowvram_casts", "vbar_resident", "vbar_faulted",
              "vbar_streamed", "vbar_bytes")

    def __init__(self):
        for f in self.FIELDS:
            setattr(self, f, 0)

    def snap(self) -> dict:
        return {f: getattr(self, f) for f in self.FIELDS}

    def delta(self, before: dict) -> dict:
        d = {f: getattr(self, f) - before[f] for f in self.FIELDS}
        d["moved_layers"] = d["offdevice_layers"] + d["vbar_faulted"] + d["vbar_streamed"]
        d["moved_bytes"] = d["offdevice_bytes"] + d["vbar_bytes"]
        return d


def _instrument(stats: _Stats):
    import comfy.memory_management
    import comfy.ops

    def size(s):
        try:
            return int(comfy.memory_management.vram_aligned_size([s.weight, getattr(s, "bias", None)]))
        except Exception:  # noqa: BLE001 - bookkeeping only
            return 0

    orig_cast = comfy.ops.cast_bias_weight

    def cast_bias_weight(s, *a, **k):
        inp = k.get("input", a[0] if len(a) > 0 else None)
        dev = k.get("device", a[2] if len(a) > 2 else None)
        dev = dev if dev is not None else getattr(inp, "device", None)
        stats.casts += 1
        if getattr(s, "prev_comfy_cast_weights", None) is not None:
            stats.lowvram_casts += 1  # a legacy lowvram module (its weights live off the load device)
        w = getattr(s, "weight", None)
        if w is not None and dev is not None and w.device != dev and not hasattr(s, "_v"):
            stats.offdevice_layers += 1
            stats.offdevice_bytes += size(s)
        return orig_cast(s, *a, **k)

    orig_vbar = comfy.ops.cast_modules_with_vbar

    def cast_modules_with_vbar(comfy_modules, *a, **k):
        out = orig_vbar(comfy_modules, *a, **k)
        for s in comfy_modules:
            p = getattr(s, "_prefetch", None)
            if p is None:
                continue
            if p.get("resident"):
                stats.vbar_resident += 1
            elif p.get("signature") is not None:
                stats.vbar_faulted += 1  # copied into its VBAR page (resident from now on)
                stats.vbar_bytes += size(s)
            else:
                stats.vbar_streamed += 1  # no page: streamed through the aimdo cast buffer
                stats.vbar_bytes += size(s)
        return out

    comfy.ops.cast_bias_weight = cast_bias_weight
    comfy.ops.cast_modules_with_vbar = cast_modules_with_vbar


class _LogCapture:
    PATTERNS = ("loaded partially", "loaded completely", "prepared for dynamic", "Requested to load", "unloaded",
                "DynamicVRAM", "aimdo", "pinned memory", "lowvram", "Reserving", "force loading", "Unloading")

    def __init__(self, limit=60):
        import logging

        self.lines = []
        self.limit = limit
        cap = self

        class H(logging.Handler):
            def emit(self, record):
                try:
                    msg = record.getMessage()
                except Exception:  # noqa: BLE001
                    return
                if len(cap.lines) < cap.limit and any(p in msg for p in cap.PATTERNS):
                    cap.lines.append(msg[:300])

        self.handler = H(level=1)


def _status_pins():
    """/proc/self/status VmPin/VmLck (kB -> bytes), informational"""
    out = {}
    try:
        for line in open("/proc/self/status"):
            if line.startswith(("VmPin:", "VmLck:", "VmRSS:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def comfy_startup(comfy_args: list, result: dict) -> tuple[bool, str | None]:
    """ComfyUI started in this process as main.py starts it: its flags parsed, comfy-aimdo
    initialised before torch is imported, ComfyUI's allocator choice, then the Dynamic VRAM
    switch. Returns (Dynamic VRAM on, the reason when it stays off); notes in result."""
    import logging

    # --- ComfyUI's startup order (main.py): flags, comfy-aimdo, allocator, then torch
    sys.argv = ["main.py"] + list(comfy_args)
    path = comfyui_path()
    if path not in sys.path:
        sys.path.insert(0, path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout,
                        force=True)
    logcap = _LogCapture()
    logging.getLogger().addHandler(logcap.handler)
    result["comfy_log"] = logcap.lines
    import comfy.options

    comfy.options.enable_args_parsing()
    from comfy.cli_args import args, enables_dynamic_vram

    import comfy_aimdo.control

    result["torch_imported_before_aimdo_init"] = "torch" in sys.modules  # must be False, as in main.py
    if enables_dynamic_vram():
        try:
            comfy_aimdo.control.init(simple_vram_headroom=None if args.reserve_vram is None
                                     else int(args.reserve_vram * 1024**3))
        except TypeError:
            comfy_aimdo.control.init()
    if not args.cpu:
        import cuda_malloc  # noqa: F401  (ComfyUI's allocator choice, as main.py makes it)
    result["pytorch_cuda_alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    import torch

    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.model_prefetch
    import comfy.sample
    import comfy_aimdo.model_vbar
    import folder_paths
    import nodes

    # --- main.py's Dynamic VRAM switch, with the reason when it stays off
    reason = None
    if args.enable_dynamic_vram or (enables_dynamic_vram() and mm.is_nvidia() and not mm.is_wsl()):
        if (not args.enable_dynamic_vram) and mm.torch_version_numeric < (2, 8):
            reason = f"torch {torch.__version__} < 2.8 (DynamicVRAM needs 2.8+)"
        else:
            try:
                ok = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * 1024**3))
                                                      for d in mm.get_all_torch_devices())
            except TypeError:
                ok = comfy_aimdo.control.init_devices(d.index for d in mm.get_all_torch_devices())
            if ok:
                comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
                comfy.memory_management.aimdo_enabled = True
                logging.info("DynamicVRAM support detected and enabled")
            elif comfy_aimdo.control.lib is None:
                reason = "comfy-aimdo's native library did not load (comfy_aimdo.control.init failed; see the log)"
            else:
                reason = "comfy_aimdo.control.init_devices() returned False (no working comfy-aimdo for this GPU)"
    elif not enables_dynamic_vram():
        reason = "disabled by the flags (" + " ".join(comfy_args) + ")"
    else:
        reason = "not an Nvidia GPU" if not mm.is_nvidia() else "WSL (ComfyUI keeps Dynamic VRAM off there)"
    dynamic = bool(comfy.memory_management.aimdo_enabled)
    result["dynamic_vram"] = dynamic
    result["dynamic_vram_reason"] = reason
    return dynamic, reason


def child_worker(spec: dict, result: dict) -> None:
    dynamic, reason = comfy_startup(spec["comfy_args"], result)
    import torch

    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_prefetch
    import comfy.sample
    import comfy_aimdo.control
    import comfy_aimdo.model_vbar
    import folder_paths
    import nodes

    if spec["mode"] == "dynamic" and not dynamic:
        result["status"] = "not_run"
        result["reason"] = f"Dynamic VRAM unavailable: {reason}"
        return
    if spec["mode"] == "legacy" and dynamic:
        raise RuntimeError("Dynamic VRAM is on although the legacy patcher was asked for")
    try:
        import comfy_kitchen

        result["kitchen_backends"] = {k: bool(v.get("available", v)) if isinstance(v, dict) else v
                                      for k, v in comfy_kitchen.list_backends().items()}
    except Exception as exc:  # noqa: BLE001 - informational
        result["kitchen_backends"] = f"unknown ({exc})"

    import comfy_sdnq.comfyui.nodes  # noqa: F401  the node pack: installs the SDNQ-aware loader hooks

    stats = _Stats()
    _instrument(stats)
    folder_paths.add_model_folder_path("diffusion_models", spec["models_dir"], is_default=True)
    dev = mm.get_torch_device()
    cuda = dev.type == "cuda"
    result["device"] = str(dev)
    result["vram_state"] = mm.vram_state.name
    result["extra_reserved_vram"] = mm.extra_reserved_memory()

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def device_used():
        if not cuda:
            return None
        free, total = torch.cuda.mem_get_info(dev)
        return total - free

    def aimdo_usage():
        if not dynamic:
            return None
        try:
            return int(comfy_aimdo.control.get_total_vram_usage())
        except Exception:  # noqa: BLE001
            return None

    def after_node():
        """execution.py's cleanup after every node when aimdo is on"""
        if comfy.memory_management.aimdo_enabled:
            mm.reset_cast_buffers()
            comfy.model_prefetch.cleanup_prefetch_queues()
            comfy_aimdo.model_vbar.vbars_reset_watermark_limits()

    if cuda:
        torch.zeros(1, device=dev)
        sync()
        result["total_vram"] = torch.cuda.mem_get_info(dev)[1]
    result["baseline_device_used"] = device_used()

    # --- peak of the device's used memory, polled
    import threading

    peak = {"device": 0, "aimdo": 0}
    stop = threading.Event()

    def poll():  # the driver's free memory only (comfy-aimdo is read at step boundaries, from this thread)
        while not stop.wait(0.02):
            try:
                peak["device"] = max(peak["device"], device_used() or 0)
            except Exception:  # noqa: BLE001
                return

    poller = threading.Thread(target=poll, daemon=True) if cuda and spec.get("poll", True) else None

    # --- emulated cap on a CPU device (ComfyUI never partially loads onto the CPU)
    emulated = {}
    if spec.get("emulate_cap_bytes"):
        orig_load = mm.LoadedModel.model_load

        def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
            budget = emulated.get(id(self.model.model))
            if budget is not None and mm.is_device_cpu(self.device):
                lowvram_model_memory = max(0.1, budget - self.model.loaded_size())
            return orig_load(self, lowvram_model_memory, force_patch_weights)

        mm.LoadedModel.model_load = model_load

    g = torch.Generator().manual_seed(42)
    cond = [[torch.randn(1, spec["text_tokens"], 4096, generator=g) * 0.5,
             {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 3.5}]]

    def sample(patcher, latent_hw, steps):
        latent = torch.zeros(1, 16, *latent_hw)
        noise = comfy.sample.prepare_noise(latent, spec["seed"])
        try:
            return comfy.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", cond, cond, latent, denoise=1.0,
                                       seed=spec["seed"], disable_pbar=True)
        finally:
            after_node()

    def loaded_models():
        out = []
        for lm in mm.current_loaded_models:
            p = lm.model
            if p is not None:
                out.append({"model": type(p.model).__name__, "patcher": type(p).__name__,
                            "loaded": p.loaded_size(), "size": p.model_size()})
        return out

    def pins(p):
        d = {"total_pinned": int(mm.TOTAL_PINNED_MEMORY), "pinned_entries": len(mm.PINNED_MEMORY)}
        if p is not None and p.is_dynamic():
            d["patcher_pinned"] = int(p.pinned_memory_size())
            d["patcher_host_buffers"] = int(p.loaded_ram_size())
        return d

    if poller is not None:
        poller.start()
    second = None
    if spec.get("second_file"):
        t = time.perf_counter()
        second = nodes.UNETLoader().load_unet(spec["second_file"], "default")[0]
        mm.load_models_gpu([second])
        sample(second, spec["second_latent"], 1)
        result["second"] = {"file": spec["second_file"], "patcher": type(second).__name__,
                            "model_size": second.model_size(), "loaded_before": second.loaded_size(),
                            "load_and_step_s": time.perf_counter() - t}

    t = time.perf_counter()
    main = nodes.UNETLoader().load_unet(spec["main_file"], "default")[0]
    result["load_s"] = time.perf_counter() - t
    result["patcher"] = type(main).__name__
    result["model_size"] = main.model_size()
    result["model_dtype"] = str(main.model_dtype())
    if spec.get("emulate_cap_bytes"):
        emulated[id(main.model)] = spec["emulate_cap_bytes"]

    steps_log = []

    def unet_wrapper(apply_model, a):
        sync()
        before = stats.snap()
        t0 = time.perf_counter()
        out = apply_model(a["input"], a["timestep"], **a["c"])
        sync()
        row = {"s": time.perf_counter() - t0, **stats.delta(before), "device_used": device_used(),
               "aimdo_vram": aimdo_usage() if dynamic else None,
               "loaded": main.loaded_size(), "second_loaded": second.loaded_size() if second is not None else None}
        peak["device"] = max(peak["device"], row["device_used"] or 0)
        peak["aimdo"] = max(peak["aimdo"], row["aimdo_vram"] or 0)
        steps_log.append(row)
        return out

    main.set_model_unet_function_wrapper(unet_wrapper)

    t = time.perf_counter()
    sample(main, spec["latent"], spec["warmup_steps"])
    result["warmup_s"] = time.perf_counter() - t  # includes load_models_gpu and first faults / pins
    result["warmup_steps"] = steps_log[:]
    steps_log.clear()

    if cuda:
        try:
            torch.cuda.reset_peak_memory_stats(dev)
        except Exception:  # noqa: BLE001 - allocator without peak statistics
            pass
    peak["device"] = device_used() or 0
    peak["aimdo"] = aimdo_usage() or 0
    prof = cProfile.Profile() if spec.get("profile") else None
    tprof = None
    if spec.get("torch_profile"):
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        tprof = torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
        tprof.__enter__()
    t = time.perf_counter()
    if prof is not None:
        prof.enable()
    out = sample(main, spec["latent"], spec["steps"])
    if prof is not None:
        prof.disable()
    if tprof is not None:
        tprof.__exit__(None, None, None)
        result["torch_profile"] = tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40,
                                                             max_name_column_width=60)
    result["sample_s"] = time.perf_counter() - t
    if prof is not None:  # the host's time by function, own time first (GPU waits show as synchronize),
        text = io.StringIO()  # then who called the first 15
        st = pstats.Stats(prof, stream=text).sort_stats("tottime")
        st.print_stats(40)
        st.print_callers(15)
        result["profile"] = text.getvalue()
    torch.save(out.float().cpu(), spec["latent_out"])
    result["steps"] = steps_log[:]
    times = [r["s"] for r in steps_log]
    result["step_s"] = statistics.median(times) if times else None
    result["peak_device_used"] = peak["device"] if cuda else None
    result["peak_aimdo_vram"] = peak["aimdo"] if dynamic else None
    if cuda:
        for key, fn in (("peak_torch_allocated", torch.cuda.max_memory_allocated),
                        ("peak_torch_reserved", torch.cuda.max_memory_reserved)):
            try:
                result[key] = fn(dev)
            except Exception:  # noqa: BLE001 - allocator without peak statistics
                result[key] = None
    last = steps_log[-1] if steps_log else {}
    result["loaded_size"] = last.get("loaded")
    result["loaded_size_min"] = min((r["loaded"] for r in steps_log), default=None)
    result["loaded_size_max"] = max((r["loaded"] for r in steps_log), default=None)
    result["moved_layers_per_step"] = [r["moved_layers"] for r in steps_log]
    result["moved_bytes_per_step"] = [r["moved_bytes"] for r in steps_log]
    result["lowvram_casts_per_step"] = [r["lowvram_casts"] for r in steps_log]
    result["casts_per_step"] = [r["casts"] for r in steps_log]
    result["loaded_models_after_sampling"] = loaded_models()
    model = main.model
    result["model_lowvram"] = bool(getattr(model, "model_lowvram", False))
    result["lowvram_patch_counter"] = int(getattr(model, "lowvram_patch_counter", 0) or 0)
    result["lowvram_modules"] = sum(1 for m in model.modules()
                                    if getattr(m, "prev_comfy_cast_weights", None) is not None)
    vbar = getattr(model, "dynamic_vbars", {}).get(main.load_device) if dynamic else None
    if vbar is not None:
        res = vbar.get_residency()
        result["vbar"] = {"loaded": int(vbar.loaded_size()), "pages": len(res),
                          "resident_pages": sum(x & 1 for x in res), "watermark": int(vbar.get_watermark()),
                          "page_bytes": 32 * MiB}
    if second is not None:
        result["second"]["loaded_during"] = last.get("second_loaded")
        t = time.perf_counter()
        sample(second, spec["second_latent"], 1)  # the second model again, the main one still loaded
        result["second"]["rerun_s"] = time.perf_counter() - t
        result["second"]["loaded_after_rerun"] = second.loaded_size()
        result["main_loaded_after_second_rerun"] = main.loaded_size()
    result["pins_before_unload"] = pins(main)
    stop.set()
    if poller is not None:
        poller.join(timeout=1)

    # --- unload and look for leftovers
    def leftovers(p):
        gc_collect()
        d = {"main_loaded": p.loaded_size() if p is not None else None, **pins(p), **_status_pins()}
        # ComfyUI's legacy per-stream cast buffers (kept until the next reset_cast_buffers, which only
        # Dynamic VRAM calls; unused with cudaMallocAsync): a cache, reported apart
        d["legacy_cast_buffers"] = sum(int(b.numel() * b.element_size())
                                       for b in getattr(mm, "STREAM_CAST_BUFFERS", {}).values())
        if cuda:
            sync()
            used = device_used()
            d.update(torch_allocated=torch.cuda.memory_allocated(dev), torch_reserved=torch.cuda.memory_reserved(dev),
                     device_used=used, device_delta=used - result["baseline_device_used"])
        d["aimdo_vram"] = aimdo_usage()
        return d

    def gc_collect():
        import gc

        gc.collect()
        mm.soft_empty_cache()

    mm.unload_all_models()
    after_node()
    mm.soft_empty_cache()
    result["after_unload"] = leftovers(main)
    result["loaded_models_after_unload"] = loaded_models()
    del main, second, model, vbar, out
    steps_log.clear()
    result["after_delete"] = leftovers(None)
    result["status"] = "ok"


def _is_oom(exc) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return "outofmemory" in text.replace(" ", "") or "out of memory" in text


def _cleanup_after_failure():
    """best effort after a failed run: unload, then what is left (pinned host memory, torch VRAM)"""
    if "comfy.model_management" not in sys.modules:
        return None
    try:
        mm = sys.modules["comfy.model_management"]
        mm.unload_all_models()
        mm.soft_empty_cache()
        d = {"total_pinned": int(mm.TOTAL_PINNED_MEMORY), "pinned_entries": len(mm.PINNED_MEMORY)}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            d["torch_allocated"] = torch.cuda.memory_allocated()
        return d
    except BaseException as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def child_main(kind: str, spec_path: str) -> int:
    spec = json.load(open(spec_path))
    result = {"config": spec.get("name"), "status": "failed"}
    if kind == "worker":
        result.update(kind=spec["kind"], mode=spec["mode"], capped=spec["cap_bytes"] is not None,
                      comfy_args=spec["comfy_args"])
    try:
        if kind == "probe":
            result = child_probe(spec)
            result["status"] = "ok"
        elif kind == "build":
            result = {"models": child_build(spec), "status": "ok"}
        else:
            child_worker(spec, result)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        result["oom"] = _is_oom(exc)
        result["traceback"] = traceback.format_exc()[-6000:]
        traceback.print_exc()
        if kind == "worker":
            result["after_failure"] = _cleanup_after_failure()
    with open(spec["result_out"], "w") as f:
        json.dump(result, f, indent=1, default=str)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (aimdo / CUDA finalizers): the result is written


# ===========================================================================
# the parent


def run_child(kind: str, spec: dict, workdir: str, timeout: float, verbose: bool, script: str | None = None) -> dict:
    """spec run by `script --_<kind> spec.json` (default: this file) in its own process and
    session; its result JSON, with status timeout/failed when it ran over or died"""
    name = spec.get("name", kind)
    spec = dict(spec)
    spec["result_out"] = os.path.join(workdir, f"{name}.result.json")
    spec_path = os.path.join(workdir, f"{name}.spec.json")
    log_path = os.path.join(workdir, f"{name}.log")
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    if os.path.exists(spec["result_out"]):
        os.unlink(spec["result_out"])
    cmd = [sys.executable, os.path.abspath(script or __file__), f"--_{kind}", spec_path]
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "w") as log:
        # its own session: a timeout kills the child's whole process group, and nothing else
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if verbose else log, stderr=subprocess.STDOUT,
                                env=_child_env(), cwd=ROOT, start_new_session=True, text=verbose)
        reader = None
        if verbose:
            import threading

            def pump():
                for line in proc.stdout:
                    log.write(line)
                    print(f"    [{name}] {line}", end="", flush=True)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # also on KeyboardInterrupt: no orphaned GPU process
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
        if reader is not None:
            reader.join(timeout=5)
    wall = time.perf_counter() - t0
    if timed_out:
        res = {"status": "timeout", "error": f"timed out after {timeout:.0f} s"}
    elif os.path.exists(spec["result_out"]):
        res = json.load(open(spec["result_out"]))
    else:
        res = {"status": "failed", "error": f"the {kind} process died (exit status {proc.returncode}) without a result"
                                            + (" - killed by a signal (host OOM?)" if proc.returncode < 0 else "")}
    res["wall_s"] = wall
    res["log"] = log_path
    if res.get("status") not in ("ok", "not_run"):
        tail = "".join(open(log_path, errors="replace").readlines()[-25:])
        res["log_tail"] = tail
    return res


def default_cap(sdnq_bytes: int) -> int:
    return int(min(0.5 * sdnq_bytes + 1.5 * GiB, 0.9 * sdnq_bytes))


def build_spec(args, models_dir) -> dict:
    hidden = args.hidden
    main = {"name": "main", "hidden": hidden, "double": args.blocks, "single": args.single_blocks, "seed": 0,
            "sdnq_path": os.path.join(models_dir, "bench-flux-sdnq.safetensors"),
            "dense_path": os.path.join(models_dir, "bench-flux-bf16.safetensors") if args.bf16 else None}
    models = [main]
    if args.second != "none":
        ext = "sdnq" if args.second == "sdnq" else "bf16"
        p = os.path.join(models_dir, f"bench-second-{ext}.safetensors")
        models.append({"name": "second", "hidden": hidden, "double": args.second_blocks,
                       "single": 2 * args.second_blocks, "seed": 1,
                       "sdnq_path": p if args.second == "sdnq" else None,
                       "dense_path": p if args.second == "dense" else None})
    return {"name": "build", "device": args.device, "std": args.std, "models": models,
            "quant": {"weights_dtype": args.weights_dtype, "svd_rank": args.svd_rank}}


def flux_params(hidden: int, double: int, single: int) -> int:
    """parameters of ComfyUI's Flux (double block 36 h^2, single 15 h^2, embedders, biases)"""
    h = hidden
    embedders = h * (64 + 256 + 768 + 4096 + 256 + 66 + 2 * h) + 3 * h * h
    return double * (36 * h * h + 26 * h) + single * (15 * h * h + 12 * h) + embedders


def disk_needed(spec) -> int:
    """bytes the model files take, with 10 % to spare (SDNQ uint4 + SVD: ~0.6 byte a parameter)"""
    total = 0
    for m in spec["models"]:
        n = flux_params(m["hidden"], m["double"], m["single"])
        total += int(0.7 * n) if m.get("sdnq_path") else 0
        total += 2 * n if m.get("dense_path") else 0
    return int(1.1 * total)


def manifest_matches(path, spec) -> dict | None:
    try:
        m = json.load(open(path))
    except (OSError, ValueError):
        return None
    if m.get("spec", {}).get("models") != spec["models"] or m.get("spec", {}).get("quant") != spec["quant"] \
            or m.get("spec", {}).get("std") != spec["std"]:
        return None
    for mod in spec["models"]:
        for k in ("sdnq_path", "dense_path"):
            if mod.get(k) and not os.path.isfile(mod[k]):
                return None
    return m.get("built")


def compare(latents: dict, results: dict) -> dict:
    import torch

    out = {}
    loaded = {k: torch.load(p) for k, p in latents.items() if os.path.isfile(p)}
    for name, res in results.items():
        if name not in loaded:
            continue
        kind = CONFIGS[name][0]
        ref = next((r for r in REFERENCE[kind] if r in loaded), None)
        row = {}
        if ref is not None:
            a, b = loaded[name], loaded[ref]
            row.update(ref=ref, rel=float((a - b).norm() / b.norm().clamp_min(1e-30)), equal=bool(torch.equal(a, b)),
                       max_abs=float((a - b).abs().max()))
        sref = next((r for r in REFERENCE["sdnq"] if r in loaded), None)
        if kind == "bf16" and sref is not None:
            a, b = loaded[name], loaded[sref]
            row["rel_vs_sdnq"] = float((a - b).norm() / b.norm().clamp_min(1e-30))
        row["finite"] = bool(torch.isfinite(loaded[name]).all())
        out[name] = row
    return out


def evidence(name: str, res: dict, cmp: dict, cap: int | None, emulated: bool) -> dict:
    """the checks of issue 3 item 9 for one row that ran (True = shown)"""
    kind, mode, capped = CONFIGS[name]
    ev = {}
    if res.get("status") != "ok":
        return ev
    ms, ls = res.get("model_size"), res.get("loaded_size")
    moved = res.get("moved_layers_per_step") or []
    lowvram = res.get("lowvram_casts_per_step") or []
    if capped:
        # every timed step (after the warm-up run): loaded_size below model_size, layers streamed
        top = res.get("loaded_size_max")
        ev["loaded_lt_model"] = ms is not None and top is not None and top < ms
        steps = lowvram if emulated else moved
        ev["streaming"] = bool(steps) and all(n > 0 for n in steps)
        if not emulated and cap is not None:
            second = (res.get("second") or {}).get("loaded_during") or 0
            ev["weights_within_cap"] = ls is not None and ls + second <= cap
    else:
        ev["fully_loaded"] = ms is not None and ls is not None and ls >= 0.99 * ms
    c = cmp.get(name, {})
    if c.get("ref") and c["ref"] != name:
        ev["outputs_agree"] = c["rel"] <= AGREE_RTOL
    ev["finite"] = c.get("finite", True)
    ev["no_oom"] = not res.get("oom")
    after = res.get("after_unload") or {}
    clean = after.get("total_pinned", 0) == 0 and after.get("pinned_entries", 0) == 0 and \
        not after.get("patcher_pinned") and not after.get("patcher_host_buffers") and not after.get("main_loaded")
    if after.get("torch_allocated") is not None:
        torch_left = after["torch_allocated"] - (after.get("legacy_cast_buffers") or 0)
        clean = clean and torch_left <= LEFT_TORCH_BYTES and \
            (after.get("device_delta") or 0) - (after.get("legacy_cast_buffers") or 0) <= LEFT_DEVICE_BYTES and \
            (after.get("aimdo_vram") or 0) <= LEFT_AIMDO_BYTES
    ev["nothing_left"] = bool(clean)
    return ev


def _base_step(results: dict, name: str):
    """the SDNQ resident step time of the same patcher mode (else the legacy one)"""
    mode = CONFIGS[name][1]
    for ref in (f"sdnq-resident-{mode}", "sdnq-resident-legacy"):
        r = results.get(ref) or {}
        if r.get("status") == "ok" and r.get("step_s"):
            return ref, r["step_s"]
    return None, None


def render(env, model, cap, flags_of, results, cmp, evid, args) -> str:
    ver, commit = env["comfyui_version"], env["comfyui_commit"]
    main = model.get("main", {})
    second = model.get("second")
    cpu = args.device == "cpu"
    gpu = env.get("gpu") or f"CPU ({env.get('cpu')}): smoke run, no GPU"
    lines = ["### ComfyUI model management with SDNQ weights: shared VRAM budget", "",
             f"**{gpu}**" + (f" ({gib(env.get('total_vram'))} GiB)" if env.get("total_vram") else "")
             + f" · torch {env['torch']} (CUDA {env['cuda']}) · ComfyUI {ver} @ {commit[:12]}"
             + f" · comfy-kitchen {env.get('comfy-kitchen')} · comfy-aimdo {env.get('comfy-aimdo')}"
             + f" · comfy_sdnq {env.get('comfy_sdnq')} (CUDA kernels: {env.get('comfy_sdnq_cuda_backend')})", ""]
    kb = next((r.get("kitchen_backends") for r in results.values() if r.get("kitchen_backends")), None)
    if isinstance(kb, dict):
        lines += [f"comfy-kitchen backends available: {', '.join(k for k, v in kb.items() if v) or 'none'}.", ""]
    lines += [f"Main model: Flux layout, {main.get('double')} double + {main.get('single')} single blocks, hidden "
              f"{main.get('hidden')}, {main.get('params', 0) / 1e9:.2f} B params, random weights; SDNQ "
              f"{args.weights_dtype}{f' + SVD r{args.svd_rank}' if args.svd_rank else ''} (every block Linear): "
              f"{size(main.get('sdnq_bytes'))}"
              + (f"; bf16 (the same weights dequantized): {size(main.get('bf16_bytes'))}" if main.get("bf16_bytes")
                 else "") + "."]
    if second:
        lines += [f"Second model loaded beside it: {args.second} Flux layout, {second['double']}+{second['single']} "
                  f"blocks, {size(second.get('sdnq_bytes') or second.get('bf16_bytes'))}."]
    if cap is not None:
        how = ("emulated: ComfyUI never partially loads onto a CPU, so LoadedModel.model_load gets the cap as the "
               "main model's lowvram budget" if cpu else f"ComfyUI flag `{flags_of.get('cap', '')}`")
        lines += [f"VRAM cap for the capped rows: {size(cap)} ({how})."]
    h, w = args.latent
    lines += [f"Sampling: {w * 8}x{h * 8} px (latent 1x16x{h}x{w}), {args.text_tokens} text tokens, euler/simple, "
              f"cfg 1, {args.steps} timed steps after a {args.warmup_steps}-step warm-up run; step = one model call "
              f"({'' if cpu else 'CUDA-synchronized, '}median). Each row: its own process"
              + (f"; {args.repeat} processes per row, round-robin, step s = the median of their medians (their "
                 f"range in brackets), the other columns from the first" if args.repeat > 1 else "") + ".", ""]
    lines += ["| configuration | ComfyUI flags | patcher | status | step s | x SDNQ resident | warm-up s | "
              "moved / step | peak VRAM: device / torch |",
              "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for name, res in results.items():
        st = res.get("status")
        status = st if st == "ok" else \
            f"{st}{' (OOM)' if res.get('oom') else ''}: {res.get('reason') or res.get('error', '')}"[:200]
        step = res.get("step_s")
        ref_name, ref = _base_step(results, name)
        x = "-" if not (step and ref) else "1.00" if ref_name == name else f"{step / ref:.2f}"
        moved = res.get("moved_layers_per_step") or []
        mb = res.get("moved_bytes_per_step") or []
        mv = f"{statistics.median(moved):.0f} layers, {size(statistics.median(mb))}" if moved else "-"
        if cpu and res.get("lowvram_casts_per_step") is not None:
            mv = f"{statistics.median(res['lowvram_casts_per_step']):.0f} lowvram casts"
        peak = f"{size(res.get('peak_device_used'))} / {size(res.get('peak_torch_allocated'))}" \
            if res.get("peak_device_used") is not None else "-"
        flags = " ".join(flags_of.get(name, [])) or "(defaults)"
        step_txt = f"{step:.3f}" if step else "-"
        spread = [v for v in res.get("step_s_runs") or [] if v is not None]
        if len(spread) > 1:
            step_txt += f" ({min(spread):.3f}-{max(spread):.3f}, {len(spread)} runs)"
        warm = f"{res['warmup_s']:.1f}" if res.get("warmup_s") else "-"
        lines.append(f"| {name} | `{flags}` | {res.get('patcher', '-')} | {status} | {step_txt} | {x} | {warm} | "
                     f"{mv} | {peak} |")
    lines += ["", "x SDNQ resident: step time / the SDNQ resident step of the same patcher mode. moved: layers whose "
              "weights were copied host->GPU in a step (legacy: lowvram casts of off-GPU weights; Dynamic VRAM: VBAR "
              "misses, faulted into a page or streamed through the cast buffer)"
              + ("; on the CPU nothing moves: lowvram casts = layers cast per step by the lowvram path" if cpu
                 else "") + ". Warm-up: the first sampling run, with load_models_gpu.", ""]
    lines += ["| configuration | model_size | loaded_size | 2nd model loaded: before / during / after its rerun | "
              "output vs reference | after unload: torch alloc / device delta / aimdo, pinned | evidence |",
              "|---|---:|---:|---|---|---|---|"]
    for name, res in results.items():
        if res.get("status") != "ok":
            continue
        s2 = res.get("second") or {}
        sec = f"{size(s2.get('loaded_before'))} / {size(s2.get('loaded_during'))} / " \
              f"{size(s2.get('loaded_after_rerun'))}" if s2 else "-"
        c = cmp.get(name, {})
        if c.get("ref") and c["ref"] != name:
            out = f"rel {c['rel']:.1e}, {'bit-equal' if c['equal'] else 'not equal'} (vs {c['ref']})"
        else:
            out = "reference" if c.get("ref") == name else "no reference row ran"
        if c.get("rel_vs_sdnq") is not None:
            out += f"; vs SDNQ rel {c['rel_vs_sdnq']:.1e}"
        a = res.get("after_unload") or {}
        left = f"{size(a.get('torch_allocated'))} / {size(a.get('device_delta'))} / {size(a.get('aimdo_vram'))}, " \
               f"{size(a.get('total_pinned'))}"
        ev = evid.get(name, {})
        evs = " ".join(f"{k}={'ok' if v else 'NO'}" for k, v in ev.items())
        lines.append(f"| {name} | {size(res.get('model_size'))} | {size(res.get('loaded_size'))} | {sec} | {out} | "
                     f"{left} | {evs} |")
    lines += ["", "loaded_size: the main model's, at the last timed step (ComfyUI's loaded_size(): legacy "
              "model_loaded_weight_memory, dynamic VBAR-resident + force-loaded bytes). pinned: ComfyUI's "
              "TOTAL_PINNED_MEMORY after unload_all_models() + soft_empty_cache()."]
    return "\n".join(lines)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for kind in ("probe", "build", "worker"):
        ap.add_argument(f"--_{kind}", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="8+16 blocks, 2 timed steps, second model 1+2 blocks")
    ap.add_argument("--tiny", action="store_true", help="hidden 512, 1+2 blocks, 128x128 px, 16 text tokens (smoke)")
    ap.add_argument("--blocks", type=int, default=None, help="double blocks (dev: 19); single blocks: twice as many")
    ap.add_argument("--single-blocks", type=int, default=None, help="default: 2 x --blocks")
    ap.add_argument("--hidden", type=int, default=None, help="multiple of 128; default 3072 (tiny: 512)")
    ap.add_argument("--resolution", type=int, default=None, help="pixels (square); default 1024 (tiny: 128)")
    ap.add_argument("--text-tokens", type=int, default=None, help="default 512 (tiny: 16)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 6; quick 3, tiny 2)")
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--weights-dtype", default="uint4")
    ap.add_argument("--svd-rank", type=int, default=32, help="0: no SVD")
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--second", choices=("dense", "sdnq", "none"), default="dense")
    ap.add_argument("--second-blocks", type=int, default=None, help="default 2 (quick/tiny: 1)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="no dense file, no bf16 rows")
    ap.add_argument("--configs", default=None, help=f"comma-separated subset of {','.join(CONFIGS)}")
    ap.add_argument("--vram-cap-gb", type=float, default=None,
                    help="VRAM cap in GiB (default: min(0.5 x SDNQ size + 1.5 GiB, 0.9 x SDNQ size); "
                         "on the CPU: 0.5 x SDNQ size, emulated)")
    ap.add_argument("--comfy-args", default="", help="extra ComfyUI flags for every worker (quoted string)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per configuration (default 300; quick and cpu 150)")
    ap.add_argument("--build-timeout", type=float, default=None, help="seconds for building the models (default 600; "
                                                                       "quick and cpu 300)")
    ap.add_argument("--models-dir", default=None, help="where the model files go (kept; reused when they match)")
    ap.add_argument("--workdir", default=None, help="logs, latents, per-config results (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folders")
    ap.add_argument("--verbose", action="store_true", help="stream the workers' output")
    ap.add_argument("--no-poll", dest="poll", action="store_false",
                    help="no thread polling the device's free memory (peak VRAM then only at step boundaries)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the timed steps in each worker: the host functions by own time, in the JSON")
    ap.add_argument("--torch-profile", action="store_true",
                    help="torch.profiler on the timed steps in each worker: ops and CUDA runtime calls by own "
                         "host time, in the JSON")
    ap.add_argument("--repeat", type=int, default=1,
                    help="processes per configuration, round-robin over the configurations: the step column is "
                         "then the median of the processes' medians, their spread beside it (the host's speed "
                         "varies from process to process; single processes of a host-bound row differ by up to 40%%)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    small = args.quick or args.tiny
    args.hidden = args.hidden or (512 if args.tiny else 3072)
    if args.hidden % 128:
        ap.error("--hidden must be a multiple of 128 (ComfyUI's Flux: heads of 128)")
    args.blocks = args.blocks if args.blocks is not None else (1 if args.tiny else 8 if args.quick else 19)
    args.single_blocks = args.single_blocks if args.single_blocks is not None else 2 * args.blocks
    args.second_blocks = args.second_blocks if args.second_blocks is not None else (1 if small else 2)
    args.resolution = args.resolution or (128 if args.tiny else 1024)
    if args.resolution % 16:
        ap.error("--resolution must be a multiple of 16")
    args.text_tokens = args.text_tokens or (16 if args.tiny else 512)
    args.steps = args.steps or (2 if args.tiny else 3 if args.quick else 6)
    lat = args.resolution // 8
    args.latent = (lat, lat)
    args.second_latent = (max(8, lat // 2), max(8, lat // 2))
    args.timeout = args.timeout or (150 if args.device == "cpu" or args.quick else 300)
    args.build_timeout = args.build_timeout or (300 if args.device == "cpu" or args.quick else 600)
    names = [n.strip() for n in (args.configs or ",".join(CONFIGS)).split(",") if n.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration(s) {bad}; known: {', '.join(CONFIGS)}")
    if not args.bf16:
        names = [n for n in names if CONFIGS[n][0] != "bf16"]
    args.names = names
    return args


def main(argv=None) -> int:
    args = parse(argv)
    for kind in ("probe", "build", "worker"):
        if getattr(args, f"_{kind}"):
            return child_main(kind, getattr(args, f"_{kind}"))
    return run_in_workdir(args, "bench_comfyui", _run)


def run_in_workdir(args, prog: str, body) -> int:
    """body(args, workdir, models_dir, t_start) with ComfyUI checked, the work and model
    folders made (args.workdir / args.models_dir, else temporary ones) and, unless
    args.keep, the ones made here removed afterwards"""
    if not os.path.isfile(os.path.join(comfyui_path(), "comfy", "model_patcher.py")):
        print(f"{prog}: ComfyUI not found at {comfyui_path()} (set COMFYUI_PATH)", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    workdir = args.workdir or tempfile.mkdtemp(prefix=f"{prog}-")
    os.makedirs(workdir, exist_ok=True)
    own_models = args.models_dir is None
    models_dir = args.models_dir or os.path.join(workdir, "models")
    os.makedirs(models_dir, exist_ok=True)
    try:
        return body(args, workdir, models_dir, t_start)
    finally:
        if not args.keep:
            if own_models:
                shutil.rmtree(models_dir, ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)


def _run(args, workdir, models_dir, t_start) -> int:
    def say(msg):
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    env = run_child("probe", {"name": "probe", "device": args.device}, workdir, 120, args.verbose)
    if env.get("status") != "ok" or env.get("error"):
        print(f"bench_comfyui: probe failed: {env.get('error')}\n{env.get('log_tail', '')}", file=sys.stderr)
        return 2
    env["comfyui_version"], env["comfyui_commit"] = comfyui_version()
    env["comfyui_path"] = comfyui_path()
    say(f"{env.get('gpu') or 'CPU'}; torch {env['torch']}; ComfyUI {env['comfyui_version']} @ "
        f"{env['comfyui_commit'][:12]}; comfy-aimdo {env.get('comfy-aimdo')}; comfy-kitchen {env.get('comfy-kitchen')}")
    if args.device == "cuda" and env.get("comfy_sdnq_cuda_backend") != "cuda":
        say("WARNING: comfy_sdnq's CUDA extension is not loaded: SDNQ layers run the pure-torch reference "
            "(step times not representative)")

    spec = build_spec(args, models_dir)
    manifest = os.path.join(models_dir, "bench_manifest.json")
    model = manifest_matches(manifest, spec)
    if model is not None:
        say(f"reusing the model files in {models_dir}")
    else:
        need = disk_needed(spec)
        free = shutil.disk_usage(models_dir).free
        if free < need:
            print(f"bench_comfyui: the model files need about {size(need)}, {models_dir} has {size(free)} free "
                  f"(--models-dir elsewhere, --no-bf16, or fewer --blocks)", file=sys.stderr)
            return 2
        say(f"building the models in {models_dir} ...")
        built = run_child("build", spec, workdir, args.build_timeout, args.verbose)
        if built.get("status") != "ok":
            print(f"bench_comfyui: building the models failed: {built.get('error')}\n{built.get('log_tail', '')}",
                  file=sys.stderr)
            return 2
        model = built["models"]
        with open(manifest, "w") as f:
            json.dump({"spec": spec, "built": model}, f, indent=1)
        say(f"built in {built['wall_s']:.0f} s")
    sdnq_bytes = model["main"]["sdnq_bytes"]
    if args.vram_cap_gb:
        cap = int(args.vram_cap_gb * GiB)
    else:
        cap = int(0.5 * sdnq_bytes) if args.device == "cpu" else default_cap(sdnq_bytes)
    extra = args.comfy_args.split() if args.comfy_args else []
    flags_of = {}
    if args.device == "cpu":
        base = {"legacy": ["--cpu"], "dynamic": ["--cpu"]}
        cap_flags = []
    else:
        total = env["total_vram"]
        if cap >= total:
            print(f"bench_comfyui: the cap ({gib(cap)} GiB) is not below the GPU's {gib(total)} GiB", file=sys.stderr)
            return 2
        base = {"legacy": ["--disable-dynamic-vram"], "dynamic": []}
        cap_flags = ["--reserve-vram", f"{(total - cap) / GiB:.3f}"]
        flags_of["cap"] = " ".join(cap_flags) + f" (of {gib(total)} GiB)"
    say(f"VRAM cap {size(cap)} (main model SDNQ {size(sdnq_bytes)})"
        + (", emulated on the CPU" if args.device == "cpu" else f": {' '.join(cap_flags)}"))

    results, latents, wspecs = {}, {}, {}
    second_file = None
    if args.second != "none":
        second_file = f"bench-second-{'sdnq' if args.second == 'sdnq' else 'bf16'}.safetensors"
    runs = [(r, name) for r in range(args.repeat) for name in args.names]  # round-robin: drift hits all rows alike
    for rnd, name in runs:
        if rnd > 0:  # a repeat: only its step time is kept (the first process's row holds the evidence)
            if results.get(name, {}).get("status") != "ok":
                continue
            res = run_child("worker", dict(wspecs[name], latent_out=latents[name] + f".r{rnd}"), workdir,
                            args.timeout, args.verbose)
            first = results[name]
            ok = res.get("status") == "ok"
            first["step_s_runs"].append(res["step_s"] if ok else None)
            if not ok:  # a failed repeat fails the run as a failed first process would
                first.setdefault("repeat_errors", []).append(f"run {rnd + 1}: {res.get('status')}: {res.get('error')}")
            say(f"{name} (run {rnd + 1}): " + (f"step {res['step_s']:.3f} s" if ok else first["repeat_errors"][-1]))
            if rnd == args.repeat - 1:
                first["step_s"] = statistics.median(v for v in first["step_s_runs"] if v is not None)
            continue
        kind, mode, capped = CONFIGS[name]
        flags = base[mode] + (cap_flags if capped else []) + extra
        flags_of[name] = flags
        if args.device == "cpu" and mode == "dynamic":
            why = ("--device cpu: Dynamic VRAM needs an Nvidia GPU with comfy-aimdo (ModelPatcherDynamic reroutes "
                   "CPU load devices to ModelPatcher)")
            results[name] = {"status": "not_run", "reason": why}
            say(f"{name}: not run ({results[name]['reason']})")
            continue
        latents[name] = os.path.join(workdir, f"{name}.latent.pt")
        wspec = {"name": name, "mode": mode, "kind": kind, "comfy_args": flags, "models_dir": models_dir,
                 "main_file": "bench-flux-sdnq.safetensors" if kind == "sdnq" else "bench-flux-bf16.safetensors",
                 "second_file": second_file, "latent": list(args.latent), "second_latent": list(args.second_latent),
                 "text_tokens": args.text_tokens, "steps": args.steps, "warmup_steps": args.warmup_steps, "seed": 0,
                 "poll": args.poll, "profile": args.profile, "torch_profile": args.torch_profile,
                 "latent_out": latents[name], "cap_bytes": cap if capped else None,
                 "emulate_cap_bytes": cap if (capped and args.device == "cpu") else None}
        say(f"{name}: {' '.join(flags) or '(ComfyUI defaults)'} ...")
        res = run_child("worker", wspec, workdir, args.timeout, args.verbose)
        results[name] = res
        wspecs[name] = wspec
        if res.get("status") == "ok":
            res["step_s_runs"] = [res["step_s"]]
            say(f"{name}: {res.get('patcher')}, step {res['step_s']:.3f} s, loaded {size(res.get('loaded_size'))} of "
                f"{size(res.get('model_size'))}, layers moved per step {res.get('moved_layers_per_step')} (lowvram "
                f"casts {res.get('lowvram_casts_per_step')}), process {res['wall_s']:.0f} s")
        elif res.get("status") == "not_run":
            say(f"{name}: not run: {res.get('reason')}")
        else:
            say(f"{name}: {res.get('status').upper()}: {res.get('error')}\n{res.get('log_tail', '')}")

    cmp = compare(latents, results)
    emulated = args.device == "cpu"
    evid = {n: evidence(n, r, cmp, cap, emulated) for n, r in results.items()}
    text = render(env, model, cap, flags_of, results, cmp, evid, args)
    print("\n" + text + "\n", flush=True)
    failed = [n for n, r in results.items() if r.get("status") not in ("ok", "not_run") or r.get("repeat_errors")]
    missed = {n: [k for k, v in e.items() if not v] for n, e in evid.items() if not all(e.values())}
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    if missed:
        print("EVIDENCE MISSING: " + "; ".join(f"{n}: {', '.join(v)}" for n, v in missed.items()))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
        for r in results.values():
            r.pop("log", None)
        with open(args.out, "w") as f:
            json.dump({"env": env, "model": model, "cap_bytes": cap, "flags": flags_of,
                       "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                       "configs": results, "comparisons": cmp, "evidence": evid, "failed": failed,
                       "evidence_missing": missed, "markdown": text, "total_s": time.perf_counter() - t_start,
                       "date": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1, default=str)
        print(f"wrote {args.out}")
    say("done")
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
