"""SDNQ models under ComfyUI's patchers on the CPU: LoRA through the stock loader node,
partial (lowvram) loading bookkeeping, clones. Streaming under a real VRAM budget and
Dynamic VRAM run on the GPU machine (benchmarks/comfyui_gpu.py)."""
import os

import pytest
import torch

pytestmark = pytest.mark.comfyui


def _lora(path, targets: dict, rank=8, seed=3, scale=0.05):
    """a LoRA in ComfyUI's key format for {comfy key: (out, in)}"""
    import safetensors.torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, (out, inp) in targets.items():
        base = "diffusion_model." + key[: -len(".weight")]
        sd[base + ".lora_down.weight"] = (torch.randn(rank, inp, generator=g) * scale).to(torch.bfloat16)
        sd[base + ".lora_up.weight"] = (torch.randn(out, rank, generator=g) * scale).to(torch.bfloat16)
        sd[base + ".alpha"] = torch.tensor(float(rank))
    safetensors.torch.save_file(sd, path)
    return os.path.basename(path)


LORA_TARGETS = {"double_blocks.0.img_attn.qkv.weight": (9216, 3072),   # fused parts
                "double_blocks.0.img_mlp.0.weight": (12288, 3072),     # plain SDNQ layer
                "single_blocks.0.linear2.weight": (3072, 15360)}


def test_lora_through_stock_loader_matches_dense(flux):
    import comfy_models as cm
    import nodes

    from comfy_sdnq import fused
    from comfy_sdnq.comfyui.patcher import SDNQModelPatcher

    name = _lora(os.path.join(flux["tmp"], "loras", "test-lora.safetensors"), LORA_TARGETS)
    base = cm.load_unet("flux-sdnq.safetensors")
    lora = nodes.LoraLoaderModelOnly().load_lora_model_only(base, name, 1.0)[0]
    assert isinstance(lora, SDNQModelPatcher) and len(lora.patches) >= len(LORA_TARGETS)
    dense = nodes.LoraLoaderModelOnly().load_lora_model_only(cm.load_unet("flux-dense.safetensors"), name, 1.0)[0]
    cond = cm.flux_conditioning()
    with_lora, ref = cm.sample(lora, cond), cm.sample(dense, cond)
    without = cm.sample(base, cond)
    effect, err = cm.rel(with_lora, without), cm.rel(with_lora, ref)
    print(f"\nLoRA effect {effect:.2e}, SDNQ+LoRA vs dense+LoRA {err:.2e}")
    assert effect > 20 * err and err < 1e-2
    # the weights stayed compressed: the LoRA runs as a per-step function, never merged
    qkv = lora.model.diffusion_model.double_blocks[0].img_attn.qkv
    assert fused.is_fused(qkv.weight)
    lora.unpatch_model()
    assert not any(getattr(f, "key", "").endswith("qkv.weight") for f in qkv.weight_function)


def test_partial_load_bookkeeping_and_outputs(flux):
    """legacy lowvram: part of the model loaded, the rest cast per forward; same outputs"""
    import comfy_models as cm

    full = cm.load_unet("flux-sdnq.safetensors")
    part = cm.load_unet("flux-sdnq.safetensors")
    cpu = torch.device("cpu")
    size = part.model_size()
    part.load(cpu, lowvram_model_memory=size // 3)
    assert part.model.model_lowvram
    assert 0 < part.loaded_size() < size
    lowvram_layers = [m for m in part.model.diffusion_model.modules() if hasattr(m, "prev_comfy_cast_weights")]
    assert lowvram_layers
    full.load(cpu, lowvram_model_memory=0, full_load=True)
    assert not full.model.model_lowvram
    x = torch.randn(1, 16, 16, 16)
    t = torch.tensor([500.0])
    cond = cm.flux_conditioning()[0]
    kwargs = {"c_crossattn": cond[0], "y": cond[1]["pooled_output"]}
    with torch.no_grad():
        a = part.model.apply_model(x, t, **kwargs)
        b = full.model.apply_model(x, t, **kwargs)
    assert torch.equal(a, b)
    part.unpatch_model(cpu)
    assert not part.model.model_lowvram and part.loaded_size() == 0


def test_clone_keeps_sdnq_patcher_class(flux):
    import comfy_models as cm

    from comfy_sdnq.comfyui.patcher import SDNQModelPatcher

    model = cm.load_unet("flux-sdnq.safetensors")
    assert isinstance(model.clone(), SDNQModelPatcher)
    assert model.cached_patcher_init is not None  # set by the stock loader: reloadable for delegates
    assert model.clone().model is model.model


def test_lora_svd_fast_path_equals_slow_path(flux, monkeypatch):
    """LoRAs on SDNQ layers with an SVD branch ride in the SVD factors (no per-step weight
    work). Checked on a patched layer against W x + s*up(down x) in float64, with W x the
    layer without the LoRA: the fast path matches it to float32 rounding; the per-step path
    dequantizes the weight as sdnq does (W + up@down rounded to the factors' bf16, 2^-9
    relative per element) before adding the LoRA, so it matches to that rounding only."""
    import safetensors.torch

    import comfy_models as cm
    import nodes

    from comfy_sdnq import layout
    from comfy_sdnq.comfyui.ops import SDNQOps

    path = os.path.join(flux["tmp"], "loras", "fast-lora.safetensors")
    name = _lora(path, LORA_TARGETS, seed=5)
    lora = nodes.LoraLoaderModelOnly().load_lora_model_only(cm.load_unet("flux-sdnq.safetensors"), name, 0.8)[0]
    lora.load(torch.device("cpu"), lowvram_model_memory=0, full_load=True)
    layer = lora.model.diffusion_model.double_blocks[0].img_mlp[0]
    assert layout.is_sdnq(layer.weight) and layer.weight.params.svd_up is not None and layer.weight_function
    x = torch.randn(2, 7, 3072, generator=torch.Generator().manual_seed(0)).to(layer.weight.dtype)
    before = SDNQOps.Linear.lora_svd_calls
    with torch.no_grad():
        fast = layer(x)
        assert SDNQOps.Linear.lora_svd_calls == before + 1
        monkeypatch.setenv("COMFY_SDNQ_LORA_SVD", "0")
        slow = layer(x)
        assert SDNQOps.Linear.lora_svd_calls == before + 1
        plain = torch.nn.functional.linear(x, layer.weight, layer.bias)  # the op, no LoRA
    f = safetensors.torch.load_file(path)
    base = "diffusion_model.double_blocks.0.img_mlp.0"
    up, down = f[base + ".lora_up.weight"].double(), f[base + ".lora_down.weight"].double()
    scale = 0.8 * float(f[base + ".alpha"]) / down.shape[0]
    ref = plain.double() + scale * (x.double() @ down.t()) @ up.t()
    err_fast, err_slow = cm.rel(fast, ref), cm.rel(slow, ref)
    effect = cm.rel(plain, ref)
    print(f"\nLoRA on an SDNQ+SVD layer vs float64: fast path {err_fast:.1e}, per-step path {err_slow:.1e} "
          f"(LoRA effect {effect:.1e})")
    assert err_fast < 1e-5 and err_slow < 4e-3 and effect > 100 * err_fast
    lora.unpatch_model()
