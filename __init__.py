"""ComfyUI entry point of the comfy_sdnq node pack.

ComfyUI imports this file when the repository sits in ComfyUI/custom_nodes/. It
registers the nodes when ComfyUI is importable and does nothing elsewhere, so the
checkout also works as a plain Python project (pytest, pip).
"""
import logging
import os
import sys

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

try:
    import comfy.model_management  # noqa: F401  (only present inside ComfyUI)
except ImportError:
    pass
else:
    _here = os.path.dirname(os.path.abspath(__file__))
    if _here not in sys.path:
        sys.path.insert(0, _here)
    try:
        from comfy_sdnq.comfyui import nodes as _nodes

        NODE_CLASS_MAPPINGS = _nodes.NODE_CLASS_MAPPINGS
        NODE_DISPLAY_NAME_MAPPINGS = _nodes.NODE_DISPLAY_NAME_MAPPINGS
    except ImportError as exc:  # ComfyUI stays usable if the pack cannot load
        logging.getLogger("comfy_sdnq").error("comfy_sdnq: nodes not loaded: %s", exc)
