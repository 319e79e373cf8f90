#!/usr/bin/env bash
# On a GPU machine: the gpu-marked tests and the benchmarks, against a kernel library built beforehand
# (elsewhere is fine: cmake -S . -B build -DMAMBA_DEPLOY_CUDA_ARCHS=90 -G Ninja && cmake --build build).
#   MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so bash scripts/gpu_check.sh [STEP ...]
# Steps (default: tests bench generate):
#   tests        every gpu-marked test
#   bench        bench at batch 1 / 16 / 64, mamba-1.4b and mamba2-1.3b
#   generate     bench --generate, mamba-1.4b
#   persistent   the persistent batch-1 decode's tests (first), then benchmarks/persistent_decode.py on four models
#   profile      the kernels of one decode step at batch 8, 16 and 64 (mamba-1.4b, mamba2-1.3b)
#   experiments  the prefill switches that are off by default: their tests, then A/B in one process
#                (MAMBA_DEPLOY_SSD_OVERLAP, MAMBA_DEPLOY_GATE_IN_SCAN) and, with POLY_LIB set to a library built
#                with -DMAMBA_DEPLOY_SOFTPLUS_POLY=ON, its Mamba1 scan tests, then the Mamba1 prefill with each
#                library in turn
# Output goes to stdout and, when $OUT is set, to $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${MAMBA_DEPLOY_KERNEL_LIB:?set MAMBA_DEPLOY_KERNEL_LIB to a built libmamba_deploy_kernels.so}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/gpu_check.log"
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(tests bench generate)
status=0
run() {  # run LIMIT_S TAIL_LINES CMD...: the command under a time limit, its output logged, its tail shown
  local limit=$1 lines=$2; shift 2
  echo "+ $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log" | tail -n "$lines"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}
for step in "${steps[@]}"; do
  case "$step" in
    tests) run 480 15 python3 -m pytest -q -m gpu tests -p no:cacheprovider ;;
    bench) for m in mamba-1.4b mamba2-1.3b; do
             run 240 6 python3 -m mamba_deploy.bench --random-init "$m" --batches 1 16 64
           done ;;
    generate) run 300 8 python3 -m mamba_deploy.bench --random-init mamba-1.4b --batches 1 16 64 --generate ;;
    persistent)
      run 150 25 python3 -m pytest -q -m gpu tests/native/test_persistent_decode.py -p no:cacheprovider
      run 240 40 python3 benchmarks/persistent_decode.py mamba-1.4b mamba2-1.3b mamba-2.8b mamba2-2.7b --rounds 2 ;;
    profile) for m in mamba-1.4b mamba2-1.3b; do
               run 200 60 python3 benchmarks/profile_step.py --random-init "$m" --batches 8 16 64
             done ;;
    experiments)
      run 150 10 python3 -m pytest -q -m gpu -p no:cacheprovider \
        tests/ops/test_chunk_scan_cuda.py::test_chunk_scan_overlap_is_bit_exact \
        tests/native/test_native_engine.py::test_gate_in_scan_matches_reference \
        tests/native/test_native_engine.py::test_ssd_overlap_prefill_is_bit_exact
      for env in MAMBA_DEPLOY_SSD_OVERLAP=1 MAMBA_DEPLOY_GATE_IN_SCAN=1; do
        run 200 12 python3 benchmarks/prefill_models.py --rounds 2 --ab-env "$env" mamba2-1.3b mamba2-2.7b
      done
      if [ -n "${POLY_LIB:-}" ]; then  # built with -DMAMBA_DEPLOY_SOFTPLUS_POLY=ON: its Mamba1 scans' tests first
        MAMBA_DEPLOY_KERNEL_LIB="$POLY_LIB" run 200 6 python3 -m pytest -q -m gpu -p no:cacheprovider \
          tests/ops/test_kernels_cuda.py tests/native/test_native_engine.py -k "selective_scan or mamba1 or scan"
        for lib in "$MAMBA_DEPLOY_KERNEL_LIB" "$POLY_LIB" "$MAMBA_DEPLOY_KERNEL_LIB" "$POLY_LIB"; do
          MAMBA_DEPLOY_KERNEL_LIB="$lib" run 150 6 python3 benchmarks/prefill_models.py --rounds 1 mamba-1.4b mamba-2.8b
        done
      fi ;;
    *) echo "unknown step $step (tests, bench, generate, persistent, profile, experiments)"; exit 2 ;;
  esac
done
exit $status
