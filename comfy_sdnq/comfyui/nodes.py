"""The comfy_sdnq node pack. Importing it makes ComfyUI's stock loaders SDNQ-aware
(hooks.install); the nodes below cover what the stock ones cannot read: SDNQ models in
diffusers folder layout, as Disty0 publishes them."""
import json
import logging
import os

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths

from .. import files
from ..errors import SdnqFormatError
from . import hooks, offload, quantize_nodes

log = logging.getLogger("comfy_sdnq")

hooks.install()
folder_paths.add_model_folder_path("sdnq", os.path.join(folder_paths.models_dir, "sdnq"))

# diffusers pipeline class -> (ComfyUI CLIPType name, text encoder subfolders in order)
PIPELINES = {
    "FluxPipeline": ("FLUX", ("text_encoder", "text_encoder_2")),
    "FluxKontextPipeline": ("FLUX", ("text_encoder", "text_encoder_2")),
    "Flux2Pipeline": ("FLUX2", ("text_encoder",)),
    "Flux2KleinPipeline": ("FLUX2", ("text_encoder",)),
    "ChromaPipeline": ("CHROMA", ("text_encoder",)),
    "StableDiffusion3Pipeline": ("SD3", ("text_encoder", "text_encoder_2", "text_encoder_3")),
    "StableDiffusionXLPipeline": ("STABLE_DIFFUSION", ("text_encoder", "text_encoder_2")),
    "QwenImagePipeline": ("QWEN_IMAGE", ("text_encoder",)),
    "QwenImageEditPipeline": ("QWEN_IMAGE", ("text_encoder",)),
    "QwenImageEditPlusPipeline": ("QWEN_IMAGE", ("text_encoder",)),
    "ZImagePipeline": ("LUMINA2", ("text_encoder",)),
    "WanPipeline": ("WAN", ("text_encoder",)),
    "WanImageToVideoPipeline": ("WAN", ("text_encoder",)),
}
DENOISERS = ("transformer", "unet")


def _folders() -> list[str]:
    out = []
    for kind in ("diffusers", "sdnq"):
        for base in folder_paths.get_folder_paths(kind):
            if not os.path.isdir(base):
                continue
            for name in sorted(os.listdir(base)):
                if os.path.isfile(os.path.join(base, name, "model_index.json")):
                    out.append(name)
    return sorted(set(out))


def _find(name: str) -> str:
    for kind in ("diffusers", "sdnq"):
        for base in folder_paths.get_folder_paths(kind):
            path = os.path.join(base, name)
            if os.path.isfile(os.path.join(path, "model_index.json")):
                return path
    raise FileNotFoundError(f"comfy_sdnq: no diffusers folder {name!r} in models/diffusers or models/sdnq")


def _component(path: str) -> dict:
    """a component folder as a state dict: SDNQ layers as QuantizedTensors when it has an
    SDNQ config, plain tensors otherwise"""
    try:
        return files.load(path)
    except SdnqFormatError as exc:
        if "no SDNQ config" not in str(exc):
            raise
    sd = {}
    names = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not names:
        raise FileNotFoundError(f"comfy_sdnq: {path} has no .safetensors files")
    for n in names:
        sd.update(comfy.utils.load_torch_file(os.path.join(path, n)))
    return sd


class SDNQLoadDiffusers:
    """An SDNQ model in diffusers folder layout (transformer/, text_encoder*/, vae/,
    model_index.json) from models/diffusers or models/sdnq, as MODEL, CLIP and VAE. The
    weights stay SDNQ-compressed and ComfyUI manages them like any other model."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_folder": (_folders(),),
                             "clip_type": (["auto"] + sorted(t.name.lower() for t in comfy.sd.CLIPType),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "loaders/sdnq"
    DESCRIPTION = __doc__
    TITLE = "Load SDNQ Diffusers Model"

    def load(self, model_folder, clip_type="auto"):
        root = _find(model_folder)
        with open(os.path.join(root, "model_index.json"), encoding="utf-8") as f:
            index = json.load(f)
        pipeline = index.get("_class_name", "")
        default_type, encoders = PIPELINES.get(pipeline, (None, tuple(sorted(
            k for k in index if k.startswith("text_encoder")))))
        if clip_type == "auto":
            if default_type is None:
                raise ValueError(f"comfy_sdnq: unknown pipeline {pipeline!r} in {root}; choose clip_type")
            clip_type = default_type
        parts = [d for d in DENOISERS if os.path.isdir(os.path.join(root, d))]
        encoders = [e for e in encoders if os.path.isdir(os.path.join(root, e))]
        steps = len(parts[:1]) + len(encoders) + int(os.path.isdir(os.path.join(root, "vae")))
        bar = comfy.utils.ProgressBar(max(steps, 1))
        model = clip = vae = None
        if parts:
            comfy.model_management.throw_exception_if_processing_interrupted()
            sd = _component(os.path.join(root, parts[0]))
            model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={})
            if model is None:
                raise RuntimeError(f"comfy_sdnq: ComfyUI does not recognise the {parts[0]} of {root} ({pipeline})")
            model.cached_patcher_init = (_reload_model, (root, parts[0]))
            bar.update(1)
        if encoders:
            states = []
            for e in encoders:
                comfy.model_management.throw_exception_if_processing_interrupted()
                states.append(_component(os.path.join(root, e)))
                bar.update(1)
            clip = comfy.sd.load_text_encoder_state_dicts(
                states, clip_type=getattr(comfy.sd.CLIPType, clip_type.upper()), model_options={},
                embedding_directory=folder_paths.get_folder_paths("embeddings"))
        if os.path.isdir(os.path.join(root, "vae")):
            comfy.model_management.throw_exception_if_processing_interrupted()
            vae = comfy.sd.VAE(sd=_component(os.path.join(root, "vae")))
            bar.update(1)
        return (model, clip, vae)


def _reload_model(root, part, disable_dynamic=False):
    sd = _component(os.path.join(root, part))
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options={}, disable_dynamic=disable_dynamic)


NODE_CLASS_MAPPINGS = {"SDNQLoadDiffusers": SDNQLoadDiffusers, **quantize_nodes.NODE_CLASS_MAPPINGS,
                       **offload.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.TITLE for k, v in NODE_CLASS_MAPPINGS.items()}
