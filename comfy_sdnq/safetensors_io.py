"""A validating, memory-mapped safetensors reader and a streaming writer.

Reading checks the whole header before any tensor is touched (sizes, dtypes, shapes,
offsets inside the file and not overlapping) and maps tensors straight from the file:
nothing is read until used, so loading does not grow RSS by the file size. Writing
streams one tensor at a time to a temporary name and renames it into place, so a
failure leaves no partial file behind.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
import tempfile

import torch

from .errors import SdnqFormatError, SdnqWriteError

MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces
# JSON parsed into Python objects costs ~100 bytes per value: a 100 MB header of tiny entries
# ("[0,0,...]", a million empty tensors) would take gigabytes and minutes. 2M containers and
# separators bound it to a few hundred MB, and leave room for ~200k tensors per file (a 5 GB
# shard of the largest SDNQ models holds a few thousand).
MAX_HEADER_VALUES = 2_000_000

ST_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
    "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64, "F16": torch.float16,
    "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
if hasattr(torch, "float8_e8m0fnu"):
    ST_DTYPES["F8_E8M0"] = torch.float8_e8m0fnu
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
_ELEMENT_SIZE = {k: torch.empty((), dtype=v).element_size() for k, v in ST_DTYPES.items()}


def _unique_keys(pairs):
    """object_pairs_hook: a key given twice is ambiguous (which one would a reader take?)"""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise SdnqFormatError(f"key {dup!r} appears more than once")
    return obj


def load_json(text: bytes, what: str):
    """parse JSON bytes; malformed, non-UTF-8, too deeply nested input or a key given twice
    in one object raises SdnqFormatError"""
    try:
        return json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as exc:
        raise SdnqFormatError(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise SdnqFormatError(f"{what} is nested too deeply") from None
    except SdnqFormatError as exc:
        raise SdnqFormatError(f"{what}: {exc}") from None
    except ValueError as exc:
        raise SdnqFormatError(f"{what} is not valid JSON: {exc}") from None


def _check_value_count(raw: bytes, path: str) -> None:
    """refuse a header of more JSON values than MAX_HEADER_VALUES, before parsing it: every
    value but the first of a container follows a comma, every container opens with [ or {"""
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if values > MAX_HEADER_VALUES:
        raise SdnqFormatError(f"{path}: header holds about {values} JSON values, more than {MAX_HEADER_VALUES} "
                              "(not a model's header)")


def check_header_cost(path: str) -> None:
    """For readers that parse the header themselves (the safetensors library in ComfyUI's
    stock loader): raise SdnqFormatError if the header holds more JSON values than any
    model's (parsing it would take gigabytes; the library aborts the process when an
    allocation fails). Anything else, an unreadable file included, is left to that reader."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n > os.fstat(f.fileno()).st_size - 8:
                return
            raw = f.read(n)
    except OSError:
        return
    _check_value_count(raw, str(path))


class SafetensorsFile:
    """One .safetensors file: validated header, tensors mapped on demand."""

    def __init__(self, path: str):
        self.path = str(path)
        try:
            size = os.path.getsize(self.path)
            f = open(self.path, "rb")
        except OSError as exc:
            raise SdnqFormatError(f"{self.path}: cannot open: {exc.strerror}") from None
        with f:
            head = f.read(8)
            if len(head) < 8:
                raise SdnqFormatError(f"{self.path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n > size - 8:
                raise SdnqFormatError(f"{self.path}: header length {n} runs past the end of the {size}-byte file"
                                      if n <= MAX_HEADER else f"{self.path}: header length {n} exceeds {MAX_HEADER}")
            raw = f.read(n)
            _check_value_count(raw, self.path)
            header = load_json(raw, f"{self.path}: header")
            if not isinstance(header, dict):
                raise SdnqFormatError(f"{self.path}: header must be a JSON object")
            self.data_start = 8 + n
            self.data_size = size - 8 - n
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 0 else None
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise SdnqFormatError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata = meta
        self.entries = {}
        spans = []
        for key, info in header.items():
            where = f"{self.path}, key {key!r}"
            if not isinstance(info, dict):
                raise SdnqFormatError(f"{where}: entry must be an object")
            dt, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if not isinstance(dt, str) or dt not in ST_DTYPES:
                raise SdnqFormatError(f"{where}: unknown dtype {dt!r} (expected one of {sorted(ST_DTYPES)})")
            if (not isinstance(shape, list) or len(shape) > 16
                    or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**48 for d in shape)):
                raise SdnqFormatError(f"{where}: shape {shape!r} is not a list of non-negative integers")
            if math.prod(max(d, 1) for d in shape) >= 2**62:  # torch's strides would overflow, even when empty
                raise SdnqFormatError(f"{where}: shape {shape} is too large (its strides overflow 64 bits)")
            if (not isinstance(offs, list) or len(offs) != 2
                    or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
                raise SdnqFormatError(f"{where}: data_offsets {offs!r} must be [begin, end]")
            begin, end = offs
            nbytes = math.prod(shape) * _ELEMENT_SIZE[dt]
            if not 0 <= begin <= end <= self.data_size:
                raise SdnqFormatError(f"{where}: data_offsets [{begin}, {end}] outside the {self.data_size} data bytes")
            if end - begin != nbytes:
                raise SdnqFormatError(f"{where}: shape {shape} of {dt} needs {nbytes} bytes, data_offsets span "
                                      f"{end - begin}")
            self.entries[key] = (ST_DTYPES[dt], tuple(shape), begin, end)
            if end > begin:
                spans.append((begin, end, key))
        # the tensors tile the data section, as the safetensors library requires: no overlap, no
        # bytes that belong to no tensor (a header length a few bytes off shifts every tensor)
        spans.sort()
        for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise SdnqFormatError(f"{self.path}: tensors {k0!r} and {k1!r} overlap in the file")
            if b1 > e0:
                raise SdnqFormatError(f"{self.path}: data bytes [{e0}, {b1}) between keys {k0!r} and {k1!r} "
                                      "belong to no tensor")
        if spans and spans[0][0] > 0:
            raise SdnqFormatError(f"{self.path}: data bytes [0, {spans[0][0]}) before key {spans[0][2]!r} belong "
                                  "to no tensor")
        end = spans[-1][1] if spans else 0
        if end != self.data_size:
            raise SdnqFormatError(f"{self.path}: {self.data_size - end} byte(s) after the last tensor (tensors end at "
                                  f"data byte {end}, the file at {self.data_size})")

    def keys(self):
        return self.entries.keys()

    def __contains__(self, key):
        return key in self.entries

    def dtype(self, key) -> torch.dtype:
        return self.entries[key][0]

    def shape(self, key) -> tuple[int, ...]:
        return self.entries[key][1]

    def get(self, key: str) -> torch.Tensor:
        """the tensor, mapped from the file (copy-on-write: writes never reach the file)"""
        dtype, shape, begin, end = self.entries[key]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        raw = torch.frombuffer(self._map, dtype=torch.uint8, count=end - begin, offset=self.data_start + begin)
        size = torch.empty((), dtype=dtype).element_size()
        if (self.data_start + begin) % size:
            raw = raw.clone()  # misaligned for this dtype: copy to aligned memory
        return raw.view(dtype).reshape(shape)


def write(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors, one tensor in memory at a time; atomic (temp + rename)."""
    commit(write_temp(path, tensors, metadata), path)


def write_temp(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """write() up to the rename: the tensors go to a temporary file next to path, whose
    name is returned for commit(). A failure removes the temporary file; OS errors
    (missing folder, full disk) raise SdnqWriteError naming path."""
    header, offset, order = {}, 0, []
    for key, t in tensors.items():
        if t.dtype not in ST_NAMES:
            raise SdnqFormatError(f"{path}, key {key!r}: dtype {t.dtype} cannot be stored in safetensors")
        n = t.numel() * t.element_size()
        header[key] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
        order.append(key)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    except OSError as exc:
        raise SdnqWriteError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for key in order:
                t = tensors[key].detach().to("cpu").contiguous()
                if t.numel():
                    f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        discard(tmp)
        if isinstance(exc, OSError):
            raise SdnqWriteError(f"{path}: cannot write: {exc.strerror or exc}") from exc
        raise
    return tmp


def commit(tmp: str, path: str) -> None:
    """move a write_temp() file into place"""
    try:
        os.replace(tmp, path)
    except OSError as exc:
        discard(tmp)
        raise SdnqWriteError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass
