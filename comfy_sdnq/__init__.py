"""comfy_sdnq: SDNQ-quantized models as first-class PyTorch / ComfyUI weights.

    import comfy_sdnq
    sd = comfy_sdnq.load("model/")                 # {key: tensor}; quantized layers are SDNQ QuantizedTensors
    w = sd["blocks.0.attn.to_q.weight"].dequantize()
    qt = comfy_sdnq.quantize(weight, "uint4", use_svd=True)
    comfy_sdnq.save({"proj.weight": qt}, "out.safetensors", {"weights_dtype": "uint4", "use_svd": True})
    comfy_sdnq.convert("FLUX.1-dev/", "FLUX.1-dev-uint4/", weights_dtype="uint4")   # a whole model, layer by layer

Submodules load lazily, so `import comfy_sdnq` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "load": "files", "save": "files", "load_config": "files",
    "quantize": "quantizer", "sdnq_tensors": "quantizer", "convert": "converter",
    "is_sdnq": "layout", "SDNQParams": "layout", "SDNQLayout": "layout",
    "backend": "kernels",
    "SdnqError": "errors", "SdnqFormatError": "errors", "SdnqUnsupportedError": "errors",
}


_SUBMODULES = ("standalone", "offload", "converter", "quantizer", "files", "layout", "kernels", "ops", "dtypes", "cli")


def __getattr__(name):
    import importlib

    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
        globals()[name] = value
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'comfy_sdnq' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS) + list(_SUBMODULES))
