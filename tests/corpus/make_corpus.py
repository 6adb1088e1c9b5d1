"""Generate the bad-file corpus: damaged copies of a real tiny SDNQ model.

    python tests/corpus/make_corpus.py OUT_DIR          # writes OUT_DIR/manifest.json + the files
    python tests/corpus/make_corpus.py --list           # case ids, one a line

The base model is written by the sdnq package itself (sdnq_post_load_quant + save_sdnq_model):
a tiny FluxTransformer2DModel (1 double + 1 single block, width 128), uint4 + SVD rank 8 —
codes, scales, zero-points, SVD factors, grouped and row-wise layers. It comes in two forms:

* folder: sdnq's own output (config.json, quantization_config.json,
  diffusion_pytorch_model.safetensors);
* file: the same tensors, byte for byte, in one .safetensors whose __metadata__["sdnq_config"]
  holds the quantization config (the single-file form comfy_sdnq and ComfyUI read).

Every case is a damaged copy of one form, made here from the base's bytes (nothing in the
repository is a hand-edited binary). A case says what loading it must do:

* expect "error": raise SdnqError (SdnqFormatError unless `exc` says otherwise) whose message
  names `file` (the damaged file: the .safetensors, or the config/index JSON) and, where a key
  applies, `key` (a full key, or a layer prefix ending in ".");
* expect "error-or-ok": may load (the damage left a valid model, e.g. a bit flip in a
  value) or raise such an SdnqError naming the file; never anything else;
* `loaders`: the loaders it applies to ("load" = comfy_sdnq.load, "standalone" =
  comfy_sdnq.standalone.load_model, "comfyui" = ComfyUI's stock load_torch_file /
  UNETLoader with comfy_sdnq's hooks). Folder cases skip "comfyui" (ComfyUI loads files);
  file cases skip "standalone" (it loads folders). `ok_in`: loaders the damage does not
  concern (comfy_sdnq.load ignores the model class in config.json): there it may load.
* `bomb`: the header or config declares far more memory than the file holds;
* `pickle`: the file is a pickle whose unpickling creates `marker`: it must never exist.

Standalone on purpose: imports torch, diffusers and sdnq, not comfy_sdnq.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import struct
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable

os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")
os.environ.setdefault("SDNQ_USE_TRITON_MM", "0")

SHARD = "diffusion_pytorch_model.safetensors"
QCFG = "quantization_config.json"
MCFG = "config.json"
FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=32,
            num_attention_heads=4, joint_attention_dim=128, pooled_projection_dim=32, guidance_embeds=False,
            axes_dims_rope=(8, 12, 12))
SDNQ_OPTIONS = dict(weights_dtype="uint4", use_svd=True, svd_rank=8)
L = "transformer_blocks.0.attn.to_q"          # a row-wise uint4 layer with zero-point and SVD factors
G = "single_transformer_blocks.0.proj_out"    # a grouped one: scale (128, 5, 1)
LOADERS = ("load", "standalone", "comfyui")


# ---------------------------------------------------------------------------
# the base model, written by sdnq


def build_base(out: str) -> dict:
    """{"folder": sdnq's model folder, "file": the single-file form}"""
    import torch
    from diffusers import FluxTransformer2DModel
    from diffusers.utils import logging as dlog
    from sdnq.loader import save_sdnq_model
    from sdnq.quantizer import sdnq_post_load_quant

    dlog.set_verbosity_error()
    folder, single = os.path.join(out, "base", "model"), os.path.join(out, "base", "model.safetensors")
    if not os.path.isfile(os.path.join(folder, SHARD)):
        torch.manual_seed(0)
        m = FluxTransformer2DModel(**FLUX)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.05)
        torch.manual_seed(1234)  # svd_lowrank draws random numbers
        m = sdnq_post_load_quant(m.to(torch.bfloat16).eval(), torch_dtype=torch.bfloat16, **SDNQ_OPTIONS)
        save_sdnq_model(m, folder)
    header, data = read_st(os.path.join(folder, SHARD))
    qcfg = json.load(open(os.path.join(folder, QCFG)))
    meta = {"format": "pt", "sdnq_config": json.dumps({"quantization_config": qcfg, "torch_dtype": "bfloat16"})}
    header = {"__metadata__": meta, **{k: v for k, v in header.items() if k != "__metadata__"}}
    write_raw(single, st_bytes(header, data))
    return {"folder": folder, "file": single}


# ---------------------------------------------------------------------------
# safetensors bytes


def read_st(path: str) -> tuple[dict, bytes]:
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def st_bytes(header, data: bytes = b"", pad: bool = True) -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


def write_raw(path: str, blob: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)
    return path


ELEM = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
        "I64": 8, "U64": 8, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def tensors(header: dict, data: bytes) -> dict:
    """{key: [dtype, shape, bytes]} in file order (no __metadata__)"""
    return {k: [v["dtype"], list(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]]]
            for k, v in header.items() if k != "__metadata__"}


def pack(ts: dict, metadata: dict | None) -> tuple[dict, bytes]:
    """header and data of tensors laid out contiguously (a truthful writer's layout)"""
    header, data = ({"__metadata__": metadata} if metadata is not None else {}), bytearray()
    for k, (dt, shape, raw) in ts.items():
        header[k] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return header, bytes(data)


def first_out_of_range(header: dict, data_size: int) -> str:
    """the key the reader reports for a data section cut to data_size bytes (header order)"""
    return next(k for k, v in header.items() if k != "__metadata__" and v["data_offsets"][1] > data_size)


# ---------------------------------------------------------------------------
# cases


@dataclass
class Case:
    id: str
    category: str
    form: str                                   # "file" | "folder"
    make: Callable = field(repr=False)          # make(ctx) -> bytes written into the case's target, or None
    target: str = SHARD                         # folder cases: the file of the folder that is damaged
    key: str | None = None
    says: tuple = ()
    expect: str = "error"
    exc: str = "SdnqFormatError"
    bomb: bool = False
    pickle: bool = False
    ok_in: tuple = ()
    loaders: tuple = ()


class Ctx:
    """the base's parts a case's make() works from"""

    def __init__(self, base: dict, case: Case, marker: str):
        self.case, self.marker = case, marker
        src = base["file"] if case.form == "file" else os.path.join(base["folder"], SHARD)
        self.blob = open(src, "rb").read()
        self.header, self.data = read_st(src)
        self.meta = self.header.get("__metadata__")
        self.n = struct.unpack("<Q", self.blob[:8])[0]
        self.qcfg = json.load(open(os.path.join(base["folder"], QCFG)))
        self.mcfg = json.load(open(os.path.join(base["folder"], MCFG)))

    def ts(self):
        return tensors(self.header, self.data)

    def offs(self, key):
        return self.header[key]["data_offsets"]

    def with_entry(self, key, **repl) -> bytes:
        """the file with one header entry changed, data untouched"""
        h = json.loads(json.dumps(self.header))
        h[key].update(repl)
        return st_bytes(h, self.data)

    def with_tensors(self, edit) -> bytes:
        """the file rewritten contiguously after edit(tensors dict) (a consistent container)"""
        ts = self.ts()
        edit(ts)
        return st_bytes(*pack(ts, self.meta))

    def cut(self, size) -> bytes:
        return self.blob[:size]

    def data_cut_mid(self, key) -> tuple[bytes, str]:
        b, e = self.offs(key)
        keep = (b + e) // 2
        return self.blob[:8 + self.n + keep], first_out_of_range(self.header, keep)

    def patch(self, key, index, fmt, value) -> bytes:
        """the file with element `index` of key's data set to value (struct fmt)"""
        b = self.offs(key)[0] + index * struct.calcsize(fmt)
        blob = bytearray(self.blob)
        struct.pack_into(fmt, blob, 8 + self.n + b, value)
        return bytes(blob)

    def with_qcfg(self, **fields) -> bytes:
        """file: the metadata's quantization_config changed; folder: quantization_config.json"""
        q = {**self.qcfg, **fields}
        if self.case.form == "folder":
            return json.dumps(q).encode()
        return self.with_meta(json.dumps({"quantization_config": q, "torch_dtype": "bfloat16"}))

    def with_meta(self, text: str) -> bytes:
        h = json.loads(json.dumps(self.header))
        h["__metadata__"] = {**(self.meta or {}), "sdnq_config": text}
        return st_bytes(h, self.data)


def _bait(marker: str, protocol: int) -> bytes:
    """a pickle that, unpickled, creates the file `marker` (builtins.open(marker, "w"))"""

    class Bait:
        def __reduce__(self):
            return (open, (marker, "w"))

    return pickle.dumps({"state_dict": {"weight": Bait()}}, protocol=protocol)


def _torch_save_bait(marker: str) -> bytes:
    import io

    import torch

    class Bait:
        def __reduce__(self):
            return (open, (marker, "w"))

    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(3), "bait": Bait()}, buf)
    return buf.getvalue()


def _nested(depth: int, open_: bytes, close: bytes, inner: bytes = b"") -> bytes:
    return open_ * depth + inner + close * depth


def _flip_positions(n_header: int, count: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(8 + rng.randrange(n_header), rng.randrange(8)) for _ in range(count)]


def _bitflip(ctx: Ctx, k: int, in_data: bool) -> bytes:
    rng = random.Random(1000 + k)
    blob = bytearray(ctx.blob)
    for _ in range(3):  # three bits
        i = 8 + ctx.n + rng.randrange(len(ctx.data)) if in_data else 8 + rng.randrange(ctx.n)
        blob[i] ^= 1 << rng.randrange(8)
    return bytes(blob)


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(id_, category, make, forms=("file", "folder"), **kw):
        for form in forms:
            cases.append(Case(f"{form}:{id_}", category, form, make, **kw))

    # --- truncated
    add("truncated-in-length-prefix", "truncated", lambda c: c.cut(4), says=("only 4 bytes",))
    add("truncated-mid-header", "truncated", lambda c: c.cut(8 + c.n // 2), says=("header length", "past the end"))
    add("truncated-at-data-start", "truncated", lambda c: c.cut(8 + c.n), key="@first-out-of-range:0",
        says=("outside the 0 data bytes",))
    for k in (f"{L}.weight", f"{L}.scale", f"{L}.svd_down", f"{G}.zero_point"):
        add(f"truncated-mid-{k.rsplit('.', 1)[1]}-of-{k.split('.')[0]}", "truncated",
            lambda c, k=k: c.data_cut_mid(k)[0], key=f"@first-out-of-range-mid:{k}", says=("outside the",))
    add("truncated-last-byte", "truncated", lambda c: c.blob[:-1], key="@last-tensor", says=("outside the",))
    add("appended-byte", "truncated", lambda c: c.blob + b"\0", says=("1 byte(s) after the last tensor",))

    # --- bit flips: 3 random bits; header flips mostly break the JSON or a field, data flips mostly load
    for k in range(6):
        add(f"bitflip-header-{k}", "bit-flip", lambda c, k=k: _bitflip(c, k, False), expect="error-or-ok")
    for k in range(3):
        add(f"bitflip-data-{k}", "bit-flip", lambda c, k=k: _bitflip(c, 100 + k, True), expect="error-or-ok")

    # --- header length
    add("header-length-past-eof", "header-length", lambda c: struct.pack("<Q", len(c.blob)) + c.blob[8:],
        says=(f"header length", "past the end"))
    add("header-length-2^60", "header-length", lambda c: struct.pack("<Q", 2**60) + c.blob[8:],
        says=(f"header length {2**60}", "exceeds"), bomb=True)
    add("header-length-zero", "header-length", lambda c: struct.pack("<Q", 0) + c.blob[8:],
        says=("not valid JSON",))
    # one short: the padding space becomes the first data byte, every tensor shifts by one
    add("header-length-one-short", "header-length", lambda c: struct.pack("<Q", c.n - 1) + c.blob[8:],
        says=("after the last tensor",))
    add("header-length-one-long", "header-length", lambda c: struct.pack("<Q", c.n + 1) + c.blob[8:],
        says=("header",))

    # --- data offsets
    add("offsets-overlap", "offsets", lambda c: c.with_entry(f"{L}.scale", data_offsets=c.offs(f"{L}.zero_point")),
        key=f"{L}.", says=("overlap",))
    add("offsets-past-end", "offsets",
        lambda c: c.with_entry(f"{L}.svd_down", data_offsets=[c.offs(f"{L}.svd_down")[0] + 10**6,
                                                             c.offs(f"{L}.svd_down")[1] + 10**6]),
        key=f"{L}.svd_down", says=("outside the",))
    add("offsets-negative", "offsets", lambda c: c.with_entry(f"{L}.weight", data_offsets=[-8192, 0]),
        key=f"{L}.weight", says=("data_offsets [-8192, 0]",))
    add("offsets-2^64", "offsets", lambda c: c.with_entry(f"{L}.weight", data_offsets=[0, 2**64]),
        key=f"{L}.weight", says=("outside the",), forms=("file",))
    add("offsets-gap", "offsets", lambda c: c.with_entry(
        f"{L}.bias", data_offsets=[c.offs(f"{L}.bias")[0] + 2, c.offs(f"{L}.bias")[1] + 2]), key=f"{L}.bias",
        forms=("file",))
    add("offsets-hole", "offsets", lambda c: st_bytes({k: v for k, v in c.header.items() if k != f"{L}.svd_up"},
                                                      c.data), key=f"{L}.", says=("belong to no tensor",))

    # --- dtype / shape lies, consistent containers (the SDNQ checks must catch them)
    def retype(key, dt=None, shape=None):
        def edit(ts):
            if dt:
                ts[key][0] = dt
            if shape:
                ts[key][1] = shape
        return lambda c: c.with_tensors(edit)

    add("dtype-lie-weight-I8", "dtype-shape-lie", retype(f"{L}.weight", "I8"), key=f"{L}.weight",
        says=("must be stored as torch.uint8",))
    add("dtype-lie-scale-I32", "dtype-shape-lie", retype(f"{L}.scale", "I32"), key=f"{L}.scale",
        says=("float32/bfloat16/float16",))
    add("dtype-lie-scale-F16", "dtype-shape-lie", retype(f"{L}.scale", "F16", [256, 1]), key=f"{L}.")
    add("dtype-lie-svd-up-F32", "dtype-shape-lie", retype(f"{L}.svd_up", "F32", [128, 4]), key=f"{L}.")
    add("dtype-lie-bias-F32", "dtype-shape-lie", retype(f"{L}.bias", "F32", [64]), key=f"{L}.",
        forms=("file",))
    add("shape-lie-weight-2d", "dtype-shape-lie", retype(f"{L}.weight", shape=[64, 128]), key=f"{L}.weight",
        says=("1-D",))
    add("shape-lie-weight-needs-more", "dtype-shape-lie", lambda c: c.with_entry(f"{L}.weight", shape=[16384]),
        key=f"{L}.weight", says=("needs 16384 bytes",))
    add("shape-lie-scale-transposed", "dtype-shape-lie", retype(f"{L}.scale", shape=[1, 128]), key=f"{L}.")
    add("shape-lie-zero-point-3d", "dtype-shape-lie", retype(f"{L}.zero_point", shape=[2, 64, 1]),
        key=f"{L}.zero_point")
    add("shape-lie-svd-up-transposed", "dtype-shape-lie", retype(f"{L}.svd_up", shape=[8, 128]), key=f"{L}.")
    add("shape-lie-grouped-scale", "dtype-shape-lie", retype(f"{G}.scale", shape=[128, 1, 5]), key=f"{G}.")

    # --- side tensors that do not fit
    def drop(*keys):
        return lambda c: c.with_tensors(lambda ts: [ts.pop(k) for k in keys])

    def resize(key, shape, nbytes):
        def edit(ts):
            raw = ts[key][2]
            ts[key][1], ts[key][2] = shape, (raw * 2)[:nbytes]
        return lambda c: c.with_tensors(edit)

    add("scale-one-row-short", "side-tensors", resize(f"{L}.scale", [127, 1], 508), key=f"{L}.")
    add("zero-point-one-row-long", "side-tensors", resize(f"{L}.zero_point", [129, 1], 516), key=f"{L}.zero_point")
    add("svd-rank-mismatch", "side-tensors", resize(f"{L}.svd_down", [7, 128], 7 * 128 * 2), key=f"{L}.")
    add("grouped-scale-groups-wrong", "side-tensors", lambda c: c.with_tensors(lambda ts: [
        ts[f"{G}.scale"].__setitem__(slice(1, 3), [[128, 3, 1], ts[f"{G}.scale"][2][:128 * 3 * 4]]),
        ts[f"{G}.zero_point"].__setitem__(slice(1, 3), [[128, 3, 1], ts[f"{G}.zero_point"][2][:128 * 3 * 4]])]),
        key=f"{G}.")
    add("svd-up-missing", "side-tensors", drop(f"{L}.svd_up"), key=f"{L}.svd_up", says=("missing",))
    add("zero-point-missing", "side-tensors", drop(f"{L}.zero_point"), key=f"{L}.zero_point", says=("missing",))
    add("scale-missing", "side-tensors", drop(f"{L}.scale"), key=f"{L}.")
    add("weight-missing", "side-tensors", drop(f"{L}.weight"), key=f"{L}.")

    # --- NaN / inf
    add("nan-scale", "nan-inf", lambda c: c.patch(f"{L}.scale", 5, "<f", float("nan")), key=f"{L}.scale",
        says=("NaN/inf",))
    add("inf-scale", "nan-inf", lambda c: c.patch(f"{L}.scale", 0, "<f", float("inf")), key=f"{L}.scale",
        says=("NaN/inf",), forms=("file",))
    add("minus-inf-zero-point", "nan-inf", lambda c: c.patch(f"{L}.zero_point", 7, "<f", float("-inf")),
        key=f"{L}.zero_point", says=("NaN/inf",))
    add("nan-grouped-scale", "nan-inf", lambda c: c.patch(f"{G}.scale", 300, "<f", float("nan")),
        key=f"{G}.scale", says=("NaN/inf",), forms=("file",))
    add("nan-svd-up-bf16", "nan-inf", lambda c: c.patch(f"{L}.svd_up", 3, "<H", 0x7FC1), key=f"{L}.svd_up",
        says=("NaN/inf",))
    add("inf-svd-down-bf16", "nan-inf", lambda c: c.patch(f"{L}.svd_down", 9, "<H", 0xFF80), key=f"{L}.svd_down",
        says=("NaN/inf",), forms=("file",))

    # --- dtype names in the header
    for name, dt in (("unknown", "Q4_K"), ("lowercase", "bf16"), ("empty", ""), ("int", 16), ("null", None),
                     ("list", ["U8"]), ("fp8-fnuz", "F8_E4M3FNUZ")):
        add(f"dtype-name-{name}", "dtype-names", lambda c, dt=dt: c.with_entry(f"{L}.svd_up", dtype=dt),
            key=f"{L}.svd_up", says=("unknown dtype",), forms=("file",) if name not in ("unknown", "null") else
            ("file", "folder"))

    # --- config fields: unknown / mistyped (file: __metadata__; folder: quantization_config.json)
    for name, fields, says in (
            ("weights-dtype-unknown", {"weights_dtype": "uint44"}, "'uint44'"),
            ("weights-dtype-int", {"weights_dtype": 4}, "weights_dtype"),
            ("weights-dtype-upper", {"weights_dtype": "UINT4"}, "'UINT4'"),
            ("group-size-string", {"group_size": "0"}, "group_size"),
            ("use-svd-string", {"use_svd": "true"}, "use_svd"),
            ("svd-rank-string", {"svd_rank": "8"}, "svd_rank"),
            ("quant-method-other", {"quant_method": "gguf"}, "quant_method"),
            ("not-convert-string", {"modules_to_not_convert": "norm_out"}, "modules_to_not_convert"),
            ("dtype-dict-number", {"modules_dtype_dict": {"int8": 5}}, "modules_dtype_dict"),
            ("scale-dtype-unknown", {"scale_dtype": "fp99"}, "scale_dtype"),
            ("version-float", {"sdnq_version": 0.28}, "sdnq_version")):
        forms = ("file", "folder") if name in ("weights-dtype-unknown", "use-svd-string", "quant-method-other") \
            else ("folder",)
        for form in forms:
            cases.append(Case(f"{form}:config-{name}", "config-fields", form,
                              lambda c, fields=fields: c.with_qcfg(**fields),
                              target=QCFG if form == "folder" else SHARD, says=(says,)))
    # config.json: the model class and its arguments (the standalone loader builds the model from them)
    for name, fields, exc in (
            ("class-int", {"_class_name": 42}, "SdnqUnsupportedError"),
            ("class-unknown", {"_class_name": "os.system"}, "SdnqUnsupportedError"),
            ("class-abstract", {"_class_name": "ModelMixin"}, "SdnqFormatError"),
            ("layers-string", {"num_layers": "1"}, "SdnqFormatError"),
            ("heads-negative", {"num_attention_heads": -4}, "SdnqFormatError")):
        cases.append(Case(f"folder:model-config-{name}", "config-fields", "folder",
                          lambda c, fields=fields: json.dumps({**c.mcfg, **fields}).encode(), target=MCFG,
                          exc=exc, ok_in=("load",)))

    # --- memory bombs
    add("bomb-weight-2^40-elements", "memory-bomb", lambda c: c.with_entry(
        f"{L}.weight", shape=[2**40], data_offsets=[c.offs(f"{L}.weight")[0], c.offs(f"{L}.weight")[0] + 2**40]),
        key=f"{L}.weight", says=("outside the",), bomb=True)
    add("bomb-scale-2^20x2^20", "memory-bomb", lambda c: c.with_entry(f"{L}.scale", shape=[2**20, 2**20]),
        key=f"{L}.scale", says=(f"needs {2**42} bytes",), bomb=True, forms=("file",))
    add("bomb-strides-overflow", "memory-bomb", lambda c: c.with_entry(f"{L}.bias", shape=[0, 2**47, 2**47],
                                                                       data_offsets=[0, 0]),
        key=f"{L}.bias", says=("too large",), bomb=True, forms=("file",))
    add("bomb-million-entries", "memory-bomb", lambda c: st_bytes(b"{" + b",".join(
        b'"k%07d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(1_200_000)) + b"}"),
        says=("JSON values",), bomb=True, forms=("file",))
    add("bomb-50M-numbers", "memory-bomb", lambda c: st_bytes(b'{"x":{"dtype":"U8","shape":[' + b"0," * 25_000_000
                                                               + b'0],"data_offsets":[0,0]}}'),
        says=("JSON values",), bomb=True, forms=("file",))
    cases.append(Case("folder:bomb-config-hadamard-2^40", "memory-bomb", "folder",
                      lambda c: c.with_qcfg(use_hadamard=True, hadamard_group_size=2**40), target=QCFG,
                      expect="error-or-ok", bomb=True))
    cases.append(Case("folder:bomb-config-svd-rank-2^40", "memory-bomb", "folder",
                      lambda c: c.with_qcfg(svd_rank=2**40, group_size=2**40), target=QCFG, expect="error-or-ok",
                      bomb=True))
    cases.append(Case("folder:bomb-model-config-million-layers", "memory-bomb", "folder",
                      lambda c: json.dumps({**c.mcfg, "num_layers": 10**6}).encode(), target=MCFG, bomb=True,
                      ok_in=("load",), says=("parameters",)))

    # --- non-UTF-8 and deeply nested JSON
    add("header-not-utf8", "json", lambda c: st_bytes(c.blob[8:8 + c.n].replace(
        f'"{L}.bias"'.encode(), f'"{L}.bias\xff"'.encode("latin-1"), 1), c.data), says=("not UTF-8",))
    # a lone surrogate (written as the JSON escape \\udc80): valid header JSON, a config that is not UTF-8
    add("metadata-not-utf8", "json", lambda c: c.with_meta(json.dumps(
        {"quantization_config": {**c.qcfg, "weights\udc80dtype": "uint4"}}, ensure_ascii=False)),
        says=("not UTF-8",), forms=("file",))
    add("header-nested-200k", "json", lambda c: st_bytes(_nested(200_000, b"[", b"]")), says=("nested too deeply",),
        bomb=True)
    add("header-entry-nested", "json", lambda c: c.with_entry(f"{L}.bias", shape=json.loads(
        "[" * 50 + "1" + "]" * 50)), key=f"{L}.bias", says=("shape",), forms=("file",))
    add("metadata-nested-200k", "json", lambda c: c.with_meta("[" * 200_000 + "]" * 200_000),
        says=("nested too deeply",), forms=("file",))
    add("metadata-config-nested-objects", "json", lambda c: c.with_meta(
        '{"quantization_config":' * 100_000 + "{}" + "}" * 100_000), says=("nested too deeply",), forms=("file",))
    for target, tname in ((QCFG, "qconfig"), (MCFG, "config")):
        cases.append(Case(f"folder:{tname}-not-utf8", "json", "folder",
                          lambda c, t=target: json.dumps(c.qcfg if t == QCFG else c.mcfg).encode().replace(
                              b'"sdnq"', b'"sd\xffnq"').replace(b'"Flux', b'"\xfe\xffFlux'), target=target,
                          says=("not UTF-8",)))
        cases.append(Case(f"folder:{tname}-nested-200k", "json", "folder",
                          lambda c: _nested(200_000, b'{"a":', b"}", b"1"), target=target,
                          says=("nested too deeply",)))
    cases.append(Case("folder:index-nested-200k", "json", "folder", lambda c: _nested(200_000, b"[", b"]"),
                      target=SHARD + ".index.json", says=("nested too deeply",)))
    cases.append(Case("folder:index-not-utf8", "json", "folder",
                      lambda c: b'{"weight_map": {"' + f"{L}.weight".encode() + b'": "\xff.safetensors"}}',
                      target=SHARD + ".index.json", says=("not UTF-8",)))

    # --- pickles under safetensors / JSON names: never unpickled
    for proto in (0, 2, 5):
        add(f"pickle-protocol-{proto}", "pickle", lambda c, p=proto: _bait(c.marker, p), pickle=True,
            says=("header length",), forms=("file", "folder") if proto == 2 else ("file",))
    add("pickle-torch-save-zip", "pickle", lambda c: _torch_save_bait(c.marker), pickle=True,
        says=("header",))
    cases.append(Case("folder:pickle-as-quantization-config", "pickle", "folder", lambda c: _bait(c.marker, 2),
                      target=QCFG, pickle=True, says=("UTF-8",)))
    cases.append(Case("folder:pickle-as-config", "pickle", "folder", lambda c: _bait(c.marker, 4),
                      target=MCFG, pickle=True))
    return cases


CASES = _cases()


def applies(case: Case) -> tuple:
    """the loaders a case runs through"""
    if case.form == "folder":
        return ("load", "standalone")
    return ("load", "comfyui")


def generate(out: str, only: list[str] | None = None) -> list[dict]:
    """write the corpus into out; returns (and writes out/manifest.json) one dict per case"""
    out = os.path.abspath(out)
    base = build_base(out)
    os.makedirs(os.path.join(out, "markers"), exist_ok=True)
    manifest = []
    for case in CASES:
        if only and case.id not in only:
            continue
        slug = case.id.replace(":", "-")
        marker = os.path.join(out, "markers", slug)
        ctx = Ctx(base, case, marker)
        if case.form == "file":
            path = target = os.path.join(out, "cases", slug + ".safetensors")
        else:
            path = os.path.join(out, "cases", slug)
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(base["folder"], path)
            target = os.path.join(path, case.target)
        blob = case.make(ctx)
        write_raw(target, blob)
        key = case.key
        if key and key.startswith("@"):  # resolved from the base: what a reader checking in order reports
            kind, _, arg = key[1:].partition(":")
            if kind == "first-out-of-range":
                key = first_out_of_range(ctx.header, int(arg))
            elif kind == "first-out-of-range-mid":
                key = ctx.data_cut_mid(arg)[1]
            elif kind == "last-tensor":
                key = first_out_of_range(ctx.header, len(ctx.data) - 1)
        d = {k: v for k, v in asdict(case).items() if k != "make"}
        d.update(path=path, file=target, key=key, marker=marker, says=list(case.says),
                 loaders=list(case.loaders or applies(case)), ok_in=list(case.ok_in))
        manifest.append(d)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"base": base, "cases": manifest}, f, indent=1)
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--case", action="append", help="only these case ids")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(c.id for c in CASES))
        return 0
    if not args.out:
        ap.error("OUT_DIR is required")
    m = generate(args.out, args.case)
    print(f"{len(m)} cases in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
