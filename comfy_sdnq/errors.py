"""Exceptions comfy_sdnq raises for bad input. Messages name the file, the key, the shape
and what was expected, so a user can tell which file is broken and how."""


class SdnqError(ValueError):
    """Base class: invalid SDNQ input (files, configs, tensors, arguments)."""


class SdnqFormatError(SdnqError):
    """A file, config or tensor does not follow the SDNQ format."""


class SdnqUnsupportedError(SdnqError):
    """Valid SDNQ input that this version of comfy_sdnq cannot handle."""


def where(file: str | None = None, key: str | None = None) -> str:
    """'file.safetensors, key x.weight: ' prefix for messages"""
    parts = []
    if file:
        parts.append(str(file))
    if key:
        parts.append(f"key {key!r}")
    return (", ".join(parts) + ": ") if parts else ""


class SdnqWriteError(SdnqError, OSError):
    """Writing a model failed (disk full, no permission); nothing partial is left behind."""
