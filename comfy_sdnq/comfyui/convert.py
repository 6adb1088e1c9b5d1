"""SDNQ state dicts the way ComfyUI's loaders need them.

* `from_file(sd, metadata, path)`: the raw tensors comfy.utils.load_torch_file returns
  for an SDNQ file become SDNQ QuantizedTensors (same key names, side tensors folded in).
  The code tensors stay the very tensors the file loader made (mmap / aimdo file
  slices), so ComfyUI's zero-copy file -> pinned -> GPU path applies.
* `diffusers_to_comfy(sd)`: a diffusion model in diffusers key layout (as SDNQ models are
  published) -> ComfyUI's key layout. The family is recognised explicitly from its
  diffusers keys (`FAMILIES`, most specific first), never by elimination: a FLUX.2 or
  Chroma file cannot take the FLUX.1 path. Each family has one key map: ComfyUI's own
  where ComfyUI converts that layout itself (FLUX.1, SD3, Z-Image, AuraFlow, PixArt,
  diffusers UNets), ours for the ones it cannot (FLUX.2, Chroma, Wan 2.1/2.2). Every key
  of the file must be mapped, and ComfyUI's detection of the result must name the
  family's model; otherwise a SdnqFormatError names the layout instead of a wrong model
  being built. Qwen-Image needs no map: ComfyUI's keys are diffusers'.
  Where ComfyUI fuses several diffusers layers into one (qkv, linear1) the parts become
  one fused weight (comfy_sdnq.fused) whose parts stay the file's tensors: ComfyUI's own
  conversion writes slices into a new tensor, which would dequantize and corrupt SDNQ
  weights. Dense parts are concatenated as ComfyUI does.
* `text_encoder_to_comfy(sd)`: text encoders saved by transformers in a layout
  ComfyUI's detection does not know (Mistral3ForConditionalGeneration, the FLUX.2 text
  encoder: `language_model.model.*`; the in-memory `model.language_model.*` layout;
  bare `Qwen3Model`/`LlamaModel`; CLIPTextModel without `text_model.`) -> the layout
  ComfyUI detects.
"""
import logging

import torch

import comfy.model_detection
import comfy.utils

from .. import files, fused, layout
from ..errors import SdnqFormatError

log = logging.getLogger("comfy_sdnq")


def is_quantized(t) -> bool:
    return layout.is_sdnq(t) or fused.is_fused(t)


def has_sdnq(sd) -> bool:
    return any(is_quantized(v) for v in sd.values())


def from_file(sd: dict, metadata: dict | None, path: str) -> dict:
    """SDNQ tensors of a file's state dict -> QuantizedTensors (unchanged when not SDNQ)"""
    text = (metadata or {}).get(files.CONFIG_KEY)
    if text is None:
        return sd
    config, dtype, _ = files.config_from_metadata(text, path)
    return files.state_dict(files.TensorSource(sd, config, path), dtype)


# ---------------------------------------------------------------------------
# key maps, one per family: {diffusers key: ComfyUI key | (ComfyUI key, (dim, offset, length) | None[, fn])}
# (the format of ComfyUI's comfy.utils.*_to_diffusers maps)


def _count(sd, fmt: str) -> int:
    return comfy.model_detection.count_blocks(sd, fmt)


def _rows(sd, key: str) -> int:
    return sd[key].shape[0]


def _flux_config(sd) -> dict:
    hidden = _rows(sd, "x_embedder.bias") if "x_embedder.bias" in sd else _rows(sd, "x_embedder.weight")
    return {"depth": _count(sd, "transformer_blocks.{}."),
            "depth_single_blocks": _count(sd, "single_transformer_blocks.{}."), "hidden_size": hidden}


def _map_flux(sd) -> dict:
    """FLUX.1 (FluxTransformer2DModel): ComfyUI's map"""
    return comfy.utils.flux_to_diffusers(_flux_config(sd))


def _map_flux2(sd) -> dict:
    """FLUX.2 (Flux2Transformer2DModel) -> ComfyUI flux2. The blocks, the final layer
    and the embedders follow FLUX.1's map (which already names FLUX.2's fused single
    block to_qkv_mlp_proj / to_out and the SwiGLU ff.linear_in / linear_out); FLUX.2 adds
    shared modulations and the time/guidance embedder under new names."""
    m = comfy.utils.flux_to_diffusers(_flux_config(sd))
    for src, dst in (("time_guidance_embed.timestep_embedder", "time_in"),
                     ("time_guidance_embed.guidance_embedder", "guidance_in")):
        for layer, comfy_layer in (("linear_1", "in_layer"), ("linear_2", "out_layer")):
            for end in ("weight", "bias"):
                m[f"{src}.{layer}.{end}"] = f"{dst}.{comfy_layer}.{end}"
    for name in ("double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation"):
        for end in ("weight", "bias"):
            m[f"{name}.linear.{end}"] = f"{name}.lin.{end}"
    return m


def _map_chroma(sd) -> dict:
    """Chroma (ChromaTransformer2DModel) -> ComfyUI chroma: FLUX.1 blocks without
    per-block modulation (their keys are simply absent), and the distilled guidance
    approximator, whose MLP layers ComfyUI names in_layer / out_layer."""
    m = comfy.utils.flux_to_diffusers(_flux_config(sd))
    g = "distilled_guidance_layer"
    for end in ("weight", "bias"):
        m[f"{g}.in_proj.{end}"] = f"{g}.in_proj.{end}"
        m[f"{g}.out_proj.{end}"] = f"{g}.out_proj.{end}"
    for i in range(_count(sd, g + ".layers.{}.")):
        for end in ("weight", "bias"):
            m[f"{g}.layers.{i}.linear_1.{end}"] = f"{g}.layers.{i}.in_layer.{end}"
            m[f"{g}.layers.{i}.linear_2.{end}"] = f"{g}.layers.{i}.out_layer.{end}"
    for i in range(_count(sd, g + ".norms.{}.")):
        m[f"{g}.norms.{i}.weight"] = f"{g}.norms.{i}.weight"
    return m


_WAN_MODULES = {  # diffusers module -> ComfyUI module (weight and bias)
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",  # I2V / FLF2V image embedder
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
}
_WAN_TENSORS = {"scale_shift_table": "head.modulation",
                "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos"}  # FLF2V
_WAN_BLOCK_MODULES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",  # the affine cross-attention norm: diffusers norm2, ComfyUI (and Wan) norm3
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}


def _map_wan(sd) -> dict:
    """Wan 2.1 / 2.2 (WanTransformer3DModel: T2V, I2V, FLF2V, TI2V-5B, A14B experts) ->
    ComfyUI WanModel. Plain renames, no fused layers."""
    m = {}
    for src, dst in _WAN_MODULES.items():
        m[src + ".weight"], m[src + ".bias"] = dst + ".weight", dst + ".bias"
    m.update(_WAN_TENSORS)
    for i in range(_count(sd, "blocks.{}.")):
        for src, dst in _WAN_BLOCK_MODULES.items():
            for end in ("weight", "bias"):
                m[f"blocks.{i}.{src}.{end}"] = f"blocks.{i}.{dst}.{end}"
        m[f"blocks.{i}.scale_shift_table"] = f"blocks.{i}.modulation"
    return m


def _map_sd3(sd) -> dict:
    """SD3 / SD3.5 (SD3Transformer2DModel): ComfyUI's map"""
    return comfy.utils.mmdit_to_diffusers({"depth": _rows(sd, "pos_embed.proj.weight") // 64,
                                           "num_blocks": _count(sd, "transformer_blocks.{}.")})


def _map_z_image(sd) -> dict:
    """Z-Image (ZImageTransformer2DModel): ComfyUI's map; ComfyUI keeps keys it does not
    map (variants with extra embedders), so do we"""
    m = comfy.utils.z_image_to_diffusers({"n_layers": _count(sd, "layers.{}."),
                                          "dim": _rows(sd, "noise_refiner.0.attention.to_k.weight")})
    m.update({k: k for k in sd if k not in m})
    return m


def _map_auraflow(sd) -> dict:
    joint = _count(sd, "joint_transformer_blocks.{}.")
    return comfy.utils.auraflow_to_diffusers({"n_double_layers": joint,
                                              "n_layers": joint + _count(sd, "single_transformer_blocks.{}.")})


def _map_pixart(sd) -> dict:
    return comfy.utils.pixart_to_diffusers({"depth": _count(sd, "transformer_blocks.{}.")})


def _map_unet(sd) -> dict:
    """diffusers UNet2DConditionModel (SDXL, SD1.x, SSD-1B, Vega, ...): ComfyUI's map for
    the configurations ComfyUI knows"""
    config = comfy.model_detection.model_config_from_diffusers_unet(sd)
    if config is None:
        raise SdnqFormatError("a diffusers UNet2DConditionModel whose configuration ComfyUI does not know "
                              "(comfy.model_detection.unet_config_from_diffusers_unet lists the known ones)")
    return comfy.utils.unet_to_diffusers(config.unet_config)


class Family:
    """A diffusers layout: recognised when all `signature` keys are present; `image_model`
    is what ComfyUI's detect_unet_config must report for the converted keys (None: the
    family's ComfyUI config has no image_model; then any detected model is accepted)."""

    def __init__(self, name, diffusers_class, signature, key_map, image_model=None):
        self.name, self.diffusers_class, self.signature = name, diffusers_class, signature
        self.key_map, self.image_model = key_map, image_model

    def matches(self, sd) -> bool:
        return all(k in sd for k in self.signature)


FAMILIES = (  # most specific first: FLUX.2 and Chroma also have FLUX.1's x_embedder
    Family("AuraFlow", "AuraFlowTransformer2DModel",
           ("joint_transformer_blocks.0.attn.add_k_proj.weight",), _map_auraflow),
    Family("PixArt", "PixArtTransformer2DModel",
           ("adaln_single.emb.timestep_embedder.linear_1.bias", "pos_embed.proj.bias"), _map_pixart,
           ("pixart_alpha", "pixart_sigma")),
    Family("Z-Image", "ZImageTransformer2DModel",
           ("noise_refiner.0.attention.norm_k.weight",), _map_z_image, ("lumina2", "zimage_pixel")),
    Family("FLUX.2", "Flux2Transformer2DModel",
           ("double_stream_modulation_img.linear.weight", "x_embedder.weight"), _map_flux2, "flux2"),
    Family("Chroma", "ChromaTransformer2DModel",
           ("distilled_guidance_layer.in_proj.weight", "x_embedder.weight"), _map_chroma, "chroma"),
    Family("FLUX.1", "FluxTransformer2DModel",
           ("x_embedder.weight", "time_text_embed.timestep_embedder.linear_1.weight",
            "transformer_blocks.0.norm1.linear.weight"), _map_flux, "flux"),
    Family("SD3", "SD3Transformer2DModel",
           ("transformer_blocks.0.attn.add_q_proj.weight", "pos_embed.proj.weight"), _map_sd3),
    Family("Wan", "WanTransformer3DModel",
           ("condition_embedder.time_embedder.linear_1.weight", "blocks.0.attn1.to_q.weight",
            "patch_embedding.weight"), _map_wan, "wan2.1"),
    Family("UNet", "UNet2DConditionModel",
           ("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"), _map_unet),
)

# keys that only diffusers layouts have: an SDNQ file with such keys that no family
# matches is a diffusers model comfy_sdnq cannot convert (not a ComfyUI file)
_DIFFUSERS_HINTS = ("transformer_blocks.", ".attn.to_q.", ".attn1.to_q.", ".to_out.0.", ".ff.net.0.proj.",
                    "condition_embedder.", "time_text_embed.", "down_blocks.", "x_embedder.")


def family_of(sd) -> Family | None:
    """the diffusers layout of a state dict (None: not a layout comfy_sdnq converts)"""
    for fam in FAMILIES:
        if fam.matches(sd):
            return fam
    return None


def _supported() -> str:
    return ", ".join(f"{f.name} ({f.diffusers_class})" for f in FAMILIES)


def _unsupported(sd, what: str) -> SdnqFormatError:
    sample = sorted(k for k in sd if any(h in k for h in _DIFFUSERS_HINTS))[:3]
    return SdnqFormatError(
        f"{what}: a diffusion model in diffusers key layout (keys like {', '.join(map(repr, sample))}) "
        f"that comfy_sdnq has no ComfyUI key map for. Supported diffusers layouts: {_supported()}; "
        f"Qwen-Image loads as is. Load it with diffusers/sdnq, or convert it to ComfyUI's key layout.")


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t.dequantize() if is_quantized(t) else t


def _apply_map(sd: dict, sd_map: dict) -> tuple[dict, list]:
    """(converted state dict, keys of sd the map does not cover)"""
    out, groups = {}, {}
    rest = dict(sd)
    for k, target in sd_map.items():
        w = rest.pop(k, None)
        if w is None:
            continue
        if isinstance(target, str):
            out[target] = w
            continue
        key, offset = target[0], target[1]
        fun = target[2] if len(target) > 2 else None
        if offset is None:
            if fun is not None and is_quantized(w):
                log.warning("comfy_sdnq: %s built dense from %s (ComfyUI rearranges its rows)", key, k)
            out[key] = fun(_dense(w)) if fun is not None else w
        else:
            groups.setdefault(key, []).append((offset, fun, w, k))
    for key, parts in groups.items():
        out[key] = _join(key, parts)
    return out, list(rest)


def _join(key: str, parts: list) -> torch.Tensor:
    """one ComfyUI weight from several diffusers ones: row blocks become a fused SDNQ
    weight (parts kept as they are) or, all dense, one concatenated tensor"""
    parts.sort(key=lambda p: p[0][1])
    rows_only = all(p[0][0] == 0 and p[1] is None for p in parts)
    contiguous = all(a[0][1] + a[0][2] == b[0][1] for a, b in zip(parts, parts[1:])) and parts[0][0][1] == 0
    if rows_only and contiguous:
        for (dim, off, length), _, w, k in parts:
            if w.shape[0] != length:
                raise SdnqFormatError(f"key {k!r}: shape {tuple(w.shape)}, the fused {key!r} expects {length} rows")
        ws = [p[2] for p in parts]
        if any(is_quantized(w) for w in ws):
            if any(fused.is_fused(w) for w in ws):
                raise SdnqFormatError(f"{key!r}: a part is already fused")
            return fused.fuse(ws, next(w.dtype for w in ws if is_quantized(w)))
        return torch.cat(ws, dim=0)
    # anything else (column offsets, functions): build it dense, as ComfyUI does
    quantized = [p[3] for p in parts if is_quantized(p[2])]
    if quantized:
        log.warning("comfy_sdnq: %s built dense from %s (layout ComfyUI cannot take quantized)", key, quantized)
    first = _dense(parts[0][2])
    size = max(p[0][1] + p[0][2] for p in parts)
    shape = list(first.shape)
    shape[parts[0][0][0]] = size
    dst = torch.empty(shape, dtype=first.dtype)
    for (dim, off, length), fun, w, k in parts:
        v = _dense(w)
        dst.narrow(dim, off, length).copy_(fun(v) if fun is not None else v)
    return dst


def _check_detected(fam: Family, out: dict, what: str) -> None:
    try:
        unet_config = comfy.model_detection.detect_unet_config(out, "")
    except Exception as exc:  # detection indexes keys it expects; a partial file fails there
        raise SdnqFormatError(f"{what}: converted as {fam.name} ({fam.diffusers_class}), but ComfyUI's model "
                              f"detection fails on the result: {type(exc).__name__}: {exc}") from None
    wanted = fam.image_model if isinstance(fam.image_model, tuple) else (fam.image_model,)
    got = (unet_config or {}).get("image_model")
    if unet_config is None or (fam.image_model is not None and got not in wanted):
        raise SdnqFormatError(f"{what}: converted as {fam.name} ({fam.diffusers_class}), but ComfyUI detects "
                              f"{got or 'no model'} in the result; not loading a wrong model")


def _class_name(metadata: dict | None) -> str | None:
    """the diffusers class an SDNQ single file records (__metadata__ sdnq_config.model_config)"""
    try:
        _, _, model_config = files.config_from_metadata(metadata[files.CONFIG_KEY], "<metadata>")
        return (model_config or {}).get("_class_name")
    except (KeyError, TypeError, SdnqFormatError):
        return None


def diffusers_to_comfy(sd: dict, name: str | None = None, metadata: dict | None = None) -> dict | None:
    """A diffusion model state dict in diffusers key layout (SDNQ weights or plain) in
    ComfyUI's key layout. None when the keys are not a diffusers layout at all (then
    ComfyUI's own detection has the last word); SdnqFormatError for a diffusers layout
    comfy_sdnq cannot convert, or one whose conversion would not be the same model.
    `name` (file or class) and the diffusers class recorded in the file's `metadata`
    only go into messages."""
    cls = _class_name(metadata)
    what = " ".join(x for x in (name, f"({cls})" if cls else None) if x) or "this model"
    fam = family_of(sd)
    if fam is None:
        if sum(1 for k in sd if any(h in k for h in _DIFFUSERS_HINTS)) > len(sd) // 4:
            raise _unsupported(sd, what)
        return None
    try:
        sd_map = fam.key_map(sd)
    except SdnqFormatError as exc:
        raise SdnqFormatError(f"{what}: {exc}") from None
    out, unmapped = _apply_map(sd, sd_map)
    if unmapped:
        raise SdnqFormatError(f"{what}: a {fam.name} ({fam.diffusers_class}) layout with {len(unmapped)} key(s) the "
                              f"{fam.name} map does not know, e.g. {sorted(unmapped)[:5]}; a variant comfy_sdnq "
                              f"cannot convert (it would load without these weights)")
    _check_detected(fam, out, what)
    return out


# ---------------------------------------------------------------------------
# text encoders

_TE_LAYOUTS = (  # transformers layouts -> the one ComfyUI detects, tried in order
    ("Mistral3ForConditionalGeneration as saved", {"language_model.model.": "model.",
                                                   "language_model.lm_head.": "lm_head."}),
    ("transformers in-memory VLM layout", {"model.language_model.": "model.", "model.visual.": "visual.",
                                           "model.vision_tower.": "vision_tower.",
                                           "model.multi_modal_projector.": "multi_modal_projector."}),
    ("bare decoder (Qwen3Model, LlamaModel)", {"": "model."}),
    ("CLIPTextModel as transformers 5 saves a new model", {"embeddings.": "text_model.embeddings.",
                                                           "encoder.layers.": "text_model.encoder.layers.",
                                                           "final_layer_norm.": "text_model.final_layer_norm."}),
)


def _rename(sd: dict, prefixes: dict) -> dict:
    out = {}
    for k, v in sd.items():
        for a, b in prefixes.items():
            if k.startswith(a):
                k = b + k[len(a):]
                break
        out[k] = v
    return out


def text_encoder_to_comfy(sd: dict) -> dict:
    """A text encoder state dict in a key layout ComfyUI's detect_te_model recognises:
    unchanged when it already does; else the first known transformers layout under which
    it does (unchanged when none)."""
    import comfy.sd

    if comfy.sd.detect_te_model(sd) is not None:
        return sd
    for _, prefixes in _TE_LAYOUTS:
        renamed = _rename(sd, prefixes)
        if renamed.keys() != sd.keys() and comfy.sd.detect_te_model(renamed) is not None:
            return renamed
    return sd
