"""Seed corpora for the fuzz harnesses (tests/fuzz/), generated from real SDNQ files.

    PYTHONPATH=. python tests/fuzz/make_corpus.py [OUT_DIR]     # default tests/fuzz/corpus/seed

The sdnq package quantizes the test suite's tiny model (tests/models.py) with the configurations
tests/test_files.py round-trips (plus codebook, tensor-wise, Hadamard, custom-float and
zero-point-carrying variants) and saves it with its own save_sdnq_model. comfy_sdnq then loads
each model and dequantizes every layer, and quantizes each float weight, while a recorder
wrapped around the C module (comfy_sdnq.kernels._C) captures every call's arguments and the
bytes behind its pointers. Each captured call is written in the input format of the harness
that fuzzes its entry point (fuzz_dequant, fuzz_pack, fuzz_quant, fuzz_linalg, fuzz_values,
and fuzz_cuda for the CUDA launchers: see the .c / .cc files), trimmed to a few rows so the fuzzer starts from small, valid inputs. The
Python-level harness (fuzz_files.py) gets the files themselves: single-file models cut down to
one layer with their config in __metadata__, quantization_config.json / config.json texts.

Nothing here is hand-edited: delete OUT_DIR and run it again to regenerate.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")
os.environ.setdefault("SDNQ_USE_TRITON_MM", "0")

import torch  # noqa: E402

import comfy_sdnq  # noqa: E402
from comfy_sdnq import dtypes, kernels, layout  # noqa: E402
from models import FILE_CONFIGS  # noqa: E402

# the configurations tests/test_files.py round-trips, and a few more features
CONFIGS = FILE_CONFIGS + [
    {"weights_dtype": "int8", "group_size": -2},
    {"weights_dtype": "uint2", "dequantize_fp32": True},
    {"weights_dtype": "uint1"},
    {"weights_dtype": "int3"},
    {"weights_dtype": "uint12"},
    {"weights_dtype": "float6_e3m3fnu"},
    {"weights_dtype": "uint4", "use_hadamard": True, "hadamard_group_size": 16},
]
DT_NAMES = None  # C dtype index -> name, filled from the module
MAX_ELEMS = 2048  # trimmed seeds stay small
MAX_FILE = 160 * 1024  # fuzz_files seeds (.ci/fuzz.sh runs it with -max_len=163840)


def uvar(u: int) -> bytes:
    out = bytearray()
    while True:
        b = u & 0x7F
        u >>= 7
        if u:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def svar(v: int) -> bytes:
    return uvar(v * 2 if v >= 0 else -v * 2 - 1)


def dsize(dt) -> int:
    """element size of a C dtype index or name"""
    name = dt if isinstance(dt, str) else DT_NAMES[dt]
    return {"I8": 1, "U8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "F32": 4, "BF16": 2,
            "F16": 2}.get(name, 1)


def arith_bits(dt: int) -> int:
    """the harnesses' two-bit arithmetic dtype code (3: any dtype, from the next byte)"""
    return {"F32": 0, "BF16": 1, "F16": 2}.get(DT_NAMES[dt], 3)


def mem(ptr: int, nbytes: int) -> bytes:
    return ctypes.string_at(ptr, nbytes) if ptr and nbytes > 0 else b""


class Recorder:
    """stands in for comfy_sdnq.kernels._C: records each call, then makes it"""

    def __init__(self, c):
        self._c = c
        self.seeds: dict[str, dict[str, bytes]] = {}

    def __getattr__(self, name):
        return getattr(self._c, name)

    def add(self, harness: str, data: bytes):
        self.seeds.setdefault(harness, {})[hashlib.sha1(data).hexdigest()] = data

    # --- dequantize ---------------------------------------------------------------------------------------------
    def dequantize(self, ty, o, r, i, codes, cbytes, scale, sdt, snumel, ss0, ss1, ss2, zp, znumel, zs0, zs1, cb, out,
                   odt, onumel, os0, os1, os2, fast, threads):
        t = dtypes.get(int(ty))
        keep = max(1, min(o, MAX_ELEMS // max(1, r * i)))  # trim outer
        ok = keep * r * i
        cb_keep = ok * dsize(t.storage)
        if t.is_packed:
            blocks = -(-ok // t.block_elems)
            cb_keep = blocks * t.block_words * dsize(t.storage)
        levels = t.levels if cb else 1

        def span(n0, s0, n1, s1, n2=1, s2=0):
            return (n0 - 1) * s0 + (n1 - 1) * s1 + (n2 - 1) * s2 + 1

        s_keep = min(snumel, span(keep, ss0, i, ss1, levels, ss2 if cb else 0))
        z_keep = min(znumel, span(keep, zs0, i, zs1)) if zp else 0
        o_keep = min(onumel, span(keep, os0, r, os1, i, os2))
        flags = (1 if cb else 0) | (2 if zp else 0) | (arith_bits(sdt) << 2) | (arith_bits(odt) << 4)
        head = bytes([t.id, flags, 1 + 1]) + b"".join(svar(v) for v in (keep, r, i, ss0, ss1, ss2, zs0, zs1, os0, os1,
                                                                          os2, s_keep, z_keep, o_keep, cb_keep))
        body = mem(codes, min(cb_keep, cbytes)) + mem(scale, s_keep * dsize(sdt)) + mem(zp, z_keep * dsize(sdt))
        self.add("fuzz_dequant", head + body)
        # fuzz_cuda's dequantize (op 0): the same description without the thread count
        self.add("fuzz_cuda", b"\x00" + head[:2] + head[3:] + body)
        # the same call in the harness's contiguous-layout form, when it is that layout
        if (os0, os1, os2) == (r * i, i, 1) and not cb and (ss0, ss1) == (i, 1):
            self.add("fuzz_dequant", bytes([t.id, flags | 0x40, 2]) + svar(keep) + svar(r) + svar(i) + b"\x00" +
                     svar(0) + body)
        return self._c.dequantize(ty, o, r, i, codes, cbytes, scale, sdt, snumel, ss0, ss1, ss2, zp, znumel, zs0, zs1,
                                  cb, out, odt, onumel, os0, os1, os2, fast, threads)

    # --- pack / unpack ------------------------------------------------------------------------------------------
    def _pack_seed(self, ty, words: bytes, codes: bytes, n: int):
        t = dtypes.get(int(ty))
        keep = min(n, (MAX_ELEMS // t.block_elems) * t.block_elems)
        wb = keep // t.block_elems * t.block_words * dsize(t.storage)
        self.add("fuzz_pack", bytes([t.id, 0, 1, 2]) + svar(keep) + svar(0) + words[:wb] + codes[:4 * keep])

    def unpack(self, ty, src, nbytes, n, codes, fast, threads):
        res = self._c.unpack(ty, src, nbytes, n, codes, fast, threads)
        self._pack_seed(ty, mem(src, nbytes), mem(codes, 4 * n), n)
        return res

    def pack(self, ty, codes, n, dst, nbytes, fast, threads):
        res = self._c.pack(ty, codes, n, dst, nbytes, fast, threads)
        self._pack_seed(ty, mem(dst, nbytes), mem(codes, 4 * n), n)
        return res

    # --- values -------------------------------------------------------------------------------------------------
    def decode(self, ty, codes, n, out):
        keep = min(n, MAX_ELEMS)
        self.add("fuzz_values", bytes([0, int(ty)]) + svar(keep) + mem(codes, 4 * keep))
        return self._c.decode(ty, codes, n, out)

    def encode(self, ty, x, n, out):
        keep = min(n, MAX_ELEMS)
        self.add("fuzz_values", bytes([1, int(ty)]) + svar(keep) + mem(x, 4 * keep))
        return self._c.encode(ty, x, n, out)

    # --- linalg -------------------------------------------------------------------------------------------------
    def svd_add(self, w, wdt, rows, cols, wnumel, rank, up, udt, unumel, us0, us1, down, ddt, dnumel, ds0, ds1, fast,
                threads):
        keep = max(1, min(rows, MAX_ELEMS // max(1, cols)))
        u_keep = min(unumel, (keep - 1) * us0 + (rank - 1) * us1 + 1)
        dts = arith_bits(wdt) | (arith_bits(udt) << 3) | ((arith_bits(ddt) & 3) << 6)
        head = bytes([0, 2, dts]) + b"".join(svar(v) for v in (keep, cols, rank, us0, us1, ds0, ds1, keep * cols,
                                                               u_keep, dnumel))
        data = mem(w, keep * cols * dsize(wdt)) + mem(up, u_keep * dsize(udt)) + mem(down, dnumel * dsize(ddt))
        self.add("fuzz_linalg", head + data)
        cdts = arith_bits(wdt) | (arith_bits(udt) << 2) | (arith_bits(ddt) << 4)
        self.add("fuzz_cuda", bytes([1, cdts]) + head[3:] + data)
        return self._c.svd_add(w, wdt, rows, cols, wnumel, rank, up, udt, unumel, us0, us1, down, ddt, dnumel, ds0, ds1,
                               fast, threads)

    def hadamard(self, w, dt, rows, cols, numel, h, kind, fast, threads):
        keep = max(1, min(rows, MAX_ELEMS // max(1, cols)))
        lg = h.bit_length() - 1
        self.add("fuzz_linalg", bytes([1, 2, arith_bits(dt) | (kind << 3), lg]) + svar(keep) + svar(cols) +
                 svar(keep * cols) + mem(w, keep * cols * dsize(dt)))
        self.add("fuzz_linalg", bytes([3, 2, arith_bits(dt) | (kind << 3), lg]) + svar(keep) + svar(cols // h) +
                 svar(0) + mem(w, keep * cols * dsize(dt)))
        self.add("fuzz_values", bytes([4, lg]) + svar(kind) + bytes([arith_bits(dt)]) + svar(1) + svar(h - 1))
        self.add("fuzz_cuda", bytes([2 | 0x10, arith_bits(dt) | (kind << 3), lg]) + svar(keep) + svar(cols // h) +
                 svar(0) + mem(w, keep * cols * dsize(dt)))
        return self._c.hadamard(w, dt, rows, cols, numel, h, kind, fast, threads)

    # --- quantize -----------------------------------------------------------------------------------------------
    def quantize(self, ty, o, r, i, tensorwise, w, wnumel, sdt, scale, zp, snumel, codes, cnumel, fast, threads):
        keep = max(1, min(o, MAX_ELEMS // max(1, r * i)))
        flags = (1 if tensorwise else 0) | (arith_bits(sdt) << 1) | 0x10
        self.add("fuzz_quant", bytes([int(ty), flags, 2]) + svar(keep) + svar(r) + svar(i) + b"\x00" + svar(0) +
                 mem(w, keep * r * i * 4))
        return self._c.quantize(ty, o, r, i, tensorwise, w, wnumel, sdt, scale, zp, snumel, codes, cnumel, fast,
                                threads)


def one_layer_file(model_dir: str, out_path: str, linear: bool = False) -> bool:
    """the smallest quantized (Linear, when `linear`) layer of a saved model, with its config in __metadata__"""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with open(os.path.join(model_dir, "quantization_config.json")) as f:
        qcfg = json.load(f)
    tensors = {}
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, name), "pt") as f:
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
    prefixes = sorted((p[: -len(".scale")] for p in tensors if p.endswith(".scale") and
                       p[: -len(".scale")] + ".weight" in tensors),
                      key=lambda p: tensors[p + ".weight"].numel())
    if linear:
        prefixes = [p for p in prefixes if p.startswith(("proj", "blocks", "mlp"))]
    if not prefixes:
        return False
    p = prefixes[0]
    keep = {k: v.contiguous() for k, v in tensors.items() if k.startswith(p + ".")}
    meta = {"sdnq_config": json.dumps({"quantization_config": qcfg, "torch_dtype": "bfloat16"})}
    save_file(keep, out_path, metadata=meta)
    return True


def main(argv=None):
    global DT_NAMES
    out_dir = (argv or sys.argv[1:] or [os.path.join(HERE, "corpus", "seed")])[0]
    if kernels._C is None:
        raise SystemExit("make_corpus: comfy_sdnq's C extension is not built (bash .ci/setup.sh)")
    DT_NAMES = list(kernels._C.dtype_names())
    from sdnq.loader import save_sdnq_model
    from sdnq.quantizer import sdnq_post_load_quant
    from models import tiny_net

    rec = Recorder(kernels._C)
    files_seeds: dict[str, bytes] = {}
    shapes = {k: tuple(v.shape) for k, v in tiny_net(0).state_dict().items()}  # tensor-wise layers need them
    tmp = tempfile.mkdtemp(prefix="sdnq-fuzz-corpus-")
    kernels._C = rec
    try:
        for k, cfg in enumerate(CONFIGS):
            torch.manual_seed(100)
            try:
                model = sdnq_post_load_quant(tiny_net(0), quant_conv=True, quant_embedding=True,
                                             torch_dtype=torch.bfloat16, **cfg)
            except Exception as exc:  # this sdnq cannot make it: fewer seeds, not an error
                print(f"make_corpus: sdnq cannot quantize {cfg}: {type(exc).__name__}: {exc}")
                continue
            d = os.path.join(tmp, f"m{k}")
            save_sdnq_model(model, d)
            # the C calls comfy_sdnq makes for this model: load, dequantize every layer
            sd = comfy_sdnq.load(d, shapes=shapes)
            for v in sd.values():
                if layout.is_sdnq(v):
                    v.dequantize()
            with open(os.path.join(d, "quantization_config.json"), "rb") as f:
                files_seeds[f"qcfg{k}"] = b"\x01" + f.read()
            if os.path.isfile(os.path.join(d, "config.json")):
                with open(os.path.join(d, "config.json"), "rb") as f:
                    files_seeds[f"mcfg{k}"] = b"\x02" + f.read()
            for tag, linear in (("file", False), ("linear", True)):
                single = os.path.join(tmp, f"m{k}-{tag}.safetensors")
                if one_layer_file(d, single, linear) and os.path.getsize(single) <= MAX_FILE:
                    with open(single, "rb") as f:
                        files_seeds[f"{tag}{k}"] = b"\x00" + f.read()
                    sd = comfy_sdnq.load(single, shapes=shapes)
                    for v in sd.values():
                        if layout.is_sdnq(v):
                            v.dequantize()
            # names as configs spell them
            rec.add("fuzz_values", b"\x03" + cfg["weights_dtype"].encode() + b"\x00" + svar(k))
        # quantize: the model's float weights through comfy_sdnq's kernels, a few types and layouts
        net = tiny_net(0)
        w = net.proj_in.weight.detach().float()[:16].contiguous()
        for name in ("int8", "uint4", "int5", "uint9", "float8_e4m3fn", "float6_e3m2fn", "float4_e2m2fnu", "uint1"):
            t = dtypes.get(name)
            for view, tw in (((w.shape[0], w.shape[1], 1), False), ((w.shape[0], w.shape[1] // 32, 32), False),
                             ((1, w.numel(), 1), True)):
                for sdt in (torch.float32, torch.bfloat16):
                    codes, _, _ = kernels.quantize(t, w, view, tw, sdt, impl="fast")
                    if t.is_packed:
                        words = kernels.pack(t, codes.reshape(-1), impl="fast")
                        kernels.unpack(t, words, codes.numel(), impl="fast")
                        kernels.decode(t, codes.reshape(-1)[:64].contiguous())
                    if t.family in ("FLOATX", "UFLOATX"):
                        kernels.encode(t, w.reshape(-1)[:64].contiguous())
    finally:
        kernels._C = rec._c
        shutil.rmtree(tmp, ignore_errors=True)

    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    counts = {}
    for harness, seeds in sorted(rec.seeds.items()):
        os.makedirs(os.path.join(out_dir, harness))
        for h, data in seeds.items():
            with open(os.path.join(out_dir, harness, h), "wb") as f:
                f.write(data)
        counts[harness] = len(seeds)
    os.makedirs(os.path.join(out_dir, "fuzz_files"))
    for name, data in files_seeds.items():
        with open(os.path.join(out_dir, "fuzz_files", name), "wb") as f:
            f.write(data)
    counts["fuzz_files"] = len(files_seeds)
    print("make_corpus: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" seeds in {out_dir}")


if __name__ == "__main__":
    main()
