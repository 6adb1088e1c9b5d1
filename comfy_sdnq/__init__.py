"""comfy_sdnq: SDNQ-quantized models as first-class PyTorch / ComfyUI weights.

    import comfy_sdnq
    sd = comfy_sdnq.load("model/")                 # {key: tensor}; quantized layers are SDNQ QuantizedTensors
    w = sd["blocks.0.attn.to_q.weight"].dequantize()
    qt = comfy_sdnq.quantize(weight, "uint4", use_svd=True)
    comfy_sdnq.save({"proj.weight": qt}, "out.safetensors", {"weights_dtype": "uint4", "use_svd": True})

Submodules load lazily, so `import comfy_sdnq` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "load": "files", "save": "files", "load_config": "files",
    "quantize": "quantize", "sdnq_tensors": "quantize",
    "is_sdnq": "layout", "SDNQParams": "layout", "SDNQLayout": "layout",
    "backend": "kernels",
    "SdnqError": "errors", "SdnqFormatError": "errors", "SdnqUnsupportedError": "errors",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'comfy_sdnq' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
