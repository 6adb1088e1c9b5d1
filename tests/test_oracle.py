"""comfy_sdnq against the sdnq package (the oracle), in memory.

For every weight type of sdnq's table and each of two layer kinds (Linear, Conv2d),
a covering set of options runs through sdnq's own layer quantizer and dequantizer
(eager) and through comfy_sdnq:

* quantize: comfy_sdnq.quantize must return sdnq's tensors bit for bit (codes, scales,
  zero-points, double-quantized scales, codebooks; SVD factors too, as both draw the
  same random numbers from the same seed);
* dequantize: sdnq's tensors wrapped by comfy_sdnq's loader (files.from_tensors) must
  dequantize to sdnq's result bit for bit, except where sdnq ends with a matmul (the
  SVD correction up @ down, the Hadamard un-rotation) whose accumulation order torch
  leaves unspecified: there both sides round fp32 sums to the weight dtype, so they may
  differ by rounding of terms of magnitude |W| + |up @ down|: we allow 2 bf16 ulps of it
  (2**-7 relative), per element. After a Hadamard block of size h (entries +-1/sqrt(h))
  those differences add up over the block: the bound becomes 2**-7 times the block sum of
  the pre-rotation magnitudes divided by sqrt(h), plus 2 ulps of the result.

Every case runs on each implementation (C fast path, C scalar reference, torch).
"""
import itertools

import pytest
import torch
from helpers import assert_bits_equal

from comfy_sdnq import dtypes, files
from comfy_sdnq.quantizer import quantize, sdnq_tensors

SHAPES = {"Linear": (64, 384), "Conv2d": (32, 48, 3, 3)}

# options layered on every type; each appears with every type at least once
BASE_CASES = [
    {},                                        # auto group
    {"group_size": -1},                        # row-wise
    {"group_size": -2},                        # tensor-wise
    {"group_size": 96},                        # explicit, not a power of two (384 = 4 x 96)
    {"group_size": 40},                        # explicit, not a divisor: sdnq searches one
    {"use_svd": True, "svd_rank": 8},
    {"use_hadamard": True, "hadamard_group_size": 64},   # 64 = 4^3: the H4 construction
    {"use_hadamard": True, "hadamard_group_size": 32},   # Sylvester
    {"use_quantized_matmul": True},            # matmul-ready (transposed) storage where sdnq uses it
    {"use_quantized_matmul": True, "use_svd": True, "svd_rank": 8},
    {"use_svd": True, "svd_rank": 8, "use_hadamard": True, "hadamard_group_size": 64},
    {"dequantize_fp32": False},                # bf16 scales, as published checkpoints
    {"dequantize_fp32": False, "use_svd": True, "svd_rank": 8, "group_size": 0},
]
UNSIGNED_INT_CASES = [
    {"use_codebook": True},
    {"use_codebook": True, "group_size": -1, "use_svd": True, "svd_rank": 8},
    {"use_codebook": True, "group_size": -2},
]
DOUBLE_QUANT_CASES = [
    {"scale_dtype": "int8"},
    {"scale_dtype": "uint4"},
    {"scale_dtype": "float8_e4m3fn"},
    {"scale_dtype": "uint6", "use_codebook_scale": True},
    {"scale_dtype": "int5", "zero_point_dtype": "uint8"},
]
# a few types run the double-quantization cases (the scale path is type independent)
DOUBLE_QUANT_TYPES = {"uint4", "int8", "int5", "float5_e2m2fn", "uint11", "float8_e4m3fn"}


def cases_for(t: dtypes.SdnqType):
    out = list(BASE_CASES)
    if t.is_integer and t.is_unsigned and t.bits <= 8:
        out += UNSIGNED_INT_CASES
    if t.name in DOUBLE_QUANT_TYPES:
        out += DOUBLE_QUANT_CASES
    return out


def sdnq_quantize(weight, layer, wtype, opts):
    from sdnq.quantizer import sdnq_quantize_layer_weight

    opts = dict(opts)
    return sdnq_quantize_layer_weight(weight, layer, weights_dtype=wtype, **opts)


def sdnq_dequantize(dq, tensors):
    # sdnq may scale its weight tensor in place when dtypes already match: hand it copies
    clones = {k: (v.clone() if v is not None else None) for k, v in tensors.items()}
    return dq(**clones, skip_compile=True, skip_quantized_matmul=dq.use_quantized_matmul)


def config_for(wtype, layer, opts):
    cfg = {"quant_method": "sdnq", "weights_dtype": wtype, "sdnq_version": "0.2.8", **opts}
    if layer != "Linear":
        cfg["use_quantized_matmul_conv"] = cfg.get("use_quantized_matmul", False)
        cfg["quant_conv"] = True
    return cfg


def hadamard_matrix(h):
    from comfy_sdnq.reference import hadamard_matrix as build

    return build(h, True, torch.float32)


def svd_magnitude(dq, tensors, shape):
    up, down = tensors.get("svd_up"), tensors.get("svd_down")
    if up is None:
        return 0.0
    if dq.use_quantized_matmul:
        up, down = up.t(), down.t()
    return (up.float() @ down.float()).abs().reshape(shape)


def check_dequant(got, ref, mag_extra, exact, what, hadamard=0):
    assert tuple(got.shape) == tuple(ref.shape), f"{what}: shape {tuple(got.shape)} vs {tuple(ref.shape)}"
    if exact:
        assert_bits_equal(got, ref, what)
        return
    mag = ref.float().abs() + mag_extra
    if hadamard:
        rows = ref.shape[0]
        rotated = (ref.float().reshape(rows, -1, hadamard) @ hadamard_matrix(hadamard)).abs()  # H is self-inverse
        pre = rotated + torch.as_tensor(mag_extra).reshape(-1).expand(rotated.numel()).reshape(rotated.shape) \
            if torch.is_tensor(mag_extra) else rotated
        block = pre.sum(-1, keepdim=True).expand_as(pre) / hadamard ** 0.5
        mag = ref.float().abs() + block.reshape(ref.shape)
    diff = (got.float() - ref.float()).abs()
    bad = diff > 2**-7 * mag + 1e-30
    assert not bool(bad.any()), f"{what}: {int(bad.sum())} elements beyond tolerance, max diff {float(diff.max())}"


@pytest.mark.parametrize("layer", list(SHAPES))
@pytest.mark.parametrize("wtype", [t.name for t in dtypes.TYPES])
def test_type_against_sdnq(wtype, layer, impl):
    t = dtypes.get(wtype)
    shape = SHAPES[layer]
    checked = 0
    for k, opts in enumerate(cases_for(t)):
        gen = torch.Generator().manual_seed(1000 + k)
        weight = torch.randn(shape, generator=gen).to(torch.bfloat16)
        if opts.get("use_codebook") and not (t.is_integer and t.is_unsigned):
            continue
        torch.manual_seed(k)
        try:
            dq, ref = sdnq_quantize(weight, layer, wtype, opts)
        except Exception as exc:  # sdnq rejects this combination: so must we
            with pytest.raises(Exception):
                quantize(weight, wtype, layer=layer, impl=impl, **opts)
            print(f"sdnq refuses {wtype} {layer} {opts}: {type(exc).__name__}")
            continue
        what = f"{wtype} {layer} {opts} [{impl}]"
        torch.manual_seed(k)
        qt = quantize(weight, wtype, layer=layer, impl=impl, **opts)
        ours = sdnq_tensors(qt)
        for name, r in ref.items():
            if r is None:
                assert ours.get(name) is None, f"{what}: {name} should be absent"
            else:
                assert name in ours, f"{what}: {name} missing"
                assert_bits_equal(ours[name], r, f"{what} {name}")
        try:
            want = sdnq_dequantize(dq, ref)
        except RuntimeError as exc:
            # sdnq cannot dequantize its own matmul-ready conv + SVD layers (shape error in
            # its dequantizer); comfy_sdnq decodes them as meant - covered in test_files.
            assert dq.use_quantized_matmul and layer != "Linear" and ref.get("svd_up") is not None, str(exc)
            continue
        loaded = files.from_tensors(ref, config_for(wtype, layer, opts), dtype=torch.bfloat16, shape=shape,
                                    kind="conv" if layer != "Linear" else "linear")
        got = loaded.dequantize() if impl is None else _dequant(loaded, impl)
        exact = ref.get("svd_up") is None and not dq.use_hadamard
        check_dequant(got, want, svd_magnitude(dq, ref, want.shape), exact, what + " dequantize",
                      loaded.params.hadamard)
        checked += 1
    assert checked > 0


def _dequant(qt, impl):
    from comfy_sdnq import layout, ops

    p = qt.params
    scale, zp = layout.side_tensors(p)
    return ops.dequantize_impl(qt._qdata, scale, zp, p.svd_up, p.svd_down, p.wtype, p.view, p.weight_shape, p.flags,
                               p.hadamard, p.orig_dtype, impl=impl)


@pytest.mark.parametrize("wtype", ["uint4", "int8", "float8_e4m3fn", "int5"])
def test_fp32_and_fp16_compute(wtype, impl):
    """compute dtypes other than bf16: result dtype and rounding follow sdnq"""
    for dtype in (torch.float32, torch.float16):
        weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(7)).to(dtype)
        for opts in ({}, {"dequantize_fp32": False}):
            dq, ref = sdnq_quantize(weight, "Linear", wtype, opts)
            qt = quantize(weight, wtype, impl=impl, **opts)
            for name, r in ref.items():
                if r is not None:
                    assert_bits_equal(sdnq_tensors(qt)[name], r, f"{wtype} {dtype} {opts} {name}")
            assert_bits_equal(_dequant(qt, impl), sdnq_dequantize(dq, ref), f"{wtype} {dtype} {opts}")


def test_embedding_and_conv1d_layouts(impl):
    for layer, shape, wtype in itertools.product(["Embedding", "Conv1d"], [None], ["uint4", "int6", "float5_e2m2fn"]):
        shape = (100, 128) if layer == "Embedding" else (64, 96, 3)
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
        for opts in ({}, {"group_size": -1}, {"use_svd": True, "svd_rank": 4}):
            torch.manual_seed(0)
            dq, ref = sdnq_quantize(weight, layer, wtype, opts)
            torch.manual_seed(0)
            qt = quantize(weight, wtype, layer=layer, impl=impl, **opts)
            for name, r in ref.items():
                if r is not None:
                    assert_bits_equal(sdnq_tensors(qt)[name], r, f"{layer} {wtype} {opts} {name}")
            want = sdnq_dequantize(dq, ref)
            check_dequant(_dequant(qt, impl), want, svd_magnitude(dq, ref, want.shape), ref.get("svd_up") is None,
                          f"{layer} {wtype} {opts}")
