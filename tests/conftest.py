"""Shared test setup.

* sdnq (the oracle) runs eagerly: SDNQ_USE_TORCH_COMPILE=0 is set before it is imported.
* `impl` parametrizes over the core's implementations: C fast path, C scalar reference,
  and the pure-torch reference (the C ones skip when the extension is not built).
* ComfyUI tests find a checkout through COMFYUI_PATH (default /opt/comfyui).
"""
import os
import sys

os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")
os.environ.setdefault("SDNQ_USE_TRITON_MM", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
for _p in (ROOT, TESTS):  # the package, and tests/helpers.py
    if _p not in sys.path:
        sys.path.insert(0, _p)

from comfy_sdnq import kernels  # noqa: E402

C_IMPLS = ["fast", "ref"] if kernels.backend() == "c" else []
ALL_IMPLS = C_IMPLS + ["torch"]


@pytest.fixture(params=ALL_IMPLS)
def impl(request):
    return request.param


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0
