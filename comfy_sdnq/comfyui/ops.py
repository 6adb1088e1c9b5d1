"""SDNQOps: ComfyUI's manual_cast layers, taking SDNQ QuantizedTensors as weights.

Passed as model_options["custom_operations"] when a state dict holds SDNQ weights. Only
state-dict loading changes: an SDNQ weight is assigned as the layer's Parameter (in
both patcher modes; torch's default would copy it into a dense parameter), and the
layer's state dict lists the side tensors so ComfyUI's module_size() counts every byte
that streams. Forward is the stock one: cast_bias_weight streams the QuantizedTensor
(codes and side tensors together) and F.linear reaches torch.ops.sdnq.linear.

LoRA fast path: on a Linear whose SDNQ weight has an SVD branch (and no Hadamard
rotation), plain LoRA patches (no DoRA, LoCon mid, offset, function or model strength)
are appended to the SVD factors: up' = [up | s*lora_up], down' = [down ; lora_down],
s = strength * alpha / rank. The linear op then applies the LoRA on the activations with
the SVD branch, at no per-step weight cost, instead of dequantizing the weight and adding
the LoRA delta to it (the per-step weight function the patchers attach). Both give
W x + s*up(down x); they differ by rounding only. COMFY_SDNQ_LORA_SVD=0 turns it off.
"""
import dataclasses
import os

import torch

import comfy.ops

from .. import fused, layout
from ..dtypes import ARITH_DTYPES


def _is_quantized(w) -> bool:
    return layout.is_sdnq(w) or fused.is_fused(w)


def _side_tensors(w) -> dict:
    p = w.params
    return {f: getattr(p, f) for f in p._tensor_fields() if not (fused.is_fused(w) and f == "scale")}


class SDNQLayer:
    """Mixin for comfy.ops layers (put before the comfy.ops class)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        w = state_dict.get(key)
        if not _is_quantized(w):
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                 unexpected_keys, error_msgs)
        current = getattr(self, "weight", None)
        expected = tuple(current.shape) if isinstance(current, torch.Tensor) else None
        if expected is not None and tuple(w.shape) != expected:
            error_msgs.append(f"{key}: the SDNQ weight has shape {tuple(w.shape)}, the model's layer expects "
                              f"{expected}")
            return
        dtype = current.dtype if isinstance(current, torch.Tensor) else getattr(self, "weight_comfy_model_dtype", None)
        if dtype in ARITH_DTYPES and w.dtype != dtype:
            w = w.to(dtype=dtype)  # relabels the compute dtype; the codes stay as they are
        self.weight = torch.nn.Parameter(w, requires_grad=False)
        rest = {k: state_dict[k] for k in (prefix + "bias",) if k in state_dict}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in missing_keys:
            missing_keys.remove(key)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        w = self._parameters.get("weight")
        if _is_quantized(w):
            for name, t in _side_tensors(w).items():
                destination[prefix + "sdnq." + name] = t if keep_vars else t.detach()

    def _apply(self, fn, recurse=True):
        if _is_quantized(self._parameters.get("weight")):
            return comfy.ops._quantized_apply(self, fn, recurse)
        return super()._apply(fn, recurse)


def _plain_lora(patch) -> bool:
    """a patch entry (strength, adapter, strength_model, offset, function) that is a plain LoRA"""
    from comfy.weight_adapter.lora import LoRAAdapter

    strength, v, strength_model, offset, function = patch
    if not isinstance(v, LoRAAdapter) or strength_model != 1.0 or offset is not None or function is not None:
        return False
    w = v.weights
    return w[3] is None and w[4] is None and w[5] is None and w[0].dim() == 2 and w[1].dim() == 2


def _lora_patches(layer):
    """the layer's patches when every weight function is a LoRA the SVD branch can carry, else None"""
    if os.environ.get("COMFY_SDNQ_LORA_SVD", "1") == "0":
        return None
    w = layer._parameters.get("weight")
    funcs = layer.weight_function
    if not funcs or not layout.is_sdnq(w):
        return None
    p = w.params
    if p.svd_up is None or p.hadamard or p.logical_t:
        return None
    patches = []
    for f in funcs:
        key, table = getattr(f, "key", None), getattr(f, "patches", None)
        if key is None or not isinstance(table, dict) or not table.get(key):
            return None
        if not all(_plain_lora(e) for e in table[key]):
            return None
        patches.extend(table[key])
    return patches


def _with_lora(weight, patches, cache: dict, compute_dtype):
    """weight (an SDNQ QuantizedTensor on its compute device) with the LoRAs in its SVD
    factors, held in the wider of the factors' and the activations' dtypes (the per-step
    path adds the LoRA in the compute dtype too)"""
    p = weight.params
    dev, dt = p.svd_up.device, torch.promote_types(p.svd_up.dtype, compute_dtype)
    token = (dev, dt, tuple((id(e[1]), float(e[0])) for e in patches))
    if cache.get("token") != token:
        ups, downs = [], []
        for strength, v, *_ in patches:
            up, down, alpha = v.weights[0], v.weights[1], v.weights[2]
            scale = strength * (float(alpha) / down.shape[0] if alpha is not None else 1.0)
            ups.append((up.to(dev, torch.float32) * scale).to(dt))
            downs.append(down.to(dev, dt))
        cache.clear()
        cache.update(token=token, up=torch.cat(ups, 1), down=torch.cat(downs, 0))
    up, down = cache["up"], cache["down"]
    su, sd = p.svd_up.to(dt), p.svd_down.to(dt)
    if p.svd_transposed:  # factors stored [r, out] / [in, r]
        new_up, new_down = torch.cat([su, up.t()], 0), torch.cat([sd, down.t()], 1)
    else:
        new_up, new_down = torch.cat([su, up], 1), torch.cat([sd, down], 0)
    return layout.make(weight._qdata, dataclasses.replace(p, svd_up=new_up, svd_down=new_down))


class SDNQOps(comfy.ops.manual_cast):
    class Linear(SDNQLayer, comfy.ops.manual_cast.Linear):
        lora_svd_calls = 0  # forwards that took the LoRA fast path (tests, statistics)

        def forward_comfy_cast_weights(self, input, *args, **kwargs):
            patches = _lora_patches(self)
            if patches is None:
                if args or kwargs or not layout.is_sdnq(self._parameters.get("weight")):
                    return super().forward_comfy_cast_weights(input, *args, **kwargs)
                # comfy.ops' own forward, with the SDNQ linear op called directly (layout.functional_linear)
                weight, bias, offload_stream = comfy.ops.cast_bias_weight(self, input, offloadable=True)
                x = layout.functional_linear(input, weight, bias)
                comfy.ops.uncast_bias_weight(self, weight, bias, offload_stream)
                return x
            funcs = self.weight_function
            self.weight_function = []  # cast the weight as it is, no dequantize + add
            try:
                weight, bias, offload_stream = comfy.ops.cast_bias_weight(self, input, offloadable=True)
            finally:
                self.weight_function = funcs
            if not layout.is_sdnq(weight):  # cast to another dtype dequantized it: slow path after all
                comfy.ops.uncast_bias_weight(self, weight, bias, offload_stream)
                return super().forward_comfy_cast_weights(input, *args, **kwargs)
            cache = self.__dict__.setdefault("_sdnq_lora_cache", {})
            x = layout.functional_linear(input, _with_lora(weight, patches, cache, input.dtype), bias)
            comfy.ops.uncast_bias_weight(self, weight, bias, offload_stream)
            type(self).lora_svd_calls += 1
            return x

    class Conv1d(SDNQLayer, comfy.ops.manual_cast.Conv1d):
        pass

    class Conv2d(SDNQLayer, comfy.ops.manual_cast.Conv2d):
        pass

    class Conv3d(SDNQLayer, comfy.ops.manual_cast.Conv3d):
        pass

    class ConvTranspose1d(SDNQLayer, comfy.ops.manual_cast.ConvTranspose1d):
        pass

    class ConvTranspose2d(SDNQLayer, comfy.ops.manual_cast.ConvTranspose2d):
        pass

    class Embedding(SDNQLayer, comfy.ops.manual_cast.Embedding):
        pass
