"""The CUDA kernels (comfy_sdnq._C_cuda) against the C core and against dense math.

Skipped as a whole without a CUDA device. With one, the extension must be importable
(test_extension_loaded fails otherwise, and every other test raises).

* dequantize: every type id of types.def, on shapes that exercise the flat kernel (whole
  units of 8 codes), its per-element group path (groups not a multiple of 8, inner > 1),
  the general kernel (codebooks, transposed output, 9..32-bit types, unaligned codes, the
  tail after the last whole unit), tensor-wise scales, and every scale x output dtype on a
  subset: CUDA == C core BIT FOR BIT (NaN payloads aside), with random code words (every
  word content is a valid input) and random scales.
* dequantize with the SVD correction fused (kernels.dequantize(svd=...)): within test_svd_add's
  tolerance of the C core's two steps.
* SVD add and Hadamard: within the tolerance of tests/test_oracle.py (2 bf16 ulps of the
  terms' magnitude; Hadamard: the pre-rotation magnitudes' block sums / sqrt(h)).
* small-M linear (GEMV) against float64 math on the same dequantized weight, within the
  bound derived in gemv_bound(); the fused kernel must take every layout it claims; its SVD
  epilogue (+ (x down^T) up^T) within that bound plus the low-rank product's fp32 sums.
* W8A8 int8 / fp8 and W4A8 against the bf16 reference, loose relative bound; cuBLASLt applying
  the fp8 scales itself against its unscaled GEMM + scale_epilogue.
* the linear op captured in a CUDA graph: replays equal eager calls (no host syncs).

The references are the C core's scalar reference (impl="ref", bit-identical to its fast path),
so tests/test_cuda_emu.py can run the same checks through the host emulation of the kernels.
"""
import pytest
import torch
from helpers import assert_bits_equal

from comfy_sdnq import dtypes, kernels, ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DEV = "cuda"
EMU = False  # tests/test_cuda_emu.py runs these checks on the CPU, through the host emulation
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def test_extension_loaded():
    assert kernels.cuda_backend() == "cuda", f"comfy_sdnq._C_cuda failed to import: {kernels._CUDA_IMPORT_ERROR}"


# ---------------------------------------------------------------------------
# random layers: any word contents are valid codes


def random_codes(t, n, gen):
    """storage words for n codes of t, random bytes"""
    words = t.storage_numel(n) if t.is_packed else n
    size = torch.empty((), dtype=t.storage_dtype).element_size()
    return torch.randint(0, 256, (words * size,), dtype=torch.uint8, generator=gen).view(t.storage_dtype)


def to_dev(raw):
    """codes to the device as bytes (torch's CUDA copy of uint16/uint32 tensors is not guaranteed)"""
    return raw.view(torch.uint8).to(DEV).view(raw.dtype)


def random_side(t, view, sdt, gen, codebook=False, tensorwise=False):
    o, _, i = view
    levels = t.levels if codebook else 1
    shape = (1, levels, 1) if tensorwise else (o, levels, i)
    scale = (torch.randn(shape, generator=gen) * 0.05).to(sdt)
    zp = None
    if t.is_unsigned and not codebook:
        zp = (torch.randn((1, 1, 1) if tensorwise else (o, 1, i), generator=gen) * 0.1).to(sdt)
    return scale, zp


def dequant_both(t, raw, scale, zp, view, out_shape, odt, transposed=False, codebook=False, raw_dev=None):
    """(CUDA result moved to the CPU, C core result); raw_dev: the codes already on the GPU"""
    cpu = kernels.dequantize(t, raw, scale, zp, view, out_shape, odt, transposed=transposed, codebook=codebook,
                             impl="ref")
    dev = kernels.dequantize(t, to_dev(raw) if raw_dev is None else raw_dev, scale.to(DEV),
                             None if zp is None else zp.to(DEV), view, out_shape, odt, transposed=transposed,
                             codebook=codebook, impl="fast")
    torch.cuda.synchronize()
    return dev.cpu(), cpu


@pytest.fixture(autouse=True)
def _no_w8a8_env(monkeypatch):
    """the linear op's path must not depend on the caller's environment"""
    monkeypatch.delenv("COMFY_SDNQ_W8A8", raising=False)
    monkeypatch.delenv("COMFY_SDNQ_W4A8", raising=False)


VIEWS = [
    (64, 384, 1),   # row-wise linear
    (48, 128, 1),   # grouped, group a multiple of 8
    (16, 12, 1),    # groups of 12: units of 8 codes straddle groups
    (6, 40, 1),     # odd outer, group 40
    (8, 16, 9),     # conv: inner = 9 (per-element scale path)
    (3, 16, 5),     # conv, odd
    (1, 2048, 1),   # tensor-wise
    (5, 48, 1),
]


def ok_view(t, view):
    o, r, i = view
    return (o * r * i) % t.block_elems == 0


@pytest.mark.parametrize("t", dtypes.TYPES, ids=lambda t: t.name)
def test_dequant_every_type(t):
    gen = torch.Generator().manual_seed(t.id)
    for view in VIEWS:
        if not ok_view(t, view):
            continue
        n = view[0] * view[1] * view[2]
        raw = random_codes(t, n, gen)
        tensorwise = view[0] == 1
        for sdt, odt in ((F32, BF16), (BF16, BF16), (F16, F32)):
            scale, zp = random_side(t, view, sdt, gen, tensorwise=tensorwise)
            got, want = dequant_both(t, raw, scale, zp, view, (n,), odt)
            assert_bits_equal(got, want, f"{t.name} view={view} scale {sdt} out {odt}")


@pytest.mark.parametrize("t", dtypes.TYPES, ids=lambda t: t.name)
def test_dequant_transposed_and_tail(t):
    """transposed output (matmul-ready storage [in, out]: view [1, in, out]); native types also
    with a code count that leaves a tail after the last whole unit of 8"""
    gen = torch.Generator().manual_seed(1000 + t.id)
    k_in, n_out = 48, 32
    raw = random_codes(t, k_in * n_out, gen)
    scale, zp = random_side(t, (1, k_in, n_out), F32, gen)
    got, want = dequant_both(t, raw, scale, zp, (1, k_in, n_out), (n_out, k_in), BF16, transposed=True)
    assert_bits_equal(got, want, f"{t.name} transposed")
    if t.block_elems == 1:
        for n in (15, 7, 1):
            raw = random_codes(t, n, gen)
            scale, zp = random_side(t, (n, 1, 1), BF16, gen)
            got, want = dequant_both(t, raw, scale, zp, (n, 1, 1), (n,), F16)
            assert_bits_equal(got, want, f"{t.name} n={n} (tail)")


SUBSET = ["uint4", "int4", "int8", "uint8", "float8_e4m3fn", "int5", "float5_e2m2fn", "float4_e2m1fn", "uint11",
          "float16", "uint1", "int3"]


@pytest.mark.parametrize("name", SUBSET)
@pytest.mark.parametrize("sdt", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("odt", [F32, BF16, F16], ids=str)
def test_dequant_dtypes(name, sdt, odt):
    t = dtypes.get(name)
    gen = torch.Generator().manual_seed(7)
    for view in ((32, 256, 1), (64, 24, 1), (4, 32, 3)):
        n = view[0] * view[1] * view[2]
        raw = random_codes(t, n, gen)
        scale, zp = random_side(t, view, sdt, gen)
        got, want = dequant_both(t, raw, scale, zp, view, (n,), odt)
        assert_bits_equal(got, want, f"{name} {view} {sdt}->{odt}")


@pytest.mark.parametrize("name", ["uint4", "uint8", "uint2", "uint6", "uint11"])
def test_dequant_codebook(name):
    t = dtypes.get(name)
    gen = torch.Generator().manual_seed(3)
    for view, tensorwise in (((24, 64, 1), False), ((1, 512, 1), True), ((4, 32, 3), False)):
        n = view[0] * view[1] * view[2]
        raw = random_codes(t, n, gen)
        scale, _ = random_side(t, view, BF16, gen, codebook=True, tensorwise=tensorwise)
        got, want = dequant_both(t, raw, scale, None, view, (n,), BF16, codebook=True)
        assert_bits_equal(got, want, f"{name} codebook {view}")


@pytest.mark.parametrize("name", ["uint4", "int8", "int5", "float8_e4m3fn", "uint11", "bfloat16"])
def test_dequant_unaligned_codes(name):
    """codes starting off a 16-byte boundary take the general kernel (same bits)"""
    t = dtypes.get(name)
    gen = torch.Generator().manual_seed(5)
    view = (16, 64, 1)
    n = 16 * 64
    buf = random_codes(t, n + 16 * t.block_elems, gen)
    raw_dev = to_dev(buf)[t.block_words:][:t.storage_numel(n) if t.is_packed else n]  # one word into the buffer
    raw = buf[t.block_words:][:raw_dev.numel()]
    assert raw_dev.data_ptr() % 16 != 0
    scale, zp = random_side(t, view, F32, gen)
    got, want = dequant_both(t, raw, scale, zp, view, (n,), BF16, raw_dev=raw_dev)
    assert_bits_equal(got, want, f"{name} unaligned")


def test_dequant_errors_are_reported():
    """validation happens on the host before any launch: a too-small output is refused"""
    t = dtypes.get("uint4")
    raw = torch.zeros(32, dtype=torch.uint8, device=DEV)
    scale = torch.ones(1, 1, 1, device=DEV)
    zp = torch.zeros(1, 1, 1, device=DEV)
    with pytest.raises(Exception, match="out_shape|does not hold"):
        kernels.dequantize(t, raw, scale, zp, (1, 64, 1), (63,), BF16, impl="fast")
    _C_cuda = kernels._C_cuda
    with pytest.raises(_C_cuda.SdnqError) as exc:  # codes_bytes too small for 64 codes
        _C_cuda.dequantize(t.id, 1, 64, 1, raw.data_ptr(), 31, scale.data_ptr(), 7, 1, 0, 0, 0, zp.data_ptr(), 1, 0,
                           0, 0, raw.data_ptr(), 8, 64, 64, 1, 1, 0)
    assert exc.value.args[1] == 4  # SDNQ_ERR_RANGE


# ---------------------------------------------------------------------------
# SVD and Hadamard: the tolerances of test_oracle.py


@pytest.mark.parametrize("wdt", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("shape", [(64, 384, 8), (37, 70, 3), (100, 33, 32), (5, 700, 40)])
def test_svd_add(wdt, shape):
    rows, cols, rank = shape
    g = torch.Generator().manual_seed(rows)
    w = (torch.randn(rows, cols, generator=g) * 0.05).to(wdt)
    up = (torch.randn(rows, rank, generator=g) * 0.1).to(BF16)
    down = (torch.randn(cols, rank, generator=g) * 0.1).to(BF16).t()  # strided, as sdnq stores it
    want = kernels.svd_add_(w.clone(), up, down, impl="ref")
    got = kernels.svd_add_(w.to(DEV), up.to(DEV), down.to(DEV), impl="fast").cpu()
    mag = w.float().abs() + up.float().abs() @ down.float().abs()
    bad = ((got.float() - want.float()).abs() > 2**-7 * mag + 1e-30)
    assert not bad.any(), f"{int(bad.sum())} elements outside 2 bf16 ulps"


@pytest.mark.parametrize("wdt", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("h,h4", [(32, False), (64, True), (64, False), (256, True), (4096, True), (2, False)])
def test_hadamard(wdt, h, h4):
    rows, cols = 7, max(h, 512) if h < 4096 else 4096
    g = torch.Generator().manual_seed(h)
    w = torch.randn(rows, cols, generator=g).to(wdt)
    want = kernels.hadamard_(w.clone(), h, h4, impl="ref")
    got = kernels.hadamard_(w.to(DEV), h, h4, impl="fast").cpu()
    blocks = w.float().abs().reshape(rows, cols // h, h).sum(-1, keepdim=True) / h**0.5
    tol = (2**-7 * blocks + 2**-7 * want.float().abs().reshape(rows, cols // h, h)).reshape(rows, cols)
    bad = (got.float() - want.float()).abs() > tol
    assert not bad.any(), f"{int(bad.sum())} elements outside the oracle tolerance"


@pytest.mark.parametrize("name", ["uint4", "int8", "int5", "float8_e4m3fn", "uint2", "int3", "uint8"])
@pytest.mark.parametrize("odt", [BF16, F16, F32], ids=str)
@pytest.mark.parametrize("rows,cols,rank,group,strided", [(100, 264, 40, 24, False), (64, 128, 32, 128, True),
                                                          (7, 8, 3, 8, False), (130, 136, 16, 17, True),
                                                          (200, 520, 32, 80, False), (96, 256, 20, 64, False),
                                                          (200, 640, 32, 64, False), (1000, 3072, 32, 128, True)])
def test_dequant_svd(name, odt, rows, cols, rank, group, strided):
    """kernels.dequantize(svd=...): the fused dequantize + SVD kernel (BF16/F16 output with factors
    in that dtype; F32 output takes the two launches) vs the C core's dequantize + svd_add, within
    test_svd_add's tolerance. Tiles cut at the edges, ranks that are not a multiple of 8 or 16,
    groups straddling rows, factors stored transposed as sdnq does for quantized-matmul layers; the
    kernel fuses ranks <= 32 with groups of a multiple of 8, the other cases (rank 40, groups
    straddling units) take the two launches. Each scale dtype (the kernel's elementwise stage
    rounds to it, then to the output dtype); with the correction zeroed the result must be
    bit-equal to the C core's. The two larger shapes give blocks ranges of several
    tiles that cross strips (on the GPU and in the emulation): the loads step down a strip by
    fixed offsets where no group straddles a row, and start afresh at each strip."""
    t = dtypes.get(name)
    gen = torch.Generator().manual_seed(rows + cols + rank)
    n = rows * cols
    view = (n // group, group, 1)
    raw = random_codes(t, n, gen)
    fdt = odt if odt != F32 else BF16
    if strided:
        up = (torch.randn(rank, rows, generator=gen) * 0.1).to(fdt).t()
        down = (torch.randn(cols, rank, generator=gen) * 0.1).to(fdt).t()
    else:
        up = (torch.randn(rows, rank, generator=gen) * 0.1).to(fdt)
        down = (torch.randn(rank, cols, generator=gen) * 0.1).to(fdt)
    for sdt in (F32, BF16, F16):
        scale, zp = random_side(t, view, sdt, gen)
        sides = (scale.to(DEV), None if zp is None else zp.to(DEV), view, (rows, cols), odt)
        w = kernels.dequantize(t, raw, scale, zp, view, (rows, cols), odt, impl="ref")
        want = kernels.svd_add_(w.clone(), up, down, impl="ref")
        got = kernels.dequantize(t, to_dev(raw), *sides, impl="fast", svd=(up.to(DEV), down.to(DEV))).cpu()
        finite = w.float().isfinite()
        mag = w.float().abs().nan_to_num(0) + up.float().abs() @ down.float().abs()
        bad = ((got.float() - want.float()).abs() > 2**-7 * mag + 1e-30) & finite
        assert not bad.any(), f"scale {sdt}: {int(bad.sum())} elements outside 2 ulps of the output dtype's bf16 bound"
        assert torch.equal(got.float().isnan(), want.float().isnan())
        # a zero correction leaves the elementwise stage alone: its roundings (to the scale
        # dtype, then to the output dtype) must give the C core's bits, the rank sum's order
        # aside (every term is zero)
        zero_up = torch.zeros_like(up)
        want0 = kernels.svd_add_(w.clone(), zero_up, down, impl="ref")
        got0 = kernels.dequantize(t, to_dev(raw), *sides, impl="fast", svd=(zero_up.to(DEV), down.to(DEV))).cpu()
        nan = want0.float().isnan()
        assert torch.equal(got0.float().isnan(), nan)
        ity = torch.int16 if want0.element_size() == 2 else torch.int32
        diff = (got0.view(ity) != want0.view(ity)) & ~nan
        assert not diff.any(), f"scale {sdt}: {int(diff.sum())} elements differ from the C core with a zero correction"


# ---------------------------------------------------------------------------
# small-M linear


GEMV_TYPES = ["uint4", "int4", "int5", "uint5", "int8", "uint8", "float8_e4m3fn", "float4_e2m1fn", "float5_e2m2fn",
              "uint2", "int3", "int6", "uint7", "float8_e4m3fn_sdnq"]


def finite_codes(t, raw):
    """native fp8 codes without NaN/inf (the GEMV test compares numbers)"""
    if t.name == "float8_e4m3fn":
        b = raw.view(torch.uint8)
        raw = torch.where((b & 0x7F) == 0x7F, torch.zeros_like(b), b).view(t.storage_dtype)
    return raw


def gemv_bound(x, w, y_ref, sdt=None):
    """|y_gemv - y| for y = x @ w^T exact, w the dequantized weight in x's dtype. Exact mode: the
    kernel multiplies the very bf16/fp16 values (products exact in fp32) and sums K terms in
    fp32 in some order: |error| <= gamma_K * sum|x||w| with gamma_K ~ K * 2^-24 for
    round-to-nearest; the tensor cores' fp32 accumulation is not guaranteed to round to
    nearest, so allow K * 2^-22. Factored mode (groups of whole 128-k chunks): it multiplies
    the code values and scales each chunk's sum, so its weights are value * scale (+ zero
    point) unrounded where w is rounded to the scale dtype sdt and then to x's dtype: at most
    half an ulp of each weight in the coarser of the two, 2^-9 |w| (bf16; 2^-12 for fp16 x with
    fp16/fp32 scales), allowed twice. Then one rounding of y to bf16/fp16: at most 2^-8 |y|
    (2^-11), doubled for the reference's own rounding."""
    K = x.shape[1]
    mag = x.double().abs() @ w.double().abs().t()
    eps = 2.0**-8 if x.dtype == BF16 else 2.0**-11
    eps_w = 2.0**-8 if BF16 in (x.dtype, sdt) else eps
    return 2 * eps * y_ref.abs() + (K * 2.0**-22 + eps_w) * mag + 1e-30


@pytest.mark.parametrize("name", GEMV_TYPES)
@pytest.mark.parametrize("M", [1, 3, 8, 16])
def test_gemv(name, M):
    t = dtypes.get(name)
    gen = torch.Generator().manual_seed(M * 100 + t.id)
    cases = [(64, 256, 256, BF16, F32), (100, 384, 32, F16, BF16), (48, 4128, 4128, BF16, BF16),
             (24, 512, 128, BF16, F16), (40, 96, -2, F16, F32), (40, 640, 64, F16, F16),
             (56, 384, 128, F16, BF16)]
    for n_out, k_in, group, xdt, sdt in cases:
        red = n_out * k_in if group == -2 else group
        view = (n_out * k_in // red, red, 1)
        raw = finite_codes(t, random_codes(t, n_out * k_in, gen))
        scale, zp = random_side(t, view, sdt, gen, tensorwise=group == -2)
        raw, scale = to_dev(raw), scale.to(DEV)
        zp = None if zp is None else zp.to(DEV)
        x = torch.randn(M, k_in, generator=gen).to(xdt).to(DEV)
        bias = (torch.randn(n_out, generator=gen) * 0.1).to(xdt).to(DEV) if n_out % 3 == 0 else None
        y = kernels.gemv(t, raw, scale, zp, view, x, bias, n_out)
        assert y is not None, f"{name}: the fused kernel refused {view} K={k_in}"
        w = kernels.dequantize(t, raw, scale, zp, view, (n_out, k_in), xdt, impl="fast")
        y64 = x.double() @ w.double().t() + (0 if bias is None else bias.double())
        err = (y.double() - y64).abs()
        bound = gemv_bound(x, w, y64, sdt)
        assert bool((err <= bound).all()), f"{name} M={M} {view}: max err {err.max().item()} ({xdt}, scale {sdt})"


def _sms():
    """multiprocessors of the device (the emulation reports 2)"""
    return torch.cuda.get_device_properties(0).multi_processor_count if DEV == "cuda" else 2


def _gemv_svd_case(name, M, n_out, k_in, seed, group=128):
    """y of the GEMV with SVD branch and bias on random codes in groups of `group`, and its float64
    reference and bound (gemv_bound plus the low-rank product's fp32 sums and bf16 rounding)"""
    t = dtypes.get(name)
    gen = torch.Generator().manual_seed(seed)
    rank = 16
    view = (n_out * k_in // group, group, 1)
    raw = to_dev(finite_codes(t, random_codes(t, n_out * k_in, gen)))
    scale, zp = random_side(t, view, F32, gen)
    scale, zp = scale.to(DEV), None if zp is None else zp.to(DEV)
    up = (torch.randn(rank, n_out, generator=gen) * 0.1).to(BF16).to(DEV).t()
    down = (torch.randn(k_in, rank, generator=gen) * 0.1).to(BF16).to(DEV).t()
    x = torch.randn(M, k_in, generator=gen).to(BF16).to(DEV)
    bias = (torch.randn(n_out, generator=gen) * 0.1).to(BF16).to(DEV)
    y = kernels.gemv(t, raw, scale, zp, view, x, bias, n_out, up, down)
    w = kernels.dequantize(t, raw, scale, zp, view, (n_out, k_in), BF16, impl="fast")
    y64 = x.double() @ w.double().t() + bias.double() + (x.double() @ down.double().t()) @ up.double().t()
    lowmag = (x.double().abs() @ down.double().abs().t()) @ up.double().abs().t()
    bound = gemv_bound(x, w, y64) + ((k_in + rank) * 2.0**-22 + 2.0**-8) * lowmag
    return y, y64, bound


@pytest.mark.parametrize("name", ["uint4", "int8", "float8_e4m3fn"])
@pytest.mark.parametrize("M", [1, 9])
@pytest.mark.parametrize("wide", [True, False])
def test_gemv_many_tiles(name, M, wide):
    """the split-K work distribution (gemv.cuh): items (row group of 128 rows, chunk of 128 k's)
    in equal ranges over at most 2 blocks per multiprocessor (the emulation reports 2). wide: more
    row groups than blocks, K = 384 (3 chunks), so a block's range spans several row groups
    (its loads run ahead across them) and ends inside one; narrow: 40 rows (one row group, 3
    tiles of 16 with a partial one) and K = 4000 row-wise (32 chunks, the last of 32 k's), so
    each row group is split over several blocks and summed from their segments in block order"""
    n_out, k_in = (128 * 4 * _sms() + 24, 384) if wide else (40, 4000)
    y, y64, bound = _gemv_svd_case(name, M, n_out, k_in, M * 13 + dtypes.get(name).id + wide, 128 if wide else k_in)
    assert y is not None
    err = (y.double() - y64).abs()
    assert bool((err <= bound).all()), f"{name} M={M} N={n_out}: max err {err.max().item()}"


@pytest.mark.parametrize("M", [1, 9])
def test_gemv_work_buffer(M):
    """the split-K scratch: with room for one block's segments the kernel still runs (one block,
    every row group in one range) and gives the same y up to the summation order; one segment
    fewer than the row groups need is refused (None: the caller dequantizes instead)"""
    n_out, k_in = 300, 1024
    y_full, y64, bound = _gemv_svd_case("uint4", M, n_out, k_in, 5 + M)
    assert y_full is not None and bool(((y_full.double() - y64).abs() <= bound).all())
    seg = 128 * (16 if M > 8 else 8)
    groups = (n_out + 127) // 128
    real = kernels._C_cuda
    full = real.gemv_work_floats(M, n_out)
    for floats, ok in ((seg * (groups + 1), True), (seg * groups, False), (seg * (groups + 1) - 1, False)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(real, "gemv_work_floats", lambda m, n, f=floats: f)
            y, _, _ = _gemv_svd_case("uint4", M, n_out, k_in, 5 + M)
        if ok:
            assert y is not None and bool(((y.double() - y64).abs() <= bound).all())
        else:
            assert y is None, f"work of {floats} floats for {groups} row groups was taken"
    assert full == seg * (2 * _sms() + groups)


@pytest.mark.parametrize("name", ["uint4", "int8", "int5", "float8_e4m3fn"])
@pytest.mark.parametrize("M", [1, 5, 9, 16])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("n_out,k_in,group,rank", [(72, 384, 128, 24), (40, 4096, 256, 2), (56, 256, 128, 40)])
def test_gemv_svd(name, M, strided, n_out, k_in, group, rank):
    """the SVD branch in the GEMV's epilogue: + (x @ down^T) @ up^T in fp32 before the rounding
    (a small rank with a long K: the low-rank product split over k ranges; rank 40: above the
    32 ranks the finishing kernel holds in registers)"""
    t = dtypes.get(name)
    gen = torch.Generator().manual_seed(M * 7 + t.id)
    view = (n_out * k_in // group, group, 1)
    raw = to_dev(finite_codes(t, random_codes(t, n_out * k_in, gen)))
    # bf16 scales with the strided factors (as sdnq stores them): for 4-bit integer codes the
    # kernel's packed bf16 decode; f32 scales the per-value path
    scale, zp = random_side(t, view, BF16 if strided else F32, gen)
    scale, zp = scale.to(DEV), None if zp is None else zp.to(DEV)
    if strided:  # sdnq's quantized-matmul storage: up [r, N], down [K, r], used transposed
        up = (torch.randn(rank, n_out, generator=gen) * 0.1).to(BF16).to(DEV).t()
        down = (torch.randn(k_in, rank, generator=gen) * 0.1).to(BF16).to(DEV).t()
    else:
        up = (torch.randn(n_out, rank, generator=gen) * 0.1).to(BF16).to(DEV)
        down = (torch.randn(rank, k_in, generator=gen) * 0.1).to(BF16).to(DEV)
    x = torch.randn(M, k_in, generator=gen).to(BF16).to(DEV)
    bias = (torch.randn(n_out, generator=gen) * 0.1).to(BF16).to(DEV)
    y = kernels.gemv(t, raw, scale, zp, view, x, bias, n_out, up, down)
    assert y is not None
    w = kernels.dequantize(t, raw, scale, zp, view, (n_out, k_in), BF16, impl="fast")
    assert_gemv_svd(y, x, w, up, down, bias, f"{name} M={M}")


def assert_gemv_svd(y, x, w, up, down, bias, label):
    """y of the GEMV with an SVD branch against x @ w^T (+ bias) + (x @ down^T) @ up^T in float64,
    w the dequantized weight in x's dtype and the factors rounded to x's dtype (as the torch path
    casts them). The low-rank product t = x @ down^T is rounded to x's dtype before its MMA with
    up (as sdnq's own path rounds it): half an ulp of each t, allowed twice (the eps of
    gemv_bound), and its fp32 sums over K and the rank as gemv_bound's"""
    d64, u64 = down.to(x.dtype).double(), up.to(x.dtype).double()
    y64 = x.double() @ w.double().t() + (x.double() @ d64.t()) @ u64.t()
    if bias is not None:
        y64 = y64 + bias.double()
    lowmag = (x.double().abs() @ d64.abs().t()) @ u64.abs().t()
    eps = 2.0**-8 if x.dtype == BF16 else 2.0**-11
    bound = gemv_bound(x, w, y64) + ((x.shape[1] + down.shape[0]) * 2.0**-22 + eps) * lowmag
    err = (y.double() - y64).abs()
    assert bool((err <= bound).all()), f"{label}: max err {err.max().item()}"


@pytest.mark.parametrize("form", ["f32", "odd_rank", "k_strided", "f16"])
@pytest.mark.parametrize("M", [1, 9])
def test_gemv_svd_down_forms(form, M):
    """the low-rank blocks' three ways of reading down: pairs along k (rows), pairs along the rank
    (sdnq's column-major factor) and element by element, here for fp32 factors, an odd rank in
    column-major storage, a k stride of 2 (a view), and fp16 x with fp16 factors. fp32 down is
    rounded to x's dtype before the product, as the torch path does (down.to(x.dtype)), and so
    is the reference's (assert_gemv_svd)"""
    t = dtypes.get("uint4")
    n_out, k_in, group = 48, 2048, 128  # two low-rank blocks
    rank = 13 if form == "odd_rank" else 24
    xdt = F16 if form == "f16" else BF16
    gen = torch.Generator().manual_seed(M * 31 + len(form))
    view = (n_out * k_in // group, group, 1)
    raw = to_dev(random_codes(t, n_out * k_in, gen))
    scale, zp = (v.to(DEV) for v in random_side(t, view, BF16, gen))
    fdt = F32 if form == "f32" else xdt
    up = (torch.randn(n_out, rank, generator=gen) * 0.1).to(fdt).to(DEV)
    if form == "k_strided":
        down = (torch.randn(rank, 2 * k_in, generator=gen) * 0.1).to(fdt).to(DEV)[:, ::2]
    elif form == "odd_rank":
        down = (torch.randn(k_in, rank, generator=gen) * 0.1).to(fdt).to(DEV).t()
    else:
        down = (torch.randn(rank, k_in, generator=gen) * 0.1).to(fdt).to(DEV)
    x = torch.randn(M, k_in, generator=gen).to(xdt).to(DEV)
    y = kernels.gemv(t, raw, scale, zp, view, x, None, n_out, up, down)
    assert y is not None
    w = kernels.dequantize(t, raw, scale, zp, view, (n_out, k_in), xdt, impl="fast")
    assert_gemv_svd(y, x, w, up, down, None, f"{form} M={M}")


def test_gemv_scratch_checks(monkeypatch):
    """the C launcher's checks of the caller scratch, through gemv_supported with the arguments of a
    real call: no work buffer (NULL), too small a one (RANGE), one overlapping the low-rank
    scratch by one float at either end (RANGE); the real arguments pass"""
    t = dtypes.get("uint4")
    gen = torch.Generator().manual_seed(3)
    n_out, k_in, rank = 40, 256, 8
    raw = to_dev(random_codes(t, n_out * k_in, gen))
    scale, zp = (v.to(DEV) for v in random_side(t, (n_out * 2, 128, 1), F32, gen))
    up = (torch.randn(n_out, rank, generator=gen) * 0.1).to(BF16).to(DEV)
    down = (torch.randn(rank, k_in, generator=gen) * 0.1).to(BF16).to(DEV)
    x = torch.randn(1, k_in, generator=gen).to(BF16).to(DEV)
    seen = []
    real_call = kernels._cuda_call
    monkeypatch.setattr(kernels, "_cuda_call", lambda fn, like, *args: seen.append(args) or real_call(fn, like, *args))
    assert kernels.gemv(t, raw, scale, zp, (n_out * 2, 128, 1), x, None, n_out, up, down) is not None
    args = list(seen[0])
    LOWRANK, LOWRANK_N, WORK, WORK_N = 34, 35, 36, 37
    assert args[WORK_N] >= 2 * 128 * 8 and args[LOWRANK] == args[WORK] + 4 * args[WORK_N]

    def status(**change):
        a = list(args)
        for k, v in change.items():
            a[{"lowrank": LOWRANK, "lowrank_numel": LOWRANK_N, "work": WORK, "work_numel": WORK_N}[k]] = v
        return kernels._C_cuda.gemv_supported(*a, 0)

    assert status() == 0
    assert status(work=0) == 1  # SDNQ_ERR_NULL
    assert status(work_numel=128 * 8 * 2 - 1) == 4  # one row group needs two segments: SDNQ_ERR_RANGE
    assert status(work_numel=args[WORK_N] + 1) == 4  # its last float is lowrank's first
    assert status(work=args[LOWRANK] + 4 * args[LOWRANK_N] - 4) == 4  # its first float is lowrank's last
    assert status(work=args[LOWRANK] + 4 * args[LOWRANK_N]) == 0  # right after lowrank
    # the low-rank scratch: one low-rank block's partial sums at least (rank 8, one token tile:
    # 128 floats), 16-byte aligned for the finishing kernel's vector loads
    splits = kernels._C_cuda.GEMV_LOWRANK_SPLITS
    assert args[LOWRANK_N] == kernels._C_cuda.gemv_lowrank_floats(1, rank) == splits * 128
    assert status(lowrank_numel=128) == 0
    assert status(lowrank_numel=127) == 4  # SDNQ_ERR_RANGE
    assert status(lowrank=args[LOWRANK] + 4, lowrank_numel=args[LOWRANK_N] - 1) == 7  # not 16-byte aligned: UNSUPPORTED


def test_gemv_refuses_and_linear_falls_back():
    t = dtypes.get("uint4")
    gen = torch.Generator().manual_seed(0)
    n_out, k_in = 32, 80  # K not a multiple of 32
    raw = to_dev(random_codes(t, n_out * k_in, gen))
    scale, zp = (v.to(DEV) for v in random_side(t, (n_out, k_in, 1), BF16, gen))
    x = torch.randn(2, k_in, generator=gen).to(BF16).to(DEV)
    assert kernels.gemv(t, raw, scale, zp, (n_out, k_in, 1), x, None, n_out) is None
    y, path = ops.linear_cuda(x, raw, scale, zp, None, None, None, t.id, (n_out, k_in, 1), (n_out, k_in), 0, 0)
    assert path == "dequant"
    w = kernels.dequantize(t, raw, scale, zp, (n_out, k_in, 1), (n_out, k_in), BF16)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# the linear op: paths, SVD branch, Hadamard, CUDA graphs


def make_linear(name, n_out, k_in, group, gen, sdt=BF16, svd_rank=0, hadamard=0, transposed=False):
    t = dtypes.get(name)
    if transposed:
        view = (1, k_in, n_out)
    else:
        red = k_in if group == -1 else group
        view = (n_out * k_in // red, red, 1)
    raw = finite_codes(t, random_codes(t, n_out * k_in, gen))
    scale, zp = random_side(t, view, sdt, gen)
    if name in ("int8", "float8_e4m3fn"):  # weights like sdnq's: symmetric per output row, ~N(0, 0.02)
        scale = torch.full_like(scale, 0.02 / (40 if name == "int8" else 150))
    up = down = None
    if svd_rank:
        up = (torch.randn(n_out, svd_rank, generator=gen) * 0.05).to(BF16).to(DEV)
        down = (torch.randn(svd_rank, k_in, generator=gen) * 0.05).to(BF16).to(DEV)
    flags = (ops.FLAG_TRANSPOSED if transposed else 0) | (ops.FLAG_HADAMARD_H4 if hadamard else 0)
    return dict(codes=to_dev(raw), scale=scale.to(DEV), zero_point=None if zp is None else zp.to(DEV), svd_up=up,
                svd_down=down, wtype=t.id, view=view, out_shape=(n_out, k_in), flags=flags, hadamard=hadamard)


def dense_reference(x, L, bias):
    """F.linear on the dequantized weight (CUDA dequant + SVD add + un-rotation), fp32 math"""
    w = ops.dequantize_impl(L["codes"], L["scale"], L["zero_point"], L["svd_up"], L["svd_down"], L["wtype"],
                            L["view"], L["out_shape"], L["flags"], L["hadamard"], F32)
    return torch.nn.functional.linear(x.float(), w, None if bias is None else bias.float())


def rel_err(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.mark.parametrize("M", [1, 5, 16, 40, 300])
@pytest.mark.parametrize("name,group,svd,had,tr", [("uint4", 64, 8, 0, False), ("int8", -1, 0, 0, False),
                                                   ("int5", 32, 0, 64, False), ("float8_e4m3fn", -1, 4, 0, False),
                                                   ("int8", -1, 0, 0, True), ("uint11", -1, 0, 0, False)])
def test_linear_op_cuda(M, name, group, svd, had, tr):
    gen = torch.Generator().manual_seed(M)
    L = make_linear(name, 96, 256, group, gen, svd_rank=svd, hadamard=had, transposed=tr)
    x = torch.randn(M, 256, generator=gen).to(BF16).to(DEV)
    bias = (torch.randn(96, generator=gen) * 0.1).to(BF16).to(DEV)
    y, path = ops.linear_cuda(x, bias=bias, **L)
    expect = "gemv" if M <= 16 and not tr and name != "uint11" else "dequant"
    assert path == expect
    ref = dense_reference(x, L, bias)
    assert rel_err(y, ref) < 2e-2, (path, rel_err(y, ref))
    if EMU:  # the registered op dispatches on x.is_cuda
        return
    # through the registered op: same path, same bits
    y_op = ops.linear(x, L["codes"], L["scale"], L["zero_point"], L["svd_up"], L["svd_down"], bias, L["wtype"],
                      L["view"], L["out_shape"], L["flags"], L["hadamard"])
    torch.testing.assert_close(y_op, y, rtol=0, atol=0)


@pytest.mark.parametrize("path,name,tol", [("w8a8_int8", "int8", 0.03), ("w8a8_fp8", "float8_e4m3fn", 0.08),
                                           ("w8a8_fp8_fast", "float8_e4m3fn", 0.08), ("w4a8", "uint4", 0.03),
                                           ("w8a8_int8", "uint4", 0.03), ("w8a8_fp8", "int8", 0.08)])
@pytest.mark.parametrize("M", [1, 64, 333])
def test_w8a8(path, name, tol, M):
    """vs the bf16 reference; loose bound: 8-bit activations (int8: ~0.4% per element, fp8 e4m3:
    ~3%) on top of the weight's own error, averaged by the norm"""
    gen = torch.Generator().manual_seed(M)
    L = make_linear(name, 256, 512, 64 if name == "uint4" else -1, gen)
    x = torch.randn(M, 512, generator=gen).to(BF16).to(DEV)
    bias = (torch.randn(256, generator=gen) * 0.1).to(BF16).to(DEV)
    y, ran = ops.linear_cuda(x, bias=bias, path=path, **L)
    assert ran == path, f"cuBLASLt refused the {path} GEMM on this device (fell back to {ran})"
    ref = dense_reference(x, L, bias)
    assert rel_err(y, ref) < tol, rel_err(y, ref)


@pytest.mark.parametrize("shape", [(7, 301), (6, 264), (3, 1024), (3, 1032), (4, 3072), (3, 4104), (2, 16384),
                                   (5, 20000), (2, 24576), (2, 24584)])
def test_quantize_rows(shape):
    """per-row activation quantization, exactly sdnq's arithmetic (the register-resident vector
    kernel for 16-bit rows of a multiple of 8 columns up to 24576, 6 vectors of 8 per thread: one
    warp per row up to 1536 columns (up to 1024: the 4-vector form), 2, 3, 11, 14 and 16 warps for
    3072, 4104, 16384, 20000 and 24576; the two-pass kernel otherwise: 301, 24584)"""
    rows, cols = shape
    g = torch.Generator().manual_seed(cols)
    x = torch.randn(rows, cols, generator=g).to(BF16)
    x[rows // 2] = 0
    x[0, 3] = 1e-30  # tiny values, and halfway cases of the division
    x[-1, 1] = -0.0  # a signed zero (its fp8 code is 0x80)
    xd = x.to(DEV)
    q, s = kernels.quantize_rows(xd, "int8")
    amax = x.float().abs().amax(1)
    assert torch.equal(s.cpu(), amax / 127)
    want = torch.where(s.cpu()[:, None] > 0, torch.round(x.float() / s.cpu()[:, None].clamp_min(1e-30)), 0)
    assert torch.equal(q.cpu().float(), want.clamp(-128, 127))
    q8, s8 = kernels.quantize_rows(xd, "fp8")
    assert torch.equal(s8.cpu(), amax / 448)
    want8 = torch.where(s8.cpu()[:, None] > 0, x.float() / s8.cpu()[:, None].clamp_min(1e-30), 0).clamp(-448, 448)
    assert torch.equal(q8.cpu().view(torch.uint8), want8.to(torch.float8_e4m3fn).view(torch.uint8))


def test_lt_matmul_scaled():
    """cuBLASLt applying the per-row scales (outer-vector mode) and the bias itself to an fp8 GEMM
    vs its unscaled GEMM followed by scale_epilogue: the same accumulators (fp32 sums whose order
    may differ), the same three fp32 factors in another order (a few fp32 ulps), then one rounding
    to bf16 each: at most one bf16 ulp apart, 2^-7 relative. Skipped where cuBLASLt has no
    algorithm for the scaled form (the linear op then takes the epilogue). (The same form with
    int8 operands and bf16 output: no cuBLASLt 13 algorithm on an H200, so int8 keeps the
    epilogue.)"""
    g = torch.Generator().manual_seed(7)
    M, N, K = 80, 96, 256
    x = torch.randn(M, K, generator=g).to(BF16).to(DEV)
    w = torch.randn(N, K, generator=g).to(BF16).to(DEV)
    bias = (torch.randn(N, generator=g) * 0.1).to(BF16).to(DEV)
    q, xs = kernels.quantize_rows(x, "fp8")
    b, bs = kernels.quantize_rows(w, "fp8")
    for bb in (None, bias):
        y = kernels.lt_matmul(q, b, False, BF16, a_scale=xs, b_scale=bs, bias=bb)
        if y is None:
            pytest.skip(f"cuBLASLt has no outer-vector scaled fp8 GEMM on {torch.cuda.get_device_name()}")
        acc = kernels.lt_matmul(q, b, False, F32)
        want = kernels.scale_epilogue(acc, xs, bs, bb, BF16).float()
        err = (y.float() - want).abs()
        assert (err <= 2**-7 * want.abs() + 1e-30).all(), float(err.max())


def test_fp8_fused_refusal_is_per_output_dtype():
    """cuBLASLt never takes a bias with fp32 output: that refusal falls back to the epilogue for
    fp32 calls only, and later bf16 calls with a bias keep the fused scales; the fast-accumulation
    path keeps its own record"""
    gen = torch.Generator().manual_seed(3)
    L = make_linear("float8_e4m3fn", 96, 256, -1, gen)
    bias = (torch.randn(96, generator=gen) * 0.1).to(DEV)
    dev = torch.device(DEV).index if torch.device(DEV).index is not None else torch.cuda.current_device()
    for path, fast in (("w8a8_fp8", False), ("w8a8_fp8_fast", True)):
        ops._FP8_FUSED_REFUSED.discard((dev, BF16, True, fast))
        for dt in (F32, BF16):
            x = torch.randn(24, 256, generator=gen).to(dt).to(DEV)
            y, ran = ops.linear_cuda(x, bias=bias.to(dt), path=path, **L)
            assert ran == path and y.dtype == dt
            assert rel_err(y, dense_reference(x, L, bias.to(dt))) < 0.08
        assert (dev, F32, True, fast) in ops._FP8_FUSED_REFUSED
        assert (dev, BF16, True, fast) not in ops._FP8_FUSED_REFUSED


@pytest.mark.parametrize("n", [96, 1040, 45])
def test_scale_epilogue(n):
    """acc * a_scale[m] * b_scale[n] (+ bias) in fp32, one rounding: the 8-column vector kernel
    (n % 8 == 0; 1040: 130 column units, two blocks along N; 5 rows: one whole step of 4 rows and
    a partial one) and the scalar one"""
    g = torch.Generator().manual_seed(n)
    M = 5
    acc = torch.randint(-50000, 50000, (M, n), generator=g, dtype=torch.int32)
    sa = torch.rand(M, generator=g) * 0.01
    sb = (torch.rand(2 * n, generator=g) * 0.01).to(BF16)[::2]  # strided weight scales
    bias = (torch.randn(n, generator=g) * 0.1).to(BF16)
    for odt in (BF16, F32):
        b = bias.to(odt) if odt != F32 else None
        y = kernels.scale_epilogue(acc.to(DEV), sa.to(DEV), sb.to(DEV), None if b is None else b.to(DEV), odt)
        want = acc.float() * sa[:, None] * sb.float()[None, :]
        if b is not None:
            want = want + b.float()
        assert torch.equal(y.cpu(), want.to(odt)), odt


def _i8_gemm_or_skip():
    """kernels.i8_gemm runs on compute capability 9.0 (a build with sm_90a code); it must there"""
    if EMU:
        pytest.skip("TMA and wgmma have no host emulation")
    if torch.cuda.get_device_capability()[0] != 9:
        assert not kernels.i8_gemm_available(torch.device(DEV))
        pytest.skip(f"i8_gemm needs compute capability 9.0, not {torch.cuda.get_device_name()}")
    assert kernels.i8_gemm_available(torch.device(DEV)), "built without sm_90a code?"


@pytest.mark.parametrize("shape", [(1, 8, 16), (77, 200, 48), (300, 1000, 1008), (1000, 1000, 3088),
                                   (3000, 2048, 64), (4608, 3072, 256)])
def test_i8_gemm(shape):
    """the fused int8 GEMM + scale epilogue against cuBLASLt's int32 GEMM through scale_epilogue:
    the same exact int32 sums and the same three roundings, so the same bits, for bf16 and fp16
    out, with and without bias, fp32 and strided bf16 weight scales. Shapes: one row; tails of M,
    N and K (K < 128, K % 128 != 0: the zero-filled slice); the small 128 x 128 tile (first four:
    one tile per block; 3000 x 2048: three tiles per block) and the big 192 x 192 tile (4608 x
    3072: 384 tiles, three per block) as tile_cost picks them on a 132-multiprocessor H100/H200"""
    _i8_gemm_or_skip()
    M, N, K = shape
    g = torch.Generator().manual_seed(M + N + K)
    q = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8).to(DEV)
    w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8).to(DEV)
    xs = (torch.rand(M, generator=g) * 1e-3).to(DEV)
    ws32 = (torch.rand(N, generator=g) * 1e-3).to(DEV)
    ws16 = (torch.rand(2 * N, generator=g) * 1e-3).to(BF16).to(DEV)[::2]
    bias = (torch.randn(N, generator=g) * 0.1).to(DEV)
    acc = kernels.lt_matmul(q, w, False, torch.int32)
    assert acc is not None
    for odt, ws, b in ((BF16, ws32, bias), (F16, ws16, bias), (BF16, ws16, None), (F16, ws32, None)):
        bb = None if b is None else b.to(odt)
        y = kernels.i8_gemm(q, w, xs, ws, bb, odt)
        assert y is not None and y.dtype == odt and y.shape == (M, N)
        want = kernels.scale_epilogue(acc, xs, ws, bb, odt)
        assert_bits_equal(y, want)


def test_i8_gemm_refusals():
    """what TMA cannot address is refused (None: the linear op keeps cuBLASLt), nothing raised:
    K % 16, N % 8, an operand not 16-byte aligned, fp32 out"""
    _i8_gemm_or_skip()
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-128, 128, (32, 64), generator=g, dtype=torch.int8).to(DEV)
    w = torch.randint(-128, 128, (40, 64), generator=g, dtype=torch.int8).to(DEV)
    xs, ws = torch.ones(32, device=DEV), torch.ones(40, device=DEV)
    assert kernels.i8_gemm(q, w, xs, ws, None, BF16) is not None
    assert kernels.i8_gemm(q[:, :40], w[:, :40], xs, ws, None, BF16) is None  # K = 40
    assert kernels.i8_gemm(q, w[:36], xs, ws[:36], None, BF16) is None  # N = 36
    assert kernels.i8_gemm(q, w, xs, ws, None, F32) is None
    buf = torch.empty(32 * 64 + 1, dtype=torch.int8, device=DEV)
    off = buf[1:].view(32, 64)
    off.copy_(q)
    assert off.is_contiguous() and off.data_ptr() % 16 != 0
    assert kernels.i8_gemm(off, w, xs, ws, None, BF16) is None


def test_w8a8_int8_takes_i8_gemm(monkeypatch):
    """the linear op's w8a8_int8 path runs the fused kernel where its 128 x 128 tiles fill the GPU
    (512 x 4352: 136 tiles, at least one per multiprocessor on an H100/H200) or K is short (64 x
    4352, K = 256), and cuBLASLt + epilogue with fewer tiles and a long K (64 x 4352, K = 8192: 34
    tiles); the same bits either way"""
    _i8_gemm_or_skip()
    calls = []
    real = kernels.i8_gemm

    def counting(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(kernels, "i8_gemm", counting)
    sms = _sms()
    gen = torch.Generator().manual_seed(5)
    N = 4352
    bias = (torch.randn(N, generator=gen) * 0.1).to(BF16).to(DEV)
    for M, K in ((512, 8192), (64, 8192), (64, 256)):
        L = make_linear("int8", N, K, -1, gen)
        x = torch.randn(M, K, generator=gen).to(BF16).to(DEV)
        calls.clear()
        y, ran = ops.linear_cuda(x, bias=bias, path="w8a8_int8", **L)
        assert ran == "w8a8_int8"
        assert bool(calls) == (K <= 4096 or -(-M // 128) * (N // 128) >= sms), (M, K, calls, sms)
        q, xs = kernels.quantize_rows(x, "int8")
        w = L["codes"].view(torch.int8).reshape(N, K)
        want = kernels.scale_epilogue(kernels.lt_matmul(q, w, False, torch.int32), xs, L["scale"].reshape(-1),
                                      bias, BF16)
        assert_bits_equal(y, want)


def test_i8_gemm_checks():
    """the launcher's argument checks (run in the host emulation too, where every valid call is
    refused): inconsistent sizes raise with the C status, nothing is launched"""
    C = kernels._C_cuda
    M, N, K = 4, 8, 16
    a = torch.zeros(M, K, dtype=torch.int8, device=DEV)
    b = torch.zeros(N, K, dtype=torch.int8, device=DEV)
    sa, sb = torch.ones(M, device=DEV), torch.ones(N, device=DEV)
    out = torch.full((M, N), 7.0, dtype=BF16, device=DEV)
    dt = kernels._dt

    def call(**kw):
        args = dict(M=M, N=N, K=K, a=a.data_ptr(), an=a.numel(), b=b.data_ptr(), bn=b.numel(), sa=sa.data_ptr(),
                    san=M, sb=sb.data_ptr(), sbdt=dt(F32), sbn=N, sbs=1, bias=0, biasn=0, out=out.data_ptr(),
                    odt=dt(BF16), on=out.numel())
        args.update(kw)
        return kernels._cuda_call(C.i8_gemm, a, *args.values())

    ok = call()
    torch.cuda.synchronize()
    if EMU or not kernels.i8_gemm_available(torch.device(DEV)):
        assert ok == C.UNSUPPORTED
    else:
        assert ok == 0 and torch.equal(out, torch.zeros_like(out))
    out.fill_(7.0)
    for kw in (dict(an=M * K - 1), dict(bn=N * K - 1), dict(san=M - 1), dict(sbn=N - 1), dict(sbs=2),
               dict(on=M * N - 1), dict(bias=sb.data_ptr(), biasn=N - 1), dict(M=-1), dict(odt=dt(torch.int32)),
               dict(sbdt=dt(torch.int8)), dict(a=0), dict(sb=0)):
        with pytest.raises(C.SdnqError):
            call(**kw)
    assert call(odt=dt(F32)) == C.UNSUPPORTED
    assert call(K=0, an=0, bn=0) == C.UNSUPPORTED
    assert call(M=0) == 0 and call(N=0) == 0
    torch.cuda.synchronize()
    assert (out == 7.0).all()


@pytest.mark.parametrize("name,group", [("uint4", 128), ("int4", 32), ("uint4", -1), ("int8", 64), ("int8", -1)])
@pytest.mark.parametrize("xdt,sdt", [(BF16, F32), (F16, BF16), (BF16, BF16)])
def test_dequantize_q8(name, group, xdt, sdt):
    """the one-pass int8 re-quantization against its two steps: quantize_rows(dequantize(W)) gives
    codes and row scales; dequantize_q8 with those scales must give the same codes bit for bit (the
    weight rounded to x's dtype, divided by the row scale as quantize_rows divides - the row's
    reciprocal and one correction, codec.h's sdnq_row_div - rounded half to even, clamped; a unit's
    row by a multiply-high). 264 x 320: 4- and 8-bit codes, groups of 32, 64 and 128 within rows,
    row-wise; a zero row scale gives zeros."""
    t = dtypes.get(name)
    gen = torch.Generator().manual_seed(t.id + group)
    n_out, k_in = 264, 320
    L = make_linear(name, n_out, k_in, group, gen, sdt=sdt)
    args = (t, L["codes"], L["scale"], L["zero_point"], L["view"], (n_out, k_in))
    w = kernels.dequantize(*args, xdt)
    q, s = kernels.quantize_rows(w, "int8")
    q1, s1 = kernels.dequantize_q8(*args, xdt, s)
    assert q1.dtype == torch.int8 and q1.shape == (n_out, k_in) and torch.equal(s1, s)
    assert torch.equal(q1, q)
    s0 = s.clone()
    s0[5] = 0
    q0 = kernels.dequantize_q8(*args, xdt, s0)[0]
    assert not q0[5].any() and torch.equal(q0[6:], q[6:])


def test_dequantize_q8_refusals_and_checks():
    """layouts the one-pass kernel does not take come back as None (nothing ran), inconsistent sizes
    raise"""
    gen = torch.Generator().manual_seed(9)
    for name in ("uint11", "int5"):  # codes of other widths than 4 and 8 bits
        L = make_linear(name, 64, 128, -1, gen)
        args = (dtypes.get(name), L["codes"], L["scale"], L["zero_point"], L["view"], (64, 128))
        assert kernels.dequantize_q8(*args, BF16, torch.ones(64, device=DEV)) is None
    L = make_linear("uint4", 64, 128, 32, gen)
    args = (dtypes.get("uint4"), L["codes"], L["scale"], L["zero_point"], L["view"], (64, 128))
    assert kernels.dequantize_q8(*args, F32, torch.ones(64, device=DEV)) is None  # fp32 rounding
    with pytest.raises(kernels._C_cuda.SdnqError):
        kernels.dequantize_q8(*args, BF16, torch.ones(63, device=DEV))  # a row scale short


@pytest.mark.parametrize("name,group", [("uint4", 128), ("int4", 64), ("uint4", -1), ("int8", 32)])
def test_dequantize_q8_derived_scales(name, group):
    """row scales derived from the groups' ranges: with each group's extreme codes present (as
    sdnq's quantizer leaves them: the min and max of a group map to the lowest and highest code)
    they are quantize_rows' scales of the dequantized weight, and the codes its codes, bit for bit;
    with random codes never below them, and the codes those of the given-scales form"""
    t = dtypes.get(name)
    gen = torch.Generator().manual_seed(t.id + 7 * group)
    n_out, k_in = 136, 256
    L = make_linear(name, n_out, k_in, group, gen, sdt=F32)
    view, shape = L["view"], (n_out, k_in)
    red = view[1]
    codes = L["codes"]
    args = (L["scale"], L["zero_point"], view, shape)
    raw = codes.view(torch.uint8).cpu().view(codes.dtype)
    if t.is_packed:  # stored codes 0 .. 2^bits - 1 (values code + min)
        c = kernels.unpack(t, raw, n_out * k_in).reshape(-1, red).clone()
        c[:, 0], c[:, 1] = 0, (1 << t.bits) - 1  # each group's extremes present
        full = to_dev(kernels.pack(t, c.reshape(-1)))
    else:  # 8-bit natives: the values themselves
        c = raw.reshape(-1, red).clone()
        c[:, 0], c[:, 1] = int(t.min), int(t.min) + 255
        full = to_dev(c.reshape(-1))
    for raw, exact in ((full, True), (codes, False)):
        w = kernels.dequantize(t, raw, *args, BF16)
        q, s = kernels.quantize_rows(w, "int8")
        q1, s1 = kernels.dequantize_q8(t, raw, *args, BF16)
        if exact:
            assert torch.equal(s1, s) and torch.equal(q1, q)
        else:
            assert bool((s1 >= s).all())
            assert torch.equal(q1, kernels.dequantize_q8(t, raw, *args, BF16, s1)[0])


def test_w4a8_one_pass(monkeypatch):
    """the W4A8 path re-quantizes a grouped 4-bit weight in one pass on every call (nothing kept
    between calls; inference tensors as ComfyUI's too), y the int8 GEMM's of those codes and
    scales; a layer with the SVD branch folded into the re-quantized weight takes the two steps"""
    calls = []
    real = kernels.dequantize_q8

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(kernels, "dequantize_q8", counting)
    monkeypatch.setenv("COMFY_SDNQ_W4A8", "1")
    gen = torch.Generator().manual_seed(4)
    L = make_linear("uint4", 128, 256, 128, gen, sdt=F32)
    x = torch.randn(40, 256, generator=gen).to(BF16).to(DEV)
    with torch.inference_mode():
        y0, ran = ops.linear_cuda(x, bias=None, **L)
        y1, _ = ops.linear_cuda(x, bias=None, **L)
    assert ran == "w4a8" and len(calls) == 2 and torch.equal(y0, y1)
    b, bs = real(dtypes.get("uint4"), L["codes"], L["scale"], L["zero_point"], L["view"], (128, 256), BF16)
    q, xs = kernels.quantize_rows(x, "int8")
    want = kernels.scale_epilogue(kernels.lt_matmul(q, b, False, torch.int32), xs, bs, None, BF16)
    assert_bits_equal(y0, want)
    calls.clear()
    S = make_linear("uint4", 128, 256, 128, gen, sdt=F32, svd_rank=8)
    assert ops.linear_cuda(x, bias=None, **S)[1] == "w4a8"
    assert not calls


def test_w8a8_matmul_ready_storage():
    """sdnq's [in, out] int8 storage: cuBLASLt may take it untransposed, else the op re-quantizes"""
    gen = torch.Generator().manual_seed(0)
    L = make_linear("int8", 128, 256, -1, gen, transposed=True)
    x = torch.randn(64, 256, generator=gen).to(BF16).to(DEV)
    y, ran = ops.linear_cuda(x, bias=None, path="w8a8_int8", **L)
    assert ran in ("w8a8_int8", "dequant")
    assert rel_err(y, dense_reference(x, L, None)) < 0.03


def test_env_selects_w8a8(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    L = make_linear("int8", 128, 256, -1, gen)
    x = torch.randn(64, 256, generator=gen).to(BF16).to(DEV)
    monkeypatch.setenv("COMFY_SDNQ_W8A8", "int8")
    assert ops.linear_cuda(x, bias=None, **L)[1] == "w8a8_int8"
    monkeypatch.setenv("COMFY_SDNQ_W8A8", "")
    assert ops.linear_cuda(x, bias=None, **L)[1] == "dequant"
    assert ops.linear_cuda(x[:4], bias=None, **L)[1] == "gemv"


@pytest.mark.parametrize("M,env", [(1, ""), (64, ""), (64, "int8")])
def test_linear_cuda_graph(M, env, monkeypatch):
    """the op captured in a CUDA graph replays to the eager result: nothing syncs the host"""
    monkeypatch.setenv("COMFY_SDNQ_W8A8", env)
    gen = torch.Generator().manual_seed(1)
    L = make_linear("uint4" if not env else "int8", 128, 256, 64 if not env else -1, gen,
                    svd_rank=8 if not env else 0, hadamard=64 if not env else 0)
    bias = (torch.randn(128, generator=gen) * 0.1).to(BF16).to(DEV)
    static_x = torch.randn(M, 256, generator=gen).to(BF16).to(DEV)

    def run():
        return ops.linear(static_x, L["codes"], L["scale"], L["zero_point"], L["svd_up"], L["svd_down"], bias,
                          L["wtype"], L["view"], L["out_shape"], L["flags"], L["hadamard"])

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up outside capture: workspaces, cuBLAS handles, heuristics
            run()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run()
    for _ in range(2):
        static_x.copy_(torch.randn(M, 256, generator=gen).to(BF16).to(DEV))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(static_y, run(), rtol=1e-2, atol=1e-2)


def test_dequantize_op_on_cuda_matches_cpu():
    """torch.ops.sdnq.dequantize on CUDA tensors (elementwise + SVD + Hadamard) vs the C core"""
    gen = torch.Generator().manual_seed(2)
    L = make_linear("uint4", 64, 256, 32, gen, svd_rank=8, hadamard=64)
    args = [L[k] for k in ("codes", "scale", "zero_point", "svd_up", "svd_down", "wtype", "view", "out_shape",
                           "flags", "hadamard")]
    got = ops.dequantize(*args, BF16).cpu()
    cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    want = ops.dequantize(*cpu_args, BF16)
    d = (got.float() - want.float()).abs()
    assert bool((d <= 2**-6 * want.float().abs().amax()).all()), d.max()
