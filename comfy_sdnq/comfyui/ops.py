"""SDNQOps: ComfyUI's manual_cast layers, taking SDNQ QuantizedTensors as weights.

Passed as model_options["custom_operations"] when a state dict holds SDNQ weights. Only
state-dict loading changes: an SDNQ weight is assigned as the layer's Parameter (in
both patcher modes; torch's default would copy it into a dense parameter), and the
layer's state dict lists the side tensors so ComfyUI's module_size() counts every byte
that streams. Forward is the stock one: cast_bias_weight streams the QuantizedTensor
(codes and side tensors together) and F.linear reaches torch.ops.sdnq.linear.
"""
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


class SDNQOps(comfy.ops.manual_cast):
    class Linear(SDNQLayer, comfy.ops.manual_cast.Linear):
        pass

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
