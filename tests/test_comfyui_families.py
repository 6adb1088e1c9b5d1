"""SDNQ model families through ComfyUI, with sdnq (the package) as the oracle.

A. Detection at the published size: each diffusion model is built by diffusers on the
   meta device with its published config, quantized by sdnq the way sdnq loads a
   published SDNQ checkpoint (pre_quantized: sdnq's exact tensor shapes, no data), turned
   into SDNQ QuantizedTensors by comfy_sdnq.files and then detected the way the
   SDNQ-aware stock loader does it (ComfyUI's detection, else comfy_sdnq's diffusers key
   map). The same is done in ComfyUI's own key layout (ComfyUI's model for the detected
   config, built on meta and quantized by sdnq). Text encoders: the transformers model
   with its published config, sdnq on meta, the key layout save_pretrained writes, and
   comfy.sd.detect_te_model.
B. The key maps comfy_sdnq adds (FLUX.2, Chroma, Wan) against diffusers itself: the
   ComfyUI model with converted weights computes what the diffusers model computes
   (random weights, fp32), and diffusers' own single-file converters (ComfyUI/original
   layout -> diffusers) invert the maps exactly.
C. Numerics at reduced size (random weights, ComfyUI's real architecture): an SDNQ file
   written from sdnq's quantized model (diffusers layout, as published), loaded through
   the stock "Load Diffusion Model" node, sampled 2 steps on the CPU with conditioning
   tensors fed directly, against the same weights dequantized by sdnq loaded dense
   through ComfyUI's ordinary path, and against the unquantized model (the quantization
   error, which the difference must stay well below).
D. End to end through the other stock nodes: "Load Checkpoint" (SD3, ComfyUI key layout,
   single file) and "Load CLIP" (CLIP-L at full size: sdnq-quantized, ComfyUI's
   tokenizer, compared with the dense encoder).

Sizes where ComfyUI's detection fixes the width (FLUX.1, Chroma, Qwen-Image, Z-Image,
SDXL) use the published width at reduced depth; the rest reduced width and depth.
"""
import os

import pytest
import torch

pytestmark = pytest.mark.comfyui


# ---------------------------------------------------------------------------
# A. detection at the published size (meta device)

# name: (diffusers class, published config (HF repo in the comment), ComfyUI model class, unet_config values)
DIFFUSION_MODELS = {
    # black-forest-labs/FLUX.1-dev transformer/config.json
    "FLUX.1-dev": ("FluxTransformer2DModel",
                   dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
                   "Flux", dict(image_model="flux", depth=19, depth_single_blocks=38, hidden_size=3072, num_heads=24,
                                context_in_dim=4096, vec_in_dim=768, in_channels=16, guidance_embed=True)),
    # black-forest-labs/FLUX.2-dev transformer/config.json
    "FLUX.2-dev": ("Flux2Transformer2DModel",
                   dict(patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128,
                        num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256,
                        mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=True),
                   "Flux2", dict(image_model="flux2", depth=8, depth_single_blocks=48, hidden_size=6144, num_heads=48,
                                 context_in_dim=15360, in_channels=128, guidance_embed=True)),
    # black-forest-labs/FLUX.2-klein-4B transformer/config.json (Qwen3-4B text features: 3 x 2560)
    "FLUX.2-klein-4B": ("Flux2Transformer2DModel",
                        dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                             num_attention_heads=24, joint_attention_dim=7680, guidance_embeds=False),
                        "Flux2", dict(image_model="flux2", depth=5, depth_single_blocks=20, hidden_size=3072,
                                      num_heads=24, context_in_dim=7680, guidance_embed=False)),
    # lodestones/Chroma1-HD transformer/config.json
    "Chroma1-HD": ("ChromaTransformer2DModel",
                   dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56),
                        approximator_num_channels=64, approximator_hidden_dim=5120, approximator_layers=5),
                   "Chroma", dict(image_model="chroma", depth=19, depth_single_blocks=38, hidden_size=3072,
                                  num_heads=24, context_in_dim=4096, in_channels=64, hidden_dim=5120, n_layers=5)),
    # Qwen/Qwen-Image transformer/config.json (Qwen-Image-Edit / -Edit-2509: the same config; see
    # test_qwen_image_edit_is_not_distinguishable)
    "Qwen-Image": ("QwenImageTransformer2DModel",
                   dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                        axes_dims_rope=(16, 56, 56)),
                   "QwenImage", dict(image_model="qwen_image", num_layers=60, in_channels=64)),
    # Tongyi-MAI/Z-Image-Turbo transformer/config.json
    "Z-Image-Turbo": ("ZImageTransformer2DModel",
                      dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                           n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True,
                           cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48],
                           axes_lens=[1024, 512, 512]),
                      "ZImage", dict(image_model="lumina2", dim=3840, n_layers=30, n_heads=30, cap_feat_dim=2560,
                                     z_image_modulation=True)),
    # Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json; Wan-AI/Wan2.2-T2V-A14B-Diffusers:
    # transformer/ and transformer_2/ (the two experts) have this config too
    "Wan2.1-T2V-14B": ("WanTransformer3DModel",
                       dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
                       "WAN21_T2V", dict(image_model="wan2.1", model_type="t2v", dim=5120, num_heads=40,
                                         num_layers=40, ffn_dim=13824, in_dim=16, out_dim=16)),
    # Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer/config.json
    "Wan2.1-I2V-14B": ("WanTransformer3DModel",
                       dict(num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=36, out_channels=16,
                            image_dim=1280, added_kv_proj_dim=5120),
                       "WAN21_I2V", dict(image_model="wan2.1", model_type="i2v", dim=5120, num_layers=40, in_dim=36)),
    # Wan-AI/Wan2.2-I2V-A14B-Diffusers transformer/ and transformer_2/ (no CLIP image embedder;
    # ComfyUI's own Wan 2.2 I2V files detect the same way)
    "Wan2.2-I2V-A14B": ("WanTransformer3DModel",
                        dict(num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=36, out_channels=16),
                        "WAN21_T2V", dict(image_model="wan2.1", dim=5120, num_layers=40, in_dim=36)),
    # Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/config.json
    "Wan2.2-TI2V-5B": ("WanTransformer3DModel",
                       dict(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48),
                       "WAN22_T2V", dict(image_model="wan2.1", dim=3072, num_heads=24, num_layers=30, in_dim=48,
                                         out_dim=48)),
    # HiDream-ai/HiDream-I1-Full transformer/config.json (ComfyUI's keys are diffusers')
    "HiDream-I1": ("HiDreamImageTransformer2DModel",
                   dict(patch_size=2, in_channels=16, out_channels=16, num_layers=16, num_single_layers=32,
                        attention_head_dim=128, num_attention_heads=20, caption_channels=[4096, 4096],
                        text_emb_dim=2048, num_routed_experts=4, num_activated_experts=2,
                        axes_dims_rope=(64, 32, 32), max_resolution=(128, 128), llama_layers=list(range(48))),
                   "HiDream", dict(image_model="hidream")),
    # stabilityai/stable-diffusion-3.5-large transformer/config.json
    "SD3.5-large": ("SD3Transformer2DModel",
                    dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                         num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                         pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm"),
                    "SD3", dict(depth=38, in_channels=16, adm_in_channels=2048, context_embedder_config={
                        "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 2432}})),
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
    "SDXL-base": ("UNet2DConditionModel",
                  dict(sample_size=128, in_channels=4, out_channels=4,
                       down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                       up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                       block_out_channels=[320, 640, 1280], layers_per_block=2, cross_attention_dim=2048,
                       transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
                       use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                       projection_class_embeddings_input_dim=2816),
                  "SDXL", dict(model_channels=320, transformer_depth=[0, 0, 2, 2, 10, 10], context_dim=2048,
                               adm_in_channels=2816)),
}


def _meta_diffusers(cls_name, config):
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, cls_name)(**config).to(torch.bfloat16)


def _assert_config(mc, cls_name, values, what):
    assert mc is not None, f"{what}: ComfyUI detects no model"
    assert type(mc).__name__ == cls_name, f"{what}: detected {type(mc).__name__}, expected {cls_name}"
    got = {k: mc.unet_config.get(k) for k in values}
    assert got == values, f"{what}: unet_config {got} != {values}"


@pytest.mark.parametrize("name", list(DIFFUSION_MODELS))
def test_detect_published_diffusion_model(comfy, name):
    import comfy_models as cm

    from comfy_sdnq.comfyui import convert

    cls_name, config, comfy_cls, values = DIFFUSION_MODELS[name]
    sd = cm.sdnq_meta_state_dict(_meta_diffusers(cls_name, config))
    n_quantized = sum(convert.is_quantized(v) for v in sd.values())
    assert n_quantized > 50, f"{name}: sdnq quantized only {n_quantized} layers"
    mc, converted = cm.detect(sd)
    _assert_config(mc, comfy_cls, values, f"{name} (diffusers layout)")
    # every quantized layer survives the conversion, as itself or as a part of a fused weight,
    # except where ComfyUI rearranges rows (swap_scale_shift: SD3's last context adaLN), built dense
    fam = convert.family_of(sd)
    rearranged = 0
    if fam is not None:
        rearranged = sum(1 for k, t in fam.key_map(sd).items()
                         if not isinstance(t, str) and len(t) > 2 and k in sd and convert.is_quantized(sd[k]))
    parts = sum(len(v.params.parts) if convert.fused.is_fused(v) else convert.is_quantized(v)
                for v in converted.values())
    assert parts == n_quantized - rearranged
    assert rearranged <= 1

    # the converted file has every weight of ComfyUI's model for the detected config (ComfyUI
    # loads non-strictly: a weight the file lacks would stay uninitialized memory), nothing else
    _, comfy_module = cm.comfy_model_on_meta(mc.unet_config)
    wanted = set(comfy_module.state_dict())
    assert not wanted - set(converted), f"{name}: ComfyUI weights missing: {sorted(wanted - set(converted))[:5]}"
    assert not set(converted) - wanted, f"{name}: unused keys: {sorted(set(converted) - wanted)[:5]}"

    # the same model in ComfyUI's own key layout, quantized by sdnq
    sd2 = cm.sdnq_meta_state_dict(comfy_module)
    assert sum(convert.is_quantized(v) for v in sd2.values()) > 50
    mc2, same = cm.detect(sd2)
    assert same is sd2  # ComfyUI detects its own layout without conversion
    _assert_config(mc2, comfy_cls, values, f"{name} (ComfyUI layout)")
    assert mc2.unet_config == mc.unet_config


def test_qwen_image_edit_is_not_distinguishable(comfy):
    """Qwen-Image-Edit(-2509/-2511) transformers have Qwen-Image's tensors exactly:
    nothing in an SDNQ file tells them apart, ComfyUI loads all as QwenImage (editing
    is in the conditioning). 2511's zero_cond_t lives only in config.json; ComfyUI keys
    it on a marker tensor '__index_timestep_zero__' that a diffusers file lacks."""
    _, base, _, _ = DIFFUSION_MODELS["Qwen-Image"]
    a = _meta_diffusers("QwenImageTransformer2DModel", base).state_dict()
    b = _meta_diffusers("QwenImageTransformer2DModel", dict(base, zero_cond_t=True)).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


# text encoders: (transformers class, published config (HF repo), ComfyUI TEModel)
TEXT_ENCODERS = {
    # google/t5-v1_1-xxl (FLUX.1-dev text_encoder_2, SD3.5 text_encoder_3, Chroma, Wan uses UMT5-XXL)
    "T5-XXL": ("T5EncoderModel", "T5Config",
               dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
                    feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False), "T5_XXL"),
    # openai/clip-vit-large-patch14 text model (FLUX.1 / SD3.5 / SDXL text_encoder)
    "CLIP-L": ("CLIPTextModel", "CLIPTextConfig",
               dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768),
               "CLIP_L"),
    # laion/CLIP-ViT-bigG-14-laion2B-39B-b160k text model (SDXL / SD3.5 text_encoder_2)
    "CLIP-G": ("CLIPTextModelWithProjection", "CLIPTextConfig",
               dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                    max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1280),
               "CLIP_G"),
    # Qwen/Qwen2.5-VL-7B-Instruct (Qwen-Image text_encoder)
    "Qwen2.5-VL-7B": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig",
                      dict(text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                            num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                            rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=128000,
                                            tie_word_embeddings=False),
                           vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                              out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                                              temporal_patch_size=2, window_size=112,
                                              fullatt_block_indexes=[7, 15, 23, 31], in_channels=3)),
                      "QWEN25_7B"),
    # Qwen/Qwen3-4B (Z-Image text_encoder, Qwen3ForCausalLM)
    "Qwen3-4B": ("Qwen3ForCausalLM", "Qwen3Config",
                 dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                      rope_theta=1e6, max_position_embeddings=40960, rms_norm_eps=1e-6), "QWEN3_4B"),
    # mistralai/Mistral-Small-3.1-24B-Instruct-2503 (FLUX.2-dev text_encoder, Mistral3ForConditionalGeneration)
    "Mistral-Small-3.1-24B": ("Mistral3ForConditionalGeneration", "Mistral3Config",
                              dict(text_config=dict(model_type="mistral", hidden_size=5120, intermediate_size=32768,
                                                    num_hidden_layers=40, num_attention_heads=32,
                                                    num_key_value_heads=8, head_dim=128, vocab_size=131072,
                                                    rms_norm_eps=1e-5, rope_theta=1e9,
                                                    max_position_embeddings=131072),
                                   vision_config=dict(model_type="pixtral", hidden_size=1024, intermediate_size=4096,
                                                      num_hidden_layers=24, num_attention_heads=16, head_dim=64,
                                                      image_size=1540, patch_size=14),
                                   spatial_merge_size=2, multimodal_projector_bias=False,
                                   projector_hidden_act="gelu", image_token_index=10), "MISTRAL3_24B"),
    # meta-llama/Llama-3.1-8B-Instruct (HiDream-I1 text_encoder_4)
    "Llama-3.1-8B": ("LlamaForCausalLM", "LlamaConfig",
                     dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
                          max_position_embeddings=131072, tie_word_embeddings=False,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
                     "LLAMA3_8"),
}


_TE_CACHE = {}


def _te_state_dict(name):
    """the text encoder on meta, quantized by sdnq, in the key layout transformers saves"""
    if name not in _TE_CACHE:
        import transformers

        import comfy_models as cm

        cls_name, cfg_name, config, _ = TEXT_ENCODERS[name]
        cfg = getattr(transformers, cfg_name)(**config)
        with torch.device("meta"):
            model = getattr(transformers, cls_name)(cfg).to(torch.bfloat16)
        _TE_CACHE[name] = cm.sdnq_meta_state_dict(model)
    return _TE_CACHE[name]


@pytest.mark.parametrize("name", list(TEXT_ENCODERS))
def test_detect_published_text_encoder(comfy, name):
    import comfy.sd

    from comfy_sdnq.comfyui import convert

    sd = _te_state_dict(name)
    if name == "CLIP-L":
        # transformers 5 keeps CLIPTextModel without 'text_model.' in memory (and saves a model made
        # from scratch so); the published files have the prefix
        sd = {"text_model." + k: v for k, v in sd.items()}
    assert sum(convert.is_quantized(v) for v in sd.values()) > 50
    detected = comfy.sd.detect_te_model(sd)
    te_model = getattr(comfy.sd.TEModel, TEXT_ENCODERS[name][3])
    if name == "Mistral-Small-3.1-24B":
        # saved as language_model.model.*: ComfyUI alone detects nothing (its text encoder loader then
        # falls through to CLIP-L); comfy_sdnq's text encoder key map makes it the Mistral ComfyUI loads
        assert detected is None
        converted = convert.text_encoder_to_comfy(sd)
        assert converted is not sd and "model.layers.39.mlp.down_proj.weight" in converted
        detected = comfy.sd.detect_te_model(converted)
    else:
        assert convert.text_encoder_to_comfy(sd) is sd  # what ComfyUI detects is left alone
    assert detected == te_model


@pytest.mark.parametrize("name,layout", [
    ("CLIP-L", "CLIPTextModel without 'text_model.' (transformers 5, new model)"),
    ("Qwen3-4B", "Qwen3Model (bare decoder, no 'model.' prefix)"),
    ("Llama-3.1-8B", "LlamaModel (bare decoder)"),
    ("Qwen2.5-VL-7B", "transformers' in-memory VLM layout (model.language_model.*, model.visual.*)"),
])
def test_text_encoder_layouts_comfyui_cannot_detect(comfy, name, layout):
    import comfy.sd

    from comfy_sdnq.comfyui import convert

    sd = _te_state_dict(name)
    if name in ("Qwen3-4B", "Llama-3.1-8B"):
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    elif name == "Qwen2.5-VL-7B":
        sd = {("model.language_model." + k[len("model."):] if k.startswith("model.") else
               "model." + k if k.startswith("visual.") else k): v for k, v in sd.items()}
    assert comfy.sd.detect_te_model(sd) is None, layout
    assert comfy.sd.detect_te_model(convert.text_encoder_to_comfy(sd)) == getattr(comfy.sd.TEModel,
                                                                                  TEXT_ENCODERS[name][3])


def test_published_text_encoder_configs_match_comfyui(comfy):
    """the config values above are the ones ComfyUI's own text encoder configs hold"""
    import json

    import comfy.text_encoders.llama as llama

    def same(ours: dict, theirs, keys):
        for k in keys:
            assert ours[k] == (theirs[k] if isinstance(theirs, dict) else getattr(theirs, k)), k

    comfy_dir = os.path.dirname(llama.__file__)
    with open(os.path.join(comfy_dir, "t5_config_xxl.json")) as f:
        same(TEXT_ENCODERS["T5-XXL"][2], json.load(f), ("d_model", "d_ff", "d_kv", "num_heads", "num_layers",
                                                        "vocab_size"))
    with open(os.path.join(comfy_dir, "..", "sd1_clip_config.json")) as f:
        same(TEXT_ENCODERS["CLIP-L"][2], json.load(f), ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                        "hidden_act"))
    with open(os.path.join(comfy_dir, "..", "clip_config_bigg.json")) as f:
        same(TEXT_ENCODERS["CLIP-G"][2], json.load(f), ("hidden_size", "intermediate_size", "num_hidden_layers"))
    llm = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    same(TEXT_ENCODERS["Qwen2.5-VL-7B"][2]["text_config"], llama.Qwen25_7BVLI_Config, llm + ("vocab_size",))
    same(TEXT_ENCODERS["Qwen3-4B"][2], llama.Qwen3_4BConfig, llm + ("vocab_size",))
    same(TEXT_ENCODERS["Mistral-Small-3.1-24B"][2]["text_config"], llama.Mistral3Small24BConfig, llm + ("vocab_size",))
    same(TEXT_ENCODERS["Llama-3.1-8B"][2], llama.Llama2Config, llm)


def test_flux2_and_chroma_never_take_the_flux1_path(comfy):
    """ComfyUI's own diffusers conversion takes FLUX.2 and Chroma for FLUX.1; comfy_sdnq
    recognises them by their own keys, and a file damaged so that its own
    signature is gone is refused with the layout named - never loaded as FLUX.1"""
    import comfy_models as cm

    from comfy_sdnq.comfyui import convert
    from comfy_sdnq.errors import SdnqFormatError

    import comfy.model_detection

    for name, family, stock in (("FLUX.2-klein-4B", "FLUX.2", "KeyError"), ("Chroma1-HD", "Chroma", "FluxSchnell")):
        cls_name, config, comfy_cls, _ = DIFFUSION_MODELS[name]
        config = dict(config, num_layers=2, num_single_layers=2)
        # ComfyUI's own diffusers conversion applies FLUX.1's map to anything with x_embedder: FLUX.2
        # (no biases) crashes in it, Chroma comes out as FLUX.1 Schnell
        plain = _meta_diffusers(cls_name, config).state_dict()
        try:
            got = type(comfy.model_detection.model_config_from_unet(
                comfy.model_detection.convert_diffusers_mmdit(plain), "")).__name__
        except KeyError:
            got = "KeyError"
        assert got == stock
        sd = cm.sdnq_meta_state_dict(_meta_diffusers(cls_name, config))
        mc, _ = cm.detect(sd)
        assert type(mc).__name__ == comfy_cls
        assert convert.family_of(sd).name == family
        signature = convert.family_of(sd).signature[0]
        damaged = {k: v for k, v in sd.items() if not k.startswith(signature.rsplit(".", 2)[0])}
        assert convert.family_of(damaged) is None
        with pytest.raises(SdnqFormatError, match="diffusers key layout"):
            convert.diffusers_to_comfy(damaged, name)


@pytest.mark.parametrize("cls_name,config,match", [
    # a diffusers layout with no ComfyUI map (LTX-Video)
    ("LTXVideoTransformer3DModel", dict(num_layers=2), "no ComfyUI key map"),
    # a Wan variant with weights the Wan map does not know (VACE): not loaded without them
    ("WanVACETransformer3DModel", dict(num_layers=2, num_attention_heads=2, ffn_dim=512, vace_layers=[0]),
     "key\\(s\\) the Wan map does not know"),
    # a Flux-like layout ComfyUI has no map for
    ("LongCatImageTransformer2DModel", dict(num_layers=1, num_single_layers=1), "no ComfyUI key map"),
])
def test_unsupported_diffusers_layout_is_refused_by_the_stock_loader(comfy, cls_name, config, match):
    import comfy.sd

    import comfy_models as cm
    from comfy_sdnq.errors import SdnqFormatError

    sd = cm.sdnq_meta_state_dict(_meta_diffusers(cls_name, config))
    with pytest.raises(SdnqFormatError, match=match):
        comfy.sd.load_diffusion_model_state_dict(sd)
    # with the file's name and the diffusers class its SDNQ metadata records, the message names both
    import json

    from comfy_sdnq.comfyui import convert

    meta = {"sdnq_config": json.dumps({"quantization_config": {"quant_method": "sdnq", "weights_dtype": "uint4"},
                                       "model_config": {"_class_name": cls_name}})}
    with pytest.raises(SdnqFormatError, match=f"^model-sdnq.safetensors \\({cls_name}\\): .*{match}"):
        convert.diffusers_to_comfy(sd, "model-sdnq.safetensors", meta)


# ---------------------------------------------------------------------------
# B. comfy_sdnq's own key maps (FLUX.2, Chroma, Wan) against diffusers

def _small_diffusers(name):
    """small random fp32 diffusers models of the families comfy_sdnq maps itself"""
    import diffusers

    torch.manual_seed(0)
    if name == "FLUX.2":
        m = diffusers.Flux2Transformer2DModel(num_layers=1, num_single_layers=1, num_attention_heads=2,
                                              joint_attention_dim=512)
    elif name == "Chroma":
        m = diffusers.ChromaTransformer2DModel(num_layers=1, num_single_layers=1, num_attention_heads=2,
                                               joint_attention_dim=512, approximator_hidden_dim=128)
    elif name == "Wan-T2V":
        m = diffusers.WanTransformer3DModel(num_layers=2, num_attention_heads=2, ffn_dim=512)
    elif name == "Wan-I2V":
        m = diffusers.WanTransformer3DModel(num_layers=2, num_attention_heads=2, ffn_dim=512, in_channels=36,
                                            image_dim=1280, added_kv_proj_dim=256, pos_embed_seq_len=2 * 257)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m.float().eval()


def _comfy_module(unet_config: dict, sd: dict):
    """ComfyUI's model for unet_config (fp32) with the state dict loaded strictly"""
    import comfy.model_detection

    mc = comfy.model_detection.model_config_from_unet_config(dict(unet_config))
    mc.set_inference_dtype(torch.float32, None)
    dm = mc.get_model({}).diffusion_model
    dm.load_state_dict(sd, strict=True)
    return dm.float().eval()


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("name", ["FLUX.2", "Chroma", "Wan-T2V", "Wan-I2V"])
def test_key_map_computes_what_diffusers_computes(comfy, name):
    """diffusers' model and ComfyUI's model with the weights converted by comfy_sdnq's map
    give the same output (fp32, random weights)"""
    import comfy.model_detection

    from comfy_sdnq.comfyui import convert

    m = _small_diffusers(name)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    conv = convert.diffusers_to_comfy(sd)
    g = torch.Generator().manual_seed(1)
    if name == "Chroma":
        # ComfyUI's Chroma detection fixes the approximator (5120 wide, out 3072): its config is
        # given here for this reduced width; the map is what is under test
        ucfg = dict(image_model="chroma", axes_dim=[16, 56, 56], num_heads=2, mlp_ratio=4.0, theta=10000,
                    out_channels=64, qkv_bias=True, txt_ids_dims=[], in_channels=64, hidden_size=256,
                    context_in_dim=512, patch_size=2, vec_in_dim=None, depth=1, depth_single_blocks=1, in_dim=64,
                    out_dim=256, hidden_dim=128, n_layers=5)
    else:
        ucfg = comfy.model_detection.detect_unet_config(conv, "")
    dm = _comfy_module(ucfg, conv)
    with torch.no_grad():
        if name.startswith("Wan"):
            i2v = name == "Wan-I2V"
            x = torch.randn(1, 36 if i2v else 16, 3, 8, 8, generator=g)
            ctx = torch.randn(1, 512 if i2v else 12, 4096, generator=g)  # diffusers' I2V expects 512 text tokens
            clip = torch.randn(1, 2 * 257, 1280, generator=g) if i2v else None  # first-last-frame CLIP features
            t = torch.tensor([700.0])
            # first-last-frame: diffusers takes the two frames' features batched, ComfyUI concatenated
            ref = m(x, t, ctx, encoder_hidden_states_image=None if clip is None else clip.view(2, 257, 1280)).sample
            out = dm(x, t, ctx, clip_fea=clip)
        elif name == "FLUX.2":
            H = W = 4
            x = torch.randn(1, 128, H, W, generator=g)
            ctx = torch.randn(1, 6, 512, generator=g)
            t, guidance = torch.tensor([0.7]), torch.tensor([3.5])
            img_ids = torch.zeros(H, W, 4)  # (t, h, w, l) as ComfyUI builds them
            img_ids[..., 1] = torch.arange(H)[:, None]
            img_ids[..., 2] = torch.arange(W)[None, :]
            txt_ids = torch.zeros(1, 6, 4)
            txt_ids[..., 3] = torch.arange(6)
            ref = m(hidden_states=x.flatten(2).transpose(1, 2), encoder_hidden_states=ctx, timestep=t,
                    img_ids=img_ids.reshape(1, H * W, 4), txt_ids=txt_ids, guidance=guidance).sample
            ref = ref.transpose(1, 2).reshape(1, 128, H, W)
            out = dm(x, t, ctx, guidance=guidance)
        else:  # Chroma
            from diffusers.models.embeddings import get_timestep_embedding

            H = W = 8
            x = torch.randn(1, 16, H, W, generator=g)
            ctx = torch.randn(1, 6, 512, generator=g)
            t = torch.tensor([0.7])
            # ComfyUI computes 344 modulation indices (the published 19 + 38 blocks) and takes the final
            # layer's from the last two; at reduced depth diffusers is given the same two index embeddings
            mp = m.time_text_embed.mod_proj
            mp[-2:] = get_timestep_embedding(torch.tensor([342, 343]) * 1000, mp.shape[1], flip_sin_to_cos=True,
                                             downscale_freq_shift=0)
            packed = x.view(1, 16, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, H * W // 4, 64)
            img_ids = torch.zeros(H // 2, W // 2, 3)
            img_ids[..., 1] = torch.arange(H // 2)[:, None]
            img_ids[..., 2] = torch.arange(W // 2)[None, :]
            ref = m(hidden_states=packed, encoder_hidden_states=ctx, timestep=t, img_ids=img_ids.reshape(-1, 3),
                    txt_ids=torch.zeros(6, 3)).sample
            ref = ref.view(1, H // 2, W // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, H, W)
            out = dm(x, t, ctx, guidance=torch.tensor([0.0]))
    err = _rel(out, ref)
    print(f"\n{name}: ComfyUI (comfy_sdnq's key map) vs diffusers forward, fp32: rel {err:.1e}")
    assert err < 1e-4


def _tagged(meta_sd: dict) -> dict:
    """tensors of the given shapes whose values name their key and row (int32, broadcast
    along the other dims, so a wide model costs next to nothing until something is copied)"""
    out = {}
    for i, (k, v) in enumerate(sorted(meta_sd.items())):
        rows = torch.arange(v.shape[0] if v.dim() else 1, dtype=torch.int32) + i * 1_000_003
        out[k] = rows.view(-1, *([1] * (v.dim() - 1))).expand(v.shape) if v.dim() else rows[0]
    return out


@pytest.mark.parametrize("name", ["FLUX.2", "Chroma", "Wan-I2V"])
def test_key_map_inverts_diffusers_single_file_converter(comfy, name):
    """diffusers' own single-file converters (original / ComfyUI layout -> diffusers) undo
    comfy_sdnq's maps exactly: an independent statement of the same key correspondence,
    row by row (Chroma at its published width, which diffusers' converter assumes)"""
    import diffusers
    from diffusers.loaders import single_file_utils as sfu

    from comfy_sdnq.comfyui import convert

    if name == "Chroma":
        with torch.device("meta"):
            meta = diffusers.ChromaTransformer2DModel(num_layers=1, num_single_layers=1).state_dict()
    else:
        meta = _small_diffusers(name).state_dict()
    sd = _tagged(meta)
    conv = convert.diffusers_to_comfy(dict(sd))
    if name.startswith("Wan"):
        back = sfu.convert_wan_transformer_to_diffusers(dict(conv))
        # the one key diffusers' converter passes through unrenamed: FLF2V's image position table
        # (its correspondence is checked by the forward test above)
        back["condition_embedder.image_embedder.pos_embed"] = back.pop("img_emb.emb_pos")
    else:
        # the original checkpoints name RMSNorm scales '.scale' (ComfyUI renames them on load)
        orig = {(k[:-len("weight")] + "scale" if (k.endswith("_norm.weight") or ".norms." in k) else k): v
                for k, v in conv.items()}
        if name == "FLUX.2":
            back = sfu.convert_flux2_transformer_checkpoint_to_diffusers(orig)
        else:
            back = sfu.convert_chroma_transformer_checkpoint_to_diffusers(orig)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


# ---------------------------------------------------------------------------
# C. numerics at reduced size through the stock "Load Diffusion Model" node

class Spec:
    """A reduced model of a family: the diffusers class and config, the sdnq
    quantization, the latent and conditioning to sample with, and whether ComfyUI
    converts the family's diffusers layout itself (else the dense references are written
    in ComfyUI's layout)"""

    def __init__(self, cls_name, config, comfy_cls, quant, latent, cond, comfy_converts=True, fused=False):
        self.cls_name, self.config, self.comfy_cls, self.quant = cls_name, config, comfy_cls, quant
        self.latent, self.cond, self.comfy_converts, self.fused = latent, cond, comfy_converts, fused


UINT4_SVD = dict(weights_dtype="uint4", use_svd=True, svd_rank=32)  # Disty0's published "uint4-svd-r32"
INT8 = dict(weights_dtype="int8")                                   # the published "int8" variants
UINT4 = dict(weights_dtype="uint4")  # no SVD: sdnq's SVD of 3072/3840-wide layers takes minutes on a CPU

NUMERICS = {
    # SD3.5-large layout (qk RMSNorm), width 128 = depth 2 (ComfyUI derives width from depth)
    "SD3.5": Spec("SD3Transformer2DModel",
                  dict(sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                       num_attention_heads=2, joint_attention_dim=4096, caption_projection_dim=128,
                       pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=32, qk_norm="rms_norm"),
                  "SD3", UINT4_SVD, (1, 16, 16, 16), dict(dim=4096, pooled=2048), fused=True),
    # Wan 2.1 T2V, dim 256 (2 heads of 128), 2 blocks
    "Wan2.1": Spec("WanTransformer3DModel",
                   dict(num_layers=2, num_attention_heads=2, ffn_dim=512, in_channels=16, out_channels=16),
                   "WAN21_T2V", INT8, (1, 16, 2, 8, 8), dict(dim=4096), comfy_converts=False),
    # FLUX.2, hidden 256 (2 heads of 128), 1 + 1 blocks
    "FLUX.2": Spec("Flux2Transformer2DModel",
                   dict(num_layers=1, num_single_layers=1, num_attention_heads=2, joint_attention_dim=512),
                   "Flux2", UINT4_SVD, (1, 128, 8, 8), dict(dim=512, guidance=3.5), comfy_converts=False, fused=True),
    # Chroma: the published width (detection fixes 3072 and the 5120-wide approximator), 1 + 1 blocks
    "Chroma": Spec("ChromaTransformer2DModel", dict(num_layers=1, num_single_layers=1),
                   "Chroma", INT8, (1, 16, 8, 8), dict(dim=4096), comfy_converts=False, fused=True),
    # Qwen-Image: the published width (3072, text 3584), 1 block; ComfyUI's keys are diffusers'
    "Qwen-Image": Spec("QwenImageTransformer2DModel", dict(num_layers=1), "QwenImage", UINT4,
                       (1, 16, 1, 8, 8), dict(dim=3584)),
    # Z-Image: the published width (3840; ComfyUI keys Z-Image on it), 1 layer + the 2 + 2 refiners
    "Z-Image": Spec("ZImageTransformer2DModel", dict(n_layers=1), "ZImage", INT8, (1, 16, 8, 8),
                    dict(dim=2560), fused=True),
    # SDXL architecture: Segmind-Vega (segmind/Segmind-Vega), the smallest SDXL UNet ComfyUI detects
    "SDXL (Vega)": Spec("UNet2DConditionModel",
                        dict(sample_size=128, in_channels=4, out_channels=4,
                             down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                             up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                             block_out_channels=[320, 640, 1280], layers_per_block=2, cross_attention_dim=2048,
                             transformer_layers_per_block=[1, 1, 2], attention_head_dim=[5, 10, 20],
                             use_linear_projection=True, addition_embed_type="text_time",
                             addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                             mid_block_type="UNetMidBlock2D"),
                        "Segmind_Vega", UINT4_SVD, (1, 4, 8, 8), dict(dim=2048, pooled=1280)),
}
_BUILT = {}


@pytest.fixture(scope="module")
def families_dir(comfy, tmp_path_factory):
    import comfy_models as cm

    return cm.models_dir(str(tmp_path_factory.mktemp("families")))


def _build(name, tmp):
    """sdnq quantizes the reduced model; three files: the SDNQ model (diffusers layout, as
    published), sdnq's dequantization of it and the unquantized model (dense)"""
    if name in _BUILT:
        return _BUILT[name]
    import diffusers

    import comfy_models as cm

    spec = NUMERICS[name]
    torch.manual_seed(0)
    model = cm.randomize(cm.build_uninitialized(lambda: getattr(diffusers, spec.cls_name)(**spec.config)))
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    q = cm.sdnq_quantize_model(model, dequantize_fp32=False, **spec.quant)
    n_quantized = sum(1 for m in q.modules() if hasattr(m, "sdnq_dequantizer"))
    stem = name.replace(" ", "_").replace("(", "").replace(")", "")
    d = os.path.join(tmp, "diffusion_models")
    cm.save_sdnq_single_file(q, os.path.join(d, f"{stem}-sdnq.safetensors"))
    save = cm.save_dense if spec.comfy_converts else cm.save_comfy_dense
    save(cm.sdnq_dense_state_dict(q), os.path.join(d, f"{stem}-dense.safetensors"))
    save(original, os.path.join(d, f"{stem}-original.safetensors"))
    del q, model, original
    _BUILT[name] = (stem, n_quantized)
    return _BUILT[name]


def _discard(name, tmp):
    """remove a family's three files (up to 1.8 GB each at the published widths): the
    module's peak disk use stays that of one family; a later _build writes them again"""
    stem, _ = _BUILT.pop(name, (None, None))
    for kind in ("sdnq", "dense", "original") if stem else ():
        path = os.path.join(tmp, "diffusion_models", f"{stem}-{kind}.safetensors")
        if os.path.exists(path):
            os.remove(path)


SLOW = {"SDXL (Vega)"}  # a 745M-parameter UNet sampled three times: minutes on a 2-core CPU


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NUMERICS])
def test_numerics_through_load_diffusion_model(families_dir, name, caplog):
    import comfy_models as cm

    from comfy_sdnq.comfyui.patcher import SDNQModelPatcher

    spec = NUMERICS[name]
    stem, n_quantized = _build(name, families_dir)
    try:
        caplog.clear()
        model = cm.load_unet(f"{stem}-sdnq.safetensors")
        # ComfyUI loads non-strictly and only logs what the file lacks (left uninitialized) or has extra
        assert not [r.message for r in caplog.records if r.message.startswith(("unet missing", "unet unexpected"))]
        assert isinstance(model, SDNQModelPatcher)
        assert type(model.model.model_config).__name__ == spec.comfy_cls
        q, f, plain = cm.quantized_weights(model.model.diffusion_model)
        # every layer sdnq quantized is an SDNQ weight in ComfyUI's model, alone or a part of a fused
        # one; except SD3's last context adaLN, whose rows ComfyUI reorders (loaded dense)
        parts = q + sum(len(p.params.parts) for p in model.model.diffusion_model.parameters() if _is_fused(p))
        assert parts == n_quantized - (1 if name == "SD3.5" else 0), (q, f, plain, n_quantized)
        assert (f > 0) == spec.fused
        assert model.model_size() == cm.expected_model_size(model)

        reference = cm.load_unet(f"{stem}-dense.safetensors")
        original = cm.load_unet(f"{stem}-original.safetensors")
        assert type(reference).__name__ == "ModelPatcher"
        assert type(reference.model.model_config).__name__ == spec.comfy_cls
        opts = dict(spec.cond)
        cond = cm.text_cond(opts.pop("dim"), pooled=opts.pop("pooled", None), **opts)
        ours, ref, orig = (cm.sample_latent(m, cond, spec.latent) for m in (model, reference, original))
        err, quant_err = cm.rel(ours, ref), cm.rel(orig, ref)
        print(f"\n{name} ({spec.quant['weights_dtype']}{'+SVD' if spec.quant.get('use_svd') else ''}): "
              f"vs dense-dequantized {err:.2e}, quantization error {quant_err:.2e}")
        assert torch.isfinite(ours).all()
        assert err < 1e-2 and err < quant_err / 5
    finally:
        _discard(name, families_dir)


def _is_fused(p):
    from comfy_sdnq import fused

    return fused.is_fused(p)


# ---------------------------------------------------------------------------
# D. the other stock loader nodes: Load CLIP, Load Checkpoint

def _save_sdnq(sd: dict, path: str, quantization_config: dict) -> str:
    import comfy_sdnq

    comfy_sdnq.save(sd, path, quantization_config)
    return path


@pytest.fixture(scope="module")
def clip_l(families_dir):
    """CLIP-L at its published size (random weights), quantized by sdnq, in the published
    key layout (text_model.*): the SDNQ state dict, sdnq's dequantization, the original;
    the three as files for "Load CLIP"."""
    import transformers

    import comfy_models as cm
    from comfy_sdnq import files

    _, cfg_name, config, _ = TEXT_ENCODERS["CLIP-L"]
    model = cm.randomize(cm.build_uninitialized(
        lambda: transformers.CLIPTextModel(getattr(transformers, cfg_name)(**config))))

    def published(sd):  # transformers 5 keeps CLIPTextModel without 'text_model.' in memory
        return {k if k.startswith("text_model.") else "text_model." + k: v.contiguous() for k, v in sd.items()}

    original = published(model.state_dict())
    original = {k: v.clone() for k, v in original.items()}
    q = cm.sdnq_quantize_model(model, dequantize_fp32=False, **UINT4_SVD)
    raw = q.quantization_config.to_dict()
    sdnq_sd = files.state_dict(files.TensorSource(published(q.state_dict()), raw), torch.bfloat16)
    dense = published(cm.sdnq_dense_state_dict(q))
    d = os.path.join(families_dir, "text_encoders")
    _save_sdnq(sdnq_sd, os.path.join(d, "clip_l-sdnq.safetensors"), raw)
    cm.save_dense(dense, os.path.join(d, "clip_l-dense.safetensors"))
    cm.save_dense(original, os.path.join(d, "clip_l-original.safetensors"))
    n_quantized = sum(1 for m in q.modules() if hasattr(m, "sdnq_dequantizer"))
    return dict(sdnq=sdnq_sd, dense=dense, original=original, config=raw, n_quantized=n_quantized)


def _encode(clip, prompt="a photograph of an astronaut riding a horse on the moon"):
    tokens = clip.tokenize(prompt)
    return clip.encode_from_tokens(tokens, return_pooled=True)


def test_clip_l_through_load_clip(clip_l):
    """CLIP-L (published size) through the stock "Load CLIP" node and ComfyUI's own
    tokenizer, against the same encoder dense"""
    import nodes

    import comfy_models as cm
    from comfy_sdnq import layout
    from comfy_sdnq.comfyui.patcher import SDNQModelPatcher

    load = nodes.CLIPLoader().load_clip
    clip = load("clip_l-sdnq.safetensors", "stable_diffusion")[0]
    assert isinstance(clip.patcher, SDNQModelPatcher)
    q, f, plain = cm.quantized_weights(clip.cond_stage_model)
    assert q == clip_l["n_quantized"] and f == 0, (q, f, plain)
    assert layout.is_sdnq(clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers[0].mlp.fc1.weight)
    assert clip.patcher.model_size() == cm.expected_model_size(clip.patcher)
    (ours, ours_pooled), (ref, ref_pooled), (orig, orig_pooled) = (
        _encode(c) for c in (clip, load("clip_l-dense.safetensors", "stable_diffusion")[0],
                             load("clip_l-original.safetensors", "stable_diffusion")[0]))
    assert ours.shape == (1, 77, 768) and ours_pooled.shape == (1, 768)
    err, quant_err = cm.rel(ours, ref), cm.rel(orig, ref)
    perr, pquant = cm.rel(ours_pooled, ref_pooled), cm.rel(orig_pooled, ref_pooled)
    print(f"\nCLIP-L (uint4+SVD): hidden vs dense-dequantized {err:.2e} (quantization error {quant_err:.2e}), "
          f"pooled {perr:.2e} ({pquant:.2e})")
    assert err < 1e-2 and err < quant_err / 5
    assert perr < 1e-2 and perr < pquant / 5


def test_sd3_checkpoint_through_load_checkpoint(families_dir, clip_l):
    """one single-file checkpoint in ComfyUI's key layout - the reduced SD3 transformer
    (quantized by sdnq as ComfyUI's MMDiT) and CLIP-L (quantized by sdnq), both SDNQ -
    through the stock "Load Checkpoint" node: prompt -> SDNQ CLIP -> SDNQ MMDiT -> latent,
    against the same checkpoint dense"""
    import copy

    import nodes

    import comfy_models as cm
    from comfy_sdnq import files, layout
    from comfy_sdnq.comfyui.patcher import SDNQModelPatcher

    stem, _ = _build("SD3.5", families_dir)
    base = cm.load_unet(f"{stem}-original.safetensors").model.diffusion_model
    net = copy.deepcopy(base).to(torch.bfloat16)
    q = cm.sdnq_quantize_model(net, dequantize_fp32=False, **UINT4_SVD)
    raw = q.quantization_config.to_dict()
    dit = files.state_dict(files.TensorSource(dict(q.state_dict()), raw), torch.bfloat16)
    te = "text_encoders.clip_l.transformer."
    ckpt = {"model.diffusion_model." + k: v for k, v in dit.items()}
    ckpt.update({te + k: v for k, v in clip_l["sdnq"].items()})
    d = os.path.join(families_dir, "checkpoints")
    _save_sdnq(ckpt, os.path.join(d, "sd3-clip_l-sdnq.safetensors"), raw)
    dense = {"model.diffusion_model." + k: v for k, v in cm.sdnq_dense_state_dict(q).items()}
    dense.update({te + k: v for k, v in clip_l["dense"].items()})
    cm.save_dense(dense, os.path.join(d, "sd3-clip_l-dense.safetensors"))

    load = nodes.CheckpointLoaderSimple().load_checkpoint
    model, clip, _ = load("sd3-clip_l-sdnq.safetensors")
    assert isinstance(model, SDNQModelPatcher) and isinstance(clip.patcher, SDNQModelPatcher)
    assert type(model.model.model_config).__name__ == "SD3"
    qkv = model.model.diffusion_model.joint_blocks[0].x_block.attn.qkv.weight
    assert layout.is_sdnq(qkv) and qkv.shape == (384, 128)
    assert layout.is_sdnq(clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers[0].mlp.fc1.weight)
    assert model.model_size() == cm.expected_model_size(model)
    assert clip.patcher.model_size() == cm.expected_model_size(clip.patcher)
    ref_model, ref_clip, _ = load("sd3-clip_l-dense.safetensors")
    assert type(ref_model).__name__ == "ModelPatcher"

    def run(m, c):
        cond, pooled = _encode(c)
        assert cond.shape == (1, 77, 4096) and pooled.shape == (1, 2048)  # SD3's CLIP-L-only encoding
        return cm.sample_latent(m, [[cond, {"pooled_output": pooled}]], (1, 16, 16, 16))

    err = cm.rel(run(model, clip), run(ref_model, ref_clip))
    print(f"\nSD3 + CLIP-L checkpoint (uint4+SVD), prompt to latent, vs dense-dequantized: {err:.2e}")
    assert err < 1e-2
