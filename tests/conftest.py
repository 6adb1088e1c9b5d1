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


# ---------------------------------------------------------------------------
# ComfyUI: tests marked `comfyui` need a checkout at COMFYUI_PATH (default /opt/comfyui)

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "/opt/comfyui")


def comfyui_found() -> bool:
    return os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "model_patcher.py"))


def comfyui_commit() -> str:
    for probe in (os.path.join(COMFYUI_PATH, ".comfyui_commit"),):
        if os.path.isfile(probe):
            return open(probe).read().strip()
    return "unknown"


def pytest_report_header(config):
    if comfyui_found():
        return f"ComfyUI: {COMFYUI_PATH} @ {comfyui_commit()}"
    return f"ComfyUI: NOT FOUND at {COMFYUI_PATH}: every ComfyUI integration test skips"


def pytest_collection_modifyitems(config, items):
    if comfyui_found():
        return
    skip = pytest.mark.skip(reason=f"ComfyUI not found at {COMFYUI_PATH} (set COMFYUI_PATH)")
    for item in items:
        if "comfyui" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI imported on the CPU with comfy_sdnq's loader hooks installed"""
    if not comfyui_found():
        pytest.skip(f"ComfyUI not found at {COMFYUI_PATH}")
    if COMFYUI_PATH not in sys.path:
        sys.path.insert(0, COMFYUI_PATH)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.sd  # noqa: F401

    from comfy_sdnq.comfyui import hooks

    hooks.install()
    yield comfy
    hooks.uninstall()


@pytest.fixture(scope="session")
def flux(comfy, tmp_path_factory):
    import comfy_models as cm

    tmp = str(tmp_path_factory.mktemp("flux"))
    cm.models_dir(tmp)
    dense = cm.flux_diffusers()
    original = {k: v.clone() for k, v in dense.state_dict().items()}
    q = cm.sdnq_quantize_model(dense, weights_dtype="uint4", use_svd=True, svd_rank=32, dequantize_fp32=False)
    sdnq_path = cm.save_sdnq_single_file(q, os.path.join(tmp, "diffusion_models", "flux-sdnq.safetensors"))
    ref_path = cm.save_dense(cm.sdnq_dense_state_dict(q), os.path.join(tmp, "diffusion_models", "flux-dense.safetensors"))
    orig_path = cm.save_dense(original, os.path.join(tmp, "diffusion_models", "flux-original.safetensors"))
    return {"tmp": tmp, "sdnq": sdnq_path, "dense": ref_path, "original": orig_path, "model": q}
