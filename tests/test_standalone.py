"""The standalone runtime (comfy_sdnq.standalone) and its offloading (comfy_sdnq.offload),
against sdnq's own loader: a tiny FluxTransformer2DModel quantized by sdnq (uint4 + SVD,
int8), a tiny FluxPipeline with an SDNQ transformer and an SDNQ T5 text encoder (CLIP,
VAE, tokenizers and scheduler plain, built offline), sdnq's TinyNet with quantized
Conv2d and Embedding layers. On the CPU the offload modes move nothing but run all of
their bookkeeping; the CUDA tests stream for real and skip without a GPU."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import FakeEvent, FakeStreamAPI
from models import TinyNet, tiny_inputs, tiny_net

from comfy_sdnq import layout, offload, standalone
from comfy_sdnq.errors import SdnqError, SdnqFormatError, SdnqUnsupportedError
from comfy_sdnq.safetensors_io import SafetensorsFile, write

FLUX = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=32,
            num_attention_heads=4, joint_attention_dim=128, pooled_projection_dim=32, guidance_embeds=False,
            axes_dims_rope=(8, 12, 12))
CONFIGS = {"uint4-svd": dict(weights_dtype="uint4", use_svd=True, svd_rank=8), "int8": dict(weights_dtype="int8")}
# sdnq dequantizes SVD layers in the factors' dtype (bf16) and matmuls that weight; we run the
# low-rank branch on the activations in the compute dtype. In float32 the outputs then differ by
# about one bf16 rounding of the weights (2**-8 relative); in bfloat16 both round every op, and
# the two orders of rounding through four blocks stay within a few bf16 ulps (2**-6).
TOL = {torch.float32: 2.0**-8, torch.bfloat16: 2.0**-6}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def randomize(m, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m.eval()


def tiny_flux(seed=0):
    from diffusers import FluxTransformer2DModel

    return randomize(FluxTransformer2DModel(**FLUX), seed).to(torch.bfloat16)


def sdnq_save(model, path, **cfg):
    from sdnq.loader import save_sdnq_model
    from sdnq.quantizer import sdnq_post_load_quant

    torch.manual_seed(1234)
    save_sdnq_model(sdnq_post_load_quant(model, torch_dtype=torch.bfloat16, **cfg), str(path))
    return str(path)


def sdnq_load(path, dtype, **kw):
    """sdnq's loader; it casts only its quantized layers to dtype, so the rest (and their
    biases) is cast here"""
    from sdnq.loader import load_sdnq_model

    model = load_sdnq_model(str(path), dtype=dtype, **kw)
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if p.is_floating_point() and (name == "bias" or not hasattr(m, "sdnq_dequantizer")):
                p.data = p.data.to(dtype)
    return model


def flux_inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(64, 3)
    ids[:, 1], ids[:, 2] = torch.arange(64) // 8, torch.arange(64) % 8
    return dict(hidden_states=torch.randn(1, 64, 16, generator=g).to(dtype),
                encoder_hidden_states=torch.randn(1, 8, 128, generator=g).to(dtype),
                pooled_projections=torch.randn(1, 32, generator=g).to(dtype), timestep=torch.tensor([0.5]),
                img_ids=ids, txt_ids=torch.zeros(8, 3))


def run(model, dtype=torch.bfloat16, device="cpu"):
    kw = {k: v.to(device) for k, v in flux_inputs(dtype).items()}
    with torch.no_grad():
        return model(**kw).sample


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("standalone")
    out = {"dense": str(tmp / "dense")}
    tiny_flux().save_pretrained(out["dense"])
    for name, cfg in CONFIGS.items():
        out[name] = sdnq_save(tiny_flux(), tmp / name, **cfg)
    return out


# ---------------------------------------------------------------------------
# models


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_model_matches_sdnq(folders, cfg, dtype):
    ours = standalone.load_model(folders[cfg], dtype=dtype, device="cpu")
    ref = sdnq_load(folders[cfg], dtype)
    quantized = {n for n, m in ref.named_modules() if hasattr(m, "sdnq_dequantizer")}
    assert quantized and quantized == {n for n, m in ours.named_modules()
                                       if layout.is_sdnq(m._parameters.get("weight"))}
    w = ours.transformer_blocks[0].attn.to_q.weight
    assert isinstance(w, torch.nn.Parameter) and w.dtype == dtype and not w.requires_grad
    got, want = run(ours, dtype), run(ref, dtype)
    assert got.dtype == want.dtype == dtype
    err = rel(got, want)
    print(f"\n{cfg} {dtype}: relative difference to sdnq {err:.2e}")
    assert err < TOL[dtype]
    if cfg == "int8":  # no SVD: the same dequantized weight, the same matmul
        assert torch.equal(got, want)


def test_sdnq_is_not_imported(folders):
    code = ("import sys, torch; from comfy_sdnq import standalone; "
            f"m = standalone.load_model({folders['uint4-svd']!r}, device='cpu'); "
            "assert not [k for k in sys.modules if k.split('.')[0] == 'sdnq'], 'sdnq imported'; print('ok')")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       env=dict(os.environ, PYTHONPATH=root), timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_plain_folder_matches_diffusers(folders):
    from diffusers import FluxTransformer2DModel

    ours = standalone.load_model(folders["dense"], dtype=torch.bfloat16, device="cpu")
    ref = FluxTransformer2DModel.from_pretrained(folders["dense"], torch_dtype=torch.bfloat16).eval()
    assert not any(layout.is_sdnq(p) for p in ours.parameters())
    assert torch.equal(run(ours), run(ref))


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_offload_modes_match_none(folders, cfg):
    ref = run(standalone.load_model(folders[cfg], device="cpu"))
    for mode in ("model", "layer"):
        model = standalone.load_model(folders[cfg], device="cpu", offload=mode)
        for _ in range(2):
            assert torch.equal(run(model), ref), mode
        st = offload.stats(model)
        assert st.transfers == st.bytes_moved == 0  # device cpu: nothing moves
        if mode == "layer":
            assert st.loads == 2 * 4  # 4 blocks per forward
            assert 0 < st.resident_bytes < st.streamed_bytes
            names = [n for n, _ in offload.find_blocks(model)]
            assert names == ["transformer_blocks.0", "transformer_blocks.1", "single_transformer_blocks.0",
                             "single_transformer_blocks.1"]
        else:
            assert st.loads == 1 and st.resident_bytes == 0  # moved in once, then stays
        # between runs the streamed weights sit on their packed host copies
        state = offload.state_of(model)
        w = model.transformer_blocks[0].attn.to_q.weight
        assert w._qdata.untyped_storage().data_ptr() == state.units[0].host.untyped_storage().data_ptr()


def test_offload_remove_release_and_bad_mode(folders):
    model = standalone.load_model(folders["uint4-svd"], device="cpu", offload="layer")
    ref = run(model)
    offload.release(model)
    offload.remove(model)
    assert offload.stats(model) is None and offload.state_of(model) is None
    assert not model.transformer_blocks[0]._forward_pre_hooks
    assert torch.equal(run(model), ref)  # still runs, from the host copies
    stats = offload.apply(model, "layer", "cpu", blocks=["single_transformer_blocks.1"])
    assert torch.equal(run(model), ref) and stats.loads == 1
    with pytest.raises(SdnqError, match="offload mode"):
        offload.apply(model, "disk")
    with pytest.raises(SdnqError, match="offload must be"):
        standalone.load_model(folders["uint4-svd"], offload="disk")


def test_conv_and_embedding(tmp_path):
    """sdnq's quantized Conv2d and Embedding weights: F.conv2d / F.embedding dequantize them"""
    from sdnq.quantizer import sdnq_post_load_quant
    from sdnq.loader import save_sdnq_model

    torch.manual_seed(100)
    q = sdnq_post_load_quant(tiny_net(0), quant_conv=True, quant_embedding=True, torch_dtype=torch.bfloat16,
                             weights_dtype="uint4", use_svd=True, svd_rank=8)
    save_sdnq_model(q, str(tmp_path))
    ours = standalone.load_model(tmp_path, device="cpu", model_cls=TinyNet)
    for name in ("embed", "conv", "blocks.0", "mlp"):
        assert layout.is_sdnq(ours.get_submodule(name).weight), name
    ref = sdnq_load(tmp_path, torch.bfloat16, model_cls=TinyNet)
    tokens, image = tiny_inputs()
    with torch.no_grad():
        got, want = ours(tokens, image), ref(tokens, image)
        for g, w in zip(got, want):
            assert rel(g, w) < TOL[torch.bfloat16]
        layered = standalone.load_model(tmp_path, device="cpu", model_cls=TinyNet, offload="layer")
        assert [n for n, _ in offload.find_blocks(layered)] == ["blocks.0", "blocks.1"]
        for a, b in zip(layered(tokens, image), got):
            assert torch.equal(a, b)


def test_layer_streaming_logic_emulated(folders, monkeypatch):
    """the CUDA path of layer streaming (side stream, real copies into fresh buffers,
    prefetch of the successor, throttle, copy waits) with the stream API emulated on the CPU"""
    ref = run(standalone.load_model(folders["uint4-svd"], device="cpu"))
    monkeypatch.setattr(offload, "_streams", FakeStreamAPI())
    monkeypatch.setattr(offload, "_STREAM_DEVICES", ("cpu",))
    model = standalone.load_model(folders["uint4-svd"], device="cpu", offload="layer")
    state = offload.state_of(model)
    mover, units = state.mover, state.units
    seen = []
    acquire = mover.acquire

    def spy(unit, successor=None):
        acquire(unit, successor)
        q = model.get_submodule(unit.name + (".attn.to_q" if "single" in unit.name else ".ff.net.2")).weight
        on_host = q._qdata.untyped_storage().data_ptr() == unit.host.untyped_storage().data_ptr()
        seen.append((unit.name, [u.name for u in mover.live], len(mover.retired), on_host))

    monkeypatch.setattr(mover, "acquire", spy)
    synced = FakeEvent.synced
    for _ in range(3):
        assert torch.equal(run(model), ref)
    st = offload.stats(model)
    # each forward copies its 4 blocks; the last block prefetches the first one for the next forward
    assert st.transfers == 3 * 4 + 1 and st.bytes_moved == 3 * st.streamed_bytes + units[0].nbytes
    assert st.loads == 12 and FakeEvent.synced > synced and st.throttle_s > 0
    names = [u.name for u in units]
    for i, (name, live, retired, on_host) in enumerate(seen):
        nxt = names[(names.index(name) + 1) % 4]
        assert live == [name, nxt] and retired <= 1 and not on_host  # running from a device copy
    st.resolve()
    assert st.wait_s == pytest.approx(12 * 0.5e-3)
    assert [u.name for u in mover.live] == [names[0]]
    offload.remove(model)
    assert not mover.live and not mover.retired
    assert torch.equal(run(model), ref)


# ---------------------------------------------------------------------------
# bad input


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _edit_config(path, **changes):
    cpath = os.path.join(path, "config.json")
    cfg = json.load(open(cpath))
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(cpath, "w"))


def _edit_tensors(path, drop=(), add=None):
    name = next(f for f in os.listdir(path) if f.endswith(".safetensors"))
    f = SafetensorsFile(os.path.join(path, name))
    tensors = {k: f.get(k).clone() for k in f.keys() if k not in drop}
    tensors.update(add or {})
    del f
    write(os.path.join(path, name), tensors)


def test_errors(folders, tmp_path):
    with pytest.raises(SdnqFormatError, match="no config.json"):
        standalone.load_model(tmp_path)
    with pytest.raises(SdnqFormatError, match="not a folder"):
        standalone.load_model(tmp_path / "nothing")
    bad = _copy(folders["uint4-svd"], tmp_path / "unknown")
    _edit_config(bad, _class_name="NoSuchTransformer")
    with pytest.raises(SdnqUnsupportedError, match=r"config\.json: unknown class 'NoSuchTransformer'"):
        standalone.load_model(bad)
    _edit_config(bad, _class_name=None)
    with pytest.raises(SdnqFormatError, match="names no model class"):
        standalone.load_model(bad)

    missing = _copy(folders["uint4-svd"], tmp_path / "missing")
    _edit_tensors(missing, drop=["proj_out.weight", "transformer_blocks.1.attn.to_q.weight",
                                 "transformer_blocks.1.attn.to_q.scale", "transformer_blocks.1.attn.to_q.zero_point",
                                 "transformer_blocks.1.attn.to_q.svd_up", "transformer_blocks.1.attn.to_q.svd_down"])
    with pytest.raises(SdnqFormatError, match=r"missing 2 key\(s\) of FluxTransformer2DModel: proj_out.weight, "
                                              r"transformer_blocks.1.attn.to_q.weight") as e:
        standalone.load_model(missing)
    assert str(missing) in str(e.value)

    extra = _copy(folders["dense"], tmp_path / "extra")
    _edit_tensors(extra, add={"head.weight": torch.zeros(2, 2)})
    with pytest.raises(SdnqFormatError, match=r"1 unexpected key\(s\): head.weight"):
        standalone.load_model(extra)

    shape = _copy(folders["uint4-svd"], tmp_path / "shape")
    _edit_config(shape, joint_attention_dim=64)
    with pytest.raises(SdnqFormatError, match=r"context_embedder.weight'?: shape \(128, 128\) in the file, "
                                              r"FluxTransformer2DModel expects \(128, 64\)"):
        standalone.load_model(shape)

    with pytest.raises(SdnqFormatError, match="no model_index.json.*use load_model"):
        standalone.load_pipeline(folders["dense"])


# ---------------------------------------------------------------------------
# pipelines


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """a tiny FluxPipeline: SDNQ transformer and T5 text encoder, plain CLIP and VAE"""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in letters:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    tok2 = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
                       + [(c, -3.0) for c in letters], extra_ids=0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok2), d_model=128, d_ff=256, d_kv=32, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0,
                                 eos_token_id=1))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, shift_factor=0.1, scaling_factor=0.4,
                        use_quant_conv=False, use_post_quant_conv=False)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=randomize(vae, 1),
                        text_encoder=randomize(clip, 2), tokenizer=tok, text_encoder_2=randomize(t5, 3),
                        tokenizer_2=tok2, transformer=tiny_flux(4)).to(torch.bfloat16)
    root = str(tmp_path_factory.mktemp("pipeline") / "flux")
    pipe.save_pretrained(root)
    for name in ("transformer", "text_encoder_2"):
        shutil.rmtree(os.path.join(root, name))
        sdnq_save(getattr(pipe, name), os.path.join(root, name), **CONFIGS["uint4-svd"])
    return root


PROMPT = dict(prompt="a cat", height=16, width=16, num_inference_steps=2, guidance_scale=3.5, max_sequence_length=16)


def generate(pipe, output_type="latent"):
    return pipe(**PROMPT, output_type=output_type, generator=torch.Generator().manual_seed(0)).images


def test_pipeline_matches_sdnq_in_every_mode(pipeline_folder):
    from diffusers import AutoencoderKL, FluxPipeline
    from transformers import CLIPTextModel, T5Tokenizer

    outs = {}
    for mode in offload.MODES:
        pipe = standalone.load_pipeline(pipeline_folder, dtype=torch.bfloat16, device="cpu", offload=mode)
        assert isinstance(pipe, FluxPipeline) and isinstance(pipe.tokenizer_2, T5Tokenizer)
        assert layout.is_sdnq(pipe.transformer.transformer_blocks[0].attn.to_q.weight)
        assert layout.is_sdnq(pipe.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight)
        assert pipe.text_encoder_2.encoder.embed_tokens.weight is pipe.text_encoder_2.shared.weight  # tied
        assert not any(layout.is_sdnq(p) for p in pipe.vae.parameters())
        outs[mode] = generate(pipe)
        image = generate(pipe, "pt")  # through vae.decode
        assert image.shape == (1, 3, 16, 16)
        st = offload.stats(pipe)
        if mode == "model":
            # two runs: CLIP, T5, transformer; then again, and the VAE: one component resident at a time
            assert st.loads == 3 + 4 and pipe._execution_device == torch.device("cpu")
            states = [offload.state_of(c) for c in (pipe.text_encoder, pipe.text_encoder_2, pipe.transformer, pipe.vae)]
            assert states[0].group is states[3].group and states[3].group.active is states[3]
            assert [bool(s.mover.live) for s in states] == [False, False, False, True]
        elif mode == "layer":  # blocks of CLIP 2, T5 2, transformer 4 x 2 steps, VAE decoder 2 + 2
            assert st.loads == 2 * (2 + 2 + 4 * 2) + 4
    for mode in ("model", "layer"):
        assert torch.equal(outs[mode], outs["none"]), mode
    comps = standalone.load_pipeline(pipeline_folder, dtype=torch.bfloat16, device="cpu").components
    comps.update(transformer=sdnq_load(os.path.join(pipeline_folder, "transformer"), torch.bfloat16),
                 text_encoder_2=sdnq_load(os.path.join(pipeline_folder, "text_encoder_2"), torch.bfloat16),
                 text_encoder=CLIPTextModel.from_pretrained(os.path.join(pipeline_folder, "text_encoder"),
                                                            dtype=torch.bfloat16),
                 vae=AutoencoderKL.from_pretrained(os.path.join(pipeline_folder, "vae"), torch_dtype=torch.bfloat16))
    want = generate(FluxPipeline(**comps))
    err = rel(outs["none"], want)
    print(f"\npipeline latents vs sdnq: {err:.2e}")
    assert err < TOL[torch.bfloat16]


def test_pipeline_errors(pipeline_folder, tmp_path):
    with pytest.raises(SdnqFormatError, match="no config.json.*use load_pipeline"):
        standalone.load_model(pipeline_folder)
    bad = _copy(pipeline_folder, tmp_path / "p")
    index = json.load(open(os.path.join(bad, "model_index.json")))
    json.dump({**index, "_class_name": "NoSuchPipeline"}, open(os.path.join(bad, "model_index.json"), "w"))
    with pytest.raises(SdnqUnsupportedError, match="unknown class 'NoSuchPipeline'"):
        standalone.load_pipeline(bad)
    json.dump({**index, "vae": ["mylib", "MyVAE"]}, open(os.path.join(bad, "model_index.json"), "w"))
    with pytest.raises(SdnqUnsupportedError, match="library 'mylib'"):
        standalone.load_pipeline(bad)
    json.dump(index, open(os.path.join(bad, "model_index.json"), "w"))
    shutil.rmtree(os.path.join(bad, "vae"))
    with pytest.raises(SdnqFormatError, match="lists 'vae', but there is no vae/ folder"):
        standalone.load_pipeline(bad)


# ---------------------------------------------------------------------------
# CUDA: real streaming (skips without a GPU)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_layer_streaming_cuda(folders, cfg):
    ref = run(standalone.load_model(folders[cfg], device="cuda"), device="cuda")
    base = torch.cuda.memory_allocated()
    model = standalone.load_model(folders[cfg], device="cuda", offload="layer")
    st = offload.stats(model)
    assert torch.cuda.memory_allocated() - base < st.resident_bytes + 4096 * 64  # only the resident part moved
    state = offload.state_of(model)
    assert all(u.host.is_pinned() for u in state.units)
    st.reset()
    for _ in range(3):
        out = run(model, device="cuda")
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    st.resolve()
    # the last block prefetches the first one for the next forward
    assert st.transfers == 3 * 4 + 1 and st.bytes_moved == 3 * st.streamed_bytes + state.units[0].nbytes
    assert st.loads == 3 * 4 and st.wait_s >= 0.0
    assert len(state.mover.live) == 1
    d = st.as_dict()
    assert d["peak_bytes"] > 0 and d["device"].startswith("cuda")
    offload.remove(model)
    assert not state.mover.live and not state.mover.retired


@pytest.mark.cuda
@cuda
def test_model_offload_cuda(pipeline_folder):
    ref = generate(standalone.load_pipeline(pipeline_folder, dtype=torch.bfloat16, device="cuda"))
    pipe = standalone.load_pipeline(pipeline_folder, dtype=torch.bfloat16, device="cuda", offload="model")
    assert pipe._execution_device.type == "cuda"
    assert all(p.device.type == "cpu" for p in pipe.transformer.parameters())
    torch.testing.assert_close(generate(pipe), ref, rtol=0, atol=0)
    st = offload.stats(pipe)
    assert st.transfers == st.loads == 3 and st.bytes_moved > 0
    offload.release(pipe)
    assert offload.state_of(pipe.transformer).group.active is None
