"""Layer streaming inside ComfyUI: the "SDNQ Offload Mode" node.

mode "comfyui": ComfyUI's model management loads the model, all of it or (lowvram) as
much as its estimate allows, casting the rest per layer.

mode "layer": SDNQLayerPatcher, a ModelPatcher whose weights ComfyUI sees as only the
resident part (everything outside the transformer blocks) plus room for the few blocks
in flight. The blocks' weights stay on the offload device, packed compressed into
pinned memory, and comfy_sdnq.offload streams them per block: copied on a side stream
while the block before computes, dropped after. Through ModelPatcher's own methods
(load / partially_load / partially_unload / unpatch_model / detach), so ComfyUI loads,
unloads and swaps the model like any other; LoRA patches on streamed layers run per
step (weight functions), never merged into the packed copies.

Switching either way returns a clone: the model weights are shared, the streaming state
lives on the model and is torn down whenever another patcher of it takes over (ComfyUI
detaches the old patcher of a model before loading a clone).
"""
import sys

import comfy.model_patcher as mp
from comfy.patcher_extension import CallbacksMP

from .. import offload
from . import patcher

MODES = ("comfyui", "layer")
PREFETCH = 1


class SDNQLayerPatcher(patcher.SDNQModelPatcher):
    """ModelPatcher that streams the transformer blocks (see the module doc)."""

    def _plan(self):
        """(resident bytes, [bytes of each block], [block names]) of the model"""
        plan = self.__dict__.get("_sdnq_plan")
        if plan is None:
            blocks = offload.find_blocks(self.model)
            inside = {id(m) for _, b in blocks for m in b.modules()}
            resident = offload.weight_bytes(m for m in self.model.modules() if id(m) not in inside)
            sizes = [offload.weight_bytes(b.modules()) for _, b in blocks]
            plan = self._sdnq_plan = (resident, sizes, [n for n, _ in blocks])
        return plan

    def blocks_in_flight(self) -> int:
        return 2 * PREFETCH + 2  # the running block, the prefetched ones, those the device still reads

    def model_size(self):
        # what ComfyUI must find room for: the resident part and the blocks in flight
        resident, sizes, _ = self._plan()
        return resident + min(sum(sizes), self.blocks_in_flight() * max(sizes, default=0))

    def streaming(self, device=None) -> bool:
        """whether this patcher's streaming is installed on the model (on device)"""
        state = offload.state_of(self.model)
        return state is not None and getattr(state, "owner", None) == id(self) and \
            (device is None or state.device == device)

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        device_to = device_to if device_to is not None else self.load_device
        with self.use_ejected():
            self.unpatch_hooks()
            _, _, names = self._plan()
            inside = tuple(n + "." for n in names)
            for key in self.patches:
                module, param = patcher._module_param(self.model, key)
                if key.startswith(inside) and hasattr(module, "comfy_cast_weights") and param in ("weight", "bias"):
                    patcher.attach_patch(self.model, key, mp.LowVramPatch(key, self.patches))  # per step
                elif key.startswith(inside):
                    self.patch_weight_to_device(key, device_to=self.offload_device)  # merged into the host copy
                else:
                    self.patch_weight_to_device(key, device_to=device_to)
            offload.apply(self.model, "layer", device_to, blocks=names, prefetch=PREFETCH, move_inputs=False)
            offload.state_of(self.model).owner = id(self)  # clones share the model, not the streaming
            self.model.device = device_to
            self.model.model_lowvram = False
            self.model.model_loaded_weight_memory = self.model_size()
            self.model.model_offload_buffer_memory = 0
            self.model.current_weight_patches_uuid = self.patches_uuid
            for callback in self.get_all_callbacks(CallbacksMP.ON_LOAD):
                callback(self, device_to, lowvram_model_memory, force_patch_weights, full_load)
            self.apply_hooks(self.forced_hooks, force_apply=True)

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        with self.use_ejected(skip_and_inject_on_exit_only=True):
            current = self.streaming(device_to) and self.model.current_weight_patches_uuid == self.patches_uuid \
                and not force_patch_weights
            # anything else (ComfyUI's own loading by another patcher, other patches) is undone first
            self.unpatch_model(self.offload_device, unpatch_weights=not current)
            self.patch_model(load_weights=False)
            if current:
                return 0
            self.load(device_to, force_patch_weights=force_patch_weights)
            return self.loaded_size()

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        return 0  # the resident part goes as a whole (detach)

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            offload.remove(self.model)  # blocks back on their host copies, hooks off
        return super().unpatch_model(device_to=device_to, unpatch_weights=unpatch_weights)

    def detach(self, unpatch_all=True):
        # unpatch_all=False: a clone of the model is about to load, or this patcher is
        # garbage (ModelPatcher.__del__); the streaming is this patcher's alone, so it goes
        if not unpatch_all and self.streaming() and sys.meta_path is not None:
            self.unpatch_model(self.offload_device, unpatch_weights=True)
        return super().detach(unpatch_all)


def set_mode(model, mode: str):
    """a clone of a MODEL in the given offload mode"""
    if mode not in MODES:
        raise ValueError(f"comfy_sdnq: offload mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "layer":
        # a Dynamic VRAM model gets a legacy delegate (ComfyUI rebuilds it, disable_dynamic)
        n = model.clone(disable_dynamic=True) if model.is_dynamic() else model.clone()
        n.__class__ = SDNQLayerPatcher
        return n
    n = model.clone()
    if isinstance(n, SDNQLayerPatcher):
        n.__class__ = patcher.SDNQModelPatcher
        n.size = 0  # the clone got the streamed size; ComfyUI measures it again
    return n


class SDNQOffloadMode:
    """Switch a model between ComfyUI-managed loading ("comfyui") and comfy_sdnq's layer
    streaming ("layer": the transformer blocks' compressed weights stay in pinned host
    memory and stream to the GPU block by block, the rest stays resident; for models
    larger than the VRAM). Returns a clone; the weights are shared."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "mode": (list(MODES), {"default": "layer"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "loaders/sdnq"
    DESCRIPTION = __doc__
    TITLE = "SDNQ Offload Mode"

    def apply(self, model, mode="layer"):
        return (set_mode(model, mode),)


NODE_CLASS_MAPPINGS = {"SDNQOffloadMode": SDNQOffloadMode}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.TITLE for k, v in NODE_CLASS_MAPPINGS.items()}
