"""ModelPatcher subclasses for SDNQ weights. The stock patchers stream and offload
SDNQ QuantizedTensors as they are; what they would get wrong is LoRA:

* the legacy patcher merges a patch into the weight (dequantize, add, re-quantize or
  store dense), and
* the dynamic patcher re-quantizes a patched weight that stays resident in VRAM.

Re-quantizing a LoRA delta into sub-8-bit codes erases most of it, so patched SDNQ
weights instead get the patch as a per-step weight function: dequantize, add the LoRA
in the compute dtype, use. Exact, and the weight itself never changes.
"""
import comfy.model_patcher as mp

from . import convert


class _SDNQPatches:
    """shared by both patcher classes"""

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False,
                               force_cast=False):
        weight, _, _ = mp.get_key_weight(self.model, key)
        if key not in self.patches or not convert.is_quantized(weight):
            return super().patch_weight_to_device(key, device_to=device_to, inplace_update=inplace_update,
                                                  return_weight=return_weight, force_cast=force_cast)
        if return_weight:  # saving: the merged weight, dense
            import comfy.lora
            import comfy.model_management

            dtype = comfy.model_management.lora_compute_dtype(device_to or weight.device)
            dense = weight.dequantize().to(device=device_to or weight.device, dtype=dtype)
            return comfy.lora.calculate_weight(self.patches[key], dense, key).to(weight.dtype)
        if device_to is not None and weight.device != device_to:
            import collections

            if key not in self.backup:
                self.backup[key] = collections.namedtuple("Dimension", ["weight", "inplace_update"])(weight, False)
            import comfy.utils

            comfy.utils.set_attr_param(self.model, key, weight.to(device_to))
        attach_patch(self.model, key, mp.LowVramPatch(key, self.patches))

    def load(self, *args, **kwargs):
        out = super().load(*args, **kwargs)
        # a reload wipes the weight functions of layers it had loaded before: restore ours
        for key in list(self.model.__dict__.get("_sdnq_patched", ())):
            if key in self.patches:
                attach_patch(self.model, key, mp.LowVramPatch(key, self.patches))
        return out

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            detach_patches(self.model)
        return super().unpatch_model(device_to=device_to, unpatch_weights=unpatch_weights)


def _module_param(model, key):
    path, param = key.rsplit(".", 1)
    module = model
    for part in path.split("."):
        module = getattr(module, part)
    return module, param


def attach_patch(model, key, patch) -> None:
    """append a per-step patch to the layer's weight functions (once per key)"""
    module, param = _module_param(model, key)
    funcs = [f for f in getattr(module, param + "_function", []) if getattr(f, "key", None) != key]
    setattr(module, param + "_function", funcs + [patch])
    attached = model.__dict__.setdefault("_sdnq_patched", set())
    attached.add(key)


def detach_patches(model) -> None:
    for key in model.__dict__.pop("_sdnq_patched", set()):
        module, param = _module_param(model, key)
        funcs = [f for f in getattr(module, param + "_function", []) if getattr(f, "key", None) != key]
        setattr(module, param + "_function", funcs)


class SDNQModelPatcher(_SDNQPatches, mp.ModelPatcher):
    """legacy (estimate-based, lowvram) patcher for models with SDNQ weights"""


class SDNQModelPatcherDynamic(_SDNQPatches, mp.ModelPatcherDynamic):
    """Dynamic VRAM patcher for models with SDNQ weights"""

    def load(self, *args, **kwargs):
        out = super().load(*args, **kwargs)
        # LoRA on SDNQ weights: per step, never re-quantized into a VRAM-resident copy
        for name, m in self.model.named_modules():
            fn = getattr(m, "weight_lowvram_function", None)
            if fn is not None and convert.is_quantized(getattr(m, "weight", None)):
                m.weight_lowvram_function = None
                attach_patch(self.model, f"{name}.weight", fn)
        return out

    def clone(self, *args, **kwargs):
        n = super().clone(*args, **kwargs)
        return adopt(n)


def adopt(patcher):
    """give a stock patcher of a model with SDNQ weights its SDNQ class"""
    if patcher is None or isinstance(patcher, _SDNQPatches):
        return patcher
    if type(patcher) is mp.ModelPatcherDynamic:
        patcher.__class__ = SDNQModelPatcherDynamic
    elif type(patcher) is mp.ModelPatcher:
        patcher.__class__ = SDNQModelPatcher
    return patcher
