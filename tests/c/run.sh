#!/usr/bin/env bash
# tests/c/run.sh - build and run the C unit tests of the comfy_sdnq core (no Python needed).
#
#   1. tests/c/build/test_core       -O2 with OpenMP
#   2. tests/c/build/test_core_san   AddressSanitizer + UndefinedBehaviorSanitizer, leak check on
#   3. with VALGRIND=1 (and valgrind installed): tests/c/build/test_core_nomp, built without
#      OpenMP, under valgrind memcheck
#
# Every step runs even if an earlier one failed; the exit status is non-zero if any step failed.
# Works from any directory. CC picks the compiler (default gcc).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2

CC=${CC:-gcc}
BUILD=tests/c/build
SRCS="csrc/types.c csrc/pack.c csrc/values.c csrc/dequant.c csrc/quant.c csrc/linalg.c"
CFLAGS="-std=c11 -Wall -Wextra -Werror -ffp-contract=off -Iinclude -Icsrc"
SANFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"
failed=0

# step NAME COMMAND...: run, time and report one step; remembers a failure
step() {
    local name=$1 t0 t1 rc
    shift
    t0=$(date +%s.%N)
    "$@"
    rc=$?
    t1=$(date +%s.%N)
    awk -v n="$name" -v a="$t0" -v b="$t1" -v rc="$rc" \
        'BEGIN { printf "[run.sh] %-34s %7.2fs  %s\n", n, b - a, rc == 0 ? "ok" : "FAILED (exit " rc ")" }'
    [ "$rc" -eq 0 ] || failed=1
    return "$rc"
}

mkdir -p "$BUILD" || exit 2

# shellcheck disable=SC2086  # flag lists are meant to split
step "build test_core" $CC $CFLAGS -O2 -fopenmp tests/c/test_core.c $SRCS -o "$BUILD/test_core" -lm && {
    # every CPU kernel level this machine has (the fast paths dispatch at run time; COMFY_SDNQ_CPU caps
    # the level), each compared with the scalar references
    step "run test_core (best CPU level)" "$BUILD/test_core"
    step "run test_core (COMFY_SDNQ_CPU=avx2)" env COMFY_SDNQ_CPU=avx2 "$BUILD/test_core"
    step "run test_core (COMFY_SDNQ_CPU=baseline)" env COMFY_SDNQ_CPU=baseline "$BUILD/test_core"
}

# shellcheck disable=SC2086
step "build test_core_san" $CC $CFLAGS $SANFLAGS -fopenmp tests/c/test_core.c $SRCS -o "$BUILD/test_core_san" -lm &&
    step "run test_core_san (ASan+UBSan)" env ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$BUILD/test_core_san" &&
    step "run test_core_san (avx2)" env COMFY_SDNQ_CPU=avx2 ASAN_OPTIONS=detect_leaks=1 \
        UBSAN_OPTIONS=print_stacktrace=1 "$BUILD/test_core_san"

if [ "${VALGRIND:-0}" = 1 ]; then
    if command -v valgrind >/dev/null 2>&1; then
        # without -fopenmp the core's "#pragma omp" lines are unknown pragmas and the fast
        # entry points' nthreads parameters go unused
        # shellcheck disable=SC2086
        step "build test_core_nomp" $CC $CFLAGS -O2 -g -Wno-unknown-pragmas -Wno-unused-parameter \
            tests/c/test_core.c $SRCS \
            -o "$BUILD/test_core_nomp" -lm &&
            step "run test_core_nomp (valgrind)" valgrind -q --error-exitcode=1 --leak-check=full \
                "$BUILD/test_core_nomp"
    else
        echo "[run.sh] VALGRIND=1 but valgrind is not installed: skipped"
    fi
fi

if [ "$failed" -ne 0 ]; then
    echo "[run.sh] FAILED"
    exit 1
fi
echo "[run.sh] all steps passed"
