#!/usr/bin/env bash
# Fuzz the comfy_sdnq C core and CUDA launchers (libFuzzer + ASan + UBSan; CUDA sources compiled for the
# CPU with tests/cuda_emu) and the Python file/config parsing (atheris):
# build every harness in tests/fuzz/, seed it from real SDNQ files (tests/fuzz/make_corpus.py), run
# each for FUZZ_SECONDS, then replay the corpora through a coverage build and report line coverage.
# Fails on any crash, hang, out-of-memory, sanitizer report or harness contract violation.
#
#   bash .ci/fuzz.sh                    # 60 s per harness
#   FUZZ_SECONDS=600 bash .ci/fuzz.sh   # a long campaign
#   FUZZ_SECONDS=0 bash .ci/fuzz.sh     # coverage report of the corpora in tests/fuzz/corpus only
#
# The C harnesses whose entry points have per-CPU-level kernels (dequantize, SVD/Hadamard, and
# quantize's way back through dequantize) spend half of FUZZ_SECONDS at the best level and a
# quarter each at COMFY_SDNQ_CPU=avx2 and =baseline. Environment: FUZZ_SECONDS (default 60), FUZZ_JOBS (parallel
# campaigns, default min(nproc, 4)), VENV (default .venv; created by .ci/setup.sh when missing),
# FUZZ_COVERAGE=0 skips the coverage report. Works on a fresh Debian 12 from the repository alone:
# installs clang/llvm with apt-get and atheris/coverage with pip into the venv. Corpora, crash
# artifacts and logs stay in tests/fuzz/corpus/ and tests/fuzz/build/ (both git-ignored).
set -uo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
VENV=${VENV:-.venv}
NPROC=$(nproc 2>/dev/null || echo 1)
FUZZ_JOBS=${FUZZ_JOBS:-$((NPROC < 4 ? NPROC : 4))}
FUZZ_COVERAGE=${FUZZ_COVERAGE:-1}
B=tests/fuzz/build
C=tests/fuzz/corpus
T0=$SECONDS
C_HARNESSES="fuzz_dequant fuzz_linalg fuzz_quant fuzz_pack fuzz_values fuzz_cuda"
LEVEL_HARNESSES="fuzz_dequant fuzz_linalg fuzz_quant"
SRCS="csrc/types.c csrc/pack.c csrc/values.c csrc/dequant.c csrc/quant.c csrc/linalg.c"
CU_SRCS="csrc/cuda/dequant.cu csrc/cuda/svd_add.cu csrc/cuda/hadamard.cu"
CFLAGS="-std=c11 -g -O1 -ffp-contract=off -Wall -Wextra -Werror -Wno-unknown-pragmas -Wno-unused-parameter -Iinclude -Icsrc"
CXXFLAGS="-std=c++17 -g -O1 -ffp-contract=off -Wall -Wextra -Werror -Wno-unused-parameter -Iinclude -Icsrc"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

say() { printf '[fuzz.sh %4ds] %s\n' $((SECONDS - T0)) "$*"; }
die() { say "FAILED: $*"; exit 1; }

# --- tools ----------------------------------------------------------------------------------------------------
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
first_tool() { for t in "$@"; do command -v "$t" >/dev/null 2>&1 && { echo "$t"; return; }; done; }
fuzzer_links() {
    printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
        > "$B/probe.c" && clang -fsanitize=fuzzer,address,undefined "$B/probe.c" -o "$B/probe" 2>/dev/null
}
mkdir -p "$B" "$C/artifacts" || exit 2
if ! command -v clang >/dev/null 2>&1 || ! fuzzer_links || [ -z "$(first_tool llvm-profdata llvm-profdata-14)" ]; then
    say "installing clang, llvm (apt-get)"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang llvm >/dev/null ||
        die "apt-get install clang llvm"
    fuzzer_links || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-rt-14-dev >/dev/null
    fuzzer_links || die "clang cannot link -fsanitize=fuzzer,address,undefined"
fi
PROFDATA=$(first_tool llvm-profdata llvm-profdata-14)
LLVMCOV=$(first_tool llvm-cov llvm-cov-14)
say "$(clang --version | head -n 1)"

# --- Python: the CI venv, atheris, seeds from real files -----------------------------------------------------------
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import comfy_sdnq._C, sdnq" >/dev/null 2>&1; then
    say "no usable $VENV: running .ci/setup.sh"
    VENV=$VENV bash .ci/setup.sh || die ".ci/setup.sh"
fi
PY=$VENV/bin/python
"$PY" -c "import atheris, coverage" >/dev/null 2>&1 || "$PY" -m pip install -q atheris coverage || die "pip install atheris coverage"
say "seed corpora from real SDNQ files"
PYTHONPATH=. "$PY" tests/fuzz/make_corpus.py "$C/seed" 2>&1 | grep -v "should be kept in float32" || die "make_corpus.py"

# --- build: core objects once per flavour, one binary per harness; compiles run in parallel ------------------------
# one compile or link in the background; at most NPROC at a time
bg() {
    while [ "$(jobs -rp | wc -l)" -ge "$NPROC" ]; do wait -n; done
    "$@" &
}
build_flavour() { # NAME EXTRA_FLAGS LINK_FLAGS
    local name=$1 extra=$2 link=$3 objs="" cuobjs="" s o h
    mkdir -p "$B/$name"
    for s in $SRCS; do
        o=$B/$name/$(basename "$s" .c).o
        # shellcheck disable=SC2086
        bg clang $CFLAGS $extra -c "$s" -o "$o"
        objs="$objs $o"
    done
    # the CUDA launchers and kernels, compiled for the CPU with the test suite's CUDA emulation
    for s in $CU_SRCS; do
        o=$B/$name/cu_$(basename "$s" .cu).o
        # shellcheck disable=SC2086
        # -O0: at -O1 with the sanitizers dequant.cu's many kernel instances take minutes to compile
        bg clang++ $CXXFLAGS -w $extra -O0 -DSDNQ_CUDA_EMU -Itests/cuda_emu -x c++ -c "$s" -o "$o"
        cuobjs="$cuobjs $o"
    done
    wait
    for o in $objs $cuobjs; do [ -s "$o" ] || return 1; done
    for h in $C_HARNESSES; do
        rm -f "$B/$name/$h"
        # shellcheck disable=SC2086
        if [ "$h" = fuzz_cuda ]; then
            bg clang++ $CXXFLAGS $extra $link tests/fuzz/fuzz_cuda.cc $objs $cuobjs -lm -o "$B/$name/fuzz_cuda"
        else
            bg clang $CFLAGS $extra $link "tests/fuzz/$h.c" $objs -lm -o "$B/$name/$h"
        fi
    done
    wait
    for h in $C_HARNESSES; do [ -x "$B/$name/$h" ] || return 1; done
}
say "building harnesses (ASan+UBSan) and coverage binaries"
rm -rf "$B/san" "$B/cov"
build_flavour san "$SAN -fsanitize=fuzzer-no-link" "-fsanitize=fuzzer" || die "build (sanitizers)"
if [ "$FUZZ_COVERAGE" = 1 ]; then
    build_flavour cov "-O0 -fprofile-instr-generate -fcoverage-mapping" \
        "-fsanitize=fuzzer" || die "build (coverage)"
fi

# --- campaigns ---------------------------------------------------------------------------------------------------
# job: NAME LEVEL SECONDS; logs in $B/logs/NAME-LEVEL.log
mkdir -p "$B/logs"
run_job() {
    local h=$1 lvl=$2 secs=$3 log=$B/logs/$1-$2.log rc
    local -a env_lvl=()
    [ "$lvl" = default ] || env_lvl=("COMFY_SDNQ_CPU=$lvl")
    mkdir -p "$C/$h"
    if [ "$h" = fuzz_files ]; then
        PYTHONPATH=. timeout $((secs + 120)) "$PY" tests/fuzz/fuzz_files.py "$C/$h" "$C/seed/$h" -max_total_time="$secs" \
            -timeout=20 -rss_limit_mb=3072 -max_len=163840 -print_final_stats=1 -artifact_prefix="$C/artifacts/$h-" \
            >"$log" 2>&1
    else
        env "${env_lvl[@]}" timeout $((secs + 120)) "$B/san/$h" "$C/$h" "$C/seed/$h" -max_total_time="$secs" \
            -timeout=10 -rss_limit_mb=2048 -max_len=40000 -print_final_stats=1 \
            -artifact_prefix="$C/artifacts/$h-$lvl-" >"$log" 2>&1
    fi
    rc=$?
    echo "FUZZ_RC=$rc" >>"$log"
}
# FUZZ_SECONDS per harness; those with per-CPU-level kernels spend half at the default (best) level and a
# quarter each at avx2 and baseline, all on one corpus
JOBS=()
half=$((FUZZ_SECONDS / 2 > 1 ? FUZZ_SECONDS / 2 : 1))
quarter=$((FUZZ_SECONDS / 4 > 1 ? FUZZ_SECONDS / 4 : 1))
for h in $C_HARNESSES fuzz_files; do
    case " $LEVEL_HARNESSES " in
    *" $h "*) JOBS+=("$h default $half") ;;
    *) JOBS+=("$h default $FUZZ_SECONDS") ;;
    esac
done
for h in $LEVEL_HARNESSES; do for lvl in avx2 baseline; do JOBS+=("$h $lvl $quarter"); done; done
[ "$FUZZ_SECONDS" -gt 0 ] || JOBS=()  # FUZZ_SECONDS=0: only the coverage report of the corpora there are
say "running ${#JOBS[@]} campaigns, $FUZZ_JOBS at a time (FUZZ_SECONDS=$FUZZ_SECONDS)"
running=0
for j in "${JOBS[@]}"; do
    # shellcheck disable=SC2086
    run_job $j &
    running=$((running + 1))
    if [ "$running" -ge "$FUZZ_JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait

# --- verdict -----------------------------------------------------------------------------------------------------
failed=0
[ ${#JOBS[@]} = 0 ] || printf '%-14s %-9s %6s %10s %8s %7s %8s  %s\n' harness level secs execs exec/s cov corpus result
for j in "${JOBS[@]}"; do
    set -- $j
    log=$B/logs/$1-$2.log
    rc=$(sed -n 's/^FUZZ_RC=//p' "$log" | tail -n 1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    corp=$(grep -o 'corp: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    result=ok
    if [ "${rc:-1}" != 0 ] || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|CONTRACT VIOLATION|Uncaught Python exception|SUMMARY: ' "$log"; then
        result="FAILED (exit ${rc:-?})"
        failed=1
    fi
    printf '%-14s %-9s %6s %10s %8s %7s %8s  %s\n' "$1" "$2" "$3" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${corp:-?}" "$result"
done
if [ "$failed" != 0 ]; then
    for j in "${JOBS[@]}"; do
        set -- $j
        log=$B/logs/$1-$2.log
        if ! grep -q '^FUZZ_RC=0$' "$log" || grep -qE 'runtime error:|CONTRACT VIOLATION|Uncaught Python exception|SUMMARY: ' "$log"; then
            say "--- $log (tail)"
            grep -v -E '^#[0-9]+|NEW_FUNC|^\s*"' "$log" | tail -n 40
        fi
    done
    ls -l "$C"/artifacts/ 2>/dev/null
fi

# --- line coverage: replay each final corpus (every CPU level) through the coverage build -----------------------
if [ "$FUZZ_COVERAGE" = 1 ]; then
    say "line coverage per harness (corpus replayed at every CPU level): its target files; all of csrc/*.c, *.h and the fuzzed csrc/cuda sources"
    targets() {
        case $1 in
        fuzz_dequant) echo "dequant.c check.h blocks.h internal.h codec.h" ;;
        fuzz_linalg) echo "linalg.c" ;;
        fuzz_quant) echo "quant.c" ;;
        fuzz_pack) echo "pack.c blocks.h" ;;
        fuzz_values) echo "values.c types.c codec.h" ;;
        fuzz_cuda) echo "dequant.cu svd_add.cu hadamard.cu dequant.cuh svd_add.cuh hadamard.cuh common.cuh" ;;
        esac
    }
    # lines covered / lines of the named files in an llvm-cov report
    lines_of() { awk -v files=" $2 " '{ f = $1; sub(/.*\//, "", f) } index(files, " " f " ") && NF == 13 { n += $8; m += $9 }
        END { if (n) printf "%.1f%% of %d lines", 100 * (n - m) / n, n }' "$1"; }
    objs=()
    for h in $C_HARNESSES; do
        rm -f "$B/cov/$h"-*.profraw
        for lvl in default avx2 baseline; do
            lvl_env=()
            [ "$lvl" = default ] || lvl_env=("COMFY_SDNQ_CPU=$lvl")
            env "${lvl_env[@]}" LLVM_PROFILE_FILE="$B/cov/$h-$lvl.profraw" "$B/cov/$h" -runs=0 "$C/$h" "$C/seed/$h" \
                >/dev/null 2>&1
        done
        "$PROFDATA" merge -sparse "$B/cov/$h"-*.profraw -o "$B/cov/$h.profdata" &&
            "$LLVMCOV" report "$B/cov/$h" -instr-profile="$B/cov/$h.profdata" $SRCS csrc/*.h $CU_SRCS csrc/cuda/*.cuh >"$B/cov/$h.txt" 2>/dev/null
        printf '  %-14s %-26s %s  (%s)\n' "$h" "$(lines_of "$B/cov/$h.txt" "$(targets "$h")")" \
            "$(awk '/^TOTAL/ { print "all: " $(NF-3) " of " $(NF-5) " lines" }' "$B/cov/$h.txt")" "$(targets "$h")"
        if [ ${#objs[@]} = 0 ]; then objs=("$B/cov/$h"); else objs+=(-object "$B/cov/$h"); fi
    done
    "$PROFDATA" merge -sparse "$B/cov/"fuzz_*.profdata -o "$B/cov/all.profdata" &&
        "$LLVMCOV" report "${objs[@]}" -instr-profile="$B/cov/all.profdata" $SRCS csrc/*.h $CU_SRCS csrc/cuda/*.cuh >"$B/cov/all.txt" 2>/dev/null &&
        printf '  %-14s %s\n' "all harnesses" "$(awk '/^TOTAL/ { print "all: " $(NF-3) " of " $(NF-5) " lines" }' "$B/cov/all.txt")"
    say "line coverage of the Python parsing (fuzz_files corpus replayed under coverage.py)"
    PYTHONPATH=. COVERAGE_FILE=$B/cov/python.coverage "$PY" -m coverage run \
        --include='*/comfy_sdnq/safetensors_io.py,*/comfy_sdnq/files.py,*/comfy_sdnq/config.py,*/comfy_sdnq/format.py' \
        tests/fuzz/fuzz_files.py --replay "$C/fuzz_files" "$C/seed/fuzz_files" >/dev/null 2>&1 &&
        COVERAGE_FILE=$B/cov/python.coverage "$PY" -m coverage report | sed 's/^/  /'
fi
say "done in $((SECONDS - T0)) s"
[ "$failed" = 0 ] || die "a fuzz campaign failed (logs in $B/logs, inputs in $C/artifacts)"
exit 0
