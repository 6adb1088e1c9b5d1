"""A safetensors writer for tensors that arrive one at a time, their shapes not known up
front (the converter's output: a layer's tensors exist only once it is quantized).

Tensor bytes go straight to a temporary file beside the target, after `reserve` bytes
kept for the header; close() writes the header into that space (padded with spaces,
which safetensors allows) and renames the file into place. A header larger than the
reserve costs one copy of the data. A failure, or abort(), removes the temporary file:
the target is either complete or untouched, and OS errors (full disk, no permission)
raise SdnqWriteError naming the target.

    with StreamWriter("out.safetensors", reserve=1 << 20) as w:
        w.add("a.weight", t)
        w.close({"key": "value"})
"""
from __future__ import annotations

import json
import os
import struct
import tempfile

import torch

from .errors import SdnqFormatError, SdnqWriteError
from .safetensors_io import ST_NAMES


class StreamWriter:
    def __init__(self, path: str, reserve: int = 1 << 16):
        self.path = str(path)
        self.reserve = max(16, -(-int(reserve) // 8) * 8)
        self.header: dict[str, dict] = {}
        self.nbytes = 0
        self._tmp = None
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
            self._f = os.fdopen(fd, "wb")
            self._f.seek(self.reserve)
        except OSError as exc:
            self.abort()
            raise SdnqWriteError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc

    def add(self, key: str, t: torch.Tensor) -> None:
        if key in self.header:
            raise SdnqFormatError(f"{self.path}: tensor {key!r} written twice")
        if t.dtype not in ST_NAMES:
            raise SdnqFormatError(f"{self.path}, key {key!r}: dtype {t.dtype} cannot be stored in safetensors")
        t = t.detach().to("cpu").contiguous()
        n = t.numel() * t.element_size()
        if n:
            try:
                self._f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            except OSError as exc:
                self.abort()
                raise SdnqWriteError(f"{self.path}: writing {key!r} failed: {exc.strerror or exc}") from exc
        self.header[key] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape),
                            "data_offsets": [self.nbytes, self.nbytes + n]}
        self.nbytes += n

    def close(self, metadata: dict[str, str] | None = None) -> None:
        header = dict(self.header)
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        tmp2 = None
        try:
            if len(blob) + 8 <= self.reserve:
                self._f.seek(0)
                self._f.write(struct.pack("<Q", self.reserve - 8) + blob + b" " * (self.reserve - 8 - len(blob)))
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
                os.replace(self._tmp, self.path)
                return
            self._f.close()
            blob += b" " * (-len(blob) % 8)
            fd, tmp2 = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors",
                                        dir=os.path.dirname(os.path.abspath(self.path)))
            with os.fdopen(fd, "wb") as out, open(self._tmp, "rb") as src:
                out.write(struct.pack("<Q", len(blob)) + blob)
                src.seek(self.reserve)
                while chunk := src.read(64 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp2, self.path)
            _unlink(self._tmp)
        except OSError as exc:
            self.abort(tmp2)
            raise SdnqWriteError(f"{self.path}: writing failed: {exc.strerror or exc}") from exc
        except BaseException:
            self.abort(tmp2)
            raise

    def abort(self, *extra) -> None:
        """discard everything written"""
        f = getattr(self, "_f", None)
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
        for p in (self._tmp, *extra):
            if p:
                _unlink(p)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or not self._f.closed:
            self.abort()  # an error, or leaving without close(): nothing is published
        return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
