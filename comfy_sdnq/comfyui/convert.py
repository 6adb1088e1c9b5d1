"""SDNQ state dicts the way ComfyUI's loaders need them.

* `from_file(sd, metadata, path)`: the raw tensors comfy.utils.load_torch_file returns
  for an SDNQ file become SDNQ QuantizedTensors (same key names, side tensors folded in).
  The code tensors stay the very tensors the file loader made (mmap / aimdo file
  slices), so ComfyUI's zero-copy file -> pinned -> GPU path applies.
* `diffusers_to_comfy(sd)`: diffusers key names -> ComfyUI's, for the transformer
  families ComfyUI itself converts (Flux, SD3, Z-Image, AuraFlow, PixArt) and diffusers
  UNets (SDXL), using ComfyUI's own key maps. Where ComfyUI fuses several diffusers
  layers into one (Flux qkv / linear1, SD3 qkv) the parts become one fused weight
  (comfy_sdnq.fused) whose parts stay the file's tensors: ComfyUI's own conversion
  writes slices into a new tensor, which would dequantize and corrupt SDNQ weights.
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


def _mmdit_map(sd: dict):
    """ComfyUI's diffusers -> ComfyUI key map for a diffusers transformer, as
    comfy.model_detection.convert_diffusers_mmdit picks it; None for other layouts."""
    count = comfy.model_detection.count_blocks
    if "joint_transformer_blocks.0.attn.add_k_proj.weight" in sd:  # AuraFlow
        joint = count(sd, "joint_transformer_blocks.{}.")
        single = count(sd, "single_transformer_blocks.{}.")
        return comfy.utils.auraflow_to_diffusers({"n_double_layers": joint, "n_layers": joint + single}), False
    if "adaln_single.emb.timestep_embedder.linear_1.bias" in sd and "pos_embed.proj.bias" in sd:  # PixArt
        return comfy.utils.pixart_to_diffusers({"depth": count(sd, "transformer_blocks.{}.")}), False
    if "noise_refiner.0.attention.norm_k.weight" in sd:  # Z-Image (keeps keys it does not map)
        dim = sd["noise_refiner.0.attention.to_k.weight"].shape[0]
        return comfy.utils.z_image_to_diffusers({"n_layers": count(sd, "layers.{}."), "dim": dim}), True
    if "x_embedder.weight" in sd:  # Flux
        cfg = {"depth": count(sd, "transformer_blocks.{}."), "depth_single_blocks": count(sd, "single_transformer_blocks.{}."),
               "hidden_size": sd["x_embedder.bias"].shape[0] if "x_embedder.bias" in sd else sd["x_embedder.weight"].shape[0]}
        return comfy.utils.flux_to_diffusers(cfg), False
    if "transformer_blocks.0.attn.add_q_proj.weight" in sd and "pos_embed.proj.weight" in sd:  # SD3
        depth = sd["pos_embed.proj.weight"].shape[0] // 64
        return comfy.utils.mmdit_to_diffusers({"depth": depth, "num_blocks": count(sd, "transformer_blocks.{}.")}), False
    return None


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t.dequantize() if is_quantized(t) else t


def _apply_map(sd: dict, sd_map: dict, keep_unmapped: bool) -> dict:
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
            out[key] = fun(_dense(w)) if fun is not None else w
        else:
            groups.setdefault(key, []).append((offset, fun, w, k))
    for key, parts in groups.items():
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
                out[key] = fused.fuse(ws, next(w.dtype for w in ws if is_quantized(w)))
            else:
                out[key] = torch.cat(ws, dim=0)
            continue
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
        out[key] = dst
    if keep_unmapped:
        for k, v in rest.items():
            out.setdefault(k, v)
    return out


def diffusers_to_comfy(sd: dict) -> dict | None:
    """A diffusers-format diffusion model state dict with SDNQ weights in ComfyUI's key
    layout; None when the keys are not a diffusers layout ComfyUI converts."""
    found = _mmdit_map(sd)
    if found is not None:
        return _apply_map(sd, *found)
    config = comfy.model_detection.model_config_from_diffusers_unet(sd)
    if config is None:
        return None
    keys = comfy.utils.unet_to_diffusers(config.unet_config)  # diffusers UNet (SDXL, SD1.x)
    return {keys[k]: sd[k] for k in keys if k in sd}
