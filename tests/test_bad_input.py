"""Bad input: damaged safetensors files, inconsistent SDNQ tensors, hostile configs,
broken sharded folders and failing saves.

The rule every test checks: bad input raises an SdnqError (subclass) whose message names
the file and the key (where there is one) and what was expected. Never a crash, never
another exception type, never a silently wrong result, never a partially written file,
never an allocation the file's bytes do not back.

Files are written byte by byte here (`st_bytes`), not through comfy_sdnq, so every field
can lie. Whatever could crash the interpreter (fuzzed files, memory bombs) runs in a
subprocess, so a crash fails one test instead of killing pytest.
"""
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import time

import pytest
import torch

import comfy_sdnq
from comfy_sdnq import files, layout, safetensors_io
from comfy_sdnq.errors import SdnqError, SdnqFormatError, SdnqUnsupportedError

quantize, sdnq_tensors = comfy_sdnq.quantize, comfy_sdnq.sdnq_tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = "sdnq_config"

# ---------------------------------------------------------------------------
# writing files that lie


def st_bytes(header, data: bytes = b"") -> bytes:
    """a safetensors file: header as a dict (JSON-encoded here) or as raw bytes"""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def tensors_header(tensors: dict, metadata: dict | None = None) -> tuple[dict, bytes]:
    """(header dict, data) for tensors, as a writer that tells the truth would produce"""
    header, data = {}, b""
    for k, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[k] = {"dtype": safetensors_io.ST_NAMES[t.dtype], "shape": list(t.shape),
                     "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    return header, data


def sdnq_meta(qcfg: dict) -> dict:
    return {CFG: json.dumps({"quantization_config": {"quant_method": "sdnq", **qcfg}})}


def write_sdnq(path, tensors: dict, qcfg: dict | None = None) -> str:
    """a single-file SDNQ model with the given tensors and quantization_config"""
    header, data = tensors_header(tensors, sdnq_meta(qcfg or {"weights_dtype": "uint4"}))
    with open(path, "wb") as f:
        f.write(st_bytes(header, data))
    return str(path)


def write_raw(path, blob: bytes) -> str:
    with open(path, "wb") as f:
        f.write(blob)
    return str(path)


def layer(prefix: str, weights_dtype: str, shape=(64, 128), seed=0, **options) -> dict[str, torch.Tensor]:
    """one quantized layer's tensors under sdnq's key names '<prefix>.weight', '<prefix>.scale', ..."""
    torch.manual_seed(seed)
    qt = quantize(torch.randn(*shape, dtype=torch.bfloat16), weights_dtype, **options)
    return {f"{prefix}.{k}": v.clone() for k, v in sdnq_tensors(qt).items()}


def raises(exc_type, fn, *fragments):
    """fn() raises exc_type whose message contains every fragment; returns the message"""
    with pytest.raises(exc_type) as info:
        fn()
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in the message: {msg}"
    return msg


# one small file of many layer kinds: what the fuzz and the state tests start from

MODEL_CONFIG = {"weights_dtype": "uint4", "use_svd": True, "svd_rank": 8, "quant_conv": True,
                "modules_quant_config": {"c": {"scale_dtype": "int8", "use_svd": False},
                                         "d": {"use_codebook": True, "use_svd": False},
                                         "e": {"weights_dtype": "float8_e4m3fn", "use_svd": False},
                                         "f": {"weights_dtype": "int5", "use_hadamard": True,
                                               "hadamard_group_size": 32, "use_svd": False}}}


def model_state_dict():
    torch.manual_seed(0)
    r = lambda *s: torch.randn(*s, dtype=torch.bfloat16)  # noqa: E731
    return {"a.weight": quantize(r(64, 128), "uint4", use_svd=True, svd_rank=8), "a.bias": r(64),
            "b.weight": quantize(r(32, 64), "int8"),
            "c.weight": quantize(r(32, 64), "int6", scale_dtype="int8"),
            "d.weight": quantize(r(32, 64), "uint3", use_codebook=True),
            "e.weight": quantize(r(16, 8, 3, 3), "float8_e4m3fn", layer="Conv2d"),
            "f.weight": quantize(r(32, 64), "int5", use_hadamard=True, hadamard_group_size=32),
            "norm.weight": r(32)}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """(path, state dict) of a small single-file SDNQ model written by comfy_sdnq.save"""
    path = str(tmp_path_factory.mktemp("model") / "model.safetensors")
    sd = model_state_dict()
    comfy_sdnq.save(sd, path, MODEL_CONFIG)
    return path, sd


def dense(sd):
    return {k: (v.dequantize() if layout.is_sdnq(v) else v.clone()) for k, v in sd.items()}


def test_model_file_loads(model_file):
    """the fixture itself is good: what the damage tests start from loads back exactly"""
    path, sd = model_file
    back = dense(comfy_sdnq.load(path))
    assert set(back) == set(sd)
    for k, v in dense(sd).items():
        assert torch.equal(back[k], v), k


# ---------------------------------------------------------------------------
# running loads where a crash cannot take pytest down

WORKER = r"""
import os, sys, json, resource
sys.path.insert(0, {root!r})
import torch, comfy_sdnq
from comfy_sdnq import layout
from comfy_sdnq.errors import SdnqError
limit = {mem_limit!r}
if limit:  # address space now + limit: an allocation the file does not back fails
    vm = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')
    resource.setrlimit(resource.RLIMIT_AS, (vm + limit, vm + limit))
for i, path in enumerate(sys.stdin.read().split('\n')[{start}:], {start}):
    if not path:
        continue
    try:
        sd = comfy_sdnq.load(path)
        for k, v in sd.items():
            if layout.is_sdnq(v):
                v.dequantize()
        out = ("ok", "")
    except SdnqError as exc:
        out = ("SdnqError", str(exc))
    except BaseException as exc:
        out = ("OTHER", f"{{type(exc).__name__}}: {{exc}}")
    print(json.dumps([i, *out]), flush=True)
"""


def load_isolated(paths: list[str], mem_limit: int = 0, timeout: float = 120) -> list[tuple[str, str]]:
    """(outcome, message) of comfy_sdnq.load + dequantize() of every path, run in child
    processes: outcome 'ok', 'SdnqError', 'OTHER' (another exception) or 'CRASH' (the
    process died: signal or abort); after a crash the batch goes on in a new process."""
    results: dict[int, tuple[str, str]] = {}
    start = 0
    while start < len(paths):
        code = WORKER.format(root=ROOT, start=start, mem_limit=mem_limit)
        r = subprocess.run([sys.executable, "-c", code], input="\n".join(paths), capture_output=True, text=True,
                           timeout=timeout)
        for line in r.stdout.splitlines():
            i, outcome, msg = json.loads(line)
            results[i] = (outcome, msg)
        done = max(results, default=start - 1)
        if r.returncode == 0 and done == len(paths) - 1:
            break
        crashed = done + 1  # the case the process died in
        results[crashed] = ("CRASH", f"exit {r.returncode}: {r.stderr[-2000:]}")
        start = crashed + 1
    return [results[i] for i in range(len(paths))]


# ---------------------------------------------------------------------------
# safetensors damage: the container itself

GOOD = {"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
DATA = bytes(16)


def entry(**kw):
    return {"x": {**GOOD["x"], **kw}}


# (id, file bytes, what the message must say besides the file name)
CONTAINER_CASES = [
    ("empty", b"", ["only 0 bytes"]),
    ("shorter-than-8", b"\x01\x02\x03", ["only 3 bytes"]),
    ("header-past-eof", struct.pack("<Q", 1000) + b"{}", ["header length 1000", "past the end"]),
    ("header-2^63", struct.pack("<Q", 2**63) + b"{}", [f"header length {2**63}", "exceeds"]),
    ("header-2^64-1", b"\xff" * 8 + b"{}", ["exceeds"]),
    ("header-empty", st_bytes(b""), ["not valid JSON"]),
    ("header-not-json", st_bytes(b"{this is not json"), ["header is not valid JSON"]),
    ("header-json-list", st_bytes(b"[1, 2, 3]"), ["header must be a JSON object"]),
    ("header-json-string", st_bytes(b'"x"'), ["header must be a JSON object"]),
    ("header-not-utf8", st_bytes(b'{"\xff\xfe": 1}'), ["header is not UTF-8"]),
    ("header-nested-100k", st_bytes(b"[" * 100_000 + b"]" * 100_000), ["nested too deeply"]),
    ("header-nested-objects-100k", st_bytes(b'{"a":' * 100_000 + b"1" + b"}" * 100_000), ["nested too deeply"]),
    ("entry-not-object", st_bytes({"x": [1, 2]}), ["key 'x'", "entry must be an object"]),
    ("metadata-not-strings", st_bytes({"__metadata__": {"a": 1}, **GOOD}, DATA), ["__metadata__ must map strings"]),
    ("metadata-list", st_bytes({"__metadata__": ["a"], **GOOD}, DATA), ["__metadata__ must map strings"]),
    ("dtype-unknown", st_bytes(entry(dtype="Q4"), DATA), ["key 'x'", "unknown dtype 'Q4'", "expected one of"]),
    ("dtype-lowercase", st_bytes(entry(dtype="f32"), DATA), ["key 'x'", "unknown dtype 'f32'"]),
    ("dtype-int", st_bytes(entry(dtype=7), DATA), ["key 'x'", "unknown dtype 7"]),
    ("dtype-list", st_bytes(entry(dtype=["F32"]), DATA), ["key 'x'", "unknown dtype ['F32']"]),
    ("dtype-missing", st_bytes({"x": {"shape": [4], "data_offsets": [0, 16]}}, DATA), ["key 'x'", "unknown dtype"]),
    ("shape-negative", st_bytes(entry(shape=[-1, 4]), DATA), ["key 'x'", "shape [-1, 4]", "non-negative integers"]),
    ("shape-float", st_bytes(entry(shape=[2.0, 2]), DATA), ["key 'x'", "shape [2.0, 2]"]),
    ("shape-bool", st_bytes(entry(shape=[True, 4]), DATA), ["key 'x'", "shape [True, 4]"]),
    ("shape-string", st_bytes(entry(shape="4"), DATA), ["key 'x'", "shape '4'"]),
    ("shape-nested", st_bytes(entry(shape=[[2], 2]), DATA), ["key 'x'", "shape [[2], 2]"]),
    ("shape-missing", st_bytes({"x": {"dtype": "F32", "data_offsets": [0, 16]}}, DATA), ["key 'x'", "shape None"]),
    ("shape-17-dims", st_bytes(entry(shape=[1] * 17), DATA), ["key 'x'", "shape [1, 1"]),
    ("offsets-one-number", st_bytes(entry(data_offsets=[16]), DATA), ["key 'x'", "data_offsets [16]"]),
    ("offsets-strings", st_bytes(entry(data_offsets=["0", "16"]), DATA), ["key 'x'", "data_offsets ['0', '16']"]),
    ("offsets-float", st_bytes(entry(data_offsets=[0, 16.0]), DATA), ["key 'x'", "data_offsets [0, 16.0]"]),
    ("offsets-past-end", st_bytes(entry(data_offsets=[0, 10**20]), DATA), ["key 'x'", "outside the 16 data bytes"]),
    ("offsets-negative", st_bytes(entry(data_offsets=[-16, 0]), DATA), ["key 'x'", "data_offsets [-16, 0]"]),
    ("offsets-reversed", st_bytes(entry(data_offsets=[16, 0]), DATA), ["key 'x'", "data_offsets [16, 0]"]),
    ("shape-lies-short", st_bytes(entry(shape=[2, 3]), DATA), ["key 'x'", "[2, 3] of F32 needs 24 bytes",
                                                                "span 16"]),
    ("dtype-lies-wide", st_bytes(entry(dtype="F64"), DATA), ["key 'x'", "F64 needs 32 bytes", "span 16"]),
    ("shape-lies-empty", st_bytes(entry(shape=[0]), DATA), ["key 'x'", "needs 0 bytes", "span 16"]),
    ("overlap", st_bytes({"x": GOOD["x"], "y": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, DATA),
     ["'x' and 'y' overlap"]),
    ("overlap-same-span", st_bytes({"x": GOOD["x"], "y": GOOD["x"]}, DATA), ["'x' and 'y' overlap"]),
    # the tensors must tile the data section (as the safetensors library requires): a header length a
    # few bytes off shifts every tensor and would otherwise load as garbage
    ("trailing-bytes", st_bytes(GOOD, DATA + b"\0"), ["1 byte(s) after the last tensor"]),
    ("gap-before-first", st_bytes(entry(data_offsets=[4, 20]), bytes(20)),
     ["data bytes [0, 4) before key 'x' belong to no tensor"]),
    ("gap-between", st_bytes({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                              "y": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, bytes(12)),
     ["data bytes [4, 8) between keys 'x' and 'y' belong to no tensor"]),
    # millions of JSON values: refused before parsing (it would take gigabytes)
    ("header-2M-values", st_bytes(b"[" + b"0," * 2_000_001 + b"0]"), ["2000002 JSON values", "more than"]),
    ("duplicate-key", st_bytes(b'{"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
                               b'"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', DATA),
     ["key 'x'", "more than once"]),
]


@pytest.mark.parametrize("blob,says", [c[1:] for c in CONTAINER_CASES], ids=[c[0] for c in CONTAINER_CASES])
def test_damaged_container(tmp_path, blob, says):
    path = write_raw(tmp_path / "damaged.safetensors", blob)
    raises(SdnqFormatError, lambda: comfy_sdnq.load(path), path, *says)


def test_truncated_data_section(tmp_path, model_file):
    """the file cut in the middle of a tensor: that tensor is named, nothing is read past the end"""
    good, _ = model_file
    st = safetensors_io.SafetensorsFile(good)
    begin, end = st.entries["a.svd_up"][2:]
    blob = open(good, "rb").read()[: st.data_start + (begin + end) // 2]
    path = write_raw(tmp_path / "cut.safetensors", blob)
    raises(SdnqFormatError, lambda: comfy_sdnq.load(path), path, "key 'a.svd_up'",
           f"data_offsets [{begin}, {end}] outside the {(begin + end) // 2} data bytes")


def test_file_shrunk_to_its_header(tmp_path, model_file):
    good, _ = model_file
    st = safetensors_io.SafetensorsFile(good)
    path = write_raw(tmp_path / "cut.safetensors", open(good, "rb").read()[: st.data_start])
    raises(SdnqFormatError, lambda: comfy_sdnq.load(path), path, "outside the 0 data bytes")


def test_not_a_file(tmp_path):
    raises(SdnqFormatError, lambda: comfy_sdnq.load(tmp_path / "missing.safetensors"), "missing.safetensors",
           "no such file")
    os.mkdir(tmp_path / "m")
    os.mkdir(tmp_path / "m" / "model.safetensors")  # a folder where a shard should be
    json.dump({"quant_method": "sdnq"}, open(tmp_path / "m" / "quantization_config.json", "w"))
    raises(SdnqFormatError, lambda: comfy_sdnq.load(tmp_path / "m"), "model.safetensors", "cannot open")


class Bait:
    """unpickling this creates a marker file"""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["pickle-protocol-0", "pickle-protocol-2", "pickle-protocol-5", "torch.save"])
def test_pickle_renamed_safetensors_is_not_unpickled(tmp_path, how):
    marker = tmp_path / "unpickled"
    if how == "torch.save":
        torch.save({"weight": torch.zeros(3), "bait": Bait(marker)}, tmp_path / "model.safetensors")
    else:
        proto = int(how.rsplit("-", 1)[1])
        write_raw(tmp_path / "model.safetensors", pickle.dumps({"bait": Bait(marker)}, protocol=proto))
    # the bait works: unpickling the same data elsewhere creates its marker
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Bait(probe)))
    assert probe.exists()
    path = str(tmp_path / "model.safetensors")
    raises(SdnqFormatError, lambda: comfy_sdnq.load(path), path, "header length")
    assert not marker.exists(), "the pickle was unpickled"


# memory bombs: headers that declare far more than the file holds must fail before
# allocating anything; they run under an address-space limit of 512 MiB above the
# interpreter's, so an allocation the file does not back would fail or kill the worker
BOMBS = [
    ("1-TiB-f32", entry(shape=[2**19, 2**19])),
    ("2^47-elements-x16-dims", entry(shape=[2**47 - 1] * 16)),
    ("2^48-elements", entry(shape=[2**48])),
    ("empty-but-strides-overflow", {"x": {"dtype": "F32", "shape": [0, 2**47, 2**47], "data_offsets": [0, 0]},
                                    "y": GOOD["x"]}),
    ("offsets-2^64", entry(shape=[2**61], data_offsets=[0, 2**64])),
]


def test_memory_bombs_fail_fast(tmp_path):
    paths = []
    for name, header in BOMBS:
        header = dict(header, __metadata__=sdnq_meta({"weights_dtype": "int8"}))
        paths.append(write_raw(tmp_path / f"{name}.safetensors", st_bytes(header, DATA)))
    t0 = time.perf_counter()
    got = load_isolated(paths, mem_limit=512 * 2**20)
    for (name, _), path, (outcome, msg) in zip(BOMBS, paths, got):
        assert outcome == "SdnqError", (name, outcome, msg)
        assert path in msg and "key 'x'" in msg, (name, msg)
    assert time.perf_counter() - t0 < 30


def test_empty_tensor_with_huge_dims_loads_empty(tmp_path):
    """an empty tensor costs nothing whatever its other dims (while torch can stride them)"""
    header = {"x": {"dtype": "F32", "shape": [0, 2**40, 2**20], "data_offsets": [0, 0]},
              **tensors_header(layer("l", "int8"), sdnq_meta({"weights_dtype": "int8"}))[0]}
    data = tensors_header(layer("l", "int8"))[1]
    sd = comfy_sdnq.load(write_raw(tmp_path / "m.safetensors", st_bytes(header, data)))
    assert sd["x"].shape == (0, 2**40, 2**20) and sd["x"].numel() == 0


# ---------------------------------------------------------------------------
# fuzz: single-byte damage to a real SDNQ file

N_FUZZ = 400


def _mutations(blob: bytes, data_start: int, n: int, seed: int = 1234):
    """(offset, new byte) pairs: most in the header (random byte, flipped bit, digit for
    digit, letter for letter: the last two tend to keep the JSON valid), some in the data"""
    rng = random.Random(seed)
    digits = [i for i in range(8, data_start) if chr(blob[i]).isdigit()]
    letters = [i for i in range(8, data_start) if chr(blob[i]).isalpha()]
    out = []
    for k in range(n):
        style = k % 5
        if style == 0:
            i = rng.randrange(data_start)
            b = rng.choice([x for x in range(256) if x != blob[i]])
        elif style == 1:
            i = rng.randrange(data_start)
            b = blob[i] ^ (1 << rng.randrange(8))
        elif style == 2:
            i = rng.choice(digits)
            b = rng.choice([x for x in b"0123456789" if x != blob[i]])
        elif style == 3:
            i = rng.choice(letters)
            b = rng.choice([x for x in b"abcdefghijklmnopqrstuvwxyzFIU" if x != blob[i]])
        else:
            i = rng.randrange(data_start, len(blob))
            b = blob[i] ^ (1 << rng.randrange(8))
        out.append((i, b))
    return out


def test_fuzz_single_byte_damage(tmp_path, model_file):
    """every single-byte change of a real SDNQ file either loads (and dequantizes) or
    raises an SdnqError naming the file; never another exception, never a crash"""
    good, _ = model_file
    blob = open(good, "rb").read()
    data_start = safetensors_io.SafetensorsFile(good).data_start
    paths = []
    for k, (i, b) in enumerate(_mutations(blob, data_start, N_FUZZ)):
        bad = bytearray(blob)
        bad[i] = b
        paths.append(write_raw(tmp_path / f"fuzz{k:03d}.safetensors", bytes(bad)))
    got = load_isolated(paths)
    failures = [(p, o, m) for p, (o, m) in zip(paths, got) if o not in ("ok", "SdnqError")]
    unnamed = [(p, m) for p, (o, m) in zip(paths, got) if o == "SdnqError" and p not in m]
    counts = {o: sum(1 for x, _ in got if x == o) for o in ("ok", "SdnqError", "OTHER", "CRASH")}
    print(f"fuzz outcomes: {counts}")
    assert not failures, f"{len(failures)} bad outcome(s), first: {failures[:3]}"
    assert not unnamed, f"messages without the file name: {unnamed[:3]}"
    assert counts["ok"] and counts["SdnqError"], counts


# ---------------------------------------------------------------------------
# SDNQ content: tensors that do not make a layer


def _drop(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def _with(d, **repl):
    return {**d, **{k.replace("__", "."): v for k, v in repl.items()}}


U4 = {"weights_dtype": "uint4"}
U4_SVD = {"weights_dtype": "uint4", "use_svd": True, "svd_rank": 8}
I8 = {"weights_dtype": "int8"}
I6 = {"weights_dtype": "int6"}
I6_DQ = {"weights_dtype": "int6", "scale_dtype": "int8"}


def u4():
    return layer("x", "uint4")


def u4_svd():
    return layer("x", "uint4", use_svd=True, svd_rank=8)


def i8():
    return layer("x", "int8")


def i6():
    return layer("x", "int6")


def i6_dq():
    return layer("x", "int6", scale_dtype="int8")


def nan_at(t, value=float("nan")):
    t = t.clone(memory_format=torch.contiguous_format)
    t.view(-1)[0] = value
    return t


# (id, config, tensors (a function: built when the test runs), key named, what the message says)
CONTENT_CASES = [
    ("uint4-codes-one-short", U4, lambda: _with(u4(), x__weight=u4()["x.weight"][:-1]), "x.weight",
     ["weight uint4 (4095,)", "scale (64, 2, 1)", "fits no SDNQ layout of 8190 codes"]),
    ("uint4-codes-double-svd", U4_SVD, lambda: _with(u4_svd(), x__weight=torch.cat([u4_svd()["x.weight"]] * 2)),
     "x.weight", ["weight uint4 (8192,)", "do not fit a [64, 256] weight"]),
    ("uint4-codes-2d", U4, lambda: _with(u4(), x__weight=u4()["x.weight"].reshape(64, 64)), "x.weight",
     ["shape (64, 64)", "1-D"]),
    ("int6-packed-last-dim", I6, lambda: _with(i6(), x__weight=i6()["x.weight"][:, :2]), "x.weight",
     ["int6", "shape (", "[blocks, 3]"]),
    ("int6-packed-flattened", I6, lambda: _with(i6(), x__weight=i6()["x.weight"].reshape(-1)), "x.weight",
     ["int6", "[blocks, 3]"]),
    ("int8-codes-one-short", I8, lambda: _with(i8(), x__weight=i8()["x.weight"].reshape(-1)[:-1]), "x.weight",
     ["(8191,)", "fits no SDNQ layout"]),
    ("codes-empty", I8, lambda: _with(i8(), x__weight=torch.zeros(0, dtype=torch.int8)), "x.weight",
     ["fits no SDNQ layout of 0 codes"]),
    ("codes-wrong-dtype", U4, lambda: _with(u4(), x__weight=u4()["x.weight"].view(torch.int8)), "x.weight",
     ["must be stored as torch.uint8", "torch.int8"]),
    ("codes-float", I8, lambda: _with(i8(), x__weight=i8()["x.weight"].float()), "x.weight",
     ["must be stored as torch.int8"]),
    ("scale-rows-short", I8, lambda: _with(i8(), x__scale=i8()["x.scale"][:63]), "x.weight",
     ["scale (63, 1)", "fits no SDNQ layout"]),
    ("scale-groups-wrong", U4, lambda: _with(u4(), x__scale=torch.ones(64, 3, 1), x__zero_point=torch.zeros(64, 3, 1)),
     "x.weight", ["scale (64, 3, 1)", "fits no SDNQ layout of 8192 codes"]),
    ("scale-groups-of-other-layer", U4, lambda: _with(u4(), x__scale=torch.ones(64, 4, 1),
                                                      x__zero_point=torch.zeros(64, 2, 1)),
     "x.zero_point", ["shape (64, 2, 1), expected the scale's (64, 4, 1)"]),
    ("scale-reshaped-to-another-layout", I8, lambda: _with(i8(), x__scale=i8()["x.scale"].reshape(2, 1, 32)),
     "x.weight", ["weight int8 (64, 128) does not match scale (2, 1, 32)"]),
    ("scale-empty", I8, lambda: _with(i8(), x__scale=torch.zeros(0, 1)), "x.weight", ["scale (0, 1)"]),
    ("scale-int", I8, lambda: _with(i8(), x__scale=i8()["x.scale"].to(torch.int32)), "x.scale",
     ["scale must be float32/bfloat16/float16", "torch.int32"]),
    ("scale-fp8", I8, lambda: _with(i8(), x__scale=i8()["x.scale"].to(torch.float8_e4m3fn)), "x.scale",
     ["float32/bfloat16/float16"]),
    ("scale-nan", I8, lambda: _with(i8(), x__scale=nan_at(i8()["x.scale"])), "x.scale",
     ["1 NaN/inf value(s) in shape (64, 1)"]),
    ("scale-inf", I8, lambda: _with(i8(), x__scale=nan_at(i8()["x.scale"], float("inf"))), "x.scale",
     ["NaN/inf"]),
    ("zero-point-nan", U4, lambda: _with(u4(), x__zero_point=nan_at(u4()["x.zero_point"])), "x.zero_point",
     ["NaN/inf"]),
    ("zero-point-minus-inf", U4, lambda: _with(u4(), x__zero_point=nan_at(u4()["x.zero_point"], -float("inf"))),
     "x.zero_point", ["NaN/inf"]),
    ("zero-point-on-symmetric", I8, lambda: _with(i8(), x__zero_point=torch.zeros(64, 1)), "x.zero_point",
     ["unexpected for int8", "symmetric"]),
    ("zero-point-missing", U4, lambda: _drop(u4(), "x.zero_point"), "x.zero_point",
     ["missing", "uint4 weights are asymmetric"]),
    ("zero-point-shape", U4, lambda: _with(u4(), x__zero_point=u4()["x.zero_point"].reshape(2, 64, 1)),
     "x.zero_point", ["shape (2, 64, 1)", "expected the scale's (64, 2, 1)"]),
    ("zero-point-dtype", U4, lambda: _with(u4(), x__zero_point=u4()["x.zero_point"].half()), "x.zero_point",
     ["torch.float16 differs from the scale's torch.float32"]),
    ("zero-point-int", U4, lambda: _with(u4(), x__zero_point=u4()["x.zero_point"].to(torch.uint8)),
     "x.zero_point", ["float32/bfloat16/float16"]),
    ("svd-up-without-down", U4_SVD, lambda: _drop(u4_svd(), "x.svd_down"), "x.svd_down",
     ["missing (the other SVD factor is present)"]),
    ("svd-down-without-up", U4_SVD, lambda: _drop(u4_svd(), "x.svd_up"), "x.svd_up", ["missing"]),
    ("svd-rank-mismatch", U4_SVD, lambda: _with(u4_svd(), x__svd_down=u4_svd()["x.svd_down"][:4]), "x.weight",
     ["SVD factors (64, 8) and (4, 128) do not fit a [64, 128] weight"]),
    ("svd-wrong-rows", U4_SVD, lambda: _with(u4_svd(), x__svd_up=u4_svd()["x.svd_up"][:32]), "x.weight",
     ["SVD factors (32, 8) and (8, 128)"]),
    ("svd-wrong-cols", U4_SVD, lambda: _with(u4_svd(), x__svd_down=u4_svd()["x.svd_down"][:, :64]), "x.weight",
     ["SVD factors (64, 8) and (8, 64)"]),
    ("svd-3d", U4_SVD, lambda: _with(u4_svd(), x__svd_up=u4_svd()["x.svd_up"].reshape(64, 8, 1)), "x.svd_up",
     ["must be 2-D, got (64, 8, 1)"]),
    ("svd-int", U4_SVD, lambda: _with(u4_svd(), x__svd_down=u4_svd()["x.svd_down"].to(torch.int16)), "x.svd_down",
     ["svd_down must be float32/bfloat16/float16"]),
    ("svd-nan", U4_SVD, lambda: _with(u4_svd(), x__svd_up=nan_at(u4_svd()["x.svd_up"])), "x.svd_up", ["NaN/inf"]),
    ("svd-inf", U4_SVD, lambda: _with(u4_svd(), x__svd_down=nan_at(u4_svd()["x.svd_down"], float("inf"))),
     "x.svd_down", ["NaN/inf"]),
    ("scale2-nan", I6_DQ, lambda: _with(i6_dq(), x__scale_2=nan_at(i6_dq()["x.scale_2"])), "x.scale_2",
     ["NaN/inf"]),
    ("scale2-missing", I6_DQ, lambda: _drop(i6_dq(), "x.scale_2"), "x.scale",
     ["scale_dtype 'int8' needs x.scale_2"]),
    ("scale2-without-scale-dtype", I6, lambda: i6_dq(), "x.scale_2", ["the config has no scale_dtype"]),
    ("scale2-too-many", I6_DQ, lambda: _with(i6_dq(), x__scale_2=torch.ones(2)), "x.scale_2",
     ["shape (2,), expected 1 value(s)"]),
    ("double-quantized-scale-dtype", I6_DQ, lambda: _with(i6_dq(), x__scale=i6_dq()["x.scale"].float()), "x.scale",
     ["scale of type int8 must be stored as torch.int8"]),
    ("scale-without-weight", U4, lambda: _drop(u4(), "x.weight"), "x.scale", ["scale without x.weight"]),
    ("zero-point-without-scale", U4, lambda: _drop(u4(), "x.scale"), "x.zero_point",
     ["side tensor without x.scale"]),
    ("svd-without-scale", U4_SVD, lambda: {"x.weight": u4_svd()["x.weight"], "x.svd_up": u4_svd()["x.svd_up"]},
     "x.svd_up", ["side tensor without x.scale"]),
    ("bias-disagrees", I8, lambda: {**i8(), "x.bias": torch.zeros(32)}, "x.weight",
     ["bias has 32 outputs", "implies 64"]),
    # the config disagrees with the tensors
    ("config-int8-codes-uint4", I8, u4, "x.weight", ["int8 must be stored as torch.int8", "torch.uint8"]),
    ("config-uint4-codes-int8", U4, i8, "x.weight", ["uint4 must be stored as torch.uint8", "torch.int8"]),
    ("config-int4-codes-uint4", {"weights_dtype": "int4"}, u4, "x.zero_point", ["unexpected for int4"]),
    # same storage dtype: the SVD factors tell the real weight shape (without them a uint4 layer reads as a
    # consistent uint2 one of twice the width; nothing in the tensors tells them apart)
    ("config-uint2-codes-uint4", {**U4_SVD, "weights_dtype": "uint2"}, u4_svd, "x.weight",
     ["weight uint2", "do not fit a [64, 256] weight"]),
    ("config-uint8-codes-uint4", {**U4_SVD, "weights_dtype": "uint8"}, u4_svd, "x.weight",
     ["weight uint8", "do not fit a [64, 64] weight"]),
    ("config-int5-codes-int6", {"weights_dtype": "int5"}, i6, "x.weight", ["int5", "[blocks, 5]"]),
    ("config-codebook-plain-codes", {"weights_dtype": "uint4", "use_codebook": True}, u4, "x.weight",
     ["scale shape (64, 2, 1) fits no SDNQ layout of 8192 codes with 16 codebook levels"]),
    ("config-plain-codebook-codes", U4, lambda: layer("x", "uint4", use_codebook=True), "x.weight",
     ["scale shape (64, 16) fits no SDNQ layout"]),
    ("config-scale-dtype-plain-scale", I6_DQ, i6, "x.scale", ["needs x.scale_2"]),
    ("per-module-dtype-disagrees", {"weights_dtype": "uint4", "modules_dtype_dict": {"int8": ["x"]}}, u4,
     "x.weight", ["int8 must be stored as torch.int8"]),
]


@pytest.mark.parametrize("qcfg,make,key,says", [c[1:] for c in CONTENT_CASES], ids=[c[0] for c in CONTENT_CASES])
def test_bad_layer_tensors(tmp_path, qcfg, make, key, says):
    path = write_sdnq(tmp_path / "bad.safetensors", make(), qcfg)
    raises(SdnqFormatError, lambda: comfy_sdnq.load(path), path, f"key {key!r}", *says)


# load(path, shapes=, kinds=, dtype=): the model's own shapes are input too
ARG_CASES = [
    ("shape-wrong-numel", dict(shapes={"x.weight": (64, 64)}), SdnqFormatError,
     ["key 'x.weight'", "weight shape (64, 64) holds 4096 elements, the stored codes 8192"]),
    ("shape-negative", dict(shapes={"x.weight": (-64, -128)}), SdnqFormatError,
     ["key 'x.weight'", "(-64, -128) does not fit"]),
    ("shape-not-ints", dict(shapes={"x.weight": ("a", 128)}), SdnqFormatError, ["key 'x.weight'", "('a', 128)"]),
    ("shape-1d-for-conv-transpose", dict(shapes={"x.weight": (8192,)}, kinds={"x.weight": "conv_transpose"}),
     SdnqFormatError, ["key 'x.weight'", "(8192,) does not fit a conv_transpose weight"]),
    ("shape-3d-for-linear", dict(shapes={"x.weight": (64, 64, 2)}, kinds={"x.weight": "linear"}), SdnqFormatError,
     ["key 'x.weight'", "(64, 64, 2) does not fit a linear weight"]),
    ("dtype-int", dict(dtype=torch.int8), SdnqError, ["compute dtype must be float32, bfloat16 or float16"]),
]


@pytest.mark.parametrize("kwargs,exc,says", [c[1:] for c in ARG_CASES], ids=[c[0] for c in ARG_CASES])
def test_bad_load_arguments(tmp_path, kwargs, exc, says):
    path = write_sdnq(tmp_path / "m.safetensors", i8(), I8)
    raises(exc, lambda: comfy_sdnq.load(path, **kwargs), path, *says)


@pytest.mark.parametrize("make", [u4, u4_svd, i8, i6, i6_dq], ids=["uint4", "uint4-svd", "int8", "int6", "int6-dq"])
def test_content_baselines_load(tmp_path, make):
    """the layers the content cases damage load as they are (so each case fails for its damage)"""
    qcfg = {u4: U4, u4_svd: U4_SVD, i8: I8, i6: I6, i6_dq: I6_DQ}[make]
    sd = comfy_sdnq.load(write_sdnq(tmp_path / "ok.safetensors", make(), qcfg))
    assert layout.is_sdnq(sd["x.weight"]) and sd["x.weight"].dequantize().shape == (64, 128)


# ---------------------------------------------------------------------------
# configs


def _meta_file(tmp_path, text: str, tensors=None) -> str:
    header, data = tensors_header(tensors or i8(), {CFG: text})
    return write_raw(tmp_path / "m.safetensors", st_bytes(header, data))


def _qcfg(**fields) -> str:
    return json.dumps({"quantization_config": {"quant_method": "sdnq", "weights_dtype": "int8", **fields}})


CONFIG_CASES = [
    ("quant-method-bnb", SdnqFormatError, _qcfg(quant_method="bitsandbytes"),
     ["quant_method is 'bitsandbytes', expected 'sdnq'"]),
    ("quant-method-list", SdnqFormatError, _qcfg(quant_method=["sdnq"]), ["quant_method is ['sdnq']"]),
    ("sdnq-training", SdnqUnsupportedError, _qcfg(quant_method="sdnq_training"), ["'sdnq_training'"]),
    ("weights-dtype-unknown", SdnqFormatError, _qcfg(weights_dtype="uint99"),
     ["quantization_config['weights_dtype']", "'uint99'"]),
    ("weights-dtype-int", SdnqFormatError, _qcfg(weights_dtype=4),
     ["quantization_config['weights_dtype'] must be str, got int"]),
    ("weights-dtype-null", SdnqFormatError, _qcfg(weights_dtype=None),
     ["quantization_config['weights_dtype'] must be str"]),
    ("group-size-string", SdnqFormatError, _qcfg(group_size="0"),
     ["quantization_config['group_size'] must be int, got str"]),
    ("group-size-bool", SdnqFormatError, _qcfg(group_size=True), ["quantization_config['group_size'] must be int"]),
    ("group-size-float", SdnqFormatError, _qcfg(group_size=32.0), ["quantization_config['group_size'] must be int"]),
    ("use-svd-yes", SdnqFormatError, _qcfg(use_svd="yes"), ["quantization_config['use_svd'] must be bool, got str"]),
    ("use-svd-1", SdnqFormatError, _qcfg(use_svd=1), ["quantization_config['use_svd'] must be bool, got int"]),
    ("scale-dtype-unknown", SdnqFormatError, _qcfg(scale_dtype="int99"), ["quantization_config['scale_dtype']"]),
    ("matmul-dtype-unknown", SdnqFormatError, _qcfg(quantized_matmul_dtype="int3"), ["quantized_matmul_dtype"]),
    ("dtype-dict-list", SdnqFormatError, _qcfg(modules_dtype_dict=["int8"]),
     ["quantization_config['modules_dtype_dict'] must be dict/NoneType, got list"]),
    ("dtype-dict-values", SdnqFormatError, _qcfg(modules_dtype_dict={"int8": [1, 2]}),
     ["modules_dtype_dict must map dtype names to lists of module names"]),
    ("dtype-dict-unknown-dtype", SdnqFormatError, _qcfg(modules_dtype_dict={"int99": ["x"]}), ["'int99'"]),
    ("dtype-dict-bad-minimum", SdnqFormatError, _qcfg(modules_dtype_dict={"minimum_xbit": ["x"]}),
     ["modules_dtype_dict key 'minimum_xbit'"]),
    ("not-convert-string", SdnqFormatError, _qcfg(modules_to_not_convert="x"),
     ["quantization_config['modules_to_not_convert'] must be list/NoneType, got str"]),
    ("not-convert-ints", SdnqFormatError, _qcfg(modules_to_not_convert=[1]), ["modules_to_not_convert must be"]),
    # found by fuzzing (tests/fuzz/fuzz_files.py): a '*' pattern is a regex to sdnq; one that does not compile
    # raised re.error from the first layer lookup
    ("not-use-matmul-bad-regex", SdnqFormatError, _qcfg(modules_to_not_use_matmul=["embed(*weight"]),
     ["modules_to_not_use_matmul: module pattern 'embed(*weight' is not a valid pattern"]),
    ("not-convert-bad-regex", SdnqFormatError, _qcfg(modules_to_not_convert=["*[x"]), ["module pattern '*[x'"]),
    ("dtype-dict-bad-regex", SdnqFormatError, _qcfg(modules_dtype_dict={"int8": ["a*)"]}),
     ["modules_dtype_dict['int8']: module pattern 'a*)'"]),
    ("module-config-bad-regex", SdnqFormatError, _qcfg(modules_quant_config={"blocks.*(": {"group_size": 32}}),
     ["modules_quant_config: module pattern 'blocks.*('"]),
    ("not-convert-regex-syntax", SdnqUnsupportedError, _qcfg(modules_to_not_convert=["(a+)+b*"]),
     ["module pattern '(a+)+b*' uses regex syntax other than '*' and '.'"]),
    ("module-config-list", SdnqFormatError, _qcfg(modules_quant_config={"x": ["int8"]}),
     ["modules_quant_config must map module names to objects"]),
    ("module-config-group-size-string", SdnqFormatError, _qcfg(modules_quant_config={"x": {"group_size": "abc"}}),
     ["modules_quant_config['x']['group_size'] must be int, got str"]),
    ("module-config-dtype-int", SdnqFormatError, _qcfg(modules_quant_config={"x": {"weights_dtype": 4}}),
     ["modules_quant_config['x']['weights_dtype'] must be str, got int"]),
    ("module-config-use-svd-string", SdnqFormatError, _qcfg(modules_quant_config={"x": {"use_svd": "no"}}),
     ["modules_quant_config['x']['use_svd'] must be bool"]),
    ("module-config-dtype-unknown", SdnqFormatError, _qcfg(modules_quant_config={"x": {"weights_dtype": "int99"}}),
     ["'int99'"]),
    ("version-garbage", SdnqFormatError, _qcfg(sdnq_version="latest"), ["sdnq_version 'latest'"]),
    ("version-int", SdnqFormatError, _qcfg(sdnq_version=2), ["quantization_config['sdnq_version'] must be str"]),
    ("config-not-object", SdnqFormatError, json.dumps({"quantization_config": "sdnq"}),
     ["quantization_config must be a JSON object, got str"]),
    ("metadata-list", SdnqFormatError, "[1, 2]", [f"__metadata__['{CFG}'] must be a JSON object"]),
    ("metadata-no-config", SdnqFormatError, json.dumps({"torch_dtype": "bfloat16"}), ["has no quantization_config"]),
    ("metadata-not-json", SdnqFormatError, "{quant_method: sdnq}", [f"__metadata__['{CFG}'] is not valid JSON"]),
    ("metadata-empty", SdnqFormatError, "", ["is not valid JSON"]),
    ("metadata-lone-surrogate", SdnqFormatError, '{"quantization_config": {"weights_dtype": "\udc80"}}',
     [f"__metadata__['{CFG}'] is not UTF-8"]),
    ("metadata-nested-100k", SdnqFormatError, "[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    ("metadata-nested-objects-100k", SdnqFormatError, '{"quantization_config":' * 100_000 + "{}" + "}" * 100_000,
     ["nested too deeply"]),
    ("metadata-50MB-whitespace", SdnqFormatError, " " * (50 * 2**20), ["is not valid JSON"]),
]


@pytest.mark.parametrize("exc,text,says", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_in_metadata(tmp_path, exc, text, says):
    path = _meta_file(tmp_path, text)
    t0 = time.perf_counter()
    raises(exc, lambda: comfy_sdnq.load(path), path, *says)
    assert time.perf_counter() - t0 < 10


def test_whitespace_padded_config_loads(tmp_path):
    """50 MB of whitespace around a good config: legal JSON, loads in bounded time"""
    path = _meta_file(tmp_path, " " * (25 * 2**20) + _qcfg() + " " * (25 * 2**20))
    t0 = time.perf_counter()
    assert layout.is_sdnq(comfy_sdnq.load(path)["x.weight"])
    assert time.perf_counter() - t0 < 10


def test_star_patterns_take_linear_time():
    """found by fuzzing (tests/fuzz/fuzz_files.py): sdnq turns a '*' pattern into a regex, and Python's
    backtracking took exponential time on 'embed.*****...weigh' against a long layer name that does
    not match - a crafted file hung the loader. Matching is now linear, with sdnq's results."""
    from comfy_sdnq.config import QuantConfig, match_module
    cfg = QuantConfig({"quant_method": "sdnq", "weights_dtype": "int8",
                       "modules_to_not_use_matmul": ["embed." + "*" * 120 + "weigh"]}, "x")
    t0 = time.perf_counter()
    cfg.layer("embed." + "a" * 3000 + ".weight", "linear")
    assert time.perf_counter() - t0 < 2.0
    assert match_module("embed.x.weight", ["embed.*weigh"]) == "embed.*weigh"
    assert match_module("blocks.3.attn.to_q.weight", ["blocks.*.to_q"]) == "blocks.*.to_q"
    assert match_module("blocks.3.attn.to_k.weight", ["blocks.*.to_q", "*.to_v"]) is None
    assert match_module("transformer_blocks.0.norm1.weight", ["transformer_blocks.0.norm*"]) is not None


@pytest.mark.parametrize("where", ["quantization_config.json", "config.json"])
@pytest.mark.parametrize("case", [c for c in CONFIG_CASES if c[0] in (
    "quant-method-bnb", "sdnq-training", "weights-dtype-unknown", "weights-dtype-int", "group-size-string",
    "use-svd-yes", "dtype-dict-list", "module-config-group-size-string", "version-garbage")], ids=lambda c: c[0])
def test_bad_config_in_folder(tmp_path, where, case):
    _, exc, text, says = case
    qcfg = json.loads(text)["quantization_config"]
    folder = _folder(tmp_path, i8(), None)
    json.dump(qcfg if where == "quantization_config.json" else {"quantization_config": qcfg},
              open(folder / where, "w"))
    raises(exc, lambda: comfy_sdnq.load(folder), str(folder / where), *says)


def _folder(tmp_path, tensors, qcfg, name="model.safetensors"):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    header, data = tensors_header(tensors)
    write_raw(folder / name, st_bytes(header, data))
    if qcfg is not None:
        json.dump(qcfg, open(folder / "quantization_config.json", "w"))
    return folder


def test_missing_config(tmp_path):
    folder = _folder(tmp_path, i8(), None)
    raises(SdnqFormatError, lambda: comfy_sdnq.load(folder), str(folder), "no SDNQ config")
    json.dump({"_class_name": "FluxTransformer2DModel"}, open(folder / "config.json", "w"))
    raises(SdnqFormatError, lambda: comfy_sdnq.load(folder), str(folder), "no SDNQ config")
    header, data = tensors_header(i8(), {"format": "pt"})
    path = write_raw(tmp_path / "single.safetensors", st_bytes(header, data))
    raises(SdnqFormatError, lambda: comfy_sdnq.load(path), path, f"no config in __metadata__['{CFG}']")
    raises(SdnqFormatError, lambda: comfy_sdnq.load_config(path), path)


@pytest.mark.parametrize("name,text,says", [
    ("config.json", b"{oops", ["is not valid JSON"]),
    ("config.json", b"[1]", ["must be a JSON object"]),
    ("config.json", b"\xff\xfe{}", ["is not UTF-8"]),
    ("config.json", b"[" * 100_000, ["nested too deeply"]),
    ("quantization_config.json", b"{oops", ["is not valid JSON"]),
    ("quantization_config.json", b"null", ["quantization_config must be a JSON object, got NoneType"]),
    ("quantization_config.json", b"[" * 100_000 + b"]" * 100_000, ["nested too deeply"]),
], ids=["config-not-json", "config-list", "config-not-utf8", "config-nested", "qconfig-not-json", "qconfig-null",
        "qconfig-nested"])
def test_bad_config_files(tmp_path, name, text, says):
    folder = _folder(tmp_path, i8(), None)
    if name == "config.json":
        json.dump({"quant_method": "sdnq"}, open(folder / "quantization_config.json", "w"))
    write_raw(folder / name, text)
    raises(SdnqFormatError, lambda: comfy_sdnq.load(folder), str(folder / name), *says)


# ---------------------------------------------------------------------------
# sharded folders


def _sharded(tmp_path, weight_map) -> tuple:
    layers = {**layer("x", "int8"), **layer("y", "int8", seed=1)}
    folder = _folder(tmp_path, {k: v for k, v in layers.items() if k.startswith("x.")}, I8,
                     "model-00001-of-00002.safetensors")
    header, data = tensors_header({k: v for k, v in layers.items() if k.startswith("y.")})
    write_raw(folder / "model-00002-of-00002.safetensors", st_bytes(header, data))
    index = folder / "model.safetensors.index.json"
    if weight_map is not None:
        json.dump({"metadata": {}, "weight_map": weight_map}, open(index, "w"))
    return folder, str(index)


S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def test_sharded_folder_baseline(tmp_path):
    folder, _ = _sharded(tmp_path, {"x.weight": S1, "x.scale": S1, "y.weight": S2, "y.scale": S2})
    sd = comfy_sdnq.load(folder)
    assert sd["x.weight"].dequantize().shape == sd["y.weight"].dequantize().shape == (64, 128)


@pytest.mark.parametrize("shard,says", [
    ("model-00003-of-00003.safetensors", ["shard 'model-00003-of-00003.safetensors' is missing"]),
    ("../outside.safetensors", ["shard '../outside.safetensors'", "not a file name"]),
    ("sub/model.safetensors", ["shard 'sub/model.safetensors'", "not a file name"]),
    ("/etc/passwd", ["shard '/etc/passwd'", "not a file name"]),
    ("", ["shard ''", "not a file name"]),
    ("..", ["shard '..'", "not a file name"]),
    ("a\x00b", ["not a file name"]),
], ids=["missing", "parent", "subfolder", "absolute", "empty", "dotdot", "nul"])
def test_index_points_at_a_bad_shard(tmp_path, shard, says):
    folder, index = _sharded(tmp_path, {"x.weight": S1, "x.scale": S1, "y.weight": shard})
    # a real SDNQ file where "../outside.safetensors" points: it must not be read
    write_sdnq(tmp_path / "outside.safetensors", layer("z", "int8"), I8)
    os.makedirs(folder / "sub", exist_ok=True)
    write_sdnq(folder / "sub" / "model.safetensors", layer("z", "int8"), I8)
    raises(SdnqFormatError, lambda: comfy_sdnq.load(folder), index, *says)


@pytest.mark.parametrize("index,says", [
    (b"{oops", ["is not valid JSON"]),
    (b'{"weight_map": ["model.safetensors"]}', ["weight_map must map keys to shard file names"]),
    (b'{"weight_map": {"x.weight": 3}}', ["weight_map must map keys to shard file names"]),
    (b'["weight_map"]', ["weight_map must map keys to shard file names"]),
    (b'{"weight_map": {}}', ["no .safetensors files"]),
], ids=["not-json", "list", "not-names", "not-object", "empty"])
def test_bad_index(tmp_path, index, says):
    folder, path = _sharded(tmp_path, None)
    write_raw(path, index)
    raises(SdnqFormatError, lambda: comfy_sdnq.load(folder), str(folder), *says)


def test_same_key_in_two_shards(tmp_path):
    folder, _ = _sharded(tmp_path, {"x.weight": S1, "y.weight": S2})
    header, data = tensors_header({**layer("y", "int8", seed=1), **layer("x", "int8", seed=2)})
    write_raw(folder / S2, st_bytes(header, data))
    raises(SdnqFormatError, lambda: comfy_sdnq.load(folder), S1, S2, "key 'x.weight'", "also in")


def test_shard_damage_names_the_shard(tmp_path):
    folder, _ = _sharded(tmp_path, {"x.weight": S1, "y.weight": S2})
    blob = open(folder / S2, "rb").read()
    write_raw(folder / S2, blob[:-10])
    raises(SdnqFormatError, lambda: comfy_sdnq.load(folder), S2, "key 'y.")


def test_layer_split_across_shards_is_checked_as_one(tmp_path):
    """weight in one shard, its scale in the other: still one layer, checked as one"""
    folder, _ = _sharded(tmp_path, {"x.weight": S1, "y.weight": S2})
    x = layer("x", "int8")
    header, data = tensors_header({"x.weight": x["x.weight"]})
    write_raw(folder / S1, st_bytes(header, data))
    header, data = tensors_header({**layer("y", "int8", seed=1), "x.scale": x["x.scale"][:48]})
    write_raw(folder / S2, st_bytes(header, data))
    raises(SdnqFormatError, lambda: comfy_sdnq.load(folder), S1, "key 'x.weight'", "scale (48, 1)")


# ---------------------------------------------------------------------------
# save()


@pytest.fixture
def qsd():
    torch.manual_seed(0)
    return {"a.weight": quantize(torch.randn(64, 128, dtype=torch.bfloat16), "uint4"),
            "a.bias": torch.randn(64, dtype=torch.bfloat16),
            "b.weight": quantize(torch.randn(64, 128, dtype=torch.bfloat16), "uint4")}


SAVE_CASES = [
    ("weights-dtype-unknown", {"weights_dtype": "uint99"}, None, SdnqFormatError,
     ["quantization_config['weights_dtype']", "'uint99'"]),
    ("scale-dtype-unknown", {"weights_dtype": "uint4", "scale_dtype": "fp99"}, None, SdnqFormatError,
     ["quantization_config['scale_dtype']", "'fp99'"]),
    ("dtype-dict-unknown", {"weights_dtype": "uint4", "modules_dtype_dict": {"uint99": ["a"]}}, None,
     SdnqFormatError, ["'uint99'"]),
    ("group-size-string", {"weights_dtype": "uint4", "group_size": "32"}, None, SdnqFormatError,
     ["quantization_config['group_size'] must be int"]),
    ("quant-method", {"weights_dtype": "uint4", "quant_method": "gguf"}, None, SdnqFormatError,
     ["quant_method is 'gguf'"]),
    ("config-none", None, None, SdnqError, ["quantization_config must be a dict"]),
    ("config-string", "uint4", None, SdnqError, ["quantization_config must be a dict"]),
    ("config-not-json", {"weights_dtype": "uint4", "extra": torch.float16}, None, SdnqError,
     ["quantization_config", "not JSON"]),
    ("non-tensor", {"weights_dtype": "uint4"}, {"c.weight": [1.0, 2.0]}, SdnqError,
     ["state_dict['c.weight'] is a list, not a tensor"]),
    ("none-value", {"weights_dtype": "uint4"}, {"c.weight": None}, SdnqError, ["state_dict['c.weight']"]),
    ("complex-tensor", {"weights_dtype": "uint4"}, {"c.weight": torch.zeros(3, dtype=torch.complex64)},
     SdnqFormatError, ["key 'c.weight'", "torch.complex64 cannot be stored"]),
    ("sdnq-not-weight", {"weights_dtype": "uint4"}, "rename", SdnqError, ["state_dict['a.scale']",
                                                                          "'<module>.weight'"]),
    ("config-hides-hadamard", {"weights_dtype": "int8"},
     {"h.weight": quantize(torch.randn(64, 128), "int8", use_hadamard=True, hadamard_group_size=64)}, SdnqError,
     ["key 'h.weight'", "would load this layer with hadamard 0, it has 64"]),
    ("config-hides-codebook", {"weights_dtype": "uint4"},
     {"h.weight": quantize(torch.randn(64, 128), "uint4", use_codebook=True)}, SdnqFormatError,
     ["key 'h.weight'", "load() would not read this back"]),
    ("config-hides-scale-dtype", {"weights_dtype": "uint4"},
     {"h.weight": quantize(torch.randn(64, 128), "int6", scale_dtype="int8")}, SdnqFormatError,
     ["key 'h.scale_2'", "config has no scale_dtype", "load() would not read this back"]),
]


@pytest.mark.parametrize("form", ["file", "folder"])
@pytest.mark.parametrize("qcfg,extra,exc,says", [c[1:] for c in SAVE_CASES], ids=[c[0] for c in SAVE_CASES])
def test_save_rejects(tmp_path, qsd, form, qcfg, extra, exc, says):
    if extra == "rename":
        qsd["a.scale"] = qsd.pop("a.weight")
    elif extra:
        qsd.update(extra)
    target = tmp_path / ("out.safetensors" if form == "file" else "out")
    before = json.dumps(qcfg, default=str)
    raises(exc, lambda: comfy_sdnq.save(qsd, target, qcfg), str(target), *says)
    assert json.dumps(qcfg, default=str) == before, "save changed the caller's config"
    assert os.listdir(tmp_path) == [], "save wrote something before failing"


def test_save_into_missing_directory(tmp_path, qsd):
    target = tmp_path / "no" / "such" / "dir" / "m.safetensors"
    raises(SdnqError, lambda: comfy_sdnq.save(qsd, target, U4), str(target), "cannot write")
    assert not (tmp_path / "no").exists()


def test_save_onto_a_directory(tmp_path, qsd):
    (tmp_path / "m.safetensors").mkdir()
    raises(SdnqError, lambda: comfy_sdnq.save(qsd, tmp_path / "m.safetensors", U4), "m.safetensors",
           "cannot write")
    assert os.listdir(tmp_path) == ["m.safetensors"] and os.listdir(tmp_path / "m.safetensors") == []


def test_save_model_config_not_json(tmp_path, qsd):
    target = tmp_path / "out"
    raises(SdnqError, lambda: comfy_sdnq.save(qsd, target, U4, model_config={"dtype": torch.float16}), str(target),
           "model_config", "not JSON")
    assert not target.exists() or os.listdir(target) == []


def _snapshot(folder) -> dict[str, bytes]:
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


class Boom(Exception):
    pass


def _fail_after_first_tensor(monkeypatch):
    """make safetensors_io's writer raise once the first tensor's bytes are written (it
    hands each tensor to f.write as a memoryview: a module global shadows the builtin)"""
    written = []

    def fake_memoryview(obj):
        if written:
            raise Boom("disk on fire")
        written.append(1)
        return memoryview(obj)

    monkeypatch.setattr(safetensors_io, "memoryview", fake_memoryview, raising=False)


@pytest.mark.parametrize("form", ["file", "folder", "sharded"])
def test_save_failure_leaves_the_old_files(tmp_path, qsd, monkeypatch, form):
    """a write that fails midway leaves no partial file, no temp file, and the old model intact"""
    target = tmp_path / ("m.safetensors" if form == "file" else "m")
    shard = 20_000 if form == "sharded" else 5 * 2**30
    comfy_sdnq.save(qsd, target, U4, max_shard_size=shard)
    before = _snapshot(tmp_path) if form == "file" else _snapshot(target)
    torch.manual_seed(1)
    new = {k: (quantize(torch.randn(64, 128, dtype=torch.bfloat16), "uint4") if layout.is_sdnq(v) else v)
           for k, v in qsd.items()}
    _fail_after_first_tensor(monkeypatch)
    with pytest.raises(Boom):
        comfy_sdnq.save(new, target, U4, max_shard_size=shard)
    after = _snapshot(tmp_path) if form == "file" else _snapshot(target)
    assert after.keys() == before.keys(), f"files left behind: {sorted(set(after) - set(before))}"
    assert after == before
    monkeypatch.undo()
    back = comfy_sdnq.load(target)
    assert torch.equal(back["a.weight"].dequantize(), qsd["a.weight"].dequantize())


SAVE_WORKER = r"""
import os, sys, signal, resource, json
sys.path.insert(0, {root!r})
import torch, comfy_sdnq
from comfy_sdnq.quantizer import quantize
from comfy_sdnq.errors import SdnqError
torch.manual_seed(1)
# a small layer, then a big one: with shards the first shard fits the limit, the second does not
sd = {{"l0.weight": quantize(torch.randn(64, 128, dtype=torch.bfloat16), "uint4"),
       "l1.weight": quantize(torch.randn(256, 256, dtype=torch.bfloat16), "uint4")}}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    comfy_sdnq.save(sd, {target!r}, {{"weights_dtype": "uint4"}}, max_shard_size={shard})
    print("saved")
except SdnqError as exc:
    print("SdnqError", exc)
"""


@pytest.mark.parametrize("form", ["file", "sharded"])
def test_save_with_the_disk_full(tmp_path, qsd, form):
    """a real write error (file size limit, as a full disk) mid-file: SdnqError naming the
    file, no temp file, the old model unchanged"""
    target = str(tmp_path / ("m.safetensors" if form == "file" else "m"))
    shard = 6000 if form == "sharded" else 5 * 2**30
    comfy_sdnq.save(qsd, target, U4, max_shard_size=shard)
    before = _snapshot(tmp_path) if form == "file" else _snapshot(target)
    code = SAVE_WORKER.format(root=ROOT, target=target, limit=8000, shard=shard)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    failed_in = "m/model-00002-of-00004.safetensors" if form == "sharded" else "m.safetensors"  # shard 1 went fine
    assert r.stdout.startswith("SdnqError") and f"{failed_in}: cannot write" in r.stdout, r.stdout
    after = _snapshot(tmp_path) if form == "file" else _snapshot(target)
    assert after == before, f"changed: {sorted(set(after) ^ set(before))}"


def test_save_then_load_succeeds_after_the_checks(tmp_path, qsd):
    """the checks do not reject good input: every form saves and loads back"""
    for target, shard in ((tmp_path / "a.safetensors", 5 * 2**30), (tmp_path / "b", 5 * 2**30),
                          (tmp_path / "c", 10_000)):
        comfy_sdnq.save(qsd, target, U4, max_shard_size=shard)
        back = comfy_sdnq.load(target)
        for k, v in qsd.items():
            assert torch.equal(back[k].dequantize() if layout.is_sdnq(v) else back[k],
                               v.dequantize() if layout.is_sdnq(v) else v), (target, k)
        assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


# ---------------------------------------------------------------------------
# state: a failed load changes nothing that was loaded before


def test_failed_load_leaves_loaded_models_usable(tmp_path, model_file):
    good, sd = model_file
    a = comfy_sdnq.load(good)
    want = dense(a)
    blob = bytearray(open(good, "rb").read())
    st = safetensors_io.SafetensorsFile(good)
    begin = st.entries["a.scale"][2]
    blob[st.data_start + begin: st.data_start + begin + 4] = struct.pack("<f", float("nan"))
    bad = write_raw(tmp_path / "bad.safetensors", bytes(blob))
    raises(SdnqFormatError, lambda: comfy_sdnq.load(bad), bad, "key 'a.scale'", "NaN")
    # the same file again, loaded after the failure, and the earlier state dict
    for k, v in dense(a).items():
        assert torch.equal(v, want[k]), k
    for k, v in dense(comfy_sdnq.load(good)).items():
        assert torch.equal(v, want[k]), k
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    assert torch.nn.functional.linear(x, a["a.weight"]).shape == (3, 64)


def test_loaded_tensors_do_not_write_through_to_the_file(tmp_path, model_file):
    """mapped tensors are copy-on-write: changing one in memory leaves the file as it was"""
    good, _ = model_file
    path = write_raw(tmp_path / "m.safetensors", open(good, "rb").read())
    before = open(path, "rb").read()
    sd = comfy_sdnq.load(path)
    sd["norm.weight"].add_(1)
    sd["a.weight"]._qdata.fill_(0)
    del sd
    assert open(path, "rb").read() == before


def test_tensor_source_errors_name_the_key():
    """from_tensors (in-memory tensors) follows the same rules"""
    t = sdnq_tensors(quantize(torch.randn(64, 128), "uint4"))
    t["scale"] = nan_at(t["scale"])
    raises(SdnqFormatError, lambda: files.from_tensors(t, U4, name="blk.proj"), "key 'blk.proj.scale'", "NaN")
