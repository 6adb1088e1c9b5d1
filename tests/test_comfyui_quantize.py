"""The "SDNQ Quantize Model" and "SDNQ Save Model" nodes on a real ComfyUI Flux model: the
quantized MODEL samples close to the dense one, and the saved file loads back through the
stock "Load Diffusion Model" node with the very same weights."""
import os

import pytest
import torch

import comfy_sdnq

pytestmark = pytest.mark.comfyui


def test_quantize_node_then_save_and_reload(flux, comfy):
    import folder_paths

    import comfy_models as cm
    from comfy_sdnq import layout
    from comfy_sdnq.comfyui import quantize_nodes

    dense = cm.load_unet(os.path.basename(flux["original"]))
    q = quantize_nodes.SDNQQuantizeModel().quantize(dense, "uint4")[0]
    blocks = q.model.diffusion_model.double_blocks[0]
    assert layout.is_sdnq(blocks.img_attn.qkv.weight) and blocks.img_attn.qkv.weight.shape == (9216, 3072)
    assert not layout.is_sdnq(q.model.diffusion_model.img_in.weight)  # sdnq's skip list, ComfyUI names
    cond = cm.flux_conditioning()
    ref, out = cm.sample(dense, cond), cm.sample(q, cond)
    err = cm.rel(out, ref)
    print(f"\nSDNQ Quantize Model uint4 vs dense: {err:.3e}")
    assert 0 < err < 0.2

    out_dir = os.path.join(flux["tmp"], "output")
    os.makedirs(out_dir, exist_ok=True)
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(out_dir)
    try:
        quantize_nodes.SDNQSaveModel().save(q, "diffusion_models/flux-q")
    finally:
        folder_paths.set_output_directory(old)
    saved = os.path.join(out_dir, "diffusion_models", "flux-q_00001_.safetensors")
    assert os.path.isfile(saved)
    os.replace(saved, os.path.join(flux["tmp"], "diffusion_models", "flux-q.safetensors"))
    back = cm.load_unet("flux-q.safetensors")
    sq, sb = q.model.diffusion_model.state_dict(), back.model.diffusion_model.state_dict()
    assert sq.keys() == sb.keys()
    for k, v in sq.items():
        if layout.is_sdnq(v):
            for name, t in comfy_sdnq.sdnq_tensors(v).items():
                assert torch.equal(t, comfy_sdnq.sdnq_tensors(sb[k])[name]), (k, name)
        else:
            assert v.dtype == sb[k].dtype and torch.equal(v, sb[k]), k
    # identical weights; the file-mapped copies have other strides, so fp32 sums may be
    # ordered differently: equal to float32 rounding, not bit for bit
    assert cm.rel(cm.sample(back, cond), out) < 1e-5


def test_quantize_node_refuses_sdnq_and_save_needs_config(flux, comfy):
    import comfy_models as cm
    from comfy_sdnq.comfyui import quantize_nodes
    from comfy_sdnq.errors import SdnqError

    q = cm.load_unet(os.path.basename(flux["sdnq"]))
    with pytest.raises(SdnqError, match="already quantized"):
        quantize_nodes.SDNQQuantizeModel().quantize(q, "int8")
    with pytest.raises(SdnqError, match="not made by SDNQ Quantize Model"):
        quantize_nodes.SDNQSaveModel().save(q, "x")
