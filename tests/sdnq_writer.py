"""Write SDNQ model folders with whatever sdnq release is importable, plus that release's
own dequantization of every quantized layer, so a reader can be checked against it.

    SDNQ_USE_TORCH_COMPILE=0 PYTHONPATH=.ci-cache/sdnq-0.1.3 \
        python tests/sdnq_writer.py OUT_DIR --case int6_qmm [--case ...|--case all] [--list]

Standalone on purpose: it imports nothing from comfy_sdnq and runs under the sdnq found
on PYTHONPATH (an old release installed with `pip install --no-deps --target`).

Output of one case, in OUT_DIR (one --case) or OUT_DIR/<case> (several / all):
    model/                  sdnq's own save (save_sdnq_model): config.json,
                            quantization_config.json, diffusion_pytorch_model.safetensors
    reference.safetensors   {"<module>.weight": the layer's weight as this sdnq dequantizes it}
    meta.json               {"version", "case", "status": "ok"|"skip"|"error", "reason",
                             "options", "layers": {"<module>.weight": per-layer facts}}
reference.safetensors sits beside model/, not in it: a reader globs model/*.safetensors.

Exit status: 0 when every requested case is "ok" or "skip", 1 when one is "error".
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import traceback

os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")
os.environ.setdefault("SDNQ_USE_TRITON_MM", "0")

import torch  # noqa: E402
from torch import nn  # noqa: E402

# name -> (post-load-quant options, extra needs, weight init)
# needs: "min_version" for features an older sdnq would silently ignore or misread,
#        "dtype" for weight types an older dtype table lacks.
# Options an sdnq version's sdnq_post_load_quant does not take make the case a skip,
# except those listed in OPTIONAL (passed only where supported).
CASES = {
    # the published default: uint4 + SVD r32, auto group, bf16 scales
    "uint4_svd": ({"weights_dtype": "uint4", "use_svd": True, "svd_rank": 32, "dequantize_fp32": False}, {}, "default"),
    # dequantize_fp32 left at the version's default (False before 0.1.6 -> bf16 scales)
    "uint4_default": ({"weights_dtype": "uint4"}, {}, "default"),
    # fp32 scales with SVD (before 0.1.6 the SVD factors stayed fp32 too)
    "uint4_svd_fp32": ({"weights_dtype": "uint4", "use_svd": True, "dequantize_fp32": True}, {}, "default"),
    "int5_grouped": ({"weights_dtype": "int5", "dequantize_fp32": False}, {}, "default"),
    "int8_rowwise": ({"weights_dtype": "int8", "group_size": -1}, {}, "default"),
    # non-packed + qmm: stored [in, out], scale [1, out]
    "int8_qmm": ({"weights_dtype": "int8", "use_quantized_matmul": True}, {}, "default"),
    # quirk (a): row-wise signed packed + qmm, transposed before packing up to 0.1.3
    "int7_qmm": ({"weights_dtype": "int7", "use_quantized_matmul": True}, {}, "default"),
    "int6_qmm": ({"weights_dtype": "int6", "use_quantized_matmul": True}, {}, "default"),
    "int4_rowwise_qmm": ({"weights_dtype": "int4", "group_size": -1, "use_quantized_matmul": True}, {}, "default"),
    # quirk (b): uint6/uint8 + qmm + auto group (grouped 0.1.0-0.2.1, row-wise since 0.2.2)
    "uint6_qmm": ({"weights_dtype": "uint6", "use_quantized_matmul": True}, {}, "default"),
    "uint8_qmm": ({"weights_dtype": "uint8", "use_quantized_matmul": True}, {}, "default"),
    "fp8": ({"weights_dtype": "float8_e4m3fn"}, {}, "default"),
    # quirk (d): custom float, weights spanning many decades; before 0.2.2 codes with exponent field 0 are
    # extended normals (no subnormals), since 0.2.2 subnormals
    "fp5_tiny": ({"weights_dtype": "float5_e2m2fn"}, {"dtype": "float5_e2m2fn"}, "tiny"),
    "fp4_tiny_svd": ({"weights_dtype": "float4_e2m1fn", "use_svd": True, "dequantize_fp32": False},
                     {"dtype": "float4_e2m1fn"}, "tiny"),
    # quirk (f): conv with < 4 bits forced to uint4 up to 0.1.2 (the config still says uint2)
    "uint2_conv": ({"weights_dtype": "uint2", "quant_conv": True, "modules_to_not_convert": ["deconv"]}, {},
                   "default"),
    "uint4_conv": ({"weights_dtype": "uint4", "quant_conv": True, "quant_embedding": True,
                    "modules_to_not_convert": ["deconv"]}, {}, "default"),
    # ConvTranspose2d alone, grouped (uint4 auto group 32 < 64 input channels); layout changed in 0.1.9
    "uint4_convT": ({"weights_dtype": "uint4", "quant_conv": True,
                     "modules_to_not_convert": ["blocks", "conv", "embed"]}, {}, "default"),
    # conv matmul-ready storage ([in*k*k, out]); the ConvTranspose2d is row-wise int8
    "int8_conv_qmm": ({"weights_dtype": "int8", "quant_conv": True, "use_quantized_matmul_conv": True,
                       "use_quantized_matmul": True}, {}, "default"),
    "dynamic": ({"weights_dtype": "uint4", "use_dynamic_quantization": True}, {}, "default"),
    # quirk (e): Hadamard blocks 64 and 16 are powers of 4 (Sylvester in 0.1.9, H4-kron since the 0.2.0 wheel)
    "hadamard64": ({"weights_dtype": "uint4", "use_hadamard": True, "hadamard_group_size": 64}, {}, "default"),
    "hadamard128_svd": ({"weights_dtype": "int5", "use_hadamard": True, "hadamard_group_size": 128, "use_svd": True},
                        {}, "default"),
    "codebook": ({"weights_dtype": "uint4", "use_codebook": True}, {"min_version": (0, 2, 5)}, "default"),
    "tensorwise": ({"weights_dtype": "int8", "group_size": -2}, {"min_version": (0, 2, 5)}, "default"),
}
OPTIONAL = {"quant_embedding", "dequantize_fp32"}


def _version_tuple(text):
    return tuple(int(x) for x in str(text).split(".")[:3])


# ---------------------------------------------------------------------------
# the model

def build_model():
    from diffusers import ModelMixin
    from diffusers.utils import logging as diffusers_logging
    from diffusers.configuration_utils import ConfigMixin, register_to_config

    class TinyBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q = nn.Linear(512, 512)                   # square; grouped for most types
            self.to_k = nn.Linear(768, 384)                   # 768: non-power-of-2 group search
            self.ff_up = nn.Linear(512, 1024)
            self.ff_down = nn.Linear(2048, 64, bias=False)    # in 2048: uint8 auto group 1024 -> 2 groups
            self.proj = nn.Linear(256, 128)
            self.small = nn.Linear(96, 192)                   # Hadamard block 32 (Sylvester everywhere)
            self.odd = nn.Linear(80, 208)                     # Hadamard block 16 (a power of 4)

    class TinySDNQTestModel(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, width: int = 64):
            super().__init__()
            self.blocks = nn.ModuleList([TinyBlock()])
            self.conv = nn.Conv2d(width, width, 3, padding=1)
            self.deconv = nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)
            self.embed = nn.Embedding(512, width)

        def forward(self, x):
            return x

    diffusers_logging.set_verbosity_error()
    return TinySDNQTestModel()


def init_weights(model, init):
    g = torch.Generator().manual_seed(1234)
    for name, p in model.named_parameters():
        if init == "tiny" and name.endswith(".weight"):
            # magnitudes spread over ~6 decades: many values fall below min_normal*scale of a custom float
            mag = torch.pow(10.0, -6.0 * torch.rand(p.shape, generator=g))
            sign = torch.where(torch.rand(p.shape, generator=g) < 0.5, -1.0, 1.0)
            p.data.copy_(sign * mag * 0.02)
        else:
            p.data.copy_(torch.randn(p.shape, generator=g) * (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.02))


# ---------------------------------------------------------------------------
# sdnq glue

def _sdnq():
    import sdnq  # noqa: F401
    from sdnq import common, quantizer
    from sdnq.loader import save_sdnq_model

    # sdnq 0.1.1 .. 0.2.0 refuse use_quantized_matmul without a working torch.compile/Triton
    # (a runtime guard in SDNQConfig.post_init). The file format does not depend on it.
    if hasattr(quantizer, "check_torch_compile"):
        quantizer.check_torch_compile = lambda: True
    if hasattr(quantizer, "use_torch_compile"):
        quantizer.use_torch_compile = True
    return common, quantizer, save_sdnq_model


def case_support(name, common, quantizer):
    """None if this sdnq can run the case, else the reason it cannot"""
    opts, needs, _ = CASES[name]
    version = _version_tuple(common.sdnq_version)
    if "min_version" in needs and version < needs["min_version"]:
        return f"needs sdnq >= {'.'.join(map(str, needs['min_version']))}"
    if "dtype" in needs and needs["dtype"] not in common.dtype_dict:
        return f"sdnq {common.sdnq_version} has no weight type {needs['dtype']!r}"
    params = inspect.signature(quantizer.sdnq_post_load_quant).parameters
    missing = [k for k in opts if k not in params and k not in OPTIONAL]
    if missing:
        return f"sdnq {common.sdnq_version} sdnq_post_load_quant has no option {', '.join(missing)}"
    return None


def dequantize_layer(layer):
    """the layer's weight as its own sdnq version dequantizes it (what layer.dequantize() does)"""
    deq = layer.sdnq_dequantizer
    kw = {"zero_point": layer.zero_point, "svd_up": layer.svd_up, "svd_down": layer.svd_down,
          "skip_quantized_matmul": deq.use_quantized_matmul}
    params = inspect.signature(deq.__call__).parameters
    if "skip_compile" in params:
        kw["skip_compile"] = True
    with torch.no_grad():
        return deq(layer.weight, layer.scale, **kw).detach().clone().contiguous()


def layer_facts(layer):
    deq = layer.sdnq_dequantizer
    facts = {"class": type(layer).__name__, "original_class": getattr(deq, "layer_class_name", None)}
    for k in ("weights_dtype", "quantized_matmul_dtype", "group_size", "use_quantized_matmul",
              "re_quantize_for_matmul", "use_hadamard", "hadamard_group_size", "use_codebook", "svd_rank"):
        v = getattr(deq, k, None)
        facts[k] = v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
    for k in ("original_shape", "result_shape", "quantized_weight_shape"):
        v = getattr(deq, k, None)
        facts[k] = list(v) if v is not None else None
    facts["has_svd"] = getattr(layer, "svd_up", None) is not None
    facts["tensors"] = {}
    for k in ("weight", "scale", "zero_point", "svd_up", "svd_down"):
        t = getattr(layer, k, None)
        if isinstance(t, torch.Tensor):
            facts["tensors"][k] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    return facts


def run_case(name, out_dir, common, quantizer, save_sdnq_model):
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    meta = {"version": common.sdnq_version, "case": name, "status": "ok", "reason": None}
    opts, _, init = CASES[name]
    reason = case_support(name, common, quantizer)
    if reason is not None:
        meta.update(status="skip", reason=reason)
        return meta
    params = inspect.signature(quantizer.sdnq_post_load_quant).parameters
    kwargs = {k: v for k, v in opts.items() if k in params}
    meta["options"] = dict(kwargs)
    meta["dropped_options"] = sorted(set(opts) - set(kwargs))
    if "torch_dtype" in params:
        kwargs["torch_dtype"] = torch.bfloat16

    torch.manual_seed(0)
    model = build_model()
    init_weights(model, init)
    model = model.to(torch.bfloat16)
    torch.manual_seed(0)  # svd_lowrank draws random numbers
    try:
        with torch.no_grad():
            model = quantizer.sdnq_post_load_quant(model, **kwargs)
    except Exception as exc:  # the old release itself cannot quantize this case: not the reader's problem
        meta.update(status="skip", reason=f"sdnq {common.sdnq_version} itself fails to quantize it: "
                                          f"{type(exc).__name__}: {exc}")
        return meta

    refs, layers = {}, {}
    for mname, mod in model.named_modules():
        if hasattr(mod, "sdnq_dequantizer"):
            key = mname + ".weight"
            refs[key] = dequantize_layer(mod)
            layers[key] = layer_facts(mod)
    if not refs:
        raise RuntimeError("no layer was quantized")
    model_dir = os.path.join(out_dir, "model")
    save_sdnq_model(model, model_dir)
    if not os.path.isfile(os.path.join(model_dir, "quantization_config.json")):
        raise RuntimeError("save_sdnq_model wrote no quantization_config.json")
    save_file(refs, os.path.join(out_dir, "reference.safetensors"))
    meta["layers"] = layers
    return meta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--case", action="append", default=[], help="case name, repeatable, or 'all'")
    ap.add_argument("--list", action="store_true", help="print {case: null | reason it is skipped} as JSON")
    args = ap.parse_args(argv)
    common, quantizer, save_sdnq_model = _sdnq()
    if args.list:
        print(json.dumps({"version": common.sdnq_version,
                          "cases": {c: case_support(c, common, quantizer) for c in CASES}}))
        return 0
    names = list(CASES) if args.case in (["all"], []) else args.case
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    single = len(args.case) == 1 and args.case != ["all"]
    rc = 0
    for name in names:
        out = args.out_dir if single else os.path.join(args.out_dir, name)
        t0 = time.perf_counter()
        try:
            meta = run_case(name, out, common, quantizer, save_sdnq_model)
        except Exception as exc:  # one case failing must not hide the others
            meta = {"version": common.sdnq_version, "case": name, "status": "error",
                    "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            rc = 1
        meta["seconds"] = round(time.perf_counter() - t0, 3)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
        why = f" ({meta['reason']})" if meta["reason"] else ""
        print(f"sdnq {common.sdnq_version} {name}: {meta['status']} {meta['seconds']:.2f}s{why}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
