"""Helpers shared by the tests."""
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
