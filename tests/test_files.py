"""File round trips in both directions with the sdnq package, sharded folders, the
single-file form, a "4bit-dynamic" model, and memory-mapped loading."""
import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from helpers import assert_bits_equal
from models import FILE_CONFIGS as CONFIGS
from models import TinyNet, tiny_inputs, tiny_net

import comfy_sdnq
from comfy_sdnq import files, layout
from comfy_sdnq.errors import SdnqFormatError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def sdnq_model(cfg, seed=0):
    from sdnq.quantizer import sdnq_post_load_quant

    torch.manual_seed(seed + 100)
    return sdnq_post_load_quant(tiny_net(seed), quant_conv=True, quant_embedding=True, torch_dtype=torch.bfloat16,
                                **cfg)


def sdnq_layers(model):
    """{key: sdnq's dequantized weight} for every quantized layer"""
    from sdnq.common import sdnq_keys

    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "sdnq_dequantizer"):
            params = {k: getattr(mod, k, None) for k in sdnq_keys}
            params = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else None) for k, v in params.items()}
            dq = mod.sdnq_dequantizer
            out[name + ".weight"] = (dq(**params, skip_compile=True, skip_quantized_matmul=dq.use_quantized_matmul),
                                     dq, params)
    return out


def close_enough(got, want, dq, params, what):
    """exact unless sdnq ends in a matmul (SVD, Hadamard): see tests/test_oracle.py"""
    if params.get("svd_up") is None and not dq.use_hadamard:
        assert_bits_equal(got, want, what)
        return
    mag = want.float().abs()
    if params.get("svd_up") is not None:
        up, down = params["svd_up"], params["svd_down"]
        if dq.use_quantized_matmul:
            up, down = up.t(), down.t()
        mag = mag + (up.float() @ down.float()).abs().reshape(want.shape)
    if dq.use_hadamard:
        h = dq.hadamard_group_size
        mag = mag + mag.reshape(want.shape[0], -1, h).sum(-1, keepdim=True).expand(-1, -1, h).reshape(want.shape) \
            / h ** 0.5
    diff = (got.float() - want.float()).abs()
    assert bool((diff <= 2**-7 * mag).all()), f"{what}: max diff {float(diff.max())}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_sdnq_saves_we_load(cfg, tmp_path):
    from sdnq.loader import save_sdnq_model

    model = sdnq_model(cfg)
    save_sdnq_model(model, str(tmp_path))
    sd = comfy_sdnq.load(tmp_path)
    want = sdnq_layers(model)
    assert want, "sdnq quantized nothing"
    for key, (ref, dq, params) in want.items():
        qt = sd[key]
        assert layout.is_sdnq(qt), key
        assert qt.shape == ref.shape and qt.dtype == torch.bfloat16
        close_enough(qt.dequantize(), ref, dq, params, f"{cfg} {key}")
    # plain tensors come through unchanged
    state = model.state_dict()
    for key, t in sd.items():
        if not layout.is_sdnq(t) and key in state and not key.endswith(("scale", "zero_point", "svd_up", "svd_down")):
            assert_bits_equal(t, state[key], key)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_we_save_sdnq_loads(cfg, tmp_path):
    from sdnq.loader import load_sdnq_model

    # quantize with sdnq in memory (the config's layer rules), then write through comfy_sdnq
    model = sdnq_model(cfg)
    sd = comfy_sdnq.load(_save_with_sdnq(model, tmp_path / "a"))
    qcfg = files.load_config(tmp_path / "a").raw
    comfy_sdnq.save(sd, tmp_path / "b", qcfg, model_config=dict(model.config))
    back = load_sdnq_model(str(tmp_path / "b"), model_cls=TinyNet, dtype=torch.bfloat16)
    got = sdnq_layers(back)
    want = sdnq_layers(model)
    assert got.keys() == want.keys()
    for key in want:
        assert_bits_equal(got[key][0], want[key][0], f"{cfg} {key} (sdnq reading comfy_sdnq's files)")
    tokens, image = tiny_inputs()
    with torch.no_grad():
        a, b = back(tokens, image), model(tokens, image)
    assert_bits_equal(a[0], b[0], "forward")


def _save_with_sdnq(model, path):
    from sdnq.loader import save_sdnq_model

    save_sdnq_model(model, str(path))
    return path


def test_quantize_save_load_single_file(tmp_path):
    torch.manual_seed(0)
    sd = {"a.weight": comfy_sdnq.quantize(torch.randn(64, 256, dtype=torch.bfloat16), "uint4", use_svd=True,
                                          svd_rank=8),
          "a.bias": torch.randn(64, dtype=torch.bfloat16),
          "b.weight": comfy_sdnq.quantize(torch.randn(96, 128, dtype=torch.bfloat16), "int5"),
          "c.weight": torch.randn(10, 10)}
    path = tmp_path / "m.safetensors"
    comfy_sdnq.save(sd, path, {"weights_dtype": "uint4", "use_svd": True, "svd_rank": 8})
    meta = files.SafetensorsFile(str(path)).metadata
    doc = json.loads(meta[files.CONFIG_KEY])
    assert doc["quantization_config"]["quant_method"] == "sdnq" and doc["torch_dtype"] == "bfloat16"
    # b is int5 while the config says uint4: the per-layer type is recorded as sdnq does
    assert doc["quantization_config"]["modules_dtype_dict"] == {"int5": ["b.weight"]}
    back = comfy_sdnq.load(path)
    assert set(back) == set(sd)
    for k in ("a.weight", "b.weight"):
        assert_bits_equal(back[k].dequantize(), sd[k].dequantize(), k)
        assert_bits_equal(back[k]._qdata, sd[k]._qdata, k + " codes")
    assert_bits_equal(back["c.weight"], sd["c.weight"])


def test_sharded_folder(tmp_path):
    torch.manual_seed(0)
    sd = {f"l{i}.weight": comfy_sdnq.quantize(torch.randn(64, 128, dtype=torch.bfloat16), "uint4") for i in range(6)}
    comfy_sdnq.save(sd, tmp_path, {"weights_dtype": "uint4"}, max_shard_size=10_000)
    names = sorted(os.listdir(tmp_path))
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in names
    back = comfy_sdnq.load(tmp_path)
    for k, v in sd.items():
        assert_bits_equal(back[k].dequantize(), v.dequantize(), k)


def test_dynamic_model_with_modules_dtype_dict(tmp_path):
    """a '4bit-dynamic' model: per-layer types chosen by error threshold, recorded in modules_dtype_dict"""
    cfg = {"weights_dtype": "uint4", "use_dynamic_quantization": True, "dynamic_loss_threshold": 2e-3,
           "use_svd": True, "svd_rank": 8}
    model = sdnq_model(cfg)
    _save_with_sdnq(model, tmp_path)
    qcfg = json.load(open(tmp_path / "quantization_config.json"))
    kinds = {t for t, names in qcfg["modules_dtype_dict"].items() if names}
    assert len(kinds) >= 2, f"dynamic quantization picked one type only: {qcfg['modules_dtype_dict']}"
    sd = comfy_sdnq.load(tmp_path)
    for key, (ref, dq, params) in sdnq_layers(model).items():
        assert comfy_sdnq.dtypes.get(sd[key].params.wtype).name == dq.weights_dtype, key
        close_enough(sd[key].dequantize(), ref, dq, params, key)


def test_compute_dtype_from_config_and_argument(tmp_path):
    torch.manual_seed(0)
    qt = comfy_sdnq.quantize(torch.randn(64, 128, dtype=torch.float16), "int8")
    comfy_sdnq.save({"x.weight": qt}, tmp_path / "m.safetensors", {"weights_dtype": "int8"})
    assert comfy_sdnq.load(tmp_path / "m.safetensors")["x.weight"].dtype == torch.float16
    assert comfy_sdnq.load(tmp_path / "m.safetensors", dtype=torch.float32)["x.weight"].dtype == torch.float32
    model = sdnq_model({"weights_dtype": "int8"})
    _save_with_sdnq(model, tmp_path / "f")
    cfg = json.load(open(tmp_path / "f" / "config.json"))
    cfg.pop("torch_dtype", None)
    json.dump(cfg, open(tmp_path / "f" / "config.json", "w"))
    assert comfy_sdnq.load(tmp_path / "f")["blocks.0.weight"].dtype == torch.bfloat16  # the default


def _big_sdnq_file(path, out=16384, inp=262144):
    """a 2 GiB uint4 layer written without materializing it (sparse file)"""
    codes = out * inp // 2
    scale = torch.full((out, 1), 0.01, dtype=torch.bfloat16)
    zp = torch.zeros((out, 1), dtype=torch.bfloat16)
    small = scale.view(torch.uint8).numpy().tobytes() + zp.view(torch.uint8).numpy().tobytes()
    header = {"l.weight": {"dtype": "U8", "shape": [codes], "data_offsets": [0, codes]},
              "l.scale": {"dtype": "BF16", "shape": [out, 1], "data_offsets": [codes, codes + out * 2]},
              "l.zero_point": {"dtype": "BF16", "shape": [out, 1], "data_offsets": [codes + out * 2, codes + out * 4]},
              "__metadata__": {files.CONFIG_KEY: json.dumps({"quantization_config": {
                  "quant_method": "sdnq", "weights_dtype": "uint4", "group_size": -1}})}}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + codes)
        f.seek(8 + len(blob) + codes)
        f.write(small)
    return codes


def test_load_is_memory_mapped(tmp_path):
    """loading a 2 GiB file must not read it: RSS grows by far less than the file size"""
    path = tmp_path / "big.safetensors"
    size = _big_sdnq_file(path)
    code = ("import sys, os, resource\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            "import comfy_sdnq, comfy_sdnq.files, comfy_sdnq.layout, torch\n"
            "def rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
            "before = rss()\n"
            f"sd = comfy_sdnq.load({str(path)!r})\n"
            "w = sd['l.weight']\n"
            "print(rss() - before, tuple(w.shape), w.params.nbytes(w._qdata))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    grew = float(r.stdout.split()[0])
    print(f"file {size / 2**30:.1f} GiB of codes, RSS grew {grew:.1f} MiB")
    assert grew < 64, f"RSS grew {grew:.0f} MiB loading a {size / 2**30:.1f} GiB file"


def test_load_rejects_non_sdnq_and_folders_without_config(tmp_path):
    from comfy_sdnq.safetensors_io import write

    write(str(tmp_path / "plain.safetensors"), {"x": torch.zeros(3)})
    with pytest.raises(SdnqFormatError, match="not an SDNQ file"):
        comfy_sdnq.load(tmp_path / "plain.safetensors")
    os.makedirs(tmp_path / "pipe" / "transformer")
    json.dump({"_class_name": "FluxPipeline"}, open(tmp_path / "pipe" / "model_index.json", "w"))
    with pytest.raises(SdnqFormatError, match="pipeline folder.*transformer"):
        comfy_sdnq.load(tmp_path / "pipe")


def test_plain_scale_parameters_stay_plain(tmp_path):
    """FLUX.1's QK-norm weights are named '...query_norm.scale' in ComfyUI's layout: a
    '<module>.scale' with no '<module>.weight' and no SDNQ side tensors is a plain tensor"""
    qt = comfy_sdnq.quantize(torch.randn(64, 128, dtype=torch.bfloat16), "uint4")
    norm = torch.rand(128, dtype=torch.bfloat16)
    sd = {"img_attn.qkv.weight": qt, "img_attn.norm.query_norm.scale": norm}
    comfy_sdnq.save(sd, tmp_path / "m.safetensors", {"weights_dtype": "uint4"})
    back = comfy_sdnq.load(tmp_path / "m.safetensors")
    assert torch.equal(back["img_attn.norm.query_norm.scale"], norm)
    assert torch.equal(back["img_attn.qkv.weight"].dequantize(), qt.dequantize())
