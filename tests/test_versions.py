"""comfy_sdnq against files written by OLDER sdnq releases.

Each old release is installed side by side (no deps) under .ci-cache/sdnq-<version>
(or $COMFY_SDNQ_OLD_SDNQ/sdnq-<version>):

    pip install --no-deps --target .ci-cache/sdnq-0.1.3 sdnq==0.1.3

For every such release, tests/sdnq_writer.py runs in a subprocess under that release
(PYTHONPATH=<its dir>), quantizes a tiny diffusers model once per case, saves it with
that release's save_sdnq_model and also stores that release's own dequantization of every
quantized layer (reference.safetensors). Here the saved folder is read with
comfy_sdnq.load(...) and every quantized layer's .dequantize() is compared with the
reference: bit-exact when the layer has neither SVD nor Hadamard; otherwise within a bound
on GEMM accumulation-order differences (see _tolerance).

The writer runs once per release for all its cases (one interpreter start, not one per
case: importing torch+diffusers+sdnq costs seconds), releases in parallel.

A version quirk comfy_sdnq did not handle would be a strict xfail (QUIRK_RULES,
known_quirk; none today); the reasons state the decode rule a loader needs.

The Hadamard version rule (quirk e) is also checked without any old release, by
rewriting a sdnq-0.2.8 layer's config with an older sdnq_version (test_hadamard_version_rule).
"""
from __future__ import annotations

import concurrent.futures
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITER = os.path.join(ROOT, "tests", "sdnq_writer.py")
OLD_BASE = os.environ.get("COMFY_SDNQ_OLD_SDNQ") or os.path.join(ROOT, ".ci-cache")
WRITER_TIMEOUT_S = 1800
KIND_OF_CLASS = {"Linear": "linear", "Conv1d": "conv", "Conv2d": "conv", "Conv3d": "conv",
                 "ConvTranspose1d": "conv_transpose", "ConvTranspose2d": "conv_transpose",
                 "ConvTranspose3d": "conv_transpose", "Embedding": "embedding"}


def _vt(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:3])


def _old_versions() -> list[tuple[str, str]]:
    """[(version, install dir)] of the old sdnq releases found under OLD_BASE"""
    found = []
    if os.path.isdir(OLD_BASE):
        for d in os.listdir(OLD_BASE):
            m = re.fullmatch(r"sdnq-(\d+\.\d+\.\d+)", d)
            path = os.path.join(OLD_BASE, d)
            if m and os.path.isfile(os.path.join(path, "sdnq", "__init__.py")):
                found.append((m.group(1), path))
    return sorted(found, key=lambda vp: _vt(vp[0]))


def _writer_cases() -> list[str]:
    """the case names, read from the writer's source (importing it would set SDNQ_* defaults here)"""
    import ast

    tree = ast.parse(open(WRITER, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CASES" for t in node.targets):
            return [k.value for k in node.value.keys]
    raise RuntimeError("tests/sdnq_writer.py has no CASES")


VERSIONS = _old_versions()
CASES = _writer_cases()
NO_OLD_REASON = (f"NO OLD sdnq RELEASES under {OLD_BASE}: nothing checks comfy_sdnq against files written by "
                 f"older sdnq. Install some with `pip install --no-deps --target {OLD_BASE}/sdnq-<ver> "
                 f"sdnq==<ver>` (or point COMFY_SDNQ_OLD_SDNQ at such a folder).")


# Version quirks of old releases, each checked bit-exactly against the old release's own dequantization
# (the rules were verified by decoding the old files with them). known_quirk() lists those comfy_sdnq
# does not handle yet (none today; files.py, config.py and format.py handle these):
#  (d) custom floats, sdnq < 0.2.2 (subnormals came with 7728f46, first released in 0.2.2): the old decoder
#      reads a code with exponent field E=0 and mantissa M>0 as the extended normal +-2^-bias*(1+M/2^m)
#      (= +-min_normal/2*(1+M/2^m)); E=0,M=0 is 0. The old encoder emits such codes for
#      |x|/scale in [min_normal/2*(1+2^-m), min_normal). comfy_sdnq re-codes such layers into the type with one more mantissa bit.
#  (e) Hadamard, sdnq == 0.2.0: the PyPI 0.2.0 wheel (= Disty0/sdnq a32fc95, 2026-06-15) contains b147983
#      (H4-kron for power-of-4 blocks); comfy_sdnq applies Sylvester for sdnq_version < 0.2.1. Only unreleased
#      git snapshots labelled 0.2.0 (7b429bb..b147983^, 2026-05-22..06-12) used Sylvester.
#  (f) conv, sdnq < 0.1.3 (f80f31d, first released in 0.1.3): Conv/ConvTranspose layers whose resolved
#      weights_dtype has < 4 bits are stored as uint4 (asymmetric, zero_point, auto group 2^(1+4+[svd]))
#      while the config keeps the requested dtype.
#  (g) grouped ConvTranspose, sdnq < 0.1.9 (483ada2): weight [in, out, k..] grouped over dim 0 as
#      [G, g, out, k..], scale/zero_point [G, 1, out, k..]; since 0.1.9 it is [in, g, G, k..] (dim 1 split),
#      scale [in, 1, G, k..]. Both are row-major views of the original weight.
QUIRK_RULES = {
    "d": "sdnq_version < 0.2.2: custom-float codes with E=0,M>0 decode as +-2^-bias*(1+M/2^m), not as subnormals",
    "e": "sdnq_version >= 0.2.0 (not 0.2.1): power-of-4 Hadamard blocks use the H4-kron construction",
    "f": "sdnq_version < 0.1.3: conv/conv-transpose layers with a < 4-bit weights_dtype are stored as uint4",
    "g": "sdnq_version < 0.1.9: grouped ConvTranspose codes are [G, g, out, k..] (scale [G, 1, out, k..])",
}


def known_quirk(version: str, case: str) -> str | None:
    """why comfy_sdnq decodes this (version, case) wrongly today (the rule it needs); None if it should pass"""
    quirk = None  # every quirk found so far is handled
    return None if quirk is None else f"quirk ({quirk}) not handled; rule: {QUIRK_RULES[quirk]}"


def _params():
    if not VERSIONS:
        return [pytest.param(None, None, id="no-old-sdnq")]
    out = []
    for version, _ in VERSIONS:
        for case in CASES:
            reason = known_quirk(version, case)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(version, case, marks=marks, id=f"{version}-{case}"))
    return out


# ---------------------------------------------------------------------------
# running the writer


class _OldFiles:
    """Runs tests/sdnq_writer.py under each needed old release once (all cases), in parallel."""

    def __init__(self, base_dir, versions):
        self.base = str(base_dir)
        self.dirs = dict(VERSIONS)
        workers = max(1, min(len(versions), os.cpu_count() or 1, 4))
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.futures = {v: self.pool.submit(self._write, v) for v in versions}

    def _write(self, version):
        out = os.path.join(self.base, version)
        env = dict(os.environ)
        env["PYTHONPATH"] = self.dirs[version]  # only the old release; comfy_sdnq is not imported there
        env["SDNQ_USE_TORCH_COMPILE"] = "0"
        env["SDNQ_USE_TRITON_MM"] = "0"
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        try:
            proc = subprocess.run([sys.executable, WRITER, out, "--case", "all"], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=WRITER_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            return out, f"timed out after {exc.timeout}s"
        return out, (None if proc.returncode in (0, 1) else
                     f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")

    def case_dir(self, version, case):
        out, problem = self.futures[version].result()
        if problem is not None:
            pytest.fail(f"tests/sdnq_writer.py under sdnq {version} failed: {problem}", pytrace=False)
        return os.path.join(out, case)

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def old_files(request, tmp_path_factory):
    needed = []
    for item in request.session.items:
        cs = getattr(item, "callspec", None)
        v = cs.params.get("version") if cs is not None else None
        if v is not None and v not in needed:
            needed.append(v)
    files = _OldFiles(tmp_path_factory.mktemp("old_sdnq"), needed)
    yield files
    files.close()


# ---------------------------------------------------------------------------
# comparing


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _svd_magnitude(up: torch.Tensor, down: torch.Tensor, shape) -> torch.Tensor:
    """|up| @ |down| in the weight's [out, in*k..] orientation, reshaped to the weight: a bound on the
    terms the SVD GEMM accumulates (whatever their order)"""
    rows = shape[0]
    cols = math.prod(shape) // rows
    u, d = up.float().abs(), down.float().abs()
    if u.shape[0] == rows and d.shape[1] == cols:
        m = u @ d
    elif u.shape[1] == rows and d.shape[0] == cols:   # stored for quantized matmul: up [r, out], down [in, r]
        m = (d @ u).t()
    else:
        raise AssertionError(f"SVD factors {tuple(up.shape)} {tuple(down.shape)} do not fit a weight {tuple(shape)}")
    return m.reshape(shape)


def _block_l2(x: torch.Tensor, h: int) -> torch.Tensor:
    """per element: the 2-norm of its Hadamard block (blocks of h along the flattened input dims)"""
    shape = x.shape
    b = x.float().reshape(shape[0], -1).unflatten(-1, (-1, h))
    return b.square().sum(-1, keepdim=True).sqrt().expand_as(b).reshape(shape)


def _tolerance(ref: torch.Tensor, svd_mag: torch.Tensor | None, hadamard: int) -> torch.Tensor:
    """|got - ref| bound when a GEMM is involved.

    Both sides compute the same bf16/fp32 products; only the accumulation order (and, in sdnq, an
    intermediate rounding to the SVD dtype) may differ. Each differing rounding is at most one bf16
    half-ulp (2^-9 relative) of the partial sums, whose magnitude is bounded by the sum of |terms|:
    |up|@|down| for SVD. For the Hadamard un-rotation W = W' @ H (|H_ij| = 1/sqrt(h)), the terms of an
    output are |W'_k|/sqrt(h) <= ||W'_block||_2 by Cauchy-Schwarz, and ||W'_block||_2 = ||W_block||_2
    since H is orthonormal; an SVD rounding error before the rotation is spread the same way. 2^-7
    leaves room for ~4 such roundings (elementwise bf16 result, SVD add, cast, Hadamard GEMM)."""
    mag = ref.float().abs()
    if hadamard:
        mag = mag + _block_l2(ref, hadamard)
        if svd_mag is not None:
            mag = mag + _block_l2(svd_mag, hadamard)
    elif svd_mag is not None:
        mag = mag + svd_mag
    return 2.0 ** -7 * mag


def _compare_layer(key, got, ref, facts, file_tensors) -> str | None:
    if tuple(got.shape) != tuple(ref.shape) or got.dtype != ref.dtype:
        return f"{key}: got {tuple(got.shape)} {got.dtype}, sdnq gives {tuple(ref.shape)} {ref.dtype}"
    prefix = key[: -len(".weight")]
    up, down = file_tensors.get(prefix + ".svd_up"), file_tensors.get(prefix + ".svd_down")
    hadamard = int(facts.get("hadamard_group_size") or 0) if facts.get("use_hadamard") else 0
    if up is None and not hadamard:
        if torch.equal(_bits(got), _bits(ref)):
            return None
        bad = (_bits(got) != _bits(ref)).nonzero()
        i = tuple(bad[0].tolist())
        return (f"{key}: {len(bad)}/{ref.numel()} elements differ (bit-exact expected), first at {i}: "
                f"{got[i].item()!r} vs sdnq {ref[i].item()!r}; max |diff| "
                f"{(got.float() - ref.float()).abs().max().item():.3g}")
    svd_mag = _svd_magnitude(up, down, ref.shape) if up is not None else None
    tol = _tolerance(ref, svd_mag, hadamard)
    diff = (got.float() - ref.float()).abs()
    over = diff > tol
    if not bool(over.any()) and bool(torch.isfinite(got).all()):
        return None
    i = tuple(over.nonzero()[0].tolist()) if bool(over.any()) else ()
    return (f"{key}: {int(over.sum())}/{ref.numel()} elements beyond the GEMM tolerance (svd={up is not None}, "
            f"hadamard={hadamard}); first at {i}: {got[i].item() if i else None!r} vs sdnq "
            f"{ref[i].item() if i else None!r} (tol {tol[i].item() if i else 0:.3g}); max |diff| "
            f"{diff.max().item():.3g}, max |ref| {ref.float().abs().max().item():.3g}")


@pytest.mark.parametrize("version,case", _params())
def test_old_release_file(version, case, old_files):
    """comfy_sdnq decodes a file written by an old sdnq release as that release does"""
    if version is None:
        pytest.skip(NO_OLD_REASON)
    import comfy_sdnq
    from safetensors.torch import load_file

    d = old_files.case_dir(version, case)
    mpath = os.path.join(d, "meta.json")
    if not os.path.isfile(mpath):
        pytest.fail(f"sdnq {version} {case}: the writer left no meta.json in {d}", pytrace=False)
    with open(mpath, encoding="utf-8") as f:
        meta = json.load(f)
    if meta["status"] == "skip":
        pytest.skip(f"sdnq {version} cannot write {case}: {meta['reason']}")
    if meta["status"] != "ok":
        pytest.fail(f"tests/sdnq_writer.py, sdnq {version}, case {case}: {meta['reason']}\n"
                    f"{meta.get('traceback', '')}", pytrace=False)
    assert meta["version"] == version, f"{OLD_BASE}/sdnq-{version} holds sdnq {meta['version']}"

    model_dir = os.path.join(d, "model")
    layers = meta["layers"]
    # what a loader knows from the model it loads into: weight shapes and layer kinds
    shapes = {k: tuple(v["original_shape"]) for k, v in layers.items()}
    kinds = {k: KIND_OF_CLASS.get(v["original_class"] or "", "other") for k, v in layers.items()}
    file_tensors = {}
    for name in os.listdir(model_dir):
        if name.endswith(".safetensors"):
            file_tensors.update(load_file(os.path.join(model_dir, name)))
    describe = "; ".join(f"{k}: " + ", ".join(f"{n} {tuple(t.shape)} {t.dtype}".replace("torch.", "")
                                               for n, t in file_tensors.items() if n.startswith(k[: -len("weight")]))
                         for k in sorted(layers))

    try:
        sd = comfy_sdnq.load(model_dir, shapes=shapes, kinds=kinds)
    except Exception as exc:
        pytest.fail(f"sdnq {version} {case}: comfy_sdnq.load refused the folder: {type(exc).__name__}: {exc}\n"
                    f"file tensors: {describe}", pytrace=False)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    assert set(ref) == set(layers)
    problems = []
    for key in sorted(ref):
        t = sd.get(key)
        if t is None or not hasattr(t, "dequantize") or type(t) is torch.Tensor:
            problems.append(f"{key}: comfy_sdnq did not return a quantized tensor ({type(t).__name__})")
            continue
        try:
            got = t.dequantize()
        except Exception as exc:
            problems.append(f"{key}: dequantize() raised {type(exc).__name__}: {exc}")
            continue
        p = _compare_layer(key, got, ref[key], layers[key], file_tensors)
        if p is not None:
            problems.append(p + f" [sdnq {layers[key]['weights_dtype']}, group {layers[key]['group_size']}, "
                                f"qmm {layers[key]['use_quantized_matmul']}]")
    if problems:
        pytest.fail(f"sdnq {version} {case}: {len(problems)}/{len(ref)} layer(s) decode differently:\n  "
                    + "\n  ".join(problems) + f"\nfile tensors: {describe}", pytrace=False)


# ---------------------------------------------------------------------------
# quirk (e) without old releases: the same tensors under different sdnq_version claims


def _sylvester(n: int, dtype) -> torch.Tensor:
    h = torch.tensor([[1.0]])
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.to(dtype) / math.sqrt(n)


def _h4_kron(n: int, dtype) -> torch.Tensor:
    h4 = torch.tensor([[1.0, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]])
    h = h4
    while h.shape[0] < n:
        h = torch.kron(h, h4)
    return h.to(dtype) / math.sqrt(n)


@pytest.fixture(scope="module")
def hadamard_layer(tmp_path_factory):
    """a uint4 Linear [128, 256] quantized by the installed sdnq (0.2.8) with Hadamard block 64 (a power of 4)"""
    pytest.importorskip("sdnq")
    from sdnq.quantizer import sdnq_quantize_layer_weight

    torch.manual_seed(0)
    w = (torch.randn(128, 256) * 0.05).to(torch.bfloat16)
    deq, t = sdnq_quantize_layer_weight(w, layer_class_name="Linear", weights_dtype="uint4", use_hadamard=True,
                                        hadamard_group_size=64, torch_dtype=torch.bfloat16)
    assert deq.use_hadamard and deq.hadamard_group_size == 64
    full = deq(t["weight"], t["scale"], zero_point=t["zero_point"], skip_compile=True)  # sdnq's own dequantization
    # the same, before the Hadamard un-rotation (the rotated-domain weight, in bf16)
    rotated = deq(t["weight"], t["scale"], zero_point=t["zero_point"], skip_compile=True, non_hadamard=True)
    tensors = {"layer.weight": t["weight"], "layer.scale": t["scale"], "layer.zero_point": t["zero_point"]}
    return {"tensors": tensors, "full": full, "rotated": rotated, "base": tmp_path_factory.mktemp("hadamard_rule")}


def _load_with_version(layer, version: str) -> torch.Tensor:
    import comfy_sdnq
    from safetensors.torch import save_file

    folder = layer["base"] / version
    folder.mkdir(exist_ok=True)
    save_file(layer["tensors"], str(folder / "model.safetensors"))
    cfg = {"quant_method": "sdnq", "weights_dtype": "uint4", "group_size": 0, "use_hadamard": True,
           "hadamard_group_size": 64, "dequantize_fp32": True, "sdnq_version": version}
    (folder / "quantization_config.json").write_text(json.dumps(cfg))
    sd = comfy_sdnq.load(str(folder), torch.bfloat16, shapes={"layer.weight": (128, 256)},
                         kinds={"layer.weight": "linear"})
    return sd["layer.weight"].dequantize()


def _assert_close_rotation(got, want, rotated, h, what):
    """got ~ want up to accumulation order of the bf16 Hadamard GEMM (entries +-1/sqrt(h), exact in bf16)"""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    terms = rotated.float().abs().reshape(rotated.shape[0], -1, h).sum(-1, keepdim=True) / math.sqrt(h)
    tol = 2.0 ** -8 * want.float().abs() + 2.0 ** -16 * terms.expand(-1, -1, h).reshape(want.shape)
    diff = (got.float() - want.float()).abs()
    bad = diff > tol
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())}/{want.numel()} elements differ beyond 1 bf16 ulp; "
                                 f"max |diff| {diff.max().item():.3g}")


def _unrotate(rotated, H):
    return (rotated.unflatten(-1, (-1, H.shape[0])) @ H).flatten(-2)


@pytest.mark.parametrize("version,construction", [
    ("0.1.9", "sylvester"),
    # the PyPI 0.2.0 wheel builds power-of-4 blocks with H4-kron (see QUIRK_RULES["e"])
    ("0.2.0", "h4"),
    ("0.2.1", "h4"),
    ("0.2.8", "sdnq"),
])
def test_hadamard_version_rule(hadamard_layer, version, construction):
    """the same Hadamard-rotated tensors decode with the construction the claimed sdnq_version used"""
    rotated, h = hadamard_layer["rotated"], 64
    syl = _unrotate(rotated, _sylvester(h, torch.bfloat16))
    h4 = _unrotate(rotated, _h4_kron(h, torch.bfloat16))
    # the two constructions really differ here, and sdnq 0.2.8 itself uses H4 for a block of 64
    assert (syl.float() - h4.float()).abs().max() > 0.1 * rotated.float().abs().max()
    _assert_close_rotation(hadamard_layer["full"], h4, rotated, h, "sdnq 0.2.8 vs H4-kron un-rotation")
    want = {"sylvester": syl, "h4": h4, "sdnq": hadamard_layer["full"]}[construction]
    got = _load_with_version(hadamard_layer, version)
    _assert_close_rotation(got, want, rotated, h, f"comfy_sdnq with sdnq_version {version} vs {construction}")


def test_hadamard_sylvester_for_non_power_of_4(tmp_path):
    """blocks that are powers of 2 but not of 4 (here 32) are Sylvester in every version"""
    pytest.importorskip("sdnq")
    import comfy_sdnq
    from safetensors.torch import save_file
    from sdnq.quantizer import sdnq_quantize_layer_weight

    torch.manual_seed(1)
    w = (torch.randn(64, 96) * 0.05).to(torch.bfloat16)      # 96 input channels -> block 32
    deq, t = sdnq_quantize_layer_weight(w, layer_class_name="Linear", weights_dtype="int5", use_hadamard=True,
                                        hadamard_group_size=64, torch_dtype=torch.bfloat16)
    assert deq.use_hadamard and deq.hadamard_group_size == 32
    rotated = deq(t["weight"], t["scale"], skip_compile=True, non_hadamard=True)
    want = _unrotate(rotated, _sylvester(32, torch.bfloat16))
    for version in ("0.1.9", "0.2.0", "0.2.8"):
        folder = tmp_path / version
        folder.mkdir()
        save_file({"l.weight": t["weight"], "l.scale": t["scale"]}, str(folder / "model.safetensors"))
        (folder / "quantization_config.json").write_text(json.dumps(
            {"quant_method": "sdnq", "weights_dtype": "int5", "use_hadamard": True, "hadamard_group_size": 64,
             "sdnq_version": version}))
        got = comfy_sdnq.load(str(folder), torch.bfloat16, shapes={"l.weight": (64, 96)})["l.weight"].dequantize()
        _assert_close_rotation(got, want, rotated, 32, f"sdnq_version {version}, block 32")
