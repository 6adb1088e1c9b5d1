"""The stock loaders, made SDNQ-aware.

ComfyUI's "Load Diffusion Model", "Load Checkpoint", "Load CLIP" and "DualCLIPLoader"
nodes all read files through comfy.utils.load_torch_file and build models through
comfy.sd.load_diffusion_model_state_dict / load_state_dict_guess_config /
load_text_encoder_state_dicts, looked up as module attributes at call time. install()
wraps those four:

* load_torch_file: an SDNQ file (config in __metadata__["sdnq_config"]) comes back with
  its quantized layers as SDNQ QuantizedTensors, so model detection sees logical shapes;
  a .safetensors header of millions of JSON values (a memory bomb, no model's header) is
  refused before the safetensors library parses it;
* the three builders: a state dict holding SDNQ weights gets diffusers keys converted
  (fused layers stay separate parts), SDNQOps as custom_operations, and SDNQ patcher
  classes. State dicts without SDNQ weights go to the originals untouched.
"""
import logging
import os

import comfy.model_detection
import comfy.sd
import comfy.utils

from .. import files, safetensors_io
from . import check_version, convert, patcher
from .ops import SDNQOps

log = logging.getLogger("comfy_sdnq")
_ORIGINALS = {}


def _orig(module, name):
    return _ORIGINALS.get((module.__name__, name), getattr(module, name))


def _ops(options: dict) -> dict:
    options = dict(options or {})
    ops = options.get("custom_operations")
    if ops is not None and not (isinstance(ops, type) and issubclass(ops, SDNQOps)):
        raise RuntimeError(f"comfy_sdnq: SDNQ weights need comfy_sdnq's SDNQOps, but custom_operations is {ops!r}")
    options["custom_operations"] = ops or SDNQOps
    return options


def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
    if isinstance(ckpt, (str, os.PathLike)) and str(ckpt).lower().endswith((".safetensors", ".sft")):
        # a header no model has (millions of JSON values) would take the safetensors library
        # gigabytes to parse, or abort the process: refused before it reads the file
        safetensors_io.check_header_cost(str(ckpt))
    sd, metadata = _orig(comfy.utils, "load_torch_file")(ckpt, safe_load=safe_load, device=device,
                                                           return_metadata=True)
    if isinstance(sd, dict) and metadata and files.CONFIG_KEY in metadata:
        sd = convert.from_file(sd, metadata, str(ckpt))
    return (sd, metadata) if return_metadata else sd


def load_diffusion_model_state_dict(sd, model_options={}, metadata=None, disable_dynamic=False):
    original = _orig(comfy.sd, "load_diffusion_model_state_dict")
    if not convert.has_sdnq(sd):
        return original(sd, model_options=model_options, metadata=metadata, disable_dynamic=disable_dynamic)
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    unprefixed = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True)
    if unprefixed:
        sd = unprefixed
    if comfy.model_detection.model_config_from_unet(sd, "", metadata=metadata) is None:
        converted = convert.diffusers_to_comfy(sd, metadata=metadata)
        if converted is not None:
            sd = converted
    model = original(sd, model_options=_ops(model_options), metadata=metadata, disable_dynamic=disable_dynamic)
    return patcher.adopt(model)


def load_state_dict_guess_config(sd, output_vae=True, output_clip=True, output_clipvision=False,
                                 embedding_directory=None, output_model=True, model_options={}, te_model_options={},
                                 metadata=None, disable_dynamic=False):
    original = _orig(comfy.sd, "load_state_dict_guess_config")
    if not convert.has_sdnq(sd):
        return original(sd, output_vae, output_clip, output_clipvision, embedding_directory, output_model,
                        model_options=model_options, te_model_options=te_model_options, metadata=metadata,
                        disable_dynamic=disable_dynamic)
    out = original(sd, output_vae, output_clip, output_clipvision, embedding_directory, output_model,
                   model_options=_ops(model_options), te_model_options=_ops(te_model_options), metadata=metadata,
                   disable_dynamic=disable_dynamic)
    if out is None:
        return None
    model, clip, vae, clipvision = out
    if clip is not None:
        patcher.adopt(clip.patcher)
    return patcher.adopt(model), clip, vae, clipvision


def load_text_encoder_state_dicts(state_dicts=[], embedding_directory=None, clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION,
                                  model_options={}, disable_dynamic=False):
    original = _orig(comfy.sd, "load_text_encoder_state_dicts")
    if not any(convert.has_sdnq(sd) for sd in state_dicts):
        return original(state_dicts, embedding_directory=embedding_directory, clip_type=clip_type,
                        model_options=model_options, disable_dynamic=disable_dynamic)
    # transformers layouts ComfyUI's detection does not know (the FLUX.2 Mistral encoder as saved)
    state_dicts = [convert.text_encoder_to_comfy(sd) if convert.has_sdnq(sd) else sd for sd in state_dicts]
    clip = original(state_dicts, embedding_directory=embedding_directory, clip_type=clip_type,
                    model_options=_ops(model_options), disable_dynamic=disable_dynamic)
    patcher.adopt(clip.patcher)
    return clip


_TARGETS = (
    (comfy.utils, "load_torch_file", load_torch_file),
    (comfy.sd, "load_diffusion_model_state_dict", load_diffusion_model_state_dict),
    (comfy.sd, "load_state_dict_guess_config", load_state_dict_guess_config),
    (comfy.sd, "load_text_encoder_state_dicts", load_text_encoder_state_dicts),
)


def install() -> None:
    """make the stock loaders SDNQ-aware (idempotent)"""
    check_version()
    for module, name, fn in _TARGETS:
        key = (module.__name__, name)
        if key not in _ORIGINALS:
            _ORIGINALS[key] = getattr(module, name)
            setattr(module, name, fn)


def uninstall() -> None:
    """restore the stock loaders"""
    for module, name, _ in _TARGETS:
        key = (module.__name__, name)
        if key in _ORIGINALS:
            setattr(module, name, _ORIGINALS.pop(key))


def installed() -> bool:
    return bool(_ORIGINALS)
