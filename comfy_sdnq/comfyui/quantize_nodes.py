"""Nodes that make SDNQ models inside ComfyUI: "SDNQ Quantize Model" turns a loaded dense
MODEL into an SDNQ one (by the converter's rules: sdnq's layer selection and skip lists,
ComfyUI key names), "SDNQ Save Model" writes it as a single-file SDNQ model that the stock
"Load Diffusion Model" node reads back. For files on disk, `python -m comfy_sdnq convert`
does the same layer by layer with less memory."""
import logging
import os

import torch

import comfy.lora
import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths

from .. import converter, dtypes, files, layout
from ..errors import SdnqError
from . import convert

log = logging.getLogger("comfy_sdnq")

# offered first in the dtype list: the types SDNQ models are usually published in
COMMON = ("int8", "uint4", "uint5", "uint6", "int6", "uint3", "uint2", "float8_e4m3fn", "int4", "uint8")
_CLASSES = ((torch.nn.Linear, "Linear"), (torch.nn.Conv1d, "Conv1d"), (torch.nn.Conv2d, "Conv2d"),
            (torch.nn.Conv3d, "Conv3d"), (torch.nn.Embedding, "Embedding"))


def _dtype_choices():
    rest = [t.name for t in dtypes.TYPES if t.name not in COMMON and t.name not in converter._NOT_DYNAMIC]
    return list(COMMON) + rest


def _layer_classes(module) -> dict:
    out = {}
    for name, mod in module.named_modules():
        for cls, label in _CLASSES:
            if isinstance(mod, cls):
                out[f"{name}.weight"] = label
                break
    return out


def _device(choice: str):
    if choice == "cpu":
        return torch.device("cpu")
    dev = comfy.model_management.get_torch_device()
    return dev if dev.type != "cpu" or choice == "auto" else torch.device("cpu")


class SDNQQuantizeModel:
    """Quantize a loaded model's diffusion model to SDNQ: the same layers, types and skip
    lists as sdnq (and `comfy-sdnq convert`); LoRAs applied before this node are baked in.
    Returns a new MODEL that ComfyUI loads, streams and offloads compressed."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "weights_dtype": (_dtype_choices(), {"default": "int8"}),
            "group_size": ("INT", {"default": 0, "min": -2, "max": 4096,
                                   "tooltip": "0: sdnq's default for the type, -1 row-wise, -2 tensor-wise"}),
            "svd_rank": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": "0: no SVD low-rank branch"}),
            "dynamic": ("BOOLEAN", {"default": False,
                                    "tooltip": "per-layer type: the first from weights_dtype up whose error is "
                                               "within the threshold"}),
            "dynamic_loss_threshold": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.0001,
                                                 "tooltip": "-1: sdnq's default, 10^-(bits/2)"}),
            "skip": ("STRING", {"default": "", "multiline": False,
                                "tooltip": "extra module names to keep dense, comma separated (sdnq patterns)"}),
            "device": (["auto", "cpu"], {"default": "auto"}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "quantize"
    CATEGORY = "advanced/model/sdnq"
    DESCRIPTION = __doc__
    TITLE = "SDNQ Quantize Model"

    def quantize(self, model, weights_dtype="int8", group_size=0, svd_rank=0, dynamic=False,
                 dynamic_loss_threshold=-1.0, skip="", device="auto"):
        net = model.model.diffusion_model
        state = net.state_dict()
        if any(convert.is_quantized(v) for v in state.values()):
            raise SdnqError("SDNQ Quantize Model: the model is already quantized")
        state = {k: v for k, v in state.items()}
        for key, patches in model.patches.items():  # bake LoRAs and other weight patches in
            k = key.removeprefix("diffusion_model.")
            if k in state and patches:
                w = state[k]
                state[k] = comfy.lora.calculate_weight(patches, w.to(torch.float32, copy=True), key).to(w.dtype)
        cfg = {"weights_dtype": weights_dtype, "group_size": group_size, "use_svd": svd_rank > 0,
               "svd_rank": max(svd_rank, 1), "use_dynamic_quantization": bool(dynamic),
               "dynamic_loss_threshold": dynamic_loss_threshold if dynamic_loss_threshold >= 0 else None,
               "modules_to_not_convert": [s.strip() for s in skip.split(",") if s.strip()]}
        bar = comfy.utils.ProgressBar(len(state))

        def progress(done, total, key):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total)

        dtype = model.model.get_dtype()
        dtype = dtype if dtype in dtypes.ARITH_DTYPES else torch.bfloat16
        tensors, qraw, report = converter.quantize_state_dict(
            state, cfg, classes=_layer_classes(net), device=_device(device), torch_dtype=dtype, progress=progress)
        sd = files.state_dict(files.TensorSource(tensors, qraw, "SDNQ Quantize Model"), dtype)
        new = comfy.sd.load_diffusion_model_state_dict(sd, model_options=dict(model.model_options))
        if new is None:
            raise SdnqError("SDNQ Quantize Model: ComfyUI does not recognise the quantized model")
        new.model.sdnq_quantization_config = qraw
        worst = max((r.error for r in report.quantized), default=0.0)
        log.info("comfy_sdnq: quantized %d layers to %s in %.1f s: %.2f GB -> %.2f GB, worst layer error %.4f",
                 len(report.quantized), weights_dtype, report.seconds, report.dense_nbytes / 1e9,
                 report.nbytes / 1e9, worst)
        return (new,)


class SDNQSaveModel:
    """Save a model made by "SDNQ Quantize Model" as a single-file SDNQ model (ComfyUI key
    names, config in the file's header) under the output folder; move it to
    models/diffusion_models to load it with "Load Diffusion Model"."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",),
                             "filename_prefix": ("STRING", {"default": "diffusion_models/sdnq"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "advanced/model/sdnq"
    DESCRIPTION = __doc__
    TITLE = "SDNQ Save Model"

    def save(self, model, filename_prefix="diffusion_models/sdnq"):
        qraw = getattr(model.model, "sdnq_quantization_config", None)
        if qraw is None:
            raise SdnqError("SDNQ Save Model: the model was not made by SDNQ Quantize Model (an SDNQ model loaded "
                            "from a file is saved already)")
        if model.patches:
            log.warning("comfy_sdnq: SDNQ Save Model saves the model without the %d weight patches (LoRAs) applied "
                        "after quantizing", len(model.patches))
        full = model.model.diffusion_model.state_dict()
        # SDNQ layers also list their side tensors as '<module>.sdnq.<field>' (so ComfyUI
        # counts their bytes); they are saved from the weight itself
        sd = {k: v for k, v in full.items()
              if not (".sdnq." in k and layout.is_sdnq(full.get(k.split(".sdnq.")[0] + ".weight")))}
        for k, v in sd.items():
            if convert.is_quantized(v) and not layout.is_sdnq(v):
                raise SdnqError(f"SDNQ Save Model: {k} is a fused multi-part weight, which cannot be saved")
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                       folder_paths.get_output_directory())
        path = os.path.join(folder, f"{name}_{counter:05}_.safetensors")
        files.save(sd, path, qraw)
        log.info("comfy_sdnq: saved %s", path)
        return {}


NODE_CLASS_MAPPINGS = {"SDNQQuantizeModel": SDNQQuantizeModel, "SDNQSaveModel": SDNQSaveModel}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.TITLE for k, v in NODE_CLASS_MAPPINGS.items()}
