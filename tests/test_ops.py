"""The torch ops: opcheck, torch.compile, the aten handlers on the QuantizedTensor, and the
pure-torch fallback when the C extension is missing."""
import json
import os
import subprocess
import sys

import pytest
import torch

from comfy_sdnq import layout, ops
from comfy_sdnq.quantizer import quantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def op_args(qt, dtype=None):
    p = qt.params
    scale, zp = layout.side_tensors(p)
    codes = qt._qdata
    if codes.dtype.is_floating_point and codes.element_size() == 1:
        codes = codes.view(torch.uint8)  # opcheck's own checks cannot multiply fp8 tensors
    return (codes, scale, zp, p.svd_up, p.svd_down, p.wtype, list(p.view), list(p.weight_shape), p.flags,
            p.hadamard, dtype or p.orig_dtype)


CASES = [("uint4", dict(use_svd=True, svd_rank=8)), ("int8", {}), ("float8_e4m3fn", dict(group_size=-1)),
         ("int5", dict(use_hadamard=True, hadamard_group_size=64)), ("uint4", dict(use_codebook=True)),
         ("int8", dict(use_quantized_matmul=True))]


@pytest.mark.parametrize("wtype,opts", CASES)
def test_opcheck_dequantize(wtype, opts):
    torch.manual_seed(0)
    qt = quantize(torch.randn(64, 256, dtype=torch.bfloat16), wtype, **opts)
    torch.library.opcheck(torch.ops.sdnq.dequantize.default, op_args(qt))


@pytest.mark.parametrize("wtype,opts", CASES)
def test_opcheck_linear(wtype, opts):
    torch.manual_seed(0)
    qt = quantize(torch.randn(64, 256, dtype=torch.bfloat16), wtype, **opts)
    x = torch.randn(3, 5, 256, dtype=torch.bfloat16)
    a = op_args(qt)
    torch.library.opcheck(torch.ops.sdnq.linear.default, (x, *a[:5], torch.randn(64, dtype=torch.bfloat16), *a[5:10]))


def linear_bound(x, qt, bias=None):
    """|F.linear(x, W, b)| computed on magnitudes: the scale of the rounding differences
    between computing with W = deq + up @ down (dequantize) and with the low-rank branch
    applied to the activations (the linear op); each side rounds bf16 a few times."""
    p = qt.params
    up, down = (p.svd_up, p.svd_down)
    if p.svd_transposed and up is not None:
        up, down = up.t(), down.t()
    mag = qt.dequantize().float().abs()
    if up is not None:
        mag = mag + (up.float().abs() @ down.float().abs())
    out = x.float().abs() @ mag.t()
    return out + (0 if bias is None else bias.float().abs())


@pytest.mark.parametrize("wtype,opts", CASES)
def test_linear_matches_dequantize_then_linear(wtype, opts):
    torch.manual_seed(0)
    qt = quantize(torch.randn(96, 128, dtype=torch.bfloat16), wtype, **opts)
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    b = torch.randn(96, dtype=torch.bfloat16)
    want = torch.nn.functional.linear(x, qt.dequantize(), b)
    tol = 2**-6 * linear_bound(x, qt, b)  # a few bf16 roundings of terms of this size
    for got in (torch.nn.functional.linear(x, qt, b),       # aten.linear handler
                torch.addmm(b, x, qt.t()),                  # decomposed forms reach the same op
                x @ qt.t() + b):
        assert bool(((got.float() - want.float()).abs() <= tol).all()), (got - want).abs().max()
    if not opts.get("use_svd") and not opts.get("use_hadamard"):  # no low-rank branch: same weight, same GEMM
        torch.testing.assert_close(torch.nn.functional.linear(x, qt, b), want, rtol=0, atol=0)
    # other ops fall back to dequantization
    torch.testing.assert_close(qt * 2, qt.dequantize() * 2, rtol=0, atol=0)


@pytest.mark.parametrize("wtype,opts", CASES)
def test_functional_linear_is_f_linear(wtype, opts):
    """layout.functional_linear (the ComfyUI layers' call, skipping aten.linear's decomposition)
    gives F.linear's bits on SDNQ weights, and is F.linear on anything else"""
    torch.manual_seed(0)
    qt = quantize(torch.randn(96, 128, dtype=torch.bfloat16), wtype, **opts)
    x = torch.randn(2, 3, 128, dtype=torch.bfloat16)
    b = torch.randn(96, dtype=torch.bfloat16)
    for bias in (b, None):
        torch.testing.assert_close(layout.functional_linear(x, qt, bias), torch.nn.functional.linear(x, qt, bias),
                                   rtol=0, atol=0)
    dense, xt = torch.randn(96, 128, dtype=torch.bfloat16), torch.randn(4, 96, dtype=torch.bfloat16)
    torch.testing.assert_close(layout.functional_linear(x, dense, b), torch.nn.functional.linear(x, dense, b),
                               rtol=0, atol=0)
    # a transposed SDNQ weight (W^T: [128, 96]) takes F.linear's own route, which dequantizes it
    want = torch.nn.functional.linear(xt, qt.dequantize().t())
    torch.testing.assert_close(layout.functional_linear(xt, qt.t()), want, rtol=0, atol=0)


def test_params_caches_per_object():
    """aten.t makes its transposed params once per params object, without a reference back; the
    side tensors are cached as views, except double-quantized ones (decoded per call, no second copy)"""
    torch.manual_seed(0)
    qt = quantize(torch.randn(96, 128, dtype=torch.bfloat16), "uint4", use_svd=True, svd_rank=8)
    p = qt.params
    t1, t2 = qt.t(), qt.t()
    assert t1.params is t2.params and t1.params is p.transposed_params()
    assert t1.shape == (128, 96) and t1.params.logical_t and not p.logical_t
    assert "_transposed" not in t1.params.__dict__  # no cycle keeping device tensors alive
    assert t1.t().params.orig_shape == p.orig_shape and not t1.t().params.logical_t
    torch.testing.assert_close(t1.dequantize(), qt.dequantize().t(), rtol=0, atol=0)
    s1, s2 = layout.side_tensors(p), layout.side_tensors(p)
    assert s1[0] is s2[0] and s1[0].data_ptr() == p.scale.data_ptr()
    dq = quantize(torch.randn(64, 256, dtype=torch.bfloat16), "uint4", group_size=32, scale_dtype="int8",
                  zero_point_dtype="int8")
    assert dq.params.scale_type and dq.params.zero_point_type
    d1, d2 = layout.side_tensors(dq.params), layout.side_tensors(dq.params)
    assert d1[0] is not d2[0] and "_side" not in dq.params.__dict__
    torch.testing.assert_close(d1[0], d2[0], rtol=0, atol=0)


def test_torch_compile_traces_model():
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(128, 64)
            self.b = torch.nn.Linear(64, 32)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    net = Net().to(torch.bfloat16)
    ref = Net().to(torch.bfloat16)
    ref.load_state_dict(net.state_dict())
    for name in ("a", "b"):
        qt = quantize(getattr(net, name).weight.detach(), "uint4", use_svd=True, svd_rank=4)
        getattr(net, name).weight = torch.nn.Parameter(qt, requires_grad=False)
        getattr(ref, name).weight = torch.nn.Parameter(qt.dequantize(), requires_grad=False)
    x = torch.randn(8, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        want = ref(x)
        got_eager = net(x)
        compiled_net = torch.compile(net, fullgraph=True, backend="aot_eager")
        got_compiled = compiled_net(x)
        op = torch.compile(lambda x: torch.ops.sdnq.linear(x, *op_args_for_linear(net.a)), fullgraph=True)
        got_op = op(x)  # inductor
    torch.testing.assert_close(got_compiled, got_eager, rtol=0, atol=0)
    torch.testing.assert_close(got_op, torch.nn.functional.linear(x, net.a.weight, net.a.bias), rtol=0, atol=0)
    # eager vs the dense model: the low-rank branch runs on the activations (rounding order only)
    assert (got_eager.float() - want.float()).abs().max() <= 2**-5 * want.float().abs().max()


def op_args_for_linear(mod):
    a = op_args(mod.weight)
    return (*a[:5], mod.bias, *a[5:10])


def _run(code, **env):
    e = dict(os.environ, PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd=ROOT)


def test_missing_extension_falls_back_with_one_warning():
    code = ("import sys, warnings, torch\n"
            "sys.modules['comfy_sdnq._C'] = None\n"  # import of the extension fails
            "warnings.simplefilter('always')\n"
            "import comfy_sdnq\n"
            "from comfy_sdnq import kernels\n"
            "qt = comfy_sdnq.quantize(torch.randn(32, 64), 'uint4')\n"
            "qt.dequantize(); qt.dequantize()\n"
            "print('backend', kernels.backend())\n")
    r = _run(code, COMFY_SDNQ_REQUIRE_EXT="0")
    assert r.returncode == 0, r.stderr
    assert "backend torch" in r.stdout
    assert r.stderr.count("C extension not available") == 1, r.stderr


def test_require_extension_turns_fallback_into_error():
    code = ("import sys\n"
            "sys.modules['comfy_sdnq._C'] = None\n"
            "import comfy_sdnq.kernels\n")
    r = _run(code, COMFY_SDNQ_REQUIRE_EXT="1")
    assert r.returncode != 0
    assert "COMFY_SDNQ_REQUIRE_EXT" in r.stderr


def test_meta_tensors_for_shape_only_loading():
    torch.manual_seed(0)
    qt = quantize(torch.randn(64, 256, dtype=torch.bfloat16), "uint4", use_svd=True, svd_rank=8)
    meta = qt.to("meta")
    assert meta.shape == (64, 256) and meta.dtype == torch.bfloat16 and meta.device.type == "meta"
    out = torch.ops.sdnq.dequantize(*op_args(meta))
    assert out.shape == (64, 256) and out.device.type == "meta"


def test_bench_host_smoke(tmp_path):
    """benchmarks/bench_host.py runs on the CPU (its GPU rows need a GPU) and times every entry point"""
    out = tmp_path / "host.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_host.py"), "--device", "cpu",
                        "--shape", "64x64", "--tokens", "1,32", "--calls", "2", "--configs", "int8,uint4+svd32",
                        "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    got = {(x["dtype"], x["M"], x["entry"]) for x in rows}
    entries = ("bf16", "F.linear", "functional")
    assert got == {(d, m, e) for d in ("int8", "uint4+svd32") for m in (1, 32) for e in entries}
    assert all(x["host_us"] > 0 for x in rows)


def test_env_paths(monkeypatch):
    """the opt-in CUDA paths each environment setting selects, per weight type and layout"""
    from comfy_sdnq import dtypes

    int8, fp8, uint4, int5 = (dtypes.get(n) for n in ("int8", "float8_e4m3fn", "uint4", "int5"))
    monkeypatch.delenv("COMFY_SDNQ_W8A8", raising=False)
    monkeypatch.delenv("COMFY_SDNQ_W4A8", raising=False)
    assert [ops._env_path(t, False, False) for t in (int8, fp8, uint4)] == [None, None, None]
    monkeypatch.setenv("COMFY_SDNQ_W8A8", "INT8")
    assert ops._env_path(int8, False, False) == "w8a8_int8" and ops._env_path(int8, True, False) == "w8a8_int8"
    assert ops._env_path(int8, False, True) is None and ops._env_path(fp8, False, False) is None
    monkeypatch.setenv("COMFY_SDNQ_W8A8", "fp8")
    assert ops._env_path(fp8, False, False) == "w8a8_fp8" and ops._env_path(int8, False, False) is None
    monkeypatch.setenv("COMFY_SDNQ_W8A8", "fp8-fast")
    assert ops._env_path(fp8, False, False) == "w8a8_fp8_fast" and ops._env_path(int8, False, False) is None
    monkeypatch.setenv("COMFY_SDNQ_W4A8", "1")
    assert ops._env_path(uint4, False, False) == "w4a8" and ops._env_path(uint4, False, True) == "w4a8"
    assert ops._env_path(uint4, True, False) is None and ops._env_path(int5, False, False) is None
    monkeypatch.setenv("COMFY_SDNQ_W4A8", "0")
    assert ops._env_path(uint4, False, False) is None
