"""The converter against sdnq: same layers quantized, bit-identical tensors, files sdnq and
comfy_sdnq both read; pipelines, ComfyUI-style single files, dynamic type selection; bad
input and failed writes leave nothing behind."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import comfy_sdnq
from comfy_sdnq import converter, layout
from comfy_sdnq.errors import SdnqError, SdnqFormatError, SdnqUnsupportedError
from comfy_sdnq.safetensors_io import SafetensorsFile

from models import TinyNet, tiny_net

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def tinynet_known(monkeypatch):
    """make TinyNet a class diffusers knows, as a real model class is"""
    import diffusers

    monkeypatch.setattr(diffusers, "TinyNet", TinyNet, raising=False)


def _sdnq(model, **cfg):
    from sdnq.quantizer import sdnq_post_load_quant

    torch.manual_seed(1234)
    return sdnq_post_load_quant(model, torch_dtype=torch.bfloat16, **cfg)


def _bits(t):
    return t.contiguous().view(torch.uint8) if t.dtype.itemsize == 1 else t.contiguous()


def _compare_with_sdnq(sd, q):
    """our state dict (QuantizedTensors) vs sdnq's quantized model: same layers, same bits"""
    theirs = q.state_dict()
    ours = {k for k, v in sd.items() if layout.is_sdnq(v)}
    assert ours == {k[: -len(".scale")] + ".weight" for k in theirs if k.endswith(".scale")}
    for key in ours:
        prefix = key[: -len(".weight")]
        for name, t in comfy_sdnq.sdnq_tensors(sd[key]).items():
            ref = theirs[f"{prefix}.{name}"]
            assert t.dtype == ref.dtype and t.shape == ref.shape, (prefix, name)
            assert torch.equal(_bits(t), _bits(ref)), (prefix, name)
    for k, v in sd.items():
        if not layout.is_sdnq(v):
            assert torch.equal(v, theirs[k]), k
    return ours


@pytest.mark.parametrize("cfg", [dict(weights_dtype="uint4"), dict(weights_dtype="int8", group_size=32),
                                 dict(weights_dtype="float8_e4m3fn", quant_embedding=True),
                                 dict(weights_dtype="int6", quant_conv=True, use_quantized_matmul=True)],
                         ids=["uint4", "int8-g32", "fp8-embedding", "int6-conv-qmm"])
def test_folder_matches_sdnq_bit_for_bit(tmp_path, tinynet_known, cfg):
    tiny_net().save_pretrained(tmp_path / "dense")
    report = converter.convert(tmp_path / "dense", tmp_path / "q", **cfg)
    q = _sdnq(tiny_net(), **cfg)
    layers = _compare_with_sdnq(comfy_sdnq.load(tmp_path / "q"), q)
    assert {r.key for r in report.quantized} == layers
    # sdnq reads the folder back
    from sdnq.loader import load_sdnq_model

    back = load_sdnq_model(str(tmp_path / "q"), model_cls=TinyNet, dtype=torch.bfloat16)
    x = (torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1)),
         torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16))
    ya, yb = back(*x), q(*x)
    assert all(torch.equal(a, b) for a, b in zip(ya, yb))


def test_skip_lists_and_flux_match_sdnq(tmp_path):
    """a real diffusers model class: sdnq's per-class skip list applies, the layers match"""
    sys.path.insert(0, HERE)
    from comfy_models import flux_diffusers

    flux_diffusers().save_pretrained(tmp_path / "dense")
    report = converter.convert(tmp_path / "dense", tmp_path / "q", weights_dtype="uint4")
    _compare_with_sdnq(comfy_sdnq.load(tmp_path / "q"), _sdnq(flux_diffusers(), weights_dtype="uint4"))
    dense = {r.key for r in report.layers if r.dtype == "dense"}
    assert "x_embedder.weight" in dense and "proj_out.weight" in dense
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["_class_name"] == "FluxTransformer2DModel"
    assert set(cfg["quantization_config"]["modules_to_not_convert"]) >= {"x_embedder.weight", "proj_out.weight"}


def test_sdnq_own_default_skips_match_ours():
    from sdnq import common

    assert converter.COMMON_SKIP == tuple(common.common_skip_keys)
    for name, skips in converter.CLASS_SKIP.items():
        assert list(skips) == common.module_skip_keys_dict[name][0], name
    assert converter.weights_dtype_order() == common.weights_dtype_order


def test_dynamic_selection_matches_sdnq(tmp_path, tinynet_known):
    cfg = dict(weights_dtype="int2", use_dynamic_quantization=True, dynamic_loss_threshold=0.02)
    tiny_net().save_pretrained(tmp_path / "dense")
    report = converter.convert(tmp_path / "dense", tmp_path / "q", **cfg)
    q = _sdnq(tiny_net(), **cfg)
    theirs = {name: dt for dt, names in q.quantization_config.modules_dtype_dict.items() for name in names}
    ours = {r.key: r.dtype for r in report.quantized}
    assert ours == theirs and len(set(ours.values())) >= 1
    assert all(r.error ** 2 <= 0.02 * 1.01 for r in report.quantized)
    _compare_with_sdnq(comfy_sdnq.load(tmp_path / "q"), q)


def test_dynamic_tight_threshold_and_hopeless_layers(tmp_path, tinynet_known):
    from comfy_sdnq import dtypes

    tiny_net().save_pretrained(tmp_path / "dense")
    report = converter.convert(tmp_path / "dense", tmp_path / "q.safetensors", weights_dtype="int8",
                               use_dynamic_quantization=True, dynamic_loss_threshold=1e-6,
                               modules_to_not_convert=["blocks.1.weight"])
    assert report.quantized and all(dtypes.get(r.dtype).bits > 8 for r in report.quantized)
    assert "blocks.1.weight" in {r.key for r in report.layers if r.dtype == "dense"}
    # no type reaches a zero loss: every layer stays dense, so there is nothing to write
    with pytest.raises(SdnqError, match="no layer to quantize"):
        converter.convert(tmp_path / "dense", tmp_path / "z.safetensors", weights_dtype="int8",
                          use_dynamic_quantization=True, dynamic_loss_threshold=0.0)
    assert not (tmp_path / "z.safetensors").exists() and not _leftovers(tmp_path)


def test_sharded_folder_round_trip(tmp_path, tinynet_known):
    tiny_net().save_pretrained(tmp_path / "dense", max_shard_size="200KB")
    assert len([f for f in os.listdir(tmp_path / "dense") if f.endswith(".safetensors")]) > 1
    converter.convert(tmp_path / "dense", tmp_path / "q", weights_dtype="uint4", max_shard_size=100_000)
    out = os.listdir(tmp_path / "q")
    assert "diffusion_pytorch_model.safetensors.index.json" in out
    assert len([f for f in out if f.endswith(".safetensors")]) > 1
    _compare_with_sdnq(comfy_sdnq.load(tmp_path / "q"), _sdnq(tiny_net(), weights_dtype="uint4"))


def test_single_file_from_folder_and_svd(tmp_path, tinynet_known):
    tiny_net().save_pretrained(tmp_path / "dense")
    report = converter.convert(tmp_path / "dense", tmp_path / "q.safetensors", weights_dtype="uint4", use_svd=True,
                               svd_rank=16)
    meta = json.loads(SafetensorsFile(str(tmp_path / "q.safetensors")).metadata["sdnq_config"])
    assert meta["model_config"]["_class_name"] == "TinyNet" and meta["quantization_config"]["use_svd"]
    sd = comfy_sdnq.load(tmp_path / "q.safetensors")
    dense = tiny_net().state_dict()
    for r in report.quantized:
        w = sd[r.key]
        assert w.params.svd_up is not None
        err = float((w.dequantize().float() - dense[r.key].float()).norm() / dense[r.key].float().norm())
        assert err == pytest.approx(r.error, rel=1e-3, abs=1e-4) and err < 0.1


def _pipeline(root):
    """a tiny pipeline folder: a quantizable transformer, a VAE, a scheduler and a tokenizer file"""
    from diffusers import AutoencoderKL

    tiny_net().save_pretrained(root / "transformer")
    AutoencoderKL(block_out_channels=(32,), norm_num_groups=8, latent_channels=4).save_pretrained(root / "vae")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "FlowMatchEulerDiscreteScheduler"}')
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text('{"a": 0}')
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "TinyPipeline", "transformer": ["diffusers", "TinyNet"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "tokenizer": ["transformers", "X"]}))


def test_pipeline_folder(tmp_path, tinynet_known):
    _pipeline(tmp_path / "pipe")
    seen = []
    report = converter.convert(tmp_path / "pipe", tmp_path / "out", weights_dtype="uint4",
                               progress=lambda done, total, key: seen.append((done, total)))
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["model_index.json", "scheduler", "tokenizer", "transformer", "vae"]
    for same in ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json",
                 "vae/config.json", "vae/diffusion_pytorch_model.safetensors"):
        assert (out / same).read_bytes() == (tmp_path / "pipe" / same).read_bytes(), same
    _compare_with_sdnq(comfy_sdnq.load(out / "transformer"), _sdnq(tiny_net(), weights_dtype="uint4"))
    assert all(r.key in tiny_net().state_dict() for r in report.layers)
    assert seen[-1][0] == seen[-1][1] == len(SafetensorsFile(
        str(tmp_path / "pipe" / "transformer" / "diffusion_pytorch_model.safetensors")).keys())
    with pytest.raises(SdnqError, match="no component 'unet'"):
        converter.convert(tmp_path / "pipe", tmp_path / "out2", components=["unet"])


def _comfy_checkpoint(path):
    """a ComfyUI-style checkpoint: diffusion model, VAE and a text encoder under their prefixes"""
    import safetensors.torch

    g = torch.Generator().manual_seed(0)

    def w(*s):
        return (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16)

    sd = {
        "model.diffusion_model.img_in.weight": w(256, 64),
        "model.diffusion_model.double_blocks.0.img_attn.qkv.weight": w(768, 256),
        "model.diffusion_model.double_blocks.0.img_attn.qkv.bias": w(768),
        "model.diffusion_model.double_blocks.0.img_mlp.0.weight": w(1024, 256),
        "model.diffusion_model.final_layer.linear.weight": w(64, 256),
        "first_stage_model.decoder.mid.attn_1.q.weight": w(512, 512),
        "text_encoders.t5xxl.transformer.shared.weight": w(1000, 64),
        "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight": w(256, 256),
        "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight": w(256),
    }
    safetensors.torch.save_file(sd, str(path), metadata={"modelspec.title": "tiny"})
    return sd


def test_comfyui_checkpoint_sections(tmp_path):
    sd = _comfy_checkpoint(tmp_path / "ckpt.safetensors")
    report = converter.convert(tmp_path / "ckpt.safetensors", tmp_path / "q.safetensors", weights_dtype="int8")
    got = {r.key for r in report.quantized}
    assert got == {"model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
                   "model.diffusion_model.double_blocks.0.img_mlp.0.weight",
                   "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"}
    st = SafetensorsFile(str(tmp_path / "q.safetensors"))
    assert st.metadata["modelspec.title"] == "tiny"
    back = comfy_sdnq.load(tmp_path / "q.safetensors")
    for k, v in sd.items():
        if k in got:
            err = float((back[k].dequantize().float() - v.float()).norm() / v.float().norm())
            assert err < 0.02, k
        else:
            assert torch.equal(back[k], v), k  # VAE, embedding, skipped layers, biases: as they were


def test_overrides_and_skips(tmp_path, tinynet_known):
    tiny_net().save_pretrained(tmp_path / "dense")
    report = converter.convert(tmp_path / "dense", tmp_path / "q", weights_dtype="uint4",
                               modules_dtype_dict={"int8": ["blocks.0.weight"]}, modules_to_not_convert=["mlp"],
                               add_skip_keys=False)
    kinds = {r.key: r.dtype for r in report.layers}
    assert kinds["blocks.0.weight"] == "int8" and kinds["blocks.1.weight"] == "uint4"
    assert kinds["mlp.weight"] == "dense" and kinds["proj_in.weight"] == "uint4"  # no default skips
    _compare_with_sdnq(comfy_sdnq.load(tmp_path / "q"), _sdnq(
        tiny_net(), weights_dtype="uint4", modules_dtype_dict={"int8": ["blocks.0.weight"]}, modules_to_not_convert=["mlp"],
        add_skip_keys=False))


# ---------------------------------------------------------------------------
# bad input


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(".tmp-") or n.startswith(".old-")]


def test_not_a_model(tmp_path):
    import safetensors.torch

    safetensors.torch.save_file({"a": torch.zeros(10), "b.weight": torch.zeros(4)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(SdnqError, match=r"x\.safetensors: not a model"):
        converter.convert(tmp_path / "x.safetensors", tmp_path / "y.safetensors")
    (tmp_path / "notes.safetensors").write_bytes(b"hello, this is text")
    with pytest.raises(SdnqFormatError, match=r"notes\.safetensors"):
        converter.convert(tmp_path / "notes.safetensors", tmp_path / "y.safetensors")
    safetensors.torch.save_file({"l.weight": torch.zeros(8, 8)}, str(tmp_path / "small.safetensors"))
    with pytest.raises(SdnqError, match=r"small\.safetensors: no layer to quantize"):
        converter.convert(tmp_path / "small.safetensors", tmp_path / "y.safetensors")
    (tmp_path / "m.ckpt").write_bytes(b"\0" * 100)
    with pytest.raises(SdnqUnsupportedError, match=r"m\.ckpt: only \.safetensors"):
        converter.convert(tmp_path / "m.ckpt", tmp_path / "y.safetensors")
    assert not (tmp_path / "y.safetensors").exists() and not _leftovers(tmp_path)


def test_folder_without_config_and_bad_options(tmp_path, tinynet_known):
    tiny_net().save_pretrained(tmp_path / "dense")
    os.unlink(tmp_path / "dense" / "config.json")
    with pytest.raises(SdnqFormatError, match=r"dense: no config\.json"):
        converter.convert(tmp_path / "dense", tmp_path / "q")
    tiny_net().save_pretrained(tmp_path / "dense2")
    with pytest.raises(SdnqFormatError, match="int99"):
        converter.convert(tmp_path / "dense2", tmp_path / "q", weights_dtype="int99")
    with pytest.raises(SdnqError, match="unknown quantization option.*use_magic"):
        converter.convert(tmp_path / "dense2", tmp_path / "q", use_magic=True)
    with pytest.raises(SdnqUnsupportedError, match="use_codebook needs an unsigned"):
        converter.convert(tmp_path / "dense2", tmp_path / "q", weights_dtype="int4", use_codebook=True)
    with pytest.raises(SdnqError, match="no such file"):
        converter.convert(tmp_path / "missing", tmp_path / "q")
    assert not (tmp_path / "q").exists() and not _leftovers(tmp_path)


def test_refuses_sdnq_input_and_existing_output(tmp_path, tinynet_known):
    tiny_net().save_pretrained(tmp_path / "dense")
    converter.convert(tmp_path / "dense", tmp_path / "q", weights_dtype="uint4")
    with pytest.raises(SdnqError, match="already quantized"):
        converter.convert(tmp_path / "q", tmp_path / "q2")
    converter.convert(tmp_path / "dense", tmp_path / "q.safetensors", weights_dtype="uint4")
    with pytest.raises(SdnqError, match="already SDNQ"):
        converter.convert(tmp_path / "q.safetensors", tmp_path / "q2.safetensors")
    with pytest.raises(SdnqError, match="already exists"):
        converter.convert(tmp_path / "dense", tmp_path / "q", weights_dtype="int8")
    before = comfy_sdnq.load(tmp_path / "q")["blocks.0.weight"].params.wtype
    converter.convert(tmp_path / "dense", tmp_path / "q", weights_dtype="int8", overwrite=True)
    after = comfy_sdnq.load(tmp_path / "q")["blocks.0.weight"].params.wtype
    assert before != after and not _leftovers(tmp_path)


@pytest.mark.parametrize("out", ["q.safetensors", "q"])
def test_full_disk_leaves_nothing(tmp_path, out):
    """a write that fails part way (the file-size limit stands in for a full disk: the
    same OSError path) raises an error naming the file and leaves no partial output"""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {HERE!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        import diffusers
        from models import TinyNet, tiny_net
        diffusers.TinyNet = TinyNet
        tiny_net().save_pretrained({str(tmp_path / 'dense')!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
        from comfy_sdnq import converter
        from comfy_sdnq.errors import SdnqWriteError
        try:
            converter.convert({str(tmp_path / 'dense')!r}, {str(tmp_path / out)!r}, weights_dtype="int8")
        except SdnqWriteError as exc:
            print("ERROR", exc)
            sys.exit(3)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "File too large" in r.stdout and out.split(".")[0] in r.stdout
    assert not (tmp_path / out).exists() and not _leftovers(tmp_path)
    if out == "q":
        assert sorted(os.listdir(tmp_path)) == ["dense"]
