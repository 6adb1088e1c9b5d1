"""SDNQ files through ComfyUI's stock loader nodes, against the same model loaded dense.

The FLUX.1 transformer here has the published width (detection fixes 24 heads x 128)
at depth 1 + 1, random weights, quantized by sdnq (uint4 + SVD r32, the published
default) and written in diffusers layout as sdnq publishes it - and in ComfyUI's own
key layout as a single file. The reference loads sdnq's dequantized weights through
ComfyUI's ordinary path. Tolerance for sampled latents: the reference rounds
W = deq + up@down to bf16 once, comfy_sdnq keeps the low-rank branch on the activations
(sdnq's matmul path), so the two differ by bf16 roundings of the weights - far below
the quantization error itself, which the test checks too.
"""
import os

import pytest
import torch

pytestmark = pytest.mark.comfyui


def _load_unet(name):
    from comfy_models import load_unet

    return load_unet(name)


def test_flux_diffusers_keys_through_load_diffusion_model(flux):
    import comfy_models as cm

    from comfy_sdnq import fused, layout
    from comfy_sdnq.comfyui.patcher import SDNQModelPatcher

    model = _load_unet("flux-sdnq.safetensors")
    assert isinstance(model, SDNQModelPatcher)
    dm = model.model.diffusion_model
    assert type(dm).__name__ == "Flux"
    qkv = dm.double_blocks[0].img_attn.qkv.weight
    assert fused.is_fused(qkv) and qkv.shape == (9216, 3072)          # to_q/to_k/to_v kept as parts
    assert fused.is_fused(dm.single_blocks[0].linear1.weight)        # + proj_mlp
    assert layout.is_sdnq(dm.double_blocks[0].img_mlp[0].weight)
    # model_size counts every byte that streams: codes, scales, zero-points, SVD factors
    assert model.model_size() == cm.expected_model_size(model)

    reference = _load_unet("flux-dense.safetensors")
    original = _load_unet("flux-original.safetensors")
    assert type(reference).__name__ == "ModelPatcher"
    cond = cm.flux_conditioning()
    ours, ref, orig = cm.sample(model, cond), cm.sample(reference, cond), cm.sample(original, cond)
    err, quant_err = cm.rel(ours, ref), cm.rel(orig, ref)
    print(f"\nFlux uint4+SVD: vs dense-dequantized {err:.2e}, quantization error {quant_err:.2e}")
    assert err < 1e-2 and err < quant_err / 5


def test_comfyui_key_layout_single_file(flux, comfy):
    """an SDNQ model in ComfyUI's own key layout (qkv quantized as one layer), single file,
    through the stock loader"""
    import copy

    import comfy_models as cm

    base = _load_unet("flux-original.safetensors").model.diffusion_model
    net = copy.deepcopy(base).to(torch.bfloat16)
    q = cm.sdnq_quantize_model(net, weights_dtype="int5", group_size=0, use_svd=True, svd_rank=16,
                               modules_to_not_convert=["img_in", "txt_in", "final_layer", "time_in", "vector_in"])
    path = cm.save_sdnq_single_file(q, os.path.join(flux["tmp"], "diffusion_models", "flux-sdnq-comfy.safetensors"))
    cm.save_dense(cm.sdnq_dense_state_dict(q), os.path.join(flux["tmp"], "diffusion_models", "flux-comfy-dense.safetensors"))
    model = _load_unet(os.path.basename(path))
    from comfy_sdnq import layout

    qkv = model.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    assert layout.is_sdnq(qkv) and qkv.shape == (9216, 3072)
    reference = _load_unet("flux-comfy-dense.safetensors")
    cond = cm.flux_conditioning()
    err = cm.rel(cm.sample(model, cond), cm.sample(reference, cond))
    print(f"\nFlux (ComfyUI keys) int5+SVD vs dense-dequantized: {err:.2e}")
    assert err < 1e-2


def test_non_sdnq_files_load_exactly_as_before(flux, comfy):
    import comfy.sd

    import comfy_models as cm
    from comfy_sdnq.comfyui import hooks

    with_hooks = _load_unet("flux-dense.safetensors")
    hooks.uninstall()
    try:
        stock = comfy.sd.load_diffusion_model(flux["dense"])
    finally:
        hooks.install()
    assert type(with_hooks) is type(stock)
    a, b = with_hooks.model.diffusion_model.state_dict(), stock.model.diffusion_model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert type(a[k]) is type(b[k]) and torch.equal(a[k], b[k]), k
    cond = cm.flux_conditioning()
    assert torch.equal(cm.sample(with_hooks, cond), cm.sample(stock, cond))
