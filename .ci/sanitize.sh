#!/usr/bin/env bash
# CI: the C core under sanitizers and valgrind.
#
#   bash .ci/setup.sh && bash .ci/sanitize.sh
#
#   1. tests/c/run.sh with VALGRIND=1: the C unit tests plain, under ASan + UBSan (+ LeakSanitizer),
#      and built without OpenMP under valgrind memcheck (valgrind is apt-installed when missing)
#   2. comfy_sdnq._C built with ASan + UBSan (COMFY_SDNQ_SANITIZE=1) into a temporary build
#      folder, never over the in-place comfy_sdnq/_C*.so; a copy of the package's Python files
#      with that module in front of PYTHONPATH; a pytest smoke subset (oracle for a few weight
#      types, the bad-input tests that reach the C kernels, the bad-file corpus) with libasan
#      preloaded, UBSan aborting on the first report and LeakSanitizer on at exit
#      (.ci/lsan.supp: CPython's and torch's own allocations, see there)
#
# Environment: PYTHON (default .venv/bin/python, else python3), SANITIZE_BUILD (build folder,
# default a fresh temp folder, removed at the end), SANITIZE_PYTEST_ARGS (one pytest run with
# these arguments instead of the smoke selection), SKIP_VALGRIND=1. Exit status non-zero if any step failed or a sanitizer reported.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PYTHON=$(command -v "$PYTHON" || echo "$PYTHON")
case "$PYTHON" in /*) ;; *) PYTHON="$ROOT/$PYTHON" ;; esac
status=0
declare -a TIMES

stage() {  # stage NAME COMMAND...
    local name=$1; shift
    local t0=$SECONDS
    echo "=== $name"
    "$@"; local rc=$?
    TIMES+=("$(printf '%-34s %5ds  rc=%d' "$name" $((SECONDS - t0)) $rc)")
    [ $rc -eq 0 ] || status=1
    return $rc
}

# ---------------------------------------------------------------------------
# 1. C unit tests: plain, ASan+UBSan+LSan, valgrind

need_valgrind() {
    command -v valgrind >/dev/null 2>&1 && return 0
    [ "${SKIP_VALGRIND:-0}" = 1 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq valgrind >/dev/null
}
stage "install valgrind (if missing)" need_valgrind
if [ "${SKIP_VALGRIND:-0}" = 1 ]; then
    stage "C tests (plain, ASan/UBSan)" bash tests/c/run.sh
else
    stage "C tests (+ valgrind memcheck)" env VALGRIND=1 bash tests/c/run.sh
fi

# ---------------------------------------------------------------------------
# 2. the CPython module under ASan + UBSan + LSan

BUILD=${SANITIZE_BUILD:-}
cleanup=0
if [ -z "$BUILD" ]; then BUILD=$(mktemp -d "${TMPDIR:-/tmp}/comfy_sdnq-san.XXXXXX"); cleanup=1; fi
mkdir -p "$BUILD"

build_sanitized() {
    # setuptools writes the module to --build-lib; the package's Python files are copied next to it
    # so that this copy, not the checkout (whose comfy_sdnq/_C.abi3.so others use), is imported
    rm -rf "$BUILD/pkg" && mkdir -p "$BUILD/pkg/comfy_sdnq" || return 1
    COMFY_SDNQ_SANITIZE=1 COMFY_SDNQ_CUDA=0 COMFY_SDNQ_WERROR=1 "$PYTHON" setup.py -q build_ext \
        --build-lib "$BUILD/lib" --build-temp "$BUILD/tmp" >"$BUILD/build.log" 2>&1 \
        || { cat "$BUILD/build.log"; return 1; }
    (cd comfy_sdnq && find . -name '*.py' -not -path '*/__pycache__/*' -print0 |
        xargs -0 -I{} cp --parents {} "$BUILD/pkg/comfy_sdnq/") || return 1
    cp include/sdnq/types.def "$BUILD/pkg/comfy_sdnq/types.def" &&
        cp "$BUILD"/lib/comfy_sdnq/_C*.so "$BUILD/pkg/comfy_sdnq/" || return 1
    ls "$BUILD/pkg/comfy_sdnq/"_C*.so
}
stage "build _C with ASan+UBSan" build_sanitized || { printf '%s\n' "${TIMES[@]}"; exit 1; }

# libasan must be the first library loaded; libstdc++ too, or ASan's __cxa_throw interceptor finds
# no real __cxa_throw in python (a C program) and aborts on torch's first C++ exception
PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
# reports go to files (pytest's output capture would swallow them, and the corpus runs child
# processes): any file there fails the run
SANLOG="$BUILD/reports"
rm -rf "$SANLOG" && mkdir -p "$SANLOG"
# detect_leaks: LeakSanitizer at exit; halt_on_error: the first ASan report ends the process;
# detect_odr_violation=0: torch's libraries define the same globals more than once (not ours);
# allocator_may_return_null: a test that asks for a huge allocation gets NULL (torch raises), not an abort
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=1:detect_odr_violation=0:allocator_may_return_null=1:log_path=$SANLOG/asan"
export LSAN_OPTIONS="suppressions=$ROOT/.ci/lsan.supp:print_suppressions=${LSAN_PRINT_SUPPRESSIONS:-0}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1:log_path=$SANLOG/ubsan"
export COMFY_SDNQ_REQUIRE_EXT=1 COMFY_SDNQ_SANITIZED=1
export COMFYUI_PATH=${COMFYUI_PATH:-/opt/comfyui}

# the copy comes first on sys.path, the checkout next (tests/conftest.py then leaves sys.path
# alone); PYTHONSAFEPATH: no current folder in front of them (it would be the checkout)
# PYTHONMALLOC=malloc: every Python object a malloc block LeakSanitizer scans (with pymalloc's
# arenas unscanned, thousands of torch/pybind11 allocations would look leaked)
PYENV=(LD_PRELOAD="$PRELOAD" PYTHONMALLOC=malloc PYTHONSAFEPATH=1
       PYTHONPATH="$BUILD/pkg:$ROOT${PYTHONPATH:+:$PYTHONPATH}")

# the smoke test: three pytest runs (SANITIZE_PYTEST_ARGS, split on spaces, replaces them by one)
RUN1=(tests/test_oracle.py -k "uint4 or float8_e4m3fn")
# test_bad_input's subprocess tests are left out: their children import the checkout's module
RUN2=(tests/test_dtypes.py tests/test_bad_input.py -k "not fuzz and not memory_bombs and not disk_full")
RUN3=(tests/test_corpus.py -k "not deterministic")
NRUNS=3
if [ -n "${SANITIZE_PYTEST_ARGS:-}" ]; then
    # shellcheck disable=SC2206  # split on purpose
    RUN1=($SANITIZE_PYTEST_ARGS); NRUNS=1
fi

pytest_once() {  # pytest_once ARGS...: one sanitized pytest run; a sanitizer report fails it
    local log="$BUILD/pytest-$RANDOM.log"
    env "${PYENV[@]}" "$PYTHON" -m pytest -q -p no:cacheprovider "$@" >"$log" 2>&1
    local rc=$?
    tail -n 1 "$log"
    [ $rc -eq 0 ] || grep -aE "^(FAILED|ERROR)|Fatal Python error" "$log" | head -20
    TRACER_CRASH=0
    if [ -n "$(ls -A "$SANLOG")" ]; then
        # (LSAN_PRINT_SUPPRESSIONS=1 writes the suppressions used into these files: not a failure)
        for f in "$SANLOG"/*; do echo "--- $f"; head -n 60 "$f"; done
        if grep -aqE "ERROR: |runtime error|CHECK failed" "$SANLOG"/*; then echo "sanitizer report(s) above"; rc=1
        elif grep -aq "LeakSanitizer has encountered a fatal error" "$SANLOG"/* \
             && ! tail -n 1 "$log" | grep -qE "failed|error"; then TRACER_CRASH=1; fi
        mkdir -p "$BUILD/reports-kept" && mv "$SANLOG"/* "$BUILD/reports-kept/"
    fi
    return $rc
}

pytest_run() {  # pytest_run ARGS...: pytest_once, run again once where LeakSanitizer itself crashed
    # LeakSanitizer stops every thread with ptrace at exit to scan them; its tracer now and then
    # dies of SIGSEGV while torch's thread pools wind down ("Tracer caught signal 11 ...
    # LeakSanitizer has encountered a fatal error"): the process aborts with no leak checked and
    # no report. That is a failure of the tool, so the run is repeated once; a second crash, or
    # any real report, fails the stage.
    pytest_once "$@" && return 0
    local rc=$?
    [ $TRACER_CRASH = 1 ] || return $rc
    echo "    LeakSanitizer's tracer crashed at exit (no leak report): running once more"
    pytest_once "$@"
}

smoke() {
    # the sanitized module must be the one imported (and run: backend "c"). No leak check at this
    # process's exit (the pytest runs below do it): LeakSanitizer's tracer crash described at
    # pytest_run would fail the stage here with nothing checked, and this check is not retried
    env "${PYENV[@]}" ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" "$PYTHON" -c '
import comfy_sdnq, comfy_sdnq.kernels as k, sys
assert k.backend() == "c", k.backend()
assert k._C.__file__.startswith(sys.argv[1]), k._C.__file__
print("sanitized module:", k._C.__file__)' "$BUILD/pkg" || return 1
    local rc=0 i t0
    for i in $(seq 1 $NRUNS); do
        local ref="RUN$i[@]"
        echo "--- pytest ${!ref}"
        t0=$SECONDS
        pytest_run "${!ref}" || rc=1
        echo "    ($((SECONDS - t0))s)"
    done
    return $rc
}
stage "pytest smoke (ASan+UBSan+LSan)" smoke

if [ $cleanup = 1 ] && [ $status -eq 0 ]; then rm -rf "$BUILD"; else echo "build folder kept: $BUILD"; fi
echo "=== stage times"
printf '%s\n' "${TIMES[@]}"
exit $status
