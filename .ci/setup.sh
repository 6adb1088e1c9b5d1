#!/usr/bin/env bash
# Set up a development/test environment in .venv: pinned torch trio, test dependencies,
# ComfyUI's requirements when a checkout is found, old sdnq releases for the version
# tests, and the C extension built in place. Safe to re-run.
#
#   bash .ci/setup.sh          # then: .venv/bin/python -m pytest tests
#
# Environment: PYTHON (interpreter for the venv, default python3), VENV (default .venv),
# COMFYUI_PATH (default /opt/comfyui).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
COMFYUI_PATH=${COMFYUI_PATH:-/opt/comfyui}
TORCH_PINS="torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0"
OLD_SDNQ="0.1.0 0.1.1 0.1.2 0.1.3 0.1.4 0.1.5 0.1.6 0.1.7 0.1.8 0.1.9 0.2.0 0.2.1 0.2.2 0.2.3 0.2.4 0.2.5 0.2.6 0.2.7"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
$PIP install -q $TORCH_PINS
$PIP install -q -r requirements-test.txt $TORCH_PINS
if [ -f "$COMFYUI_PATH/requirements.txt" ]; then
    # ComfyUI's own requirements, with our torch pins instead of its unpinned torch lines
    grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$COMFYUI_PATH/requirements.txt" > "$VENV/comfyui-requirements.txt"
    $PIP install -q -r "$VENV/comfyui-requirements.txt" $TORCH_PINS
fi
for v in $OLD_SDNQ; do
    [ -d ".ci-cache/sdnq-$v/sdnq" ] || $PIP install -q --no-deps --target ".ci-cache/sdnq-$v" "sdnq==$v"
done
# CI has no GPU: where nvcc is found the CUDA module is still compiled (warnings as errors), for
# one target (sm_90a) to keep the build short; COMFY_SDNQ_CUDA_ARCHS overrides it
export COMFY_SDNQ_CUDA_ARCHS=${COMFY_SDNQ_CUDA_ARCHS:-arch=compute_90a,code=sm_90a}
COMFY_SDNQ_WERROR=1 $PIP install -q --no-deps --no-build-isolation -e .
$VENV/bin/python -c "import comfy_sdnq.kernels as k; print('comfy_sdnq backend:', k.backend(), '| CUDA module:', \
k.cuda_backend() if hasattr(k, 'cuda_backend') else 'n/a')"
