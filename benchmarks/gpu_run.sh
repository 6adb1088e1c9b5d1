#!/usr/bin/env bash
# benchmarks/gpu_run.sh - the one command for the GPU machine. It builds nothing: the extensions
# comfy_sdnq/_C.abi3.so and comfy_sdnq/_C_cuda.abi3.so come with the working tree (abi3: any
# CPython >= 3.10; the CUDA module carries SASS for sm_80/89/90a/100a/120 and PTX).
#
#   OUT=/dir bash benchmarks/gpu_run.sh                 # tests, sanitizers, quick benchmark
#   OUT=/dir bash benchmarks/gpu_run.sh tests bench     # only some steps (tests sanitizer bench bench-full)
#
# Steps and what they leave in $OUT (default ./gpu-out):
#   tests      pytest tests/test_cuda.py                      test_cuda.log, test_cuda.xml
#   sanitizer  tests/cuda_sanitizer.py under compute-sanitizer memcheck and racecheck
#                                                             sanitizer_memcheck.log, sanitizer_racecheck.log
#              (skipped with a message if compute-sanitizer is missing or refuses the device)
#              then the CUDA tests of the newer kernels (fused dequantize+SVD, GEMV SVD epilogue,
#              vector row quantization and epilogue, fused int8 GEMM's refusals and checks)
#              under memcheck                                           sanitizer_pytest.log
#   bench      benchmarks/bench_gpu.py --quick                bench/bench.{json,md,png}, bench.log
#   bench-full benchmarks/bench_gpu.py (every shape, M, dtype) bench-full/..., bench-full.log
#   baseline   the quick benchmark of an older build carried in .device/baseline (its own
#              comfy_sdnq package and .so files, possibly .so.gz, benchmarks/bench_gpu.py): before/after on the
#              same machine                                   baseline/bench.{json,md}, baseline.log
#   ncu        Nsight Compute on one call of each hot kernel (bench_gpu.py --ncu-targets):
#              speed of light, occupancy, launch, warp-state and scheduler statistics, executed
#              instructions and stall reasons, at the GPU's own clocks                     ncu.txt
# Pure-Python packages carried under .device/pylib (e.g. sdnq, for the benchmark's sdnq columns)
# are put on PYTHONPATH. Each step has a time limit; the exit status is 1 if any step failed.
# Expected time on an H100: tests ~1.5 min, sanitizers ~1.5 min each, quick bench ~2 min (~6.5 min).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .device/pylib ] && export PYTHONPATH="$PWD/.device/pylib:$PYTHONPATH"
STEPS=${*:-tests sanitizer bench}
declare -a SUMMARY
failed=0

# step NAME LIMIT_S LOG COMMAND...: run with a time limit, output to the terminal and LOG;
# records a summary line and a failure (callers may call `forgive` right after)
step() {
    local name=$1 limit=$2 log=$3 t0=$SECONDS rc
    shift 3
    echo "=== $name (limit ${limit}s)"
    timeout "$limit" "$@" > >(tee "$log") 2>&1
    rc=$?
    SUMMARY+=("$(printf '%-22s %5ds  %s' "$name" $((SECONDS - t0)) "$([ $rc -eq 0 ] && echo ok || echo "FAILED (rc=$rc)")")")
    [ $rc -eq 0 ] || failed=$((failed + 1))
    return $rc
}

# forgive NAME WHY: the last step's failure does not count (a tool that could not run here)
forgive() {
    SUMMARY[${#SUMMARY[@]}-1]="$(printf '%-22s %5s  %s' "$1" - "skipped: $2")"
    failed=$((failed - 1))
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
    $PY -c "import torch, comfy_sdnq.kernels as k; print('torch', torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(), 'C:', k.backend(), 'CUDA:', k.cuda_backend(), k._CUDA_IMPORT_ERROR or '')"
} 2>&1 | tee "$OUT/env.txt"

for s in $STEPS; do
    case $s in
    tests)
        step "tests/test_cuda.py" 300 "$OUT/test_cuda.log" \
            $PY -m pytest tests/test_cuda.py -q -ra -p no:cacheprovider --junitxml="$OUT/test_cuda.xml"
        ;;
    sanitizer)
        SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
            /opt/nvidia/nsight-compute/*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
        if [ -z "$SAN" ]; then
            echo "compute-sanitizer not found: sanitizer step skipped" | tee "$OUT/sanitizer_skipped.txt"
            continue
        fi
        for tool in memcheck racecheck; do
            log="$OUT/sanitizer_$tool.log"
            if ! step "sanitizer $tool" 240 "$log" "$SAN" --tool "$tool" --error-exitcode 99 \
                $PY tests/cuda_sanitizer.py &&
                grep -q -E "Device not supported|not supported on this|No attachable|error 999" "$log"; then
                echo "compute-sanitizer refused the device: $tool skipped" | tee -a "$log"
                forgive "sanitizer $tool" "compute-sanitizer refused the device"
            fi
        done
        # the kernels added after tests/cuda_sanitizer.py: their tests, small shapes, allocator off
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 step "sanitizer memcheck (pytest)" 240 "$OUT/sanitizer_pytest.log" \
            "$SAN" --tool memcheck --error-exitcode 99 $PY -m pytest tests/test_cuda.py -x -q -p no:cacheprovider \
            -k "test_dequant_svd and (uint4 or int5 or int8) or test_gemv_svd or test_gemv_many_tiles \
            or test_gemv_work_buffer or test_quantize_rows or test_scale_epilogue or test_i8_gemm_refusals \
            or test_i8_gemm_checks or (test_dequantize_q8 and xdt0) or test_w4a8_one_pass"
        ;;
    bench)
        step "bench_gpu --quick" 240 "$OUT/bench.log" $PY benchmarks/bench_gpu.py --quick --out "$OUT/bench"
        ;;
    bench-full)
        step "bench_gpu (full)" 590 "$OUT/bench-full.log" $PY benchmarks/bench_gpu.py --out "$OUT/bench-full"
        ;;
    baseline)
        if [ -f .device/baseline/benchmarks/bench_gpu.py ]; then
            for z in .device/baseline/comfy_sdnq/*.so.gz; do  # carried compressed (the carry limit)
                [ -f "$z" ] && gunzip -f "$z"
            done
            step "baseline bench --quick" 240 "$OUT/baseline.log" \
                $PY .device/baseline/benchmarks/bench_gpu.py --quick --out "$OUT/baseline"
        else
            echo "no .device/baseline: baseline step skipped"
        fi
        ;;
    ncu)
        NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
        if [ -z "$NCU" ]; then
            echo "ncu not found: ncu step skipped"
        else
            # the GPU's own clocks (no locking), plus the instruction count and the stall reasons
            step "ncu" 240 "$OUT/ncu.txt" "$NCU" --profile-from-start off --clock-control none --section SpeedOfLight \
                --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
                --metrics 'smsp__inst_executed.sum,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
                $PY benchmarks/bench_gpu.py --ncu-targets
        fi
        ;;
    *) echo "unknown step $s (tests sanitizer bench bench-full baseline ncu)"; failed=1 ;;
    esac
done

echo "=== summary ($OUT)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
[ -f "$OUT/bench/bench.md" ] && head -40 "$OUT/bench/bench.md"
[ "$failed" -eq 0 ]
