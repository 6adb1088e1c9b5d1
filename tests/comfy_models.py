"""Models and helpers for the ComfyUI integration tests (imported after ComfyUI is set up).

Weights are random; the sdnq package quantizes them (the oracle) and writes the files
the way it publishes them. Reference models load the same weights dense, dequantized by
sdnq, through ComfyUI's ordinary non-SDNQ path.
"""
import os

import torch

import comfy_sdnq
from comfy_sdnq import files

FLUX_DEPTH = (1, 1)  # double, single blocks: ComfyUI's Flux detection fixes 24 heads x 128 = hidden 3072


def flux_diffusers(seed=0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    m = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=FLUX_DEPTH[0],
                               num_single_layers=FLUX_DEPTH[1], attention_head_dim=128, num_attention_heads=24,
                               joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)
    return m.to(torch.bfloat16).eval()


def sdnq_quantize_model(model, **cfg):
    from sdnq.quantizer import sdnq_post_load_quant

    torch.manual_seed(1234)
    return sdnq_post_load_quant(model, torch_dtype=torch.bfloat16, **cfg)


def sdnq_dense_state_dict(model) -> dict:
    """the model's state dict with every SDNQ layer dequantized by sdnq"""
    from sdnq.common import sdnq_keys

    sd = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "sdnq_dequantizer"):
            params = {k: getattr(mod, k, None) for k in sdnq_keys}
            params = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else None) for k, v in params.items()}
            dq = mod.sdnq_dequantizer
            sd[name + ".weight"] = dq(**params, skip_compile=True, skip_quantized_matmul=dq.use_quantized_matmul)
            if getattr(mod, "bias", None) is not None:
                sd[name + ".bias"] = mod.bias.detach()
    for k, v in model.state_dict().items():
        prefix, _, leaf = k.rpartition(".")
        owner = model.get_submodule(prefix) if prefix else model
        if hasattr(owner, "sdnq_dequantizer"):
            continue
        sd.setdefault(k, v)
    return {k: v.contiguous() for k, v in sd.items()}


def save_sdnq_single_file(model, path):
    """sdnq's quantized model as a single-file SDNQ model (config in the header)"""
    raw = model.quantization_config.to_dict()
    sd = files.state_dict(files.TensorSource(dict(model.state_dict()), raw), torch.bfloat16)
    comfy_sdnq.save(sd, path, raw)
    return path


def save_dense(sd, path):
    import safetensors.torch

    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def flux_conditioning(seed=42, tokens=8):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=g) * 0.5, {"pooled_output": torch.randn(1, 768, generator=g)}]]


def sample(patcher, cond, latent_shape=(1, 16, 16, 16), steps=2, seed=0):
    import comfy.sample

    latent = torch.zeros(latent_shape)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", cond, cond, latent, denoise=1.0,
                               seed=seed, disable_pbar=True)


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def models_dir(tmp):
    """point ComfyUI's model folders at tmp (returns the folder names used)"""
    import folder_paths

    for kind in ("diffusion_models", "checkpoints", "text_encoders", "loras", "diffusers", "vae"):
        os.makedirs(os.path.join(tmp, kind), exist_ok=True)
        folder_paths.add_model_folder_path(kind, os.path.join(tmp, kind), is_default=True)
    return tmp


def load_unet(name):
    """through ComfyUI's stock "Load Diffusion Model" node"""
    import nodes

    return nodes.UNETLoader().load_unet(name, "default")[0]


# ---------------------------------------------------------------------------
# model families (tests/test_comfyui_families.py)


def randomize(model, seed=0):
    """random weights at a scale that keeps activations O(1) through the network (weights
    ~ 1/sqrt(fan-in), norm scales near 1, small biases), so that the model's output, and
    with it the quantization error, is a visible part of a sampled latent; bf16, eval"""
    import math

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.normal_(1, 0.1, generator=g)
            elif p.dim() >= 2:
                p.normal_(0, 1 / math.sqrt(math.prod(p.shape[1:])), generator=g)
            else:
                p.normal_(0, 0.02, generator=g)
    return model.to(torch.bfloat16).eval()


def sdnq_meta_state_dict(model, **cfg) -> dict:
    """A model built on the meta device, quantized by sdnq the way it loads a published
    SDNQ checkpoint (pre_quantized: every tensor has sdnq's exact shape, no data), as a
    state dict of SDNQ QuantizedTensors on meta. With transformers models the keys are
    reverted to the layout save_pretrained writes (the published file layout)."""
    from sdnq.quantizer import SDNQConfig, sdnq_post_load_quant
    from sdnq.utils import add_module_skip_keys

    conf = SDNQConfig(**{"weights_dtype": "uint4", "use_svd": True, "svd_rank": 32, "dequantize_fp32": False, **cfg})
    model, conf = add_module_skip_keys(model, conf)
    model = sdnq_post_load_quant(model, torch_dtype=torch.bfloat16, pre_quantized=True, quantization_config=conf)
    raw = dict(model.state_dict())
    if hasattr(model, "config") and type(model).__module__.startswith("transformers"):
        from transformers.core_model_loading import revert_weight_conversion

        raw = revert_weight_conversion(model, raw)
    return files.state_dict(files.TensorSource(raw, conf.to_dict()), torch.bfloat16)


def comfy_model_on_meta(unet_config: dict):
    """ComfyUI's own model for a detected unet_config, built on the meta device: (model config, module)"""
    import comfy.model_detection

    mc = comfy.model_detection.model_config_from_unet_config(dict(unet_config))
    with torch.device("meta"):
        model = mc.get_model({}, "")
    return mc, model.diffusion_model


def detect(sd: dict):
    """what the SDNQ-aware stock loader does before building a model: ComfyUI's detection,
    else our diffusers conversion then detection. (model config, converted state dict)"""
    import comfy.model_detection

    from comfy_sdnq.comfyui import convert

    mc = comfy.model_detection.model_config_from_unet(sd, "")
    if mc is not None:
        return mc, sd
    conv = convert.diffusers_to_comfy(dict(sd))
    return (comfy.model_detection.model_config_from_unet(conv, "") if conv is not None else None), conv


def expected_model_size(patcher) -> int:
    """every byte that streams: codes, scales, zero-points, SVD factors, plain tensors"""
    from comfy_sdnq import fused, layout

    total = 0
    for k, v in patcher.model.state_dict().items():
        if layout.is_sdnq(v):
            total += layout.compressed_nbytes(v)
        elif fused.is_fused(v):
            total += fused.nbytes(v)
        elif ".sdnq." not in k:
            total += v.nbytes
    return total


def quantized_weights(module) -> tuple[int, int, int]:
    """(SDNQ layers, fused SDNQ layers, plain Linear weights of at least 64k elements)"""
    from comfy_sdnq import fused, layout

    q = f = plain = 0
    for name, p in module.named_parameters():
        if layout.is_sdnq(p):
            q += 1
        elif fused.is_fused(p):
            f += 1
        elif name.endswith("weight") and p.dim() == 2 and p.numel() >= 65536:
            plain += 1
    return q, f, plain


def save_comfy_dense(sd: dict, path):
    """a dense diffusers-layout state dict in ComfyUI's key layout (for families ComfyUI
    cannot convert itself), through comfy_sdnq's key map (verified separately against
    diffusers' forward and diffusers' own single-file converters)"""
    from comfy_sdnq.comfyui import convert

    conv = convert.diffusers_to_comfy({k: v.contiguous() for k, v in sd.items()})
    return save_dense(conv, path)


def sample_latent(patcher, cond, latent_shape, steps=2, seed=0, cfg=1.0):
    import comfy.sample

    latent = torch.zeros(latent_shape)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher, noise, steps, cfg, "euler", "simple", cond, cond, latent, denoise=1.0,
                               seed=seed, disable_pbar=True)


def text_cond(dim, tokens=8, pooled=None, seed=42, **extra):
    g = torch.Generator().manual_seed(seed)
    opts = dict(extra)
    if pooled:
        opts["pooled_output"] = torch.randn(1, pooled, generator=g)
    return [[torch.randn(1, tokens, dim, generator=g) * 0.5, opts]]


def build_uninitialized(factory):
    """factory() with torch.nn.init's initializers disabled (the weights are overwritten
    by randomize; default init of a wide model costs seconds on a CPU)"""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)
        return factory()
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)
