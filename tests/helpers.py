"""Helpers shared by the tests."""
import contextlib

import torch


def bits(t: torch.Tensor) -> torch.Tensor:
    """the raw bit pattern of a tensor, for exact comparisons (NaN-safe)"""
    t = t.contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor, what: str = ""):
    assert a is not None and b is not None, what
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert tuple(a.shape) == tuple(b.shape), f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    if torch.equal(bits(a), bits(b)):
        return
    if a.dtype.is_floating_point and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()):
        return  # differing NaN payloads only
    diff = (bits(a) != bits(b)).nonzero()
    i = tuple(diff[0].tolist())
    raise AssertionError(f"{what}: {len(diff)} element(s) differ, first at {i}: {a[i].item()!r} vs {b[i].item()!r}")


class FakeEvent:
    """a CUDA event emulated on the CPU: never done until synchronized (a throttle that
    waits on one must synchronize it); FakeEvent.synced counts synchronizations"""

    synced = 0

    def __init__(self, enable_timing=False):
        self.done = False

    def record(self, stream=None):
        self.done = False

    def query(self):
        return self.done

    def synchronize(self):
        self.done = True
        FakeEvent.synced += 1

    def elapsed_time(self, other):
        return 0.5  # ms


class FakeStream:
    """a CUDA stream emulated on the CPU, counting its synchronizations"""

    def __init__(self, device=None):
        self.synced = 0

    def wait_event(self, event):
        pass

    def synchronize(self):
        self.synced += 1


class FakeStreamAPI:
    """torch.cuda's stream API (the part comfy_sdnq.offload uses) emulated on the CPU;
    `compute` is the current stream"""

    Event, Stream = FakeEvent, FakeStream

    def __init__(self):
        self.compute = FakeStream()

    def current_stream(self, device=None):
        return self.compute

    @contextlib.contextmanager
    def stream(self, s):
        yield

    def empty_cache(self):
        pass
