#!/usr/bin/env bash
# benchmarks/gpu_env.sh - prepare an offline GPU machine (python3 with torch 2.11+cu13x) for the
# GPU tests and benchmarks, from a bundle carried in .device/ (no network there):
#   .device/so/*.abi3.so       comfy_sdnq's extensions built elsewhere (abi3; _C_cuda for sm_90a)
#   .device/wheels/*.whl       missing wheels (ComfyUI's av, einops, torchsde, trampoline)
#   .device/devsite.tar.gz     unpacked pure packages: comfy-kitchen 0.2.24 (without its 143 MB CUDA
#                              backend: ComfyUI then uses its triton/eager backends), comfy-aimdo,
#                              sdnq 0.2.8 (the test oracle), diffusers 0.42.1
#   .device/comfyui.tar.gz     ComfyUI v0.29.0 without tokenizer data, tests, blueprints, API nodes
# Usage: source benchmarks/gpu_env.sh   (exports PYTHONPATH and COMFYUI_PATH; idempotent)
set -e
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SITE=/tmp/sdnq-site
if [ ! -f $SITE/.done ]; then
    mkdir -p $SITE /tmp/comfyui
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .device/wheels/*.whl
    tar xzf .device/devsite.tar.gz -C $SITE
    tar xzf .device/comfyui.tar.gz -C /tmp/comfyui
    touch $SITE/.done
fi
cp -f .device/so/*.abi3.so comfy_sdnq/
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export COMFYUI_PATH=/tmp/comfyui
set +e
