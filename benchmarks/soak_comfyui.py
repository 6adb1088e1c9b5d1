#!/usr/bin/env python
"""Load/unload soak inside one real ComfyUI process: SDNQ and dense models loaded, sampled and
unloaded in turn, host RSS, ComfyUI's pinned memory and VRAM sampled every cycle.

    python benchmarks/soak_comfyui.py --tiny --device cpu --out soak-cpu.json      # CPU, ~1 min
    python benchmarks/soak_comfyui.py --out soak-gpu.json                          # GPU, both patcher modes, capped
    python benchmarks/soak_comfyui.py --tiny --device cpu --cycles 20 --base-cycle 4   # what the test runs

Models: benchmarks/bench_comfyui.py builds them (its build child, same files and manifest, so a
--models-dir is shared with it): a Flux-layout model (ComfyUI's layout, random weights) as a
single-file SDNQ model (uint4 + SVD r32 on every block Linear) and the same weights dequantized
as a dense bf16 file. GPU default: hidden 3072, 2 double + 4 single blocks (~0.9 + 2.6 GiB);
--tiny: hidden 512, 1 + 2 blocks.

One ComfyUI process per run (ComfyUI parses its flags at import; started as main.py starts it,
through bench_comfyui.comfy_startup). Cycle i (1-based) loads the SDNQ file (odd i) or the dense
file (even i) through the stock "Load Diffusion Model" node (nodes.UNETLoader; comfy_sdnq's node
pack makes it SDNQ-aware), samples --steps steps (comfy.sample.sample, euler, cfg 1, the
per-node cleanup execution.py does), then unloads:
  --unload gc (default)   the model of cycle i-1 is dropped only now, after cycle i sampled: while
                          cycle i loads, the previous model is still alive and loaded, so ComfyUI
                          must evict it or load the new one partially (the cap test); dropping the
                          last reference is how ComfyUI's cache lets a model go (the patcher is
                          freed, ComfyUI's cleanup_models_gc/cleanup_models forget it);
  --unload explicit       comfy.model_management.unload_all_models() after every cycle, and the
                          model dropped (strict load -> sample -> unload).
Then gc.collect() + soft_empty_cache(), and the sample: VmRSS, ComfyUI's TOTAL_PINNED_MEMORY and
PINNED_MEMORY entries, the Dynamic VRAM patchers' pinned bytes, VmLck/VmPin, and on a GPU
torch.cuda.memory_allocated/reserved, the device's used memory (mem_get_info) and comfy-aimdo's
VRAM usage; ComfyUI's loaded models; ComfyUI's "memory leak" warnings (a model that refcounting
did not free). After the last cycle everything is dropped and unloaded and sampled once more.

The bound (issue 6): from --base-cycle (10) to the last cycle (100), host RSS, torch-allocated
and device-used VRAM grow < --bound-mib (64) MiB and pinned memory returns to its base-cycle
value. The cycles alternate model kinds, so each kind is compared with itself: the dense cycles
from the base cycle to the last one of the same parity, the SDNQ cycles from base+1 to the last
odd one. No cycle may raise (an OOM that escapes ComfyUI fails the run).

Runs: --device cpu: one run, "cpu" (ComfyUI --cpu; no cap: ComfyUI never partially loads onto
the CPU). GPU: "dynamic" (Dynamic VRAM, ComfyUI's default) and "legacy" (--disable-dynamic-vram),
each under a VRAM cap (--reserve-vram total - cap, as bench_comfyui does) below the sum of the
two models: default min(0.75 x (SDNQ + dense) + 1 GiB, 0.95 x (SDNQ + dense)); --no-cap for
uncapped runs. A dynamic run without Dynamic VRAM (no comfy-aimdo, no Nvidia GPU) is not run.

Writes JSON (--out) and a markdown summary (--md, default: --out with .md); prints the summary.
Exit status 1 when a run failed, timed out or broke the bound.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_comfyui as bc  # noqa: E402

GiB, MiB = bc.GiB, bc.MiB
SDNQ_FILE = "bench-flux-sdnq.safetensors"
DENSE_FILE = "bench-flux-bf16.safetensors"
# metrics the growth bound applies to (bytes; None where not measured)
GROWTH_METRICS = ("rss", "torch_allocated", "device_used")
# reported the same way, not bounded: RSS split into heap and mapped files, RSS after malloc_trim
INFO_METRICS = ("rss_anon", "rss_file", "rss_trimmed")


# ===========================================================================
# the worker: every cycle in one ComfyUI process


_STATUS = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "VmPin": "pin", "VmLck": "lck"}


def _proc_status() -> dict:
    """VmRSS (rss) and its anonymous / file-backed parts (mapped model files count in RSS),
    VmPin, VmLck, in bytes"""
    out = {}
    try:
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            if k in _STATUS:
                out[_STATUS[k]] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _malloc_trim() -> bool:
    """glibc's malloc_trim(0): freed heap memory back to the OS (False where unavailable)"""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) or True)
    except (OSError, AttributeError):
        return False


def child_soak(spec: dict, result: dict) -> None:
    import logging

    dynamic, reason = bc.comfy_startup(spec["comfy_args"], result)
    if spec["mode"] == "dynamic" and not dynamic:
        result["status"] = "not_run"
        result["reason"] = f"Dynamic VRAM unavailable: {reason}"
        return
    if spec["mode"] != "dynamic" and dynamic:
        raise RuntimeError("Dynamic VRAM is on although the legacy patcher was asked for")
    import torch

    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_prefetch
    import comfy.sample
    import comfy_aimdo.control
    import comfy_aimdo.model_vbar
    import folder_paths
    import nodes

    import comfy_sdnq.comfyui.nodes  # noqa: F401  the node pack: SDNQ-aware stock loaders

    leaks = []

    class LeakLog(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if "memory leak" in msg and len(leaks) < 1000:
                leaks.append(msg[:200])

    logging.getLogger().addHandler(LeakLog(level=1))
    folder_paths.add_model_folder_path("diffusion_models", spec["models_dir"], is_default=True)
    dev = mm.get_torch_device()
    cuda = dev.type == "cuda"
    result.update(device=str(dev), vram_state=mm.vram_state.name, extra_reserved_vram=mm.extra_reserved_memory())
    if cuda:
        torch.zeros(1, device=dev)
        torch.cuda.synchronize(dev)
        result["total_vram"] = torch.cuda.mem_get_info(dev)[1]
        result["gpu"] = torch.cuda.get_device_name(dev)

    g = torch.Generator().manual_seed(42)
    cond = [[torch.randn(1, spec["text_tokens"], 4096, generator=g) * 0.5,
             {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 3.5}]]

    def after_node():  # execution.py's cleanup after every node when aimdo is on
        if comfy.memory_management.aimdo_enabled:
            mm.reset_cast_buffers()
            comfy.model_prefetch.cleanup_prefetch_queues()
            comfy_aimdo.model_vbar.vbars_reset_watermark_limits()

    def sample(patcher):
        latent = torch.zeros(1, 16, *spec["latent"])
        noise = comfy.sample.prepare_noise(latent, 0)
        try:
            return comfy.sample.sample(patcher, noise, spec["steps"], 1.0, "euler", "simple", cond, cond, latent,
                                       denoise=1.0, seed=0, disable_pbar=True)
        finally:
            after_node()

    def loaded():
        out = []
        for lm in mm.current_loaded_models:
            p = lm.model
            if p is not None:
                out.append(p)
        return out

    def measure() -> dict:
        gc.collect()
        mm.cleanup_models_gc()
        mm.cleanup_models()
        mm.soft_empty_cache()
        d = _proc_status()
        if spec.get("malloc_trim") and _malloc_trim():
            # diagnostic: what RSS is after the C heap gives its free memory back
            d["rss_trimmed"] = _proc_status().get("rss")
        d["pinned"] = int(mm.TOTAL_PINNED_MEMORY)
        d["pinned_entries"] = len(mm.PINNED_MEMORY)
        models = loaded()
        d["loaded_models"] = len(mm.current_loaded_models)
        d["loaded_bytes"] = sum(int(p.loaded_size()) for p in models)
        d["patcher_pinned"] = sum(int(p.pinned_memory_size()) for p in models if p.is_dynamic())
        if cuda:
            torch.cuda.synchronize(dev)
            free, total = torch.cuda.mem_get_info(dev)
            d.update(torch_allocated=torch.cuda.memory_allocated(dev), torch_reserved=torch.cuda.memory_reserved(dev),
                     device_used=total - free)
        if dynamic:
            try:
                d["aimdo_vram"] = int(comfy_aimdo.control.get_total_vram_usage())
            except Exception:  # noqa: BLE001 - informational
                d["aimdo_vram"] = None
        d["leak_warnings"] = len(leaks)
        return d

    result["start"] = measure()
    rows = []
    result["cycles"] = rows
    prev = None
    t_run = time.perf_counter()
    for i in range(1, spec["cycles"] + 1):
        kind = "sdnq" if i % 2 else "dense"
        row = {"cycle": i, "kind": kind}
        t0 = time.perf_counter()
        patcher = None
        try:
            patcher = nodes.UNETLoader().load_unet(SDNQ_FILE if kind == "sdnq" else DENSE_FILE, "default")[0]
            row["load_s"] = time.perf_counter() - t0
            row["patcher"] = type(patcher).__name__
            row["model_size"] = int(patcher.model_size())
            t1 = time.perf_counter()
            out = sample(patcher)
            row["sample_s"] = time.perf_counter() - t1
            row["finite"] = bool(torch.isfinite(out).all())
            row["loaded_after_sampling"] = int(patcher.loaded_size())
            row["prev_loaded_during"] = int(prev.loaded_size()) if prev is not None else None
            del out
        except BaseException as exc:  # noqa: BLE001 - recorded; an escaped OOM fails the run
            row["error"] = f"{type(exc).__name__}: {exc}"[:1000]
            row["oom"] = bc._is_oom(exc)
            row["traceback"] = traceback.format_exc()[-3000:]
            if isinstance(exc, KeyboardInterrupt):
                raise
        if spec["unload"] == "explicit":
            mm.unload_all_models()
            after_node()
            prev = None
            patcher = None
        else:
            prev = patcher  # the previous cycle's model goes now (its last reference)
        patcher = None
        row.update(measure())
        row["cycle_s"] = time.perf_counter() - t0
        rows.append(row)
        if spec.get("print_every") and (i % spec["print_every"] == 0 or i == 1):
            print(f"cycle {i:4d} {kind:5s} rss {row.get('rss', 0) / MiB:8.1f} MiB  "
                  f"pinned {row['pinned'] / MiB:7.1f} MiB"
                  + (f"  torch {row['torch_allocated'] / MiB:8.1f} MiB  device {row['device_used'] / MiB:8.1f} MiB"
                     if cuda else "") + f"  {row['cycle_s']:.2f} s" + (f"  ERROR {row['error']}" if "error" in row
                                                                       else ""), flush=True)
    result["cycles_s"] = time.perf_counter() - t_run
    prev = None
    mm.unload_all_models()
    after_node()
    result["end"] = measure()
    result["leak_warnings"] = leaks[:20]
    result["status"] = "ok"


def child_main(spec_path: str) -> int:
    spec = json.load(open(spec_path))
    result = {"config": spec.get("name"), "status": "failed", "mode": spec["mode"], "comfy_args": spec["comfy_args"],
              "cap_bytes": spec.get("cap_bytes"), "unload": spec["unload"]}
    try:
        child_soak(spec, result)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        result["oom"] = bc._is_oom(exc)
        result["traceback"] = traceback.format_exc()[-6000:]
        traceback.print_exc()
    with open(spec["result_out"], "w") as f:
        json.dump(result, f, indent=1, default=str)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (aimdo / CUDA finalizers): the result is written


# ===========================================================================
# the bound


def _slope(points) -> float | None:
    """least-squares bytes per cycle"""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else None


def check(res: dict, base_cycle: int, bound: int) -> dict:
    """growth of every metric per model kind, from the base cycle (and base+1) to the last
    cycle of the same parity; ok when within the bound, pinned memory back at its base value
    and no cycle raised"""
    rows = res.get("cycles") or []
    by = {r["cycle"]: r for r in rows}
    last = max(by, default=0)
    errors = [r for r in rows if r.get("error")]
    out = {"errors": len(errors), "ooms": sum(1 for r in errors if r.get("oom")),
           "first_error": errors[0]["error"] if errors else None, "cycles_run": len(rows),
           "nonfinite": sum(1 for r in rows if r.get("finite") is False), "per_kind": {}}
    ok = not errors and out["nonfinite"] == 0 and res.get("status") == "ok"
    for start in (base_cycle, base_cycle + 1):
        end = last if (last - start) % 2 == 0 else last - 1
        if start not in by or end <= start:
            ok = False
            continue
        kind = by[start]["kind"]
        k = {"from_cycle": start, "to_cycle": end}
        for m in GROWTH_METRICS + INFO_METRICS:
            a, b = by[start].get(m), by[end].get(m)
            if a is None or b is None:
                continue
            series = [(c, by[c][m]) for c in range(start, end + 1, 2) if by.get(c, {}).get(m) is not None]
            k[m] = {"base": a, "last": b, "growth": b - a, "max_above_base": max(v for _, v in series) - a,
                    "min": min(v for _, v in series), "max": max(v for _, v in series),
                    "slope_per_cycle": _slope(series)}
            if m in GROWTH_METRICS:
                ok = ok and (b - a) < bound
        pa, pb = by[start].get("pinned"), by[end].get("pinned")
        k["pinned"] = {"base": pa, "last": pb, "returns": pa == pb,
                       "max": max(by[c].get("pinned", 0) for c in range(start, end + 1, 2) if c in by)}
        pe = (by[start].get("pinned_entries"), by[end].get("pinned_entries"))
        k["pinned_entries"] = {"base": pe[0], "last": pe[1]}
        pp = (by[start].get("patcher_pinned"), by[end].get("patcher_pinned"))
        k["patcher_pinned"] = {"base": pp[0], "last": pp[1], "returns": pp[0] == pp[1]}
        ok = ok and pa == pb and pp[0] == pp[1]
        out["per_kind"][kind] = k
    end = res.get("end") or {}
    out["end"] = {k: end.get(k) for k in ("rss", "pinned", "pinned_entries", "loaded_models", "torch_allocated",
                                          "device_used", "aimdo_vram", "leak_warnings")}
    out["leak_warnings"] = end.get("leak_warnings")
    out["ok"] = bool(ok)
    return out


# ===========================================================================
# the parent


def _mib(n) -> str:
    return "-" if n is None else f"{n / MiB:+.1f}" if isinstance(n, (int, float)) else str(n)


def render(env, model, runs, checks, args, cap) -> str:
    main = model.get("main", {})
    gpu = env.get("gpu") or f"CPU ({env.get('cpu')})"
    lines = ["### Load/unload soak in ComfyUI", "",
             f"**{gpu}**" + (f" ({bc.gib(env.get('total_vram'))} GiB)" if env.get("total_vram") else "")
             + f" · torch {env['torch']} · ComfyUI {env['comfyui_version']} @ {env['comfyui_commit'][:12]}"
             + f" · comfy-kitchen {env.get('comfy-kitchen')} · comfy-aimdo {env.get('comfy-aimdo')}"
             + f" · comfy_sdnq {env.get('comfy_sdnq')}", "",
             f"{args.cycles} cycles per run in one ComfyUI process: load (stock UNETLoader) -> sample {args.steps} "
             f"step(s) at {args.latent[1] * 8}x{args.latent[0] * 8} px -> unload ({args.unload}), SDNQ (odd cycles, "
             f"{bc.size(main.get('sdnq_bytes'))}) and dense bf16 (even cycles, {bc.size(main.get('bf16_bytes'))}) "
             f"alternating; Flux layout, {main.get('double')}+{main.get('single')} blocks, hidden {main.get('hidden')}."
             + (f" VRAM cap {bc.size(cap)} (below SDNQ + dense = "
                f"{bc.size((main.get('sdnq_bytes') or 0) + (main.get('bf16_bytes') or 0))})." if cap else ""),
             f"Bound: from cycle {args.base_cycle} to {args.cycles}, growth < {args.bound_mib} MiB (RSS, torch "
             "allocated, device used) and pinned memory back at its base value; each model kind against itself "
             "(growth = last cycle of that kind - base cycle of that kind; MiB).", "",
             "RSS growth: last - base (range of that kind's cycles around the base; least-squares slope).", "",
             "| run | flags | patcher | cycles | errors (OOM) | kind | RSS growth | torch alloc growth | "
             "device used growth | pinned base -> last | s/cycle | bound |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---|---:|---|"]
    for name, res in runs.items():
        flags = " ".join(res.get("comfy_args") or []) or "(defaults)"
        if res.get("status") != "ok":
            why = res.get("reason") or res.get("error") or res.get("status")
            lines.append(f"| {name} | `{flags}` | - | - | - | - | - | - | - | - | - | {res.get('status')}: "
                         f"{str(why)[:160]} |")
            continue
        c = checks[name]
        rows = res.get("cycles") or []
        patchers = "/".join(sorted({r.get("patcher") for r in rows if r.get("patcher")}))
        per = res.get("cycles_s", 0) / max(1, len(rows))
        for kind, k in c["per_kind"].items():
            def g(m):
                return _mib(k[m]["growth"]) if m in k else "-"

            def rss():
                r = k.get("rss")
                if r is None:
                    return "-"
                slope = r["slope_per_cycle"] or 0.0
                return (f"{_mib(r['growth'])} ({_mib(r['min'] - r['base'])}..{_mib(r['max'] - r['base'])}; "
                        f"{slope / MiB:+.2f}/cycle)")
            pin = k["pinned"]
            lines.append(f"| {name} | `{flags}` | {patchers} | {c['cycles_run']} | {c['errors']} ({c['ooms']}) | "
                         f"{kind} ({k['from_cycle']}->{k['to_cycle']}) | {rss()} | {g('torch_allocated')} | "
                         f"{g('device_used')} | {pin['base'] / MiB:.1f} -> {pin['last'] / MiB:.1f} | {per:.2f} | "
                         f"{'ok' if c['ok'] else 'FAILED'} |")
    lines += ["", "| run | after the last cycle, all unloaded: loaded models / pinned / torch alloc / device used / "
              "aimdo VRAM | ComfyUI 'memory leak' warnings | peak of the previous model loaded while the next one "
              "sampled |", "|---|---|---:|---|"]
    for name, res in runs.items():
        if res.get("status") != "ok":
            continue
        e = checks[name]["end"]
        rows = res.get("cycles") or []
        prev = [r.get("prev_loaded_during") for r in rows if r.get("prev_loaded_during") is not None]
        lines.append(f"| {name} | {e.get('loaded_models')} / {bc.size(e.get('pinned'))} / "
                     f"{bc.size(e.get('torch_allocated'))} / {bc.size(e.get('device_used'))} / "
                     f"{bc.size(e.get('aimdo_vram'))} | {e.get('leak_warnings')} | "
                     f"{bc.size(max(prev)) if prev else '-'} |")
    return "\n".join(lines)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--_soak", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="hidden 512, 1+2 blocks, 64x64 px, 16 text tokens")
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--base-cycle", type=int, default=10, help="the cycle growth is measured from")
    ap.add_argument("--bound-mib", type=float, default=64.0)
    ap.add_argument("--steps", type=int, default=1, help="sampling steps per cycle")
    ap.add_argument("--blocks", type=int, default=None, help="double blocks (default 2; tiny 1); single: twice")
    ap.add_argument("--hidden", type=int, default=None, help="default 3072 (tiny 512)")
    ap.add_argument("--resolution", type=int, default=None, help="pixels (default 256; tiny 64)")
    ap.add_argument("--text-tokens", type=int, default=None, help="default 64 (tiny 16)")
    ap.add_argument("--unload", choices=("gc", "explicit"), default="gc")
    ap.add_argument("--modes", default=None, help="GPU runs: comma-separated of dynamic,legacy (default both)")
    ap.add_argument("--no-cap", dest="cap", action="store_false", help="GPU: no VRAM cap")
    ap.add_argument("--vram-cap-gb", type=float, default=None)
    ap.add_argument("--malloc-trim", action="store_true",
                    help="diagnostic: after each sample, glibc malloc_trim(0) and RSS again (rss_trimmed); "
                         "tells heap memory the allocator keeps from memory still in use")
    ap.add_argument("--comfy-args", default="", help="extra ComfyUI flags (quoted string)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run (default 540)")
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="stream the workers' output")
    ap.add_argument("--print-every", type=int, default=10)
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--md", default=None, help="markdown summary (default: --out with .md)")
    args = ap.parse_args(argv)
    args.hidden = args.hidden or (512 if args.tiny else 3072)
    args.blocks = args.blocks if args.blocks is not None else (1 if args.tiny else 2)
    args.resolution = args.resolution or (64 if args.tiny else 256)
    args.text_tokens = args.text_tokens or (16 if args.tiny else 64)
    args.latent = (args.resolution // 8, args.resolution // 8)
    args.timeout = args.timeout or 540
    if not 1 <= args.base_cycle < args.cycles - 1:
        ap.error("--base-cycle must leave at least two cycles after it")
    modes = [m.strip() for m in (args.modes or "dynamic,legacy").split(",") if m.strip()]
    if set(modes) - {"dynamic", "legacy"}:
        ap.error("--modes: dynamic and/or legacy")
    args.mode_list = modes
    return args


def build_spec(args, models_dir) -> dict:
    """bench_comfyui's build spec for the main model only: the SDNQ file and the dense one"""
    ns = argparse.Namespace(hidden=args.hidden, blocks=args.blocks, single_blocks=2 * args.blocks, bf16=True,
                            second="none", device=args.device, std=0.02, weights_dtype="uint4", svd_rank=32)
    return bc.build_spec(ns, models_dir)


def main(argv=None) -> int:
    args = parse(argv)
    if args._soak:
        return child_main(args._soak)
    return bc.run_in_workdir(args, "soak_comfyui", _run)


def _run(args, workdir, models_dir, t_start) -> int:
    def say(msg):
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    env = bc.run_child("probe", {"name": "probe", "device": args.device}, workdir, 120, args.verbose)
    if env.get("status") != "ok" or env.get("error"):
        print(f"soak_comfyui: probe failed: {env.get('error')}\n{env.get('log_tail', '')}", file=sys.stderr)
        return 2
    env["comfyui_version"], env["comfyui_commit"] = bc.comfyui_version()
    say(f"{env.get('gpu') or 'CPU'}; torch {env['torch']}; ComfyUI {env['comfyui_version']}")
    spec = build_spec(args, models_dir)
    manifest = os.path.join(models_dir, "bench_manifest.json")
    model = bc.manifest_matches(manifest, spec)
    if model is None:
        say(f"building the models in {models_dir} ...")
        built = bc.run_child("build", spec, workdir, 600, args.verbose)
        if built.get("status") != "ok":
            print(f"soak_comfyui: building the models failed: {built.get('error')}\n{built.get('log_tail', '')}",
                  file=sys.stderr)
            return 2
        model = built["models"]
        with open(manifest, "w") as f:
            json.dump({"spec": spec, "built": model}, f, indent=1)
        say(f"built in {built['wall_s']:.0f} s")
    main_m = model["main"]
    pair = main_m["sdnq_bytes"] + main_m["bf16_bytes"]
    extra = args.comfy_args.split() if args.comfy_args else []
    cap = None
    if args.device == "cpu":
        runs_spec = {"cpu": ("legacy", ["--cpu"] + extra)}
    else:
        total = env["total_vram"]
        flags = []
        if args.cap:
            cap = int(args.vram_cap_gb * GiB) if args.vram_cap_gb else int(min(0.75 * pair + GiB, 0.95 * pair))
            if cap >= total:
                print(f"soak_comfyui: the cap {bc.gib(cap)} GiB is not below the GPU's {bc.gib(total)} GiB",
                      file=sys.stderr)
                return 2
            flags = ["--reserve-vram", f"{(total - cap) / GiB:.3f}"]
        runs_spec = {}
        for m in args.mode_list:
            runs_spec[f"{m}{'-capped' if cap else ''}"] = (
                m, (["--disable-dynamic-vram"] if m == "legacy" else []) + flags + extra)
    say(f"SDNQ {bc.size(main_m['sdnq_bytes'])}, dense {bc.size(main_m['bf16_bytes'])}"
        + (f", VRAM cap {bc.size(cap)}" if cap else ""))
    runs, checks = {}, {}
    bound = int(args.bound_mib * MiB)
    for name, (mode, flags) in runs_spec.items():
        wspec = {"name": f"soak-{name}", "mode": mode, "comfy_args": flags, "models_dir": models_dir,
                 "cycles": args.cycles, "steps": args.steps, "latent": list(args.latent),
                 "text_tokens": args.text_tokens, "unload": args.unload, "cap_bytes": cap,
                 "print_every": args.print_every, "malloc_trim": args.malloc_trim}
        say(f"{name}: {' '.join(flags) or '(ComfyUI defaults)'}, {args.cycles} cycles ...")
        res = bc.run_child("soak", wspec, workdir, args.timeout, args.verbose, script=__file__)
        runs[name] = res
        if res.get("status") == "ok":
            checks[name] = check(res, args.base_cycle, bound)
            c = checks[name]
            growth = "; ".join(f"{kind}: " + ", ".join(f"{m} {_mib(k[m]['growth'])} MiB" for m in GROWTH_METRICS
                                                      if m in k) + f", pinned {k['pinned']['base']}->"
                               f"{k['pinned']['last']}" for kind, k in c["per_kind"].items())
            say(f"{name}: {c['cycles_run']} cycles in {res.get('cycles_s', 0):.0f} s, {c['errors']} errors; {growth}; "
                f"{'ok' if c['ok'] else 'BOUND FAILED'}")
        else:
            say(f"{name}: {res.get('status')}: {res.get('reason') or res.get('error')}\n{res.get('log_tail', '')}")
    text = render(env, model, runs, checks, args, cap)
    print("\n" + text + "\n", flush=True)
    failed = [n for n, r in runs.items() if r.get("status") not in ("ok", "not_run")]
    broken = [n for n, c in checks.items() if not c["ok"]]
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
        for r in runs.values():
            r.pop("log", None)
        with open(args.out, "w") as f:
            json.dump({"env": env, "model": model, "cap_bytes": cap, "bound_bytes": bound,
                       "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                       "runs": runs, "checks": checks, "failed": failed, "bound_failed": broken, "markdown": text,
                       "total_s": time.perf_counter() - t_start, "date": time.strftime("%Y-%m-%d %H:%M:%S")},
                      f, indent=1, default=str)
        md = args.md or os.path.splitext(args.out)[0] + ".md"
        with open(md, "w") as f:
            f.write(text + "\n")
        say(f"wrote {args.out} and {md}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    if broken:
        print(f"BOUND FAILED: {', '.join(broken)}")
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
