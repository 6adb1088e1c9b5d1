"""The torch ops: opcheck, torch.compile, the aten handlers on the QuantizedTensor, and the
pure-torch fallback when the C extension is missing."""
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
