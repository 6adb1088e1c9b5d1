"""The "SDNQ Offload Mode" node on the CPU: a model switched to layer streaming and back
samples exactly what ComfyUI-managed loading samples (on the CPU nothing moves, but the
blocks are packed, rebuilt and swapped in per block as on a GPU), with LoRA too, and
ComfyUI's bookkeeping sees only the resident part. Streaming to a real GPU is covered by
tests/test_standalone.py's CUDA test and benchmarks/bench_offload.py."""
import os

import pytest
import torch

pytestmark = pytest.mark.comfyui


def _node():
    from comfy_sdnq.comfyui.offload import SDNQOffloadMode

    return SDNQOffloadMode()


def test_layer_mode_and_back_sample_the_same(flux, monkeypatch):
    import comfy.model_management
    import comfy_models as cm

    from comfy_sdnq import offload
    from comfy_sdnq.comfyui.offload import SDNQLayerPatcher
    from comfy_sdnq.comfyui.patcher import SDNQModelPatcher

    base = cm.load_unet("flux-sdnq.safetensors")
    cond = cm.flux_conditioning()
    ref = cm.sample(base, cond)

    layer = _node().apply(base, "layer")[0]
    assert type(layer) is SDNQLayerPatcher and layer.model is base.model
    full = base.model_size()
    resident, sizes, names = layer._plan()
    assert names == ["diffusion_model.double_blocks.0", "diffusion_model.single_blocks.0"]
    # 2 blocks: both fit the 4 in flight (ComfyUI's module_size skips the 4-byte dummy scale of fused weights)
    assert layer.model_size() == resident + sum(sizes) == pytest.approx(full, abs=64)
    monkeypatch.setattr(SDNQLayerPatcher, "blocks_in_flight", lambda self: 1)
    assert layer.model_size() == resident + max(sizes) < full  # ComfyUI counts the resident part + blocks in flight
    monkeypatch.undo()
    out = cm.sample(layer, cond)
    assert torch.equal(out, ref)
    st = offload.stats(layer)
    assert st is not None and st.loads == 2 * 2  # 2 blocks x 2 steps (cfg 1: one batch per step)
    assert 0 < st.resident_bytes < st.streamed_bytes
    assert layer.loaded_size() == layer.model_size()
    # the block weights sit on their packed host copies between runs
    qkv = layer.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    assert qkv._qdata.untyped_storage().data_ptr() == \
        offload.state_of(layer.model).units[0].host.untyped_storage().data_ptr()

    back = _node().apply(layer, "comfyui")[0]
    assert type(back) is SDNQModelPatcher and back.model_size() == full
    out2 = cm.sample(back, cond)
    assert torch.equal(out2, ref)
    assert offload.state_of(back.model) is None  # ComfyUI detached the streaming patcher first

    # and again into layer mode from ComfyUI-managed weights
    again = _node().apply(back, "layer")[0]
    assert torch.equal(cm.sample(again, cond), ref)
    comfy.model_management.unload_all_models()
    assert offload.state_of(again.model) is None
    assert again.loaded_size() == 0


def test_layer_mode_with_lora(flux):
    import comfy.model_management
    import comfy_models as cm
    import nodes
    from test_comfyui_patcher import LORA_TARGETS, _lora

    name = _lora(os.path.join(flux["tmp"], "loras", "offload-lora.safetensors"), LORA_TARGETS)
    base = cm.load_unet("flux-sdnq.safetensors")
    cond = cm.flux_conditioning()
    ref = cm.sample(nodes.LoraLoaderModelOnly().load_lora_model_only(base, name, 1.0)[0], cond)
    comfy.model_management.unload_all_models()
    layer = _node().apply(base, "layer")[0]
    lora = nodes.LoraLoaderModelOnly().load_lora_model_only(layer, name, 1.0)[0]
    out = cm.sample(lora, cond)
    without = cm.sample(layer, cond)
    assert cm.rel(out, without) > 1e-3  # the LoRA acts
    assert cm.rel(out, ref) < 1e-6
    comfy.model_management.unload_all_models()


def test_bad_mode(comfy):
    from comfy_sdnq.comfyui.offload import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, set_mode

    assert NODE_DISPLAY_NAME_MAPPINGS == {"SDNQOffloadMode": "SDNQ Offload Mode"}
    assert "mode" in NODE_CLASS_MAPPINGS["SDNQOffloadMode"].INPUT_TYPES()["required"]
    with pytest.raises(ValueError, match="offload mode"):
        set_mode(None, "gpu")
