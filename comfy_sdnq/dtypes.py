"""The SDNQ weight storage types, read from types.def (the table the C core expands).

Every other module asks this one about a type: its family, width, range, the
dtype of its file tensor and of its codes, and the names sdnq accepts for it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from .errors import SdnqFormatError

FAMILIES = ("INT", "UINT", "FLOAT", "FLOATX", "UFLOATX")

# file / buffer dtypes by the names the C core uses (SDNQ_DTYPES in sdnq.h)
TORCH_DTYPES = {
    "I8": torch.int8,
    "U8": torch.uint8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F8_E4M3FN": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
for _name, _attr in (("F8_E4M3FNUZ", "float8_e4m3fnuz"), ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
                     ("F8_E8M0FNU", "float8_e8m0fnu")):
    if hasattr(torch, _attr):
        TORCH_DTYPES[_name] = getattr(torch, _attr)
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}

# the dtypes dequantization computes in and writes
ARITH_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class SdnqType:
    """One row of types.def, plus what follows from it."""

    id: int
    name: str
    family: str
    bits: int
    exponent: int
    mantissa: int
    min: float
    max: float
    storage: str  # file dtype name (key of TORCH_DTYPES)
    is_packed: bool
    block_elems: int  # codes per packing block (1 when not packed)
    block_words: int  # storage words per block

    @property
    def is_unsigned(self) -> bool:
        return self.family in ("UINT", "UFLOATX")

    @property
    def is_integer(self) -> bool:
        return self.family in ("INT", "UINT")

    @property
    def storage_dtype(self) -> torch.dtype:
        """dtype of the tensor in the file"""
        try:
            return TORCH_DTYPES[self.storage]
        except KeyError:
            raise SdnqFormatError(f"weight type {self.name!r} needs torch.{self.storage.lower()}, "
                                  f"which torch {torch.__version__} does not have") from None

    @property
    def levels(self) -> int:
        """entries of a codebook for this type (sdnq: max + 1)"""
        return int(self.max) + 1

    def storage_numel(self, n: int) -> int:
        """file elements holding n codes"""
        if n % self.block_elems:
            raise SdnqFormatError(f"{self.name}: {n} elements is not a multiple of the packing block "
                                  f"({self.block_elems})")
        return n // self.block_elems * self.block_words

    def numel_from_storage(self, words: int) -> int | None:
        """codes held by `words` file elements, or None if no whole number of blocks"""
        if words % self.block_words:
            return None
        return words // self.block_words * self.block_elems

    def packed_shape(self, n: int) -> tuple[int, ...]:
        """shape of sdnq's packed tensor for n codes: 1-D for 1/2/4 bits, [blocks, words] otherwise"""
        if not self.is_packed or self.bits in (8, 16):
            return (n,)
        blocks = n // self.block_elems
        if self.bits in (1, 2, 4):
            return (blocks,)
        return (blocks, self.block_words)


_NUM = r"\s*([-+0-9.eE]+)\s*"
_ROW = re.compile(r'^SDNQ_TYPE\(\s*(\d+)\s*,\s*(\w+)\s*,\s*"([^"]+)"\s*,\s*(\w+)\s*,' + ",".join([_NUM] * 5) +
                  r',\s*(\w+)\s*,\s*([01])\s*\)', re.M)
_ALIAS = re.compile(r'^SDNQ_ALIAS\(\s*"([^"]+)"\s*,\s*(\w+)\s*\)', re.M)
_BLOCK = re.compile(r'^SDNQ_BLOCK\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)', re.M)


def table_path() -> str:
    """types.def: shipped in the package when installed, in include/ in a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, "types.def"), os.path.join(here, "..", "include", "sdnq", "types.def")):
        if os.path.isfile(path):
            return os.path.normpath(path)
    raise ImportError("comfy_sdnq: types.def not found next to the package or in include/sdnq/")


def _parse(text: str):
    blocks = {int(b): (int(e), int(w)) for b, e, w in _BLOCK.findall(text)}
    types, enum_ids = [], {}
    for m in _ROW.finditer(text):
        tid, enum, name, fam, bits, e, mant, lo, hi, storage, packed = m.groups()
        if fam not in FAMILIES:
            raise ImportError(f"types.def: unknown family {fam} for {name}")
        elems, words = blocks[int(bits)] if packed == "1" else (1, 1)
        t = SdnqType(int(tid), name, fam, int(bits), int(e), int(mant), float(lo), float(hi), storage,
                     packed == "1", elems, words)
        types.append(t)
        enum_ids[enum] = t.id
    aliases = {alias: enum_ids[enum] for alias, enum in _ALIAS.findall(text)}
    return tuple(types), aliases


with open(table_path(), encoding="utf-8") as _f:
    TYPES, _ALIASES = _parse(_f.read())

BY_ID = {t.id: t for t in TYPES}
BY_NAME = {t.name: t for t in TYPES}
ALIASES = {alias: BY_ID[i] for alias, i in _ALIASES.items()}


def names() -> list[str]:
    """every name a config may use: base names and aliases"""
    return [t.name for t in TYPES] + list(ALIASES)


def get(name_or_id: str | int | SdnqType) -> SdnqType:
    """Resolve a config name, alias or id to its type."""
    if isinstance(name_or_id, SdnqType):
        return name_or_id
    if isinstance(name_or_id, int) and not isinstance(name_or_id, bool):
        if name_or_id in BY_ID:
            return BY_ID[name_or_id]
        raise SdnqFormatError(f"unknown SDNQ type id {name_or_id}")
    if isinstance(name_or_id, str):
        t = BY_NAME.get(name_or_id) or ALIASES.get(name_or_id)
        if t is not None:
            return t
        raise SdnqFormatError(f"unknown SDNQ weights dtype {name_or_id!r} (expected one of {len(BY_NAME)} types, "
                              f"e.g. 'uint4', 'int8', 'float8_e4m3fn', or an alias such as 'fp8')")
    raise SdnqFormatError(f"SDNQ weights dtype must be a string, got {type(name_or_id).__name__}")
