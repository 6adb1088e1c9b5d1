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
