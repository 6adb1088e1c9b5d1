"""comfy_sdnq inside ComfyUI: SDNQ weights handed to ComfyUI's own loaders, layers and
model management. Importing this package requires ComfyUI (`import comfy`).

    ops.py       SDNQOps: ComfyUI layers that take SDNQ QuantizedTensors as weights
    convert.py   SDNQ state dicts -> QuantizedTensors, diffusers keys -> ComfyUI keys
    patcher.py   ModelPatcher subclasses for what the stock ones would get wrong (LoRA)
    hooks.py     the stock loaders (Load Diffusion Model, Load Checkpoint, Load CLIP) made SDNQ-aware
    nodes.py     the node pack
"""
import os

TESTED_COMFYUI = ("0.29.0",)  # ComfyUI releases the integration is tested against (docs/comfyui.md)
TESTED_RANGE = ((0, 29, 0), (0, 30, 0))  # [lowest, first untested)


def comfyui_version() -> str | None:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return None


def check_version() -> None:
    """Fail with a clear message on ComfyUI releases outside the tested range
    (COMFY_SDNQ_ALLOW_UNTESTED_COMFYUI=1 turns that into a warning)."""
    v = comfyui_version()
    if v is None:
        return
    parts = tuple(int(x) for x in (v.split(".") + ["0", "0"])[:3] if x.isdigit())
    lo, hi = TESTED_RANGE
    if lo <= parts < hi:
        return
    msg = (f"comfy_sdnq is tested with ComfyUI {'.'.join(map(str, lo))} up to (not including) "
           f"{'.'.join(map(str, hi))}; this is ComfyUI {v}. Its model-management internals change often. "
           f"Set COMFY_SDNQ_ALLOW_UNTESTED_COMFYUI=1 to load anyway.")
    if os.environ.get("COMFY_SDNQ_ALLOW_UNTESTED_COMFYUI", "") not in ("", "0"):
        import logging

        logging.getLogger("comfy_sdnq").warning(msg)
        return
    raise RuntimeError(msg)
